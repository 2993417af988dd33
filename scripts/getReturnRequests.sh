#!/bin/sh
# HostFactory provider script: runs `hfwasm getReturnRequests -f <input.json>`.
HFWASM_CALL=getReturnRequests
case $0 in */*) . "${0%/*}/hfwasm-invoke.sh" ;; *) . ./hfwasm-invoke.sh ;; esac
