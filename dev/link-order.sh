#!/usr/bin/env bash
# Regenerates host/link-order.txt: the functions the five HostFactory calls run, which the
# linker then places together at the front of the binary (lld --symbol-ordering-file, see
# host/build.rs). A call then maps a few MiB of code instead of touching pages scattered over
# 30 MiB: about half the peak RSS and a tenth less CPU per call (bench/README.md). Rerun it
# after a dependency or toolchain upgrade (the list is of symbol names, which then change;
# names that no longer exist are ignored, so a stale list only costs speed) and commit the
# result. Runs the on-prem and AWS cycles under valgrind (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/setup.sh
hfwasm_setup
hfwasm_setup_moto
hfwasm_setup_valgrind
hfwasm_setup_postgres
cargo build --release -p hfwasm
.venv/bin/python dev/link_order.py "${CARGO_TARGET_DIR:-target}/release/hfwasm" host/link-order.txt
echo "link-order: rebuilding with the new order" >&2
cargo build --release -p hfwasm
