#!/usr/bin/env bash
# Installs everything the integration tests (tests/kafka_clients.rs,
# tests/kcat.rs) need, from package registries only:
#
#   pkg-config, libssl-dev (Debian) -> the system OpenSSL that librdkafka (the rdkafka
#                                 crate, verify's Kafka client) links for TLS: `cargo build` needs them
#   Apache Kafka 4.1.2 (Maven Central) -> $TOOLS/kafka-4.1.2/libs   (the upstream broker, Java tools)
#   kcat             (Debian)     -> /usr/bin/kcat
#   Python clients   (PyPI)       -> $TOOLS/venv              (confluent-kafka, kafka-python, aiokafka)
#   moto's server    (PyPI)       -> $TOOLS/venv              (the STS that tests/route_accounts.rs
#                                 assumes roles from)
#   Node clients, kinesis-local and kinesalite (npm) -> $TOOLS/node/node_modules
#                                 (from tests/clients/package.json)
#   Java test client (javac)      -> $TOOLS/java-client/classes   (tests/clients/java/KkpClient.java)
#   Go test clients (Go proxy)    -> $TOOLS/go-clients/bin        (franz-go-client, sarama-client
#                                 from tests/clients/go; Go >= the go.mod version, fetched if older)
#
# TOOLS is ${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}. Idempotent:
# each component is skipped when already present, and one line per
# component says "installed" or "skipped". Works non-interactively (CI=true,
# no stdin).
set -euo pipefail

TOOLS="${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION=4.1.2
LOG4J_VERSION=2.24.3
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

# --- Build prerequisites (Debian) ---------------------------------------------------
# The rdkafka crate builds librdkafka with TLS against the system OpenSSL (openssl-sys finds
# it with pkg-config), so `cargo build` itself needs these; zstd, lz4 and snappy are built from
# source and need nothing here.
BUILD_DEPS=(pkg-config libssl-dev)
missing_build_deps=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing_build_deps+=("$p")
done
if [ "${#missing_build_deps[@]}" -eq 0 ]; then
  say build "skipped (${BUILD_DEPS[*]} already installed)"
else
  run_logged build-deps apt_install "${missing_build_deps[@]}"
  say build "installed (${missing_build_deps[*]})"
fi

# --- Apache Kafka (Maven Central) ------------------------------------------------
# The broker the suite runs against: kafka_2.13 (broker, StorageTool) and kafka-tools
# (VerifiableProducer/Consumer, ProducerPerformance, TopicCommand), with an SLF4J 1.7 binding
# for Log4j2 (the release tarball ships one; Maven does not). Java 17 runs 4.1.x.
KAFKA="$TOOLS/kafka-$KAFKA_VERSION"
if [ -f "$KAFKA/.complete" ] && java -cp "$KAFKA/libs/*" kafka.Kafka --version 2>/dev/null | grep -qx "$KAFKA_VERSION"; then
  say kafka "skipped ($KAFKA_VERSION already at $KAFKA)"
else
  command -v java >/dev/null && command -v mvn >/dev/null || run_logged jdk apt_install openjdk-17-jdk-headless maven
  echo "kafka:   fetching Apache Kafka $KAFKA_VERSION jars from Maven Central (about 80 MB with Maven's own plugins, under a minute)..."
  rm -rf "$KAFKA"
  mkdir -p "$KAFKA/libs" "$KAFKA/config"
  cat >"$KAFKA/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafka-kinesis-proxy.tests</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  run_logged kafka mvn -B -q -f "$KAFKA/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DoutputDirectory="$KAFKA/libs" -DincludeScope=runtime
  cp "$REPO/tests/support/kafka-log4j2.yaml" "$KAFKA/config/log4j2.yaml"
  java -cp "$KAFKA/libs/*" kafka.Kafka --version 2>/dev/null | grep -qx "$KAFKA_VERSION"
  touch "$KAFKA/.complete"
  say kafka "installed ($KAFKA_VERSION at $KAFKA)"
fi
# The harness and the demo find the pinned release through this link.
ln -sfn "kafka-$KAFKA_VERSION" "$TOOLS/kafka"

# --- kcat ---------------------------------------------------------------------
if command -v kcat >/dev/null; then
  say kcat "skipped (already at $(command -v kcat))"
else
  run_logged kcat apt_install kcat
  say kcat "installed ($(command -v kcat))"
fi

# --- taskset (tests/crash_safety.rs starves the proxy of CPU on one core) --------
if command -v taskset >/dev/null; then
  say taskset "skipped (already at $(command -v taskset))"
else
  run_logged util-linux apt_install util-linux
  say taskset "installed ($(command -v taskset))"
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

# --- moto (PyPI) -------------------------------------------------------------------
# `moto_server` answers STS AssumeRole on loopback for the role_arn test (tests/route_accounts.rs).
if "$VENV/bin/python" -c 'import moto.server, flask' >/dev/null 2>&1; then
  say moto "skipped (moto importable in $VENV)"
else
  run_logged moto "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]'
  "$VENV/bin/python" -c 'import moto.server, flask'
  say moto "installed ($VENV/bin/moto_server)"
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

