#!/bin/sh
# HostFactory provider script: runs `hfwasm getRequestStatus -f <input.json>`.
exec "$(dirname -- "$0")/hfwasm-invoke.sh" getRequestStatus "$@"
