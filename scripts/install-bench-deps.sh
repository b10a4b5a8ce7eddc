#!/usr/bin/env bash
# Installs what only the end-to-end benchmark (`cargo bench --bench e2e`) needs, on top of
# scripts/install-test-deps.sh: tansu 0.6.0 from crates.io, the peer proxy it is compared with
# (`tansu proxy`) and the broker of its baseline paths. The test suite does not need it, so its
# 10-minute build is not paid on every CI run. Idempotent: skipped when already installed.
set -euo pipefail

TOOLS="${KKP_TOOLS_DIR:-$HOME/.cache/kafka-kinesis-proxy}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TANSU_VERSION=0.6.0

"$REPO/scripts/install-test-deps.sh"

TANSU="$TOOLS/tansu/bin/tansu"
if [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "tansu:   skipped ($TANSU_VERSION already at $TANSU)"
  exit 0
fi
command -v cargo >/dev/null || { echo "install-bench-deps: cargo is required to build tansu" >&2; exit 1; }
echo "tansu:   building tansu $TANSU_VERSION from crates.io (about 10 minutes on 2 cores)..."
cargo install tansu --version "$TANSU_VERSION" --locked \
  --no-default-features --features dynostore --root "$TOOLS/tansu"
"$TANSU" --version | grep -q "$TANSU_VERSION"
echo "tansu:   installed ($TANSU_VERSION at $TANSU)"
