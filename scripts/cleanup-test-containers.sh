#!/usr/bin/env bash
# Removes the containers (with their anonymous volumes) and networks that the
# integration-test harness created: everything labelled `edupulse-test`.
#
#   scripts/cleanup-test-containers.sh           all of them (CI, end of run)
#   scripts/cleanup-test-containers.sh --stale   only those whose owning test
#                                                process (label edupulse-test.pid)
#                                                no longer exists
#
# The harness normally cleans up after itself (see integration-tests/src/cleanup.rs);
# this is the safety net for killed runs.
set -euo pipefail

stale_only=no
[ "${1:-}" = --stale ] && stale_only=yes

docker info >/dev/null 2>&1 || exit 0

removed=0
while read -r id pid; do
    [ -n "$id" ] || continue
    if [ "$stale_only" = yes ] && [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
        continue
    fi
    docker rm -f -v "$id" >/dev/null 2>&1 || true
    removed=$((removed + 1))
done < <(docker ps -a --filter label=edupulse-test --format '{{.ID}} {{.Label "edupulse-test.pid"}}')

nets=0
while read -r id pid; do
    [ -n "$id" ] || continue
    if [ "$stale_only" = yes ] && [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
        continue
    fi
    docker network rm "$id" >/dev/null 2>&1 || true
    nets=$((nets + 1))
done < <(docker network ls --filter label=edupulse-test --format '{{.ID}} {{.Label "edupulse-test.pid"}}')

if [ "$removed" -gt 0 ] || [ "$nets" -gt 0 ]; then
    echo "cleanup-test-containers: removed $removed container(s), $nets network(s)" >&2
fi
