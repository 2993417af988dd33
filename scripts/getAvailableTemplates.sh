#!/bin/sh
# HostFactory provider script: runs `hfwasm getAvailableTemplates -f <input.json>`.
exec "$(dirname -- "$0")/hfwasm-invoke.sh" getAvailableTemplates "$@"
