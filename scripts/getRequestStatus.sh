#!/bin/sh
# HostFactory provider script: runs `hfwasm getRequestStatus -f <input.json>`.
HFWASM_CALL=getRequestStatus
case $0 in */*) . "${0%/*}/hfwasm-invoke.sh" ;; *) . ./hfwasm-invoke.sh ;; esac
