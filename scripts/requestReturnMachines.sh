#!/bin/sh
# HostFactory provider script: runs `hfwasm requestReturnMachines -f <input.json>`.
HFWASM_CALL=requestReturnMachines
case $0 in */*) . "${0%/*}/hfwasm-invoke.sh" ;; *) . ./hfwasm-invoke.sh ;; esac
