#!/usr/bin/env bash
# One-command demo: a single-node Apache Kafka (KRaft) and kinesis-local on loopback, a
# 6-partition topic and a 4-shard stream, the proxy mirroring 10% of the topic, steady keyed
# traffic from a real Kafka client, and, 20 s in, the percent raised to 50 by editing the config:
# the hot reload happens live. A short summary prints every few seconds. Ctrl-C stops everything
# the demo started.
#
#   scripts/demo.sh                 run until Ctrl-C
#   scripts/demo.sh --duration 60   run for 60 s, then stop (used by the test suite)
#
# Ports can be moved with KKP_DEMO_KAFKA_PORT, KKP_DEMO_CONTROLLER_PORT, KKP_DEMO_KINESIS_PORT,
# KKP_DEMO_BOOTSTRAP_PORT, KKP_DEMO_BROKER_PORT_BASE and KKP_DEMO_ADMIN_PORT. KKP_PROXY_BIN skips
# the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

kafka_port=${KKP_DEMO_KAFKA_PORT:-39092}
controller_port=${KKP_DEMO_CONTROLLER_PORT:-39093}
kinesis_port=${KKP_DEMO_KINESIS_PORT:-4568}
bootstrap_port=${KKP_DEMO_BOOTSTRAP_PORT:-19092}
broker_port_base=${KKP_DEMO_BROKER_PORT_BASE:-19100}
admin_port=${KKP_DEMO_ADMIN_PORT:-9464}
tools=${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}

# On a fresh machine the first run spends minutes in these two steps: say what, and how long
# (figures measured on 2 cores, see README.md).
echo "== installing what is missing into $tools: Apache Kafka 4.1.2 (jars from"
echo "   Maven Central; a JDK 17 and Maven from apt if absent), kcat, a Python venv with"
echo "   confluent-kafka and boto3, kinesis-local from npm, and the test suite's other clients."
echo "   About 4 minutes on 2 cores the first time (more if apt must fetch the JDK, 115 MB);"
echo "   a few seconds once everything is there."
scripts/install-test-deps.sh
if [ -z "${KKP_PROXY_BIN:-}" ]; then
  echo "== building the proxy (cargo build --release): 8 to 10 minutes on 2 idle cores the first"
  echo "   time (13 CPU-minutes; 20 minutes on a busy 2-core machine), 1.5 minutes after a code"
  echo "   change, under a second when nothing changed. cargo shows its progress below."
  cargo build --release
  KKP_PROXY_BIN="${CARGO_TARGET_DIR:-target}/release/kafka-kinesis-proxy"
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

# A single combined broker+controller KRaft node, id 1, so the proxy serves it on
# broker_port_base + 1. Its data lives in the demo's temp dir and goes with it.
kafka="$tools/kafka"
cat >"$work/kafka.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$work/kafka-data
num.partitions=1
offsets.topic.num.partitions=5
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
num.network.threads=2
num.io.threads=4
EOF
# A small fixed heap, the serial collector and C1 only: quick to start, light on 2 cores.
kafka_java() {
  java -Xms512m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError \
    -XX:-UsePerfData -Djava.awt.headless=true -Dkafka.logs.dir="$work" \
    -Dlog4j2.configurationFile="$kafka/config/log4j2.yaml" -cp "$kafka/libs/*" "$@"
}
echo "== formatting Kafka's storage (KRaft, standalone controller) in $work/kafka-data"
if ! { cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid) &&
       kafka_java kafka.tools.StorageTool format --standalone -t "$cluster_id" \
         -c "$work/kafka.properties"; } >"$work/kafka-format.log" 2>&1; then
  echo "demo: formatting Kafka's storage failed; its output:" >&2
  tail -n 30 "$work/kafka-format.log" >&2
  exit 1
fi

echo "== starting Apache Kafka on 127.0.0.1:$kafka_port (controller on 127.0.0.1:$controller_port) and kinesis-local on 127.0.0.1:$kinesis_port"
kafka_java kafka.Kafka "$work/kafka.properties" >"$work/kafka.log" 2>&1 </dev/null &
kafka_pid=$!
pids+=($kafka_pid)
KINESIS_MOCK_CERT_PATH="$kinesis_pkg/server.json" KINESIS_MOCK_PLAIN_PORT="$kinesis_port" \
  KINESIS_MOCK_TLS_PORT=$((kinesis_port + 1)) CREATE_STREAM_DURATION=1ms LOG_LEVEL=WARN \
  node -r ./tests/support/loopback.js "$kinesis_pkg/main.js" >"$work/kinesis.log" 2>&1 &
pids+=($!)
kafka_failed() { # why
  # The cause is usually an ERROR line far above the tail, which is shutdown chatter.
  echo "demo: Kafka $1; the errors in its log, then its last lines:" >&2
  grep -E -A1 --no-group-separator "^\[[^]]*\] (ERROR|FATAL) " "$work/kafka.log" | head -n 12 >&2 || true
  echo "..." >&2
  tail -n 20 "$work/kafka.log" >&2
  exit 1
}
# Kafka logs "Kafka Server started" once its broker has registered with the controller.
deadline=$((SECONDS + 120))
until grep -q "Kafka Server started" "$work/kafka.log"; do
  kill -0 "$kafka_pid" 2>/dev/null || kafka_failed "exited while starting"
  [ "$SECONDS" -lt "$deadline" ] || kafka_failed "did not start within 120 s"
  sleep 0.2
done
wait_port kinesis "$kinesis_port"

echo "== creating topic orders (6 partitions) and stream orders-stream (4 shards)"
if ! "$python" tests/clients/kafka_client.py admin --bootstrap "127.0.0.1:$kafka_port" \
    create --topic orders --partitions 6 >/dev/null 2>"$work/admin.log"; then
  echo "demo: creating topic orders failed:" >&2
  tail -n 30 "$work/admin.log" >&2
  exit 1
fi
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
