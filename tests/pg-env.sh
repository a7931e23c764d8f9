#!/usr/bin/env bash
# Throwaway PostgreSQL for tests.
#
#   tests/pg-env.sh cargo test -p meridian-store   # run a command with the server up
#   source tests/pg-env.sh                         # keep it up for this shell (stops on exit)
#
# Installs PostgreSQL from Debian packages if no `initdb` is found, creates a
# cluster in a temporary directory owned by `postgres` (the server refuses to
# run as root), starts it on 127.0.0.1 on a free port from 54329 up with trust
# auth, exports MERIDIAN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres
# and stops it and removes the directory when the command (or shell) ends.
# Running it while a server it started is still up (sourced earlier, or
# nested) reuses that server.

_pgenv_sourced=0
[[ "${BASH_SOURCE[0]}" != "$0" ]] && _pgenv_sourced=1

_pgenv_log() { echo "pg-env: $*" >&2; }

_pgenv_find_bin() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        # Resolve symlinks (e.g. /usr/local/bin/initdb): pg_isready and
        # postgres live beside the real binary.
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    # Newest installed major version first.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

_pgenv_as_pg() {
    # Run a command as the cluster owner (postgres when we are root).
    if [[ "$(id -u)" == 0 ]]; then
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u postgres -- "$@")
        else
            (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
        fi
    else
        "$@"
    fi
}

_pgenv_port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

_pgenv_stop() {
    if [[ -n "${MERIDIAN_PG_ENV_DIR:-}" && -d "$MERIDIAN_PG_ENV_DIR" ]]; then
        _pgenv_as_pg "$MERIDIAN_PG_ENV_BIN/pg_ctl" -D "$MERIDIAN_PG_ENV_DIR/data" \
            -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$MERIDIAN_PG_ENV_DIR"
    fi
    unset MERIDIAN_PG_ENV_DIR MERIDIAN_PG_ENV_BIN MERIDIAN_TEST_POSTGRES_URL
}

_pgenv_start() {
    local bin dir port

    # Already running (sourced before, or nested run): reuse it.
    if [[ -n "${MERIDIAN_PG_ENV_DIR:-}" && -n "${MERIDIAN_TEST_POSTGRES_URL:-}" \
          && -f "${MERIDIAN_PG_ENV_DIR}/data/postmaster.pid" ]]; then
        _pgenv_log "reusing server at $MERIDIAN_TEST_POSTGRES_URL"
        _pgenv_reused=1
        return 0
    fi

    if ! bin="$(_pgenv_find_bin)"; then
        _pgenv_log "initdb not found; installing PostgreSQL from Debian packages"
        if [[ "$(id -u)" != 0 ]]; then
            _pgenv_log "need root to apt-get install postgresql"; return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 || return 1
        bin="$(_pgenv_find_bin)" || { _pgenv_log "initdb still not found after install"; return 1; }
    fi

    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres || return 1
    fi

    dir="$(mktemp -d "${TMPDIR:-/tmp}/meridian-pg.XXXXXX")" || return 1
    [[ "$(id -u)" == 0 ]] && chown postgres: "$dir"

    if ! _pgenv_as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1; then
        _pgenv_log "initdb failed:"; cat "$dir/initdb.log" >&2; rm -rf "$dir"; return 1
    fi

    port=54329
    while _pgenv_port_busy "$port"; do
        port=$((port + 1))
        if (( port > 54429 )); then _pgenv_log "no free port in 54329-54429"; rm -rf "$dir"; return 1; fi
    done

    # fsync=off: a throwaway cluster; durability of the store is the store's
    # own SQLite/transaction logic, not what these tests measure.
    if ! _pgenv_as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
            start >/dev/null; then
        _pgenv_log "server did not start:"; cat "$dir/server.log" >&2; rm -rf "$dir"; return 1
    fi

    local i
    for i in $(seq 1 60); do
        if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres 2>/dev/null; then break; fi
        sleep 0.5
    done
    if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
        _pgenv_log "server not ready:"; cat "$dir/server.log" >&2
        MERIDIAN_PG_ENV_DIR="$dir" MERIDIAN_PG_ENV_BIN="$bin" _pgenv_stop
        return 1
    fi

    export MERIDIAN_PG_ENV_DIR="$dir" MERIDIAN_PG_ENV_BIN="$bin"
    export MERIDIAN_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
    _pgenv_log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') up: $MERIDIAN_TEST_POSTGRES_URL"
    _pgenv_reused=0
}

if (( _pgenv_sourced )); then
    if _pgenv_start; then
        if (( ! _pgenv_reused )); then trap _pgenv_stop EXIT; fi
    else
        _pgenv_log "failed to start PostgreSQL"
        return 1
    fi
else
    set -uo pipefail
    _pgenv_start || { _pgenv_log "failed to start PostgreSQL"; exit 1; }
    if (( ! _pgenv_reused )); then trap _pgenv_stop EXIT INT TERM; fi
    if (( $# == 0 )); then
        _pgenv_log "no command given; nothing to run (source this script to keep the server up)"
        exit 0
    fi
    "$@"
    exit $?
fi
