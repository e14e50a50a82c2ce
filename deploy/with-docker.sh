#!/usr/bin/env bash
# Run a command with a Docker engine and compose available, on a fresh Debian machine too:
#
#   deploy/with-docker.sh COMMAND [ARGS...]
#
# 1. Installs Debian's docker.io, docker-compose (v1) and debootstrap when missing (as root).
# 2. Starts dockerd when no engine answers, and stops it again when COMMAND ends (only if it
#    started it: an engine somebody else runs is left alone).
# 3. Runs COMMAND and exits with its status.
#
# Where none of this is possible (not root, no apt, dockerd cannot start) it says why and runs
# COMMAND anyway: the deploy tests then skip with that reason, or fail if told to require Docker.
set -uo pipefail

DOCKERD_LOG="${FLOWRELAY_DOCKERD_LOG:-/tmp/flowrelay-dockerd.log}"
DOCKERD_PID=""
PACKAGES=()

say() { echo "with-docker: $*" >&2; }

command -v dockerd >/dev/null || PACKAGES+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || PACKAGES+=(docker-compose)
command -v debootstrap >/dev/null || PACKAGES+=(debootstrap)
if [ ${#PACKAGES[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing ${PACKAGES[*]}"
        t0=$(date +%s)
        # Another apt may hold the lock (other installs on a shared machine): wait for it. The
        # package lists are refreshed only if the install fails without them.
        apt_install() {
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
                "${PACKAGES[@]}" iptables ca-certificates
        }
        { apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -q && apt_install; }; } >/tmp/flowrelay-apt.log 2>&1 \
            && say "installed in $(( $(date +%s) - t0 )) s" \
            || { say "apt-get failed (see /tmp/flowrelay-apt.log)"; tail -n 20 /tmp/flowrelay-apt.log >&2; }
    else
        say "cannot install ${PACKAGES[*]} (needs root and apt-get)"
    fi
fi

stop_dockerd() {
    [ -n "$DOCKERD_PID" ] || return 0
    say "stopping the dockerd it started (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || return 0; sleep 0.5; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
}

if ! docker info >/dev/null 2>&1 && command -v dockerd >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        say "no engine answers: starting dockerd (log: $DOCKERD_LOG)"
        setsid dockerd >"$DOCKERD_LOG" 2>&1 &
        DOCKERD_PID=$!
        trap stop_dockerd EXIT
        trap 'exit 130' INT TERM
        # dockerd has no readiness notification without systemd: ask until it answers (or dies).
        for _ in $(seq 1 120); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$DOCKERD_PID" 2>/dev/null || { say "dockerd exited:"; tail -n 20 "$DOCKERD_LOG" >&2; DOCKERD_PID=""; break; }
            sleep 0.5
        done
    else
        say "no engine answers and dockerd needs root"
    fi
fi
docker info >/dev/null 2>&1 && say "engine $(docker info --format '{{.ServerVersion}}') ready"

"$@"
status=$?
exit "$status"
