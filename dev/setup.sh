#!/usr/bin/env bash
# Installs what building and testing hfwasm needs on a fresh machine; safe to run again
# (each step checks first). Sourced by demo.sh and test.sh.
set -euo pipefail

hfwasm_setup() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo not found; install Rust (rustup) first" >&2
        return 1
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "setup: installing the wasm32-wasip2 target" >&2
        rustup target add wasm32-wasip2
    fi
}

# The EC2 emulator the AWS tests start themselves: moto's server, in a venv at .venv/.
# Tests find it through HFWASM_MOTO_SERVER (set here) or .venv/bin/moto_server.
hfwasm_setup_moto() {
    local venv=.venv
    if [ ! -x "$venv/bin/moto_server" ]; then
        echo "setup: creating $venv with moto[server] (the EC2 emulator for the AWS tests)" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.*"
    fi
    # The Prometheus project's text-format parser, which tests/serve.rs reads /metrics with.
    if ! "$venv/bin/python" -c "import prometheus_client.parser" 2>/dev/null; then
        echo "setup: installing prometheus_client into $venv (parses hfwasm serve's /metrics in the tests)" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "prometheus_client==0.*"
    fi
    # Kubernetes' own schemas, offline: tests/deploy.rs validates deploy/k8s with them.
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        echo "setup: installing kubernetes-validate into $venv (checks deploy/k8s in the tests)" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.*"
    fi
    export HFWASM_MOTO_SERVER="$PWD/$venv/bin/moto_server"
}

# The example guests' toolchains (examples/): componentize-py into the same venv, and
# componentize-js into the JavaScript example's node_modules (the versions its package-lock.json
# pins; `npm install`, since `npm ci` rejects the lock over optional packages of other platforms).
hfwasm_setup_examples() {
    local venv=.venv
    [ -d "$venv" ] || python3 -m venv "$venv"
    if [ ! -x "$venv/bin/componentize-py" ]; then
        echo "setup: installing componentize-py into $venv (builds the Python example guest)" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==0.25.1"
    fi
    export HFWASM_COMPONENTIZE_PY="$PWD/$venv/bin/componentize-py"
    if [ ! -x examples/js-selector/node_modules/.bin/componentize-js ]; then
        echo "setup: installing componentize-js into examples/js-selector (builds the JavaScript example guest)" >&2
        (cd examples/js-selector && npm install --no-audit --no-fund --loglevel=error)
    fi
}

# PostgreSQL server binaries for the store tests, from Debian's packages. The tests start
# a throwaway server themselves (initdb into a temp dir, a free loopback port, as an
# unprivileged user when run as root). Found through HFWASM_PG_BINDIR (set here).
hfwasm_setup_postgres() {
    local bindir
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        echo "setup: installing PostgreSQL from Debian's packages (for the store tests)" >&2
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
        bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        echo "setup: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; install the 'postgresql' package" >&2
        return 1
    fi
    export HFWASM_PG_BINDIR="$bindir"
}

# valgrind, for dev/link-order.sh only (callgrind lists the functions each call runs).
hfwasm_setup_valgrind() {
    if ! command -v valgrind >/dev/null 2>&1; then
        echo "setup: installing valgrind from Debian's packages (for dev/link-order.sh)" >&2
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
    fi
}
