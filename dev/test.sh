#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the process-level tests in tests/ that
# drive the real scripts. Installs what they need first. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/setup.sh
hfwasm_setup
if [ ! -d ../shared/conformance ] && [ -z "${HFWASM_CONFORMANCE_DIR:-}" ]; then
    echo "test: the conformance corpus is expected at ../shared/conformance (or set HFWASM_CONFORMANCE_DIR)" >&2
    exit 1
fi
cargo build --release --workspace
cargo test --release --workspace "$@"
