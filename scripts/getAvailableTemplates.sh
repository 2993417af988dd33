#!/bin/sh
# HostFactory provider script: runs `hfwasm getAvailableTemplates -f <input.json>`.
HFWASM_CALL=getAvailableTemplates
case $0 in */*) . "${0%/*}/hfwasm-invoke.sh" ;; *) . ./hfwasm-invoke.sh ;; esac
