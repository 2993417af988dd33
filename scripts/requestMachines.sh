#!/bin/sh
# HostFactory provider script: runs `hfwasm requestMachines -f <input.json>`.
exec "$(dirname -- "$0")/hfwasm-invoke.sh" requestMachines "$@"
