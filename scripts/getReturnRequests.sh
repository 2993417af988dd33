#!/bin/sh
# HostFactory provider script: runs `hfwasm getReturnRequests -f <input.json>`.
exec "$(dirname -- "$0")/hfwasm-invoke.sh" getReturnRequests "$@"
