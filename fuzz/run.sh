#!/usr/bin/env bash
# A short bounded run of every fuzz target: `SECS` seconds each (default 30), one after the
# other, with libFuzzer's final stats line per target. Installs nothing: it says what is
# missing (a nightly toolchain, cargo-fuzz) and stops.
#
#   fuzz/run.sh                  # every target, 30 s each
#   SECS=60 fuzz/run.sh spdm tdx # some targets, 60 s each
#
# Crashes are left under fuzz/artifacts/TARGET/; reproduce one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${SECS:-30}"

missing=0
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "missing: a nightly toolchain (rustup toolchain install nightly --profile minimal)" >&2
    missing=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "missing: cargo-fuzz (cargo install cargo-fuzz)" >&2
    missing=1
fi
[ "$missing" = 0 ] || exit 2

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Seed the corpora of the evidence parsers with the real samples under attest/testdata (a
# fixed-size report is otherwise rarely reached from nothing). The corpora are not committed.
seed() {
    local target="$1"
    shift
    mkdir -p "corpus/$target"
    for f in "$@"; do
        [ -f "$f" ] && cp -n "$f" "corpus/$target/" 2>/dev/null || true
    done
}
seed snp ../attest/testdata/sev-snp/*report.bin
seed spdm ../attest/testdata/nvidia/*_report.bin
seed tdx ../attest/testdata/tdx/*.dat
seed tdx_collateral ../attest/testdata/tdx/*collateral.json
seed x509 ../attest/testdata/*/*.pem ../attest/testdata/*/*.der
seed policy_toml ../examples/*.toml

# Build every target first (one build, and a build error is reported as such).
if [ "$#" -eq 0 ]; then
    cargo +nightly fuzz build
fi
failed=()
for t in "${targets[@]}"; do
    echo "== $t (${SECS} s)"
    log="$(mktemp)"
    if cargo +nightly fuzz run "$t" -- -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1; then
        # The executions and the corpus at the end.
        grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)' "$log" || true
        grep -E '^#[0-9]+.*DONE' "$log" | tail -1 || true
    else
        echo "FAILED: $t (log: $log)"
        tail -40 "$log"
        failed+=("$t")
        continue
    fi
    rm -f "$log"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "targets with findings or errors: ${failed[*]}" >&2
    exit 1
fi
echo "every target ran ${SECS} s without a finding"
