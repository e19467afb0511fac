#!/usr/bin/env bash
# Start a private PostgreSQL server for the test suite and print its SQLAlchemy URL.
# Installs Debian's postgresql package when the server binaries are missing (needs root).
# The cluster lives in $PGDATA_DIR (default /tmp/gpupool-pg), listens on 127.0.0.1:$PGPORT
# only, trusts local connections, and is reused by later runs.
set -euo pipefail
PGPORT=${PGPORT:-54329}
PGDATA_DIR=${PGDATA_DIR:-/tmp/gpupool-pg}
DB=${PGDATABASE:-gpupool_test}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN=$(find_bin)
if [ -z "$BIN" ] || [ ! -x "$BIN/postgres" ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "postgres.sh: PostgreSQL is not installed and I am not root" >&2; exit 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  BIN=$(find_bin)
fi

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
  mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$PGDATA_DIR"
  as_pg "$BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres >/dev/null
fi
if ! as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w \
    -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
fi
if ! as_pg "$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
  as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$DB"
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/$DB"