# --- Java test client (tests/clients/java) ----------------------------------------
# KkpClient.java against the kafka-clients jar of the Kafka install above, compiled to
# $TOOLS/java-client/classes (tests/support/mod.rs puts it after $TOOLS/kafka/libs/*).
# Recompiled when the sources or the Kafka version change.
JAVA_CLIENT="$TOOLS/java-client"
JAVA_SRC="$REPO/tests/clients/java"
want_hash="$( (cd "$JAVA_SRC" && sha256sum -- *.java && echo "kafka $KAFKA_VERSION") | sha256sum | cut -d' ' -f1)"
have_hash="$(cat "$JAVA_CLIENT/.sources.sha256" 2>/dev/null || true)"
if [ "$want_hash" = "$have_hash" ] && [ -f "$JAVA_CLIENT/classes/KkpClient.class" ]; then
  say java-client "skipped (sources unchanged in $JAVA_CLIENT/classes)"
else
  command -v javac >/dev/null || run_logged jdk apt_install openjdk-17-jdk-headless
  rm -rf "$JAVA_CLIENT/classes.tmp"
  mkdir -p "$JAVA_CLIENT/classes.tmp"
  run_logged javac javac --release 17 -encoding UTF-8 -cp "$TOOLS/kafka/libs/*" \
    -d "$JAVA_CLIENT/classes.tmp" "$JAVA_SRC"/*.java
  rm -rf "$JAVA_CLIENT/classes"
  mv "$JAVA_CLIENT/classes.tmp" "$JAVA_CLIENT/classes"
  echo "$want_hash" >"$JAVA_CLIENT/.sources.sha256"
  say java-client "installed ($JAVA_CLIENT/classes)"
fi

# --- Go test clients (tests/clients/go) --------------------------------------------
# franz-go-client and sarama-client -> $TOOLS/go-clients/bin, modules from the Go module
# proxy (pinned by go.sum). Their go.mod needs Go >= GO_NEED: any go on the machine that
# is older (Debian 12 ships 1.19) fetches the official toolchain, which the proxy serves
# as the module golang.org/toolchain (what GOTOOLCHAIN=auto does), into $TOOLS/go-$GO_NEED.
GO_DIR="$REPO/tests/clients/go"
GO_OUT="$TOOLS/go-clients"
GO_NEED="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$GO_DIR/go.mod")"
go_ok() { # go_ok BINARY: true when BINARY runs and is at least GO_NEED
  local v
  v="$(GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null)" || return 1
  v="${v#go}"
  [ -n "$v" ] && [ "$(printf '%s\n' "$GO_NEED" "$v" | sort -V | head -n1)" = "$GO_NEED" ]
}
GO=""
for g in "$TOOLS/go-$GO_NEED/bin/go" "$(command -v go || true)" /usr/local/go/bin/go; do
  if [ -n "$g" ] && go_ok "$g"; then
    GO="$g"
    break
  fi
done
if [ -z "$GO" ]; then
  # Any older go can fetch it; install Debian's when there is none at all.
  boot="$(command -v go || true)"
  if [ -z "$boot" ] && [ -x /usr/local/go/bin/go ]; then
    boot=/usr/local/go/bin/go
  fi
  if [ -z "$boot" ]; then
    run_logged golang apt_install golang-go
    boot="$(command -v go)"
  fi
  echo "go:      fetching the Go $GO_NEED toolchain through the Go module proxy (about 70 MB)..."
  tc="golang.org/toolchain@v0.0.1-go$GO_NEED.$(GOTOOLCHAIN=local "$boot" env GOHOSTOS)-$(GOTOOLCHAIN=local "$boot" env GOHOSTARCH)"
  dl="$TOOLS/go-download"
  rm -rf "$dl" "$TOOLS/go-$GO_NEED"
  mkdir -p "$dl"
  run_logged go-toolchain env -C "$dl" GOTOOLCHAIN=local GOFLAGS=-modcacherw GOMODCACHE="$dl/mod" \
    "$boot" mod download "$tc"
  # Module zips carry no file modes: restore the executables' bits.
  cp -r "$dl/mod/$tc" "$TOOLS/go-$GO_NEED"
  chmod -R u+w "$TOOLS/go-$GO_NEED"
  find "$TOOLS/go-$GO_NEED/bin" "$TOOLS/go-$GO_NEED/pkg/tool" -type f -exec chmod +x {} +
  rm -rf "$dl"
  GO="$TOOLS/go-$GO_NEED/bin/go"
  go_ok "$GO"
fi
want_hash="$( (cd "$GO_DIR" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 \
  | LC_ALL=C sort -z | xargs -0 sha256sum && GOTOOLCHAIN=local "$GO" env GOVERSION) | sha256sum | cut -d' ' -f1)"
have_hash="$(cat "$GO_OUT/.sources.sha256" 2>/dev/null || true)"
if [ "$want_hash" = "$have_hash" ] && [ -x "$GO_OUT/bin/franz-go-client" ] && [ -x "$GO_OUT/bin/sarama-client" ]; then
  say go-clients "skipped (sources unchanged in $GO_OUT/bin)"
else
  run_logged go-mod-download env GOTOOLCHAIN=local GOFLAGS=-buildvcs=false "$GO" -C "$GO_DIR" mod download
  rm -rf "$GO_OUT/bin.tmp"
  mkdir -p "$GO_OUT/bin.tmp"
  run_logged go-build env GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
    "$GO" -C "$GO_DIR" build -trimpath -o "$GO_OUT/bin.tmp/" ./cmd/...
  rm -rf "$GO_OUT/bin"
  mv "$GO_OUT/bin.tmp" "$GO_OUT/bin"
  echo "$want_hash" >"$GO_OUT/.sources.sha256"
  say go-clients "installed ($GO_OUT/bin: franz-go-client, sarama-client; $("$GO" version))"
fi
