#!/bin/sh
# Entrypoint of edupulse-test/postgres, a small stand-in for the official
# postgres image's docker-entrypoint.sh (the parts testcontainers relies on):
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_INITDB_ARGS,
# POSTGRES_HOST_AUTH_METHOD; `-c name=value` arguments as the command.
#
# First start:
#   - /var/lib/postgresql/prebuilt holds a cluster initdb'ed when the image was
#     built (superuser "postgres", scram-sha-256 over TCP, trust on the unix
#     socket) and the marker file .edupulse-pending-setup. Using it in place
#     (PGDATA is pointed at it) avoids initdb (1-2 s on fuse-overlayfs) and
#     copying ~40 MB. A non-default POSTGRES_USER, POSTGRES_INITDB_ARGS or
#     POSTGRES_HOST_AUTH_METHOD, or a volume mounted on $PGDATA, runs
#     initdb --no-sync into $PGDATA instead.
#   - the password is set and POSTGRES_DB created in single-user mode: no server
#     listens during the setup, so no "ready" line is printed before the real
#     server's.
# The real server (exec'd last, listening on all addresses) logs to STDERR:
# its "database system is ready to accept connections" is the one readiness
# line, printed once per container start. Nothing prints it on stdout, so wait
# on stderr only (testcontainers-modules' Postgres waits on both streams: use a
# GenericImage with WaitFor::message_on_stderr, as the harness does).
# After a container restart the setup is skipped.
#
# Defaults in postgresql.conf: listen_addresses='*', max_connections=200.
# Any `-c name=value` given as the command overrides them.
set -eu

# `docker run IMAGE -c fsync=off` runs `postgres -c fsync=off`, like the official image.
case "${1:-}" in
    "") set -- postgres ;;
    -*) set -- postgres "$@" ;;
esac

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
PREBUILT=/var/lib/postgresql/prebuilt

if [ "$1" = postgres ]; then
    # Use the prebuilt cluster when it fits: $PGDATA is empty and not a mount
    # (a volume), and the configuration is the one it was built with.
    if [ ! -s "$PGDATA/PG_VERSION" ] && [ -s "$PREBUILT/PG_VERSION" ] \
        && [ "$POSTGRES_USER" = postgres ] && [ -z "${POSTGRES_INITDB_ARGS:-}" ] \
        && [ "$POSTGRES_HOST_AUTH_METHOD" = scram-sha-256 ] \
        && [ "$(stat -c %d "$PGDATA")" = "$(stat -c %d /)" ]; then
        PGDATA="$PREBUILT"
        export PGDATA
    fi
fi
MARKER="$PGDATA/.edupulse-pending-setup"

if [ "$1" = postgres ] && { [ -e "$MARKER" ] || [ ! -s "$PGDATA/PG_VERSION" ]; }; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        echo "error: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        mkdir -p "$PGDATA"
        chmod 700 "$PGDATA"
        pwfile="$(mktemp)"
        printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
        # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list on purpose
        initdb --no-sync --username="$POSTGRES_USER" --pwfile="$pwfile" \
            --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
            --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
        rm -f "$pwfile"
        printf '%s\n' "listen_addresses = '*'" "max_connections = 200" >> "$PGDATA/postgresql.conf"
        echo "host all all all $POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
    fi

    # Single-user mode: one statement per line (so no newline in the values);
    # the password is a dollar-quoted literal with a random tag.
    tag="edupulse_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    {
        if [ -n "${POSTGRES_PASSWORD:-}" ]; then
            printf 'ALTER ROLE "%s" PASSWORD $%s$%s$%s$\n' "$POSTGRES_USER" "$tag" "$POSTGRES_PASSWORD" "$tag"
        fi
        if [ "$POSTGRES_DB" != postgres ]; then
            printf 'CREATE DATABASE "%s"\n' "$POSTGRES_DB"
        fi
    } > "$PGDATA/.edupulse-setup.sql"
    errors="$(postgres --single -D "$PGDATA" -c fsync=off -c log_min_messages=warning postgres \
        < "$PGDATA/.edupulse-setup.sql" 2>&1 >/dev/null)" || true
    rm -f "$PGDATA/.edupulse-setup.sql"
    if echo "$errors" | grep -qE 'ERROR|FATAL|PANIC'; then
        echo "$errors" >&2
        echo "error: database setup failed" >&2
        exit 1
    fi
    rm -f "$MARKER"
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
