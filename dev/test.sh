#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the process-level tests in tests/ that
# drive the real scripts. Installs what they need first. Safe to run twice. Ends with one
# line "N passed, N failed" totalled over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/setup.sh
hfwasm_setup
hfwasm_setup_moto
hfwasm_setup_postgres
hfwasm_setup_examples
cargo build --release --workspace
# The guests are linted as strictly as the host (their own workspace, wasm32-wasip2, beside
# the guest build's target dir so nothing is rebuilt twice).
(cd guests && cargo clippy --quiet --release --target wasm32-wasip2 --workspace \
    --target-dir "$(cd .. && realpath -m "${CARGO_TARGET_DIR:-target}")/guests" -- -D warnings)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed"
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if [ "$passed" -eq 0 ]; then
    echo "test: no test ran" >&2
    exit 1
fi
