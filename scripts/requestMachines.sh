#!/bin/sh
# HostFactory provider script: runs `hfwasm requestMachines -f <input.json>`.
HFWASM_CALL=requestMachines
case $0 in */*) . "${0%/*}/hfwasm-invoke.sh" ;; *) . ./hfwasm-invoke.sh ;; esac
