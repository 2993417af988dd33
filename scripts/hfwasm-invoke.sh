#!/bin/sh
# Shared by the five HostFactory scripts: finds the hfwasm binary and execs it with the
# call name and HostFactory's arguments (`-f <input.json>`). Nothing but hfwasm's one JSON
# answer reaches stdout.
#
# The binary is, in order: $HFWASM_BIN; <plugin>/bin/hfwasm next to this scripts/ dir
# (the installed layout); <repo>/target/release/hfwasm (a source checkout).
call=$1
shift
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
if [ -n "${HFWASM_BIN:-}" ]; then
    bin=$HFWASM_BIN
elif [ -x "$here/../bin/hfwasm" ]; then
    bin=$here/../bin/hfwasm
else
    bin=$here/../target/release/hfwasm
fi
if [ ! -x "$bin" ]; then
    printf '{"error":{"code":"BINARY_NOT_FOUND","message":"hfwasm binary not found or not executable: %s; install it as <plugin>/bin/hfwasm or set HFWASM_BIN","details":{}}}\n' "$bin"
    exit 1
fi
exec "$bin" "$call" "$@"
