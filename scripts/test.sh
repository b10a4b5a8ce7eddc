#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the real test components (Apache Kafka
# from Maven Central, kcat, the Java, Go, Python and Node Kafka clients, kinesis-local) when
# missing, then runs every test against Kafka clusters the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

# Each test binary shares one Kafka cluster (and a 3-node one where needed) among its tests,
# which start their own proxy, emulator and clients; two tests at a time fits 2 cores.
export RUST_BACKTRACE=1
cargo test --locked --all-targets --no-fail-fast -- --test-threads "${KKP_TEST_THREADS:-2}"
scripts/fuzz.sh smoke
