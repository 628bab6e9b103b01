#!/usr/bin/env bash
# Builds the hermetic test images used by integration-tests (the harness calls
# this script itself, once per test process, before its first container):
#
#   edupulse-test/postgres:15   from docker/postgres/
#   edupulse-test/nats:2.10     from docker/nats/
#
# Idempotent: each image carries a label with a hash of its build context and
# recipe; when both labels match, the script exits in well under a second.
# Concurrency-safe: builds are serialized by flock, and the check is repeated
# once the lock is held (a concurrent caller may have built the images already).
#
# Base images: when a registry is reachable, debian:bookworm-slim and
# debian:trixie-slim (pulled; the Dockerfiles then apt-get install the
# servers). When none is (the usual case here), an mmdebstrap root file system
# holding the servers is imported with `docker import` as the base. The classic
# builder (DOCKER_BUILDKIT=0) never pulls a FROM image that exists locally.
#
# Environment:
#   EDUPULSE_BASE_SOURCE   auto (default) | registry | mmdebstrap
#   EDUPULSE_DEBIAN_MIRROR mirror for mmdebstrap (default: mmdebstrap's own)
#   EDUPULSE_PULL_TIMEOUT  seconds allowed for the registry probe (default 20)
#   EDUPULSE_FORCE_REBUILD 1 rebuilds both images (bases are kept)
set -euo pipefail

# --- The one place naming the images (mirrored by integration-tests/src/images.rs,
# --- and checked against it by the smoke suite).
PG_IMAGE="edupulse-test/postgres:15"
NATS_IMAGE="edupulse-test/nats:2.10"
PG_BASE_MMDEBSTRAP="edupulse-test/base-postgres:bookworm"
NATS_BASE_MMDEBSTRAP="edupulse-test/base-nats:trixie"
PG_BASE_REGISTRY="debian:bookworm-slim"
NATS_BASE_REGISTRY="debian:trixie-slim"
HASH_LABEL="org.edupulse.context-hash"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK_FILE="${TMPDIR:-/tmp}/edupulse-build-images.lock"
BASE_SOURCE="${EDUPULSE_BASE_SOURCE:-auto}"
PULL_TIMEOUT="${EDUPULSE_PULL_TIMEOUT:-20}"
T0="$(date +%s%N)"

log() {
    local now
    now="$(date +%s%N)"
    printf '[build-images %3d.%03ds] %s\n' $(((now - T0) / 1000000000)) $(((now - T0) / 1000000 % 1000)) "$*" >&2
}

# mmdebstrap recipes: the file system each base is made from. They are part of
# the hashes, so changing one rebuilds the base and the image.
DPKG_NODOC=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
PG_RECIPE=(--variant=minbase --include=postgresql-15 "${DPKG_NODOC[@]}"
    --customize-hook="copy-in $ROOT/docker/postgres/slim.sh /tmp"
    --customize-hook='chroot "$1" sh /tmp/slim.sh'
    --customize-hook='rm -f "$1/tmp/slim.sh"'
    bookworm)
NATS_RECIPE=(--variant=essential --include=nats-server "${DPKG_NODOC[@]}" trixie)

sha() { sha256sum | cut -c1-16; }

# hash of a build context directory (paths and contents; not modes, which
# depend on the checkout's umask) plus extra words
context_hash() {
    local dir="$1"
    shift
    {
        printf '%s\n' "$@"
        (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha
}

image_label() { # image label -> value, or empty when the image is missing
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# The recipe names files by absolute path; hash it with the checkout's location left out, so
# that every clone (CI's included) agrees on the hash and finds the images up to date.
PG_RECIPE_HASH="$(printf '%s\n' "${PG_RECIPE[@]}" | sed "s|$ROOT|@ROOT@|g" | cat - "$ROOT/docker/postgres/slim.sh" | sha)"
NATS_RECIPE_HASH="$(printf '%s\n' "${NATS_RECIPE[@]}" | sha)"
PG_HASH="$(context_hash "$ROOT/docker/postgres" "$PG_RECIPE_HASH")"
NATS_HASH="$(context_hash "$ROOT/docker/nats" "$NATS_RECIPE_HASH")"

up_to_date() {
    [ "${EDUPULSE_FORCE_REBUILD:-0}" != 1 ] &&
        [ "$(image_label "$PG_IMAGE" "$HASH_LABEL")" = "$PG_HASH" ] &&
        [ "$(image_label "$NATS_IMAGE" "$HASH_LABEL")" = "$NATS_HASH" ]
}

if ! docker info >/dev/null 2>&1; then
    echo "build-images: docker is not usable (is dockerd running?)" >&2
    exit 1
fi

if up_to_date; then
    log "images up to date: $PG_IMAGE ($PG_HASH), $NATS_IMAGE ($NATS_HASH)"
    exit 0
fi

exec 9>"$LOCK_FILE"
if ! flock -n 9; then
    log "waiting for another build (lock $LOCK_FILE)"
    flock 9
fi
if up_to_date; then # built by whoever held the lock
    log "images up to date (built concurrently)"
    exit 0
fi
FORCE="${EDUPULSE_FORCE_REBUILD:-0}"

REGISTRY_STATE=unknown # unknown | yes | no
registry_reachable() {
    if [ "$REGISTRY_STATE" = unknown ]; then
        case "$BASE_SOURCE" in
            registry) REGISTRY_STATE=yes ;;
            mmdebstrap) REGISTRY_STATE=no ;;
            *)
                log "probing the registry: docker pull $PG_BASE_REGISTRY (timeout ${PULL_TIMEOUT}s)"
                if timeout "$PULL_TIMEOUT" docker pull -q "$PG_BASE_REGISTRY" >/dev/null 2>&1; then
                    REGISTRY_STATE=yes
                else
                    REGISTRY_STATE=no
                    log "no registry reachable: bases come from mmdebstrap"
                fi
                ;;
        esac
    fi
    [ "$REGISTRY_STATE" = yes ]
}

