#!/usr/bin/env bash
# Installs PostgreSQL's server binaries (initdb, pg_ctl, postgres) from Debian, idempotently.
# Nothing is started here: whoever needs a PostgreSQL (tests, scripts/bench_api.py) starts a throwaway
# cluster with initdb/pg_ctl in a temp directory on a free port. Prints the binaries' directory.
set -euo pipefail
find_bindir() {
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
        fi
    done | sort -V | tail -n 1
}
bindir=$(find_bindir)
if [ -z "$bindir" ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    # policy-rc.d-free containers: the package's own cluster is not needed (and may fail to start): ignore it.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >&2
    bindir=$(find_bindir)
fi
if [ -z "$bindir" ]; then
    echo "PostgreSQL binaries not found after install" >&2
    exit 1
fi
echo "$bindir"
