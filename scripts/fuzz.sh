#!/usr/bin/env bash
# cargo-fuzz targets of fuzz/ (see fuzz/README.md).
#
#   scripts/fuzz.sh run [TOTAL_EXECS]   every target, TOTAL_EXECS executions split evenly
#                                       (default 10,000,000); new inputs go to fuzz/corpus/
#   scripts/fuzz.sh smoke               every target briefly (CI); fails on a crash
#   scripts/fuzz.sh cmin                minimize fuzz/corpus/<target> in place
#
# Installs the nightly toolchain and cargo-fuzz when missing. One libFuzzer job at a time.
# Environment: FUZZ_TARGETS (space-separated subset), SMOKE_RUNS (default 20000),
# SMOKE_SECONDS (default 15), FUZZ_MAX_CRASHES (per target in `run`, default 3).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(${FUZZ_TARGETS:-frame_header produce_request record_batches record_codecs response_rewrite})
# libFuzzer flags common to both modes: a slow input is a finding (-timeout), so is an
# allocation above 2 GiB (-rss_limit_mb, which also sets -malloc_limit_mb).
COMMON=(-timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1)
# Release build with AddressSanitizer, as the proxy ships (no debug assertions: -O); set
# FUZZ_BUILD_FLAGS=-a for overflow checks and debug assertions (slower, a separate build).
read -r -a BUILD_FLAGS <<<"${FUZZ_BUILD_FLAGS:--O}"
# The proxy links librdkafka (for `verify`), whose configure script test-links the zstd library
# that cargo-fuzz builds with AddressSanitizer: those test programs need the sanitizer's runtime.
export LDFLAGS="${LDFLAGS:+$LDFLAGS }-fsanitize=address"

ensure_tools() {
    if ! rustup toolchain list | grep -q '^nightly'; then
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
}

# Executions reported by a libFuzzer log: the final stats, else "Done N runs", else the last
# "#N" progress line (a crash can cut the log short).
executions() {
    local log=$1 n
    n=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    [ -n "$n" ] || n=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]*' || true)
    [ -n "$n" ] || n=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
    echo "${n:-0}"
}

corpus_size() {
    local dir=$1
    if [ -d "$dir" ]; then
        echo "$(find "$dir" -type f | wc -l) files, $(($(find "$dir" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}') / 1024)) KiB"
    else
        echo "0 files"
    fi
}

build() {
    local t0=$SECONDS
    cargo +nightly fuzz build "${BUILD_FLAGS[@]}" >&2
    echo "fuzz build: $((SECONDS - t0)) s" >&2
}

run() {
    local total=${1:-10000000}
    local per=$(((total + ${#TARGETS[@]} - 1) / ${#TARGETS[@]}))
    local max_crashes=${FUZZ_MAX_CRASHES:-3}
    local logs=target/fuzz-logs
    mkdir -p "$logs"
    build
    local summary="" grand=0 grand_crashes=0
    for t in "${TARGETS[@]}"; do
        mkdir -p "corpus/$t" "artifacts/$t"
        local done_runs=0 crashes=0 attempt=0 t0=$SECONDS
        # libFuzzer stops at the first crash: keep the finding and go on with the rest of the
        # target's budget, up to max_crashes findings.
        while [ "$done_runs" -lt "$per" ] && [ "$crashes" -lt "$max_crashes" ]; do
            attempt=$((attempt + 1))
            local log="$logs/$t.$attempt.log"
            local status=0
            cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "corpus/$t" -- "${COMMON[@]}" \
                -runs=$((per - done_runs)) >"$log" 2>&1 || status=$?
            local n
            n=$(executions "$log")
            done_runs=$((done_runs + n))
            if [ "$status" -ne 0 ]; then
                crashes=$((crashes + 1))
                echo "$t: CRASH (exit $status) after $n executions; log $PWD/$log" >&2
                grep -m3 -E 'ERROR: libFuzzer|panicked at|SUMMARY|Test unit written' "$log" >&2 || true
                # A crash that recurs at once would loop: count at least one execution.
                [ "$n" -gt 0 ] || done_runs=$((done_runs + 1))
            fi
        done
        local line
        line=$(printf '%-17s %12d executions  %d crash(es)  %5d s  corpus %s' \
            "$t" "$done_runs" "$crashes" "$((SECONDS - t0))" "$(corpus_size "corpus/$t")")
        echo "$line" >&2
        summary+="$line"$'\n'
        grand=$((grand + done_runs))
        grand_crashes=$((grand_crashes + crashes))
    done
    echo
    echo "== fuzz run: ${#TARGETS[@]} targets, $total executions requested =="
    printf '%s' "$summary"
    echo "total: $grand executions, $grand_crashes crash(es); corpus $(corpus_size corpus)"
    [ "$grand_crashes" -eq 0 ]
}

smoke() {
    local runs=${SMOKE_RUNS:-20000} seconds=${SMOKE_SECONDS:-15}
    build
    local failed=0
    for t in "${TARGETS[@]}"; do
        # New inputs go to a scratch directory; the repo's corpus and regressions are read
        # only. Every regression input runs first, so a fixed crash that comes back fails here.
        local scratch log t0=$SECONDS status=0
        scratch=$(mktemp -d)
        log="$scratch.log"
        local dirs=("$scratch" "corpus/$t")
        [ -d "regressions/$t" ] && dirs+=("regressions/$t")
        cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "${dirs[@]}" -- "${COMMON[@]}" \
            -runs="$runs" -max_total_time="$seconds" >"$log" 2>&1 || status=$?
        if [ "$status" -eq 0 ]; then
            echo "smoke $t: ok, $(executions "$log") executions in $((SECONDS - t0)) s"
        else
            failed=1
            echo "smoke $t: CRASH (exit $status); log follows" >&2
            tail -40 "$log" >&2
        fi
        rm -rf "$scratch" "$log"
    done
    return "$failed"
}

cmin() {
    build
    for t in "${TARGETS[@]}"; do
        cargo +nightly fuzz cmin "${BUILD_FLAGS[@]}" "$t" "corpus/$t" -- "${COMMON[@]}"
        echo "cmin $t: corpus $(corpus_size "corpus/$t")"
    done
}

ensure_tools
case "${1:-}" in
    run) run "${2:-10000000}" ;;
    smoke) smoke ;;
    cmin) cmin ;;
    *)
        echo "usage: $0 run [TOTAL_EXECS] | smoke | cmin" >&2
        exit 2
        ;;
esac
