#!/usr/bin/env bash
# The main job: builds the guests and the host, then runs the full HostFactory cycle
# (getAvailableTemplates, requestMachines x3, status until final, return 2, status,
# getReturnRequests) through the real scripts on the embedded defaults. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/setup.sh
hfwasm_setup
cargo build --release -p hfwasm
exec "${CARGO_TARGET_DIR:-target}/release/hfwasm" demo "$@"
