#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the server-database tests.
#
#   eval "$(.ci/postgres.sh start)"   # installs postgresql if missing, starts a cluster in a temp dir
#                                     # on a free port, prints the exports below
#   python -m pytest -q tests/test_tune_postgres.py
#   .ci/postgres.sh stop              # stops it and removes the temp dir
#
# start prints:
#   export AUTOSELMATCH_PG_DIR=/tmp/autoselmatch-pg.XXXX
#   export AUTOSELMATCH_TEST_POSTGRES_URL=postgresql+psycopg2://asm:asm@127.0.0.1:PORT/asm_test
# The role asm (password asm) may create databases: each test makes its own and drops it.
# Everything but the exports goes to stderr.
set -euo pipefail

ROLE=asm
PASSWORD=asm
DATABASE=asm_test

log() { echo "postgres.sh: $*" >&2; }

bindir() {
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/pg_ctl" ]; then
    pg_config --bindir
    return
  fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}

ensure_installed() {
  if [ -n "$(bindir)" ]; then
    return
  fi
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
}

# Run a command as the server's owner: postgres refuses to run as root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  ensure_installed
  local bin dir port
  bin=$(bindir)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/autoselmatch-pg.XXXXXX")
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
  fi
  port=$(free_port)
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=100" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "$port" >"$dir/port"
  as_owner "$bin/psql" -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >&2 <<SQL || { stop "$dir"; exit 1; }
CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
CREATE DATABASE $DATABASE OWNER $ROLE;
SQL
  log "server on 127.0.0.1:$port (data in $dir)"
  echo "export AUTOSELMATCH_PG_DIR=$dir"
  echo "export AUTOSELMATCH_TEST_POSTGRES_URL=postgresql+psycopg2://$ROLE:$PASSWORD@127.0.0.1:$port/$DATABASE"
}

stop() {
  local dir=${1:-${AUTOSELMATCH_PG_DIR:-}}
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
    log "nothing to stop (set AUTOSELMATCH_PG_DIR or pass the directory)"
    return
  fi
  as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
  log "stopped and removed $dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | stop [DIR]" >&2; exit 2 ;;
esac
