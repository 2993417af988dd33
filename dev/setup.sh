#!/usr/bin/env bash
# Installs what building and testing hfwasm needs on a fresh machine; safe to run again
# (each step checks first). Sourced by demo.sh and test.sh.
set -euo pipefail

hfwasm_setup() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo not found; install Rust (rustup) first" >&2
        return 1
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "setup: installing the wasm32-wasip2 target" >&2
        rustup target add wasm32-wasip2
    fi
}
