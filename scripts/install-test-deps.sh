#!/usr/bin/env bash
# Installs everything the integration tests (tests/kafka_clients.rs,
# tests/kcat.rs) need, from package registries only:
#
#   tansu 0.6.0      (crates.io)  -> $TOOLS/tansu/bin/tansu   (the upstream Kafka broker)
#   kcat             (Debian)     -> /usr/bin/kcat
#   Python clients   (PyPI)       -> $TOOLS/venv              (confluent-kafka, kafka-python, aiokafka)
#   Node clients, kinesis-local and kinesalite (npm) -> $TOOLS/node/node_modules
#                                 (from tests/clients/package.json)
#
# TOOLS is ${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}. Idempotent:
# each component is skipped when already present, and one line per
# component says "installed" or "skipped". Works non-interactively (CI=true,
# no stdin).
set -euo pipefail

TOOLS="${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TANSU_VERSION=0.6.0
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$TOOLS"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo -n"
fi

say() { printf '%-8s %s\n' "$1:" "$2"; }

# Run a noisy step, keeping its output in a log that is shown on failure.
run_logged() {
  local name="$1"
  shift
  local logf="$TOOLS/install-$name.log"
  if ! "$@" >"$logf" 2>&1 </dev/null; then
    echo "install-test-deps: '$*' failed; last lines of $logf:" >&2
    tail -n 40 "$logf" >&2
    exit 1
  fi
}

apt_updated=0
apt_install() {
  # apt-get update only when a package has no install candidate yet.
  local missing=0 p
  for p in "$@"; do
    if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
      missing=1
    fi
  done
  if [ "$missing" = 1 ] && [ "$apt_updated" = 0 ]; then
    $SUDO apt-get update -q
    apt_updated=1
  fi
  $SUDO apt-get install -y -q --no-install-recommends "$@"
}

# --- tansu --------------------------------------------------------------------
TANSU="$TOOLS/tansu/bin/tansu"
if [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  say tansu "skipped ($TANSU_VERSION already at $TANSU)"
else
  command -v cargo >/dev/null || { echo "install-test-deps: cargo is required to build tansu" >&2; exit 1; }
  run_logged tansu cargo install tansu --version "$TANSU_VERSION" --locked \
    --no-default-features --features dynostore --root "$TOOLS/tansu"
  "$TANSU" --version | grep -q "$TANSU_VERSION"
  say tansu "installed ($TANSU_VERSION at $TANSU)"
fi

# --- kcat ---------------------------------------------------------------------
if command -v kcat >/dev/null; then
  say kcat "skipped (already at $(command -v kcat))"
else
  run_logged kcat apt_install kcat
  say kcat "installed ($(command -v kcat))"
fi

# --- Python venv ------------------------------------------------------------------
VENV="$TOOLS/venv"
# boto3 creates the demo's Kinesis stream (scripts/demo.sh).
PY_CHECK='import confluent_kafka, kafka, aiokafka, lz4.frame, snappy, zstandard, crc32c, cramjam, boto3'
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$PY_CHECK" >/dev/null 2>&1; then
  say venv "skipped (clients importable in $VENV)"
else
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    run_logged python3-venv apt_install python3-venv
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  run_logged pip "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    confluent-kafka 'kafka-python[lz4,snappy,zstd,crc32c]' 'aiokafka[lz4,snappy,zstd]' boto3
  "$VENV/bin/python" -c "$PY_CHECK"
  say venv "installed ($VENV)"
fi

# --- Node packages -------------------------------------------------------------
NODE_DIR="$TOOLS/node"
PKG="$REPO/tests/clients/package.json"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  run_logged nodejs apt_install nodejs npm
fi
want_hash="$(sha256sum "$PKG" | cut -d' ' -f1)"
have_hash="$(cat "$NODE_DIR/.package.json.sha256" 2>/dev/null || true)"
if [ "$want_hash" = "$have_hash" ] && [ -d "$NODE_DIR/node_modules/kafkajs" ]; then
  say node "skipped (package.json unchanged in $NODE_DIR)"
else
  mkdir -p "$NODE_DIR"
  cp "$PKG" "$NODE_DIR/package.json"
  rm -f "$NODE_DIR/package-lock.json"
  # kafkajs-lz4 depends on lz4, a node-gyp addon: build it against the
  # locally installed headers instead of downloading them.
  if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node.h ]; then
    export npm_config_nodedir=/usr
  fi
  run_logged npm npm install --prefix "$NODE_DIR" --no-audit --no-fund --omit=dev
  NODE_PATH="$NODE_DIR/node_modules" node -e \
    "for (const m of ['kafkajs','kafkajs-snappy','kafkajs-lz4','zstd-codec','kinesis-local/package.json','kinesalite']) require(m)"
  echo "$want_hash" >"$NODE_DIR/.package.json.sha256"
  say node "installed ($NODE_DIR/node_modules)"
fi
