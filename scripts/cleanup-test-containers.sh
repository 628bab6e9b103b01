#!/usr/bin/env bash
# Removes the containers (with their anonymous volumes) and networks that the
# integration-test harness created: everything labelled `edupulse-test`.
#
#   scripts/cleanup-test-containers.sh           all of them (CI, end of run)
#   scripts/cleanup-test-containers.sh --stale   only those whose owning test
#                                                process (labels edupulse-test.pid
#                                                and edupulse-test.host) ran on this
#                                                host and no longer exists
#
# The harness normally cleans up after itself (see integration-tests/src/cleanup.rs);
# this is the safety net for killed runs.
set -euo pipefail

stale_only=no
[ "${1:-}" = --stale ] && stale_only=yes

docker info >/dev/null 2>&1 || exit 0

this_host="$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)"
# keep() tells whether --stale must spare an object: its process is alive, or
# it belongs to another host (another pid namespace: its pid means nothing here)
keep() {
    local pid="$1" host="$2"
    [ "$stale_only" = yes ] || return 1
    [ -z "$pid" ] && return 1
    [ -n "$host" ] && [ "$host" != "$this_host" ] && return 0
    [ -d "/proc/$pid" ]
}

removed=0
while read -r id pid host; do
    [ -n "$id" ] || continue
    if keep "$pid" "$host"; then
        continue
    fi
    docker rm -f -v "$id" >/dev/null 2>&1 || true
    removed=$((removed + 1))
done < <(docker ps -a --filter label=edupulse-test \
    --format '{{.ID}} {{.Label "edupulse-test.pid"}} {{.Label "edupulse-test.host"}}')

nets=0
while read -r id pid host; do
    [ -n "$id" ] || continue
    if keep "$pid" "$host"; then
        continue
    fi
    docker network rm "$id" >/dev/null 2>&1 || true
    nets=$((nets + 1))
done < <(docker network ls --filter label=edupulse-test \
    --format '{{.ID}} {{.Label "edupulse-test.pid"}} {{.Label "edupulse-test.host"}}')

if [ "$removed" -gt 0 ] || [ "$nets" -gt 0 ]; then
    echo "cleanup-test-containers: removed $removed container(s), $nets network(s)" >&2
fi
