#!/bin/sh
# HostFactory provider script: runs `hfwasm requestReturnMachines -f <input.json>`.
exec "$(dirname -- "$0")/hfwasm-invoke.sh" requestReturnMachines "$@"
