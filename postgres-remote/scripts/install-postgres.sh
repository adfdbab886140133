#!/usr/bin/env bash
# Installs the distribution's PostgreSQL 15 server binaries (initdb, postgres) that
# postgres-remote's test harness runs, if they are missing. Idempotent: does nothing
# when they are already there. Prints the binaries' directory.
# Needs root (apt-get); set TIDEMARK_PG_BINDIR to use binaries elsewhere instead.
set -euo pipefail

BINDIR="${TIDEMARK_PG_BINDIR:-/usr/lib/postgresql/15/bin}"

if [ -x "$BINDIR/initdb" ] && [ -x "$BINDIR/postgres" ]; then
    echo "$BINDIR"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: $BINDIR/initdb is missing and there is no apt-get here;" \
         "install PostgreSQL 15 and set TIDEMARK_PG_BINDIR" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# postgresql-15 brings initdb/postgres/pgbench; the package's own cluster is not used
# by the tests (they run initdb in a temporary directory).
apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >&2

if [ ! -x "$BINDIR/initdb" ] || [ ! -x "$BINDIR/postgres" ]; then
    echo "install-postgres: $BINDIR/initdb or postgres still missing after apt-get" >&2
    exit 1
fi
echo "$BINDIR"
