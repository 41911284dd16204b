#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the ledger tests and print its URL.
#
#   eval "$(bash tests/pg/start_postgres.sh)"        # exports IMAGINE_BOT_TEST_PG_URL
#   bash tests/pg/start_postgres.sh --stop           # stops it and removes its files
#
# Installs Debian's postgresql package when no server binaries are found, initdb's a cluster
# (trust auth, listening on 127.0.0.1 only, on a free port) in $IMAGINE_BOT_PG_DIR
# (default: $TMPDIR/imagine-bot-pg), starts it, creates the database `imagine_bot_test`,
# and prints `export IMAGINE_BOT_TEST_PG_URL=...` on stdout (also written to $DIR/url.env).
# Everything else goes to stderr. Running it again while the cluster is up only prints the URL.
set -euo pipefail

DIR="${IMAGINE_BOT_PG_DIR:-${TMPDIR:-/tmp}/imagine-bot-pg}"
DB=imagine_bot_test
PGUSER_NAME=postgres

log() { echo "start_postgres: $*" >&2; }

find_bindir() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
        echo "$d"
    fi
}

# Run a command as the cluster's owner: initdb and postgres refuse to run as root.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u "$OWNER" -- "$@"
    else
        "$@"
    fi
}

BINDIR="$(find_bindir)"

if [[ "${1:-}" == "--stop" ]]; then
    if [[ -n "$BINDIR" && -f "$DIR/data/postmaster.pid" ]]; then
        OWNER="$(stat -c %U "$DIR/data")"
        as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -m immediate -w stop >&2 || true
    fi
    rm -rf "$DIR"
    exit 0
fi

if [[ -z "$BINDIR" ]]; then
    log "installing postgresql from the Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BINDIR="$(find_bindir)"
    [[ -n "$BINDIR" ]] || { log "no PostgreSQL server binaries after install"; exit 1; }
fi

if [[ "$(id -u)" == 0 ]]; then
    OWNER="$PGUSER_NAME"
    id "$OWNER" >/dev/null 2>&1 || useradd --system --no-create-home "$OWNER"
else
    OWNER="$(id -un)"
fi

# Already running and answering: print the URL again. (pg_isready rather than `pg_ctl status`,
# which a zombie postmaster in a container without an init can fool.)
if [[ -f "$DIR/url.env" && -f "$DIR/port" ]] \
    && "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/port")" -t 5; then
    cat "$DIR/url.env"
    exit 0
fi

# Anything left from an earlier run is stale: start afresh (it is a throwaway cluster).
if [[ -d "$DIR/data" ]]; then
    as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$DIR"
mkdir -p "$DIR"
chmod 0755 "$DIR"
[[ "$(id -u)" == 0 ]] && chown "$OWNER" "$DIR"

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || shuf -i 20000-60000 -n 1)"

log "initdb in $DIR/data ($("$BINDIR/postgres" --version))"
as_owner "$BINDIR/initdb" -D "$DIR/data" -U "$PGUSER_NAME" --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 --no-sync >/dev/null

# Durability is pointless for a test cluster; speed is not.
as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR \
     -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2

as_owner "$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U "$PGUSER_NAME" "$DB"

echo "$PORT" >"$DIR/port"
URL="postgresql+asyncpg://$PGUSER_NAME@127.0.0.1:$PORT/$DB"
echo "export IMAGINE_BOT_TEST_PG_URL='$URL'" | tee "$DIR/url.env"
log "PostgreSQL is up: $URL"
