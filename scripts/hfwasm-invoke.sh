# Sourced (not executed) by the five HostFactory scripts, which set HFWASM_CALL first: finds
# the hfwasm binary and execs it with the call name and HostFactory's arguments
# (`-f <input.json>`). One shell process and no forks: HostFactory pays for every call.
# Nothing but hfwasm's one JSON answer reaches stdout.
#
# The binary is, in order: $HFWASM_BIN; <plugin>/bin/hfwasm next to this scripts/ dir
# (the installed layout); <repo>/target/release/hfwasm (a source checkout).
case $0 in
    */*) hfwasm_here=${0%/*} ;;
    *) hfwasm_here=. ;;
esac
if [ -n "${HFWASM_BIN:-}" ]; then
    hfwasm_bin=$HFWASM_BIN
elif [ -x "$hfwasm_here/../bin/hfwasm" ]; then
    hfwasm_bin=$hfwasm_here/../bin/hfwasm
else
    hfwasm_bin=$hfwasm_here/../target/release/hfwasm
fi
if [ ! -x "$hfwasm_bin" ]; then
    printf '{"error":{"code":"BINARY_NOT_FOUND","message":"hfwasm binary not found or not executable: %s; install it as <plugin>/bin/hfwasm or set HFWASM_BIN","details":{}}}\n' "$hfwasm_bin"
    exit 1
fi
exec "$hfwasm_bin" "$HFWASM_CALL" "$@"
