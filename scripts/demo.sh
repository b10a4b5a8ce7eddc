#!/usr/bin/env bash
# One-command demo: a tansu broker and kinesis-local on loopback, a 6-partition topic and a
# 4-shard stream, the proxy mirroring 10% of the topic, steady keyed traffic from a real Kafka
# client, and, 20 s in, the percent raised to 50 by editing the config: the hot reload happens
# live. A short summary prints every few seconds. Ctrl-C stops everything the demo started.
#
#   scripts/demo.sh                 run until Ctrl-C
#   scripts/demo.sh --duration 60   run for 60 s, then stop (used by the test suite)
#
# Ports can be moved with KKP_DEMO_KAFKA_PORT, KKP_DEMO_KINESIS_PORT, KKP_DEMO_BOOTSTRAP_PORT,
# KKP_DEMO_BROKER_PORT_BASE and KKP_DEMO_ADMIN_PORT. KKP_PROXY_BIN skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

kafka_port=${KKP_DEMO_KAFKA_PORT:-39092}
kinesis_port=${KKP_DEMO_KINESIS_PORT:-4568}
bootstrap_port=${KKP_DEMO_BOOTSTRAP_PORT:-19092}
broker_port_base=${KKP_DEMO_BROKER_PORT_BASE:-19100}
admin_port=${KKP_DEMO_ADMIN_PORT:-9464}
tools=${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}

scripts/install-test-deps.sh
if [ -z "${KKP_PROXY_BIN:-}" ]; then
  cargo build --release --quiet
  KKP_PROXY_BIN=target/release/kafka-kinesis-proxy
fi
python="$tools/venv/bin/python"
kinesis_pkg="$tools/node/node_modules/kinesis-local"
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

work=$(mktemp -d -t kkp-demo-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Up to 5 s to exit on SIGTERM (kinesis-local sometimes ignores it), then SIGKILL.
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # name port
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "demo: $1 did not open port $2; its log:" >&2
  tail -n 30 "$work/$1.log" >&2
  exit 1
}

echo "== starting tansu on 127.0.0.1:$kafka_port and kinesis-local on 127.0.0.1:$kinesis_port"
"$tools/tansu/bin/tansu" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
  --advertised-listener-url "tcp://127.0.0.1:$kafka_port" --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
KINESIS_MOCK_CERT_PATH="$kinesis_pkg/server.json" KINESIS_MOCK_PLAIN_PORT="$kinesis_port" \
  KINESIS_MOCK_TLS_PORT=$((kinesis_port + 1)) CREATE_STREAM_DURATION=1ms LOG_LEVEL=WARN \
  node -r ./tests/support/loopback.js "$kinesis_pkg/main.js" >"$work/kinesis.log" 2>&1 &
pids+=($!)
wait_port tansu "$kafka_port"
wait_port kinesis "$kinesis_port"

echo "== creating topic orders (6 partitions) and stream orders-stream (4 shards)"
"$python" tests/clients/kafka_client.py admin --bootstrap "127.0.0.1:$kafka_port" create --topic orders --partitions 6 >/dev/null
"$python" - "$kinesis_port" <<'PY'
import sys, time, boto3
k = boto3.client("kinesis", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
k.create_stream(StreamName="orders-stream", ShardCount=4)
while k.describe_stream_summary(StreamName="orders-stream")["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.1)
PY

config="$work/demo.toml"
sed -e "s/127.0.0.1:39092/127.0.0.1:$kafka_port/" -e "s/127.0.0.1:4568/127.0.0.1:$kinesis_port/" \
  -e "s/^bootstrap_port = .*/bootstrap_port = $bootstrap_port/" \
  -e "s/^broker_port_base = .*/broker_port_base = $broker_port_base/" \
  -e "s/127.0.0.1:9464/127.0.0.1:$admin_port/" -e "s|^dir = \"spool\"|dir = \"$work/spool\"|" config/demo.toml >"$config"
echo "== starting the proxy at 10% (config: $config, admin: http://127.0.0.1:$admin_port)"
"$KKP_PROXY_BIN" run --config "$config" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port proxy "$bootstrap_port"

echo "== producing steady keyed traffic through the proxy on 127.0.0.1:$bootstrap_port"
"$python" scripts/demo_traffic.py --bootstrap "127.0.0.1:$bootstrap_port" --topic orders --rate 200 >"$work/traffic.log" 2>&1 &
pids+=($!)

start=$SECONDS
raised=0
while [ "$duration" -eq 0 ] || [ $((SECONDS - start)) -lt "$duration" ]; do
  if [ "$raised" -eq 0 ] && [ $((SECONDS - start)) -ge 20 ]; then
    echo "== $((SECONDS - start))s: raising orders from 10% to 50% by editing $config (hot reload)"
    sed -i 's/^percent = 10.0/percent = 50.0/' "$config"
    raised=1
  fi
  echo "-- $((SECONDS - start))s"
  "$KKP_PROXY_BIN" status --admin "127.0.0.1:$admin_port" --once --interval 1 || true
  sleep 4
done
echo "== demo finished after $((SECONDS - start))s"
grep -E "config reloaded|route in force" "$work/proxy.log" | sed 's/^/proxy: /' || true