ensure_mmdebstrap() {
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        log "installing mmdebstrap (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq mmdebstrap >/dev/null
    fi
}

# pick_base MMDEBSTRAP_TAG REGISTRY_TAG RECIPE_HASH -> prints the base to build FROM
pick_base() {
    local mm="$1" reg="$2" recipe_hash="$3"
    if [ "$BASE_SOURCE" != registry ] && [ "$(image_label "$mm" org.edupulse.recipe-hash)" = "$recipe_hash" ]; then
        echo "$mm"
    elif [ "$BASE_SOURCE" != mmdebstrap ] && docker image inspect "$reg" >/dev/null 2>&1; then
        echo "$reg"
    elif registry_reachable && timeout "$PULL_TIMEOUT" docker pull -q "$reg" >/dev/null 2>&1; then
        echo "$reg"
    else
        echo "mmdebstrap"
    fi
}

# build_mmdebstrap_base TAG RECIPE_HASH RECIPE... : mmdebstrap | docker import
build_mmdebstrap_base() {
    local tag="$1" recipe_hash="$2"
    shift 2
    local mirror=()
    [ -z "${EDUPULSE_DEBIAN_MIRROR:-}" ] || mirror=("$EDUPULSE_DEBIAN_MIRROR")
    log "mmdebstrap $tag ..."
    local logf
    logf="$(mktemp "${TMPDIR:-/tmp}/edupulse-mmdebstrap.XXXXXX")"
    if ! mmdebstrap --quiet "$@" - "${mirror[@]}" 2>"$logf" |
        docker import --change "LABEL org.edupulse.recipe-hash=$recipe_hash" - "$tag" >/dev/null; then
        cat "$logf" >&2
        log "mmdebstrap $tag FAILED"
        return 1
    fi
    rm -f "$logf"
    log "mmdebstrap $tag done ($(docker image inspect -f '{{ .Size }}' "$tag" | awk '{ printf "%d MB", $1 / 1e6 }'))"
}

# build_image IMAGE CONTEXT HASH BASE
build_image() {
    local image="$1" context="$2" hash="$3" base="$4" logf
    logf="$(mktemp "${TMPDIR:-/tmp}/edupulse-docker-build.XXXXXX")"
    log "docker build $image FROM $base ..."
    if ! DOCKER_BUILDKIT=0 docker build --rm --force-rm \
        --build-arg "BASE_IMAGE=$base" \
        --label "$HASH_LABEL=$hash" \
        -t "$image" "$context" >"$logf" 2>&1; then
        cat "$logf" >&2
        log "docker build $image FAILED"
        return 1
    fi
    rm -f "$logf"
    log "built $image ($(docker image inspect -f '{{ .Size }}' "$image" | awk '{ printf "%d MB", $1 / 1e6 }'))"
}

# one image end to end: base (if needed), then the image (if stale)
make_image() {
    local image="$1" context="$2" hash="$3" mm_base="$4" reg_base="$5" recipe_hash="$6"
    shift 6
    if [ "$FORCE" != 1 ] && [ "$(image_label "$image" "$HASH_LABEL")" = "$hash" ]; then
        log "$image up to date"
        return 0
    fi
    local base
    base="$(pick_base "$mm_base" "$reg_base" "$recipe_hash")"
    if [ "$base" = mmdebstrap ]; then
        build_mmdebstrap_base "$mm_base" "$recipe_hash" "$@"
        base="$mm_base"
    fi
    build_image "$image" "$context" "$hash" "$base"
}

# Decide about the registry once, before the two builds run side by side.
need_base=no
for pair in "$PG_BASE_MMDEBSTRAP:$PG_RECIPE_HASH" "$NATS_BASE_MMDEBSTRAP:$NATS_RECIPE_HASH"; do
    if [ "$(image_label "${pair%:*}" org.edupulse.recipe-hash)" != "${pair##*:}" ]; then need_base=yes; fi
done
if [ "$need_base" = yes ] && ! registry_reachable; then
    ensure_mmdebstrap
fi
export REGISTRY_STATE

make_image "$PG_IMAGE" "$ROOT/docker/postgres" "$PG_HASH" \
    "$PG_BASE_MMDEBSTRAP" "$PG_BASE_REGISTRY" "$PG_RECIPE_HASH" "${PG_RECIPE[@]}" &
pg_pid=$!
make_image "$NATS_IMAGE" "$ROOT/docker/nats" "$NATS_HASH" \
    "$NATS_BASE_MMDEBSTRAP" "$NATS_BASE_REGISTRY" "$NATS_RECIPE_HASH" "${NATS_RECIPE[@]}" &
nats_pid=$!
status=0
wait "$pg_pid" || status=1
wait "$nats_pid" || status=1
if [ "$status" != 0 ]; then
    log "FAILED"
    exit 1
fi
# older builds of the two images, now untagged (not those still used by a container)
docker image prune -f --filter "label=$HASH_LABEL" >/dev/null 2>&1 || true
log "done: $PG_IMAGE, $NATS_IMAGE"
