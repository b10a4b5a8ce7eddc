#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the real test components (tansu, kcat,
# Python and Node Kafka clients, kinesis-local) when missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

# Integration tests each start their own broker, proxy and clients; two at a time fits 2 cores.
export RUST_BACKTRACE=1
cargo test --locked --all-targets --no-fail-fast -- --test-threads "${KKP_TEST_THREADS:-2}"
