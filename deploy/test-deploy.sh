#!/usr/bin/env bash
# What `make test-deploy` runs once deploy/with-docker.sh has made an engine available if it
# can: build the images (when an engine answers) and run tests/deploy with this checkout's venv.
#
#   deploy/test-deploy.sh [PYTEST ARGS...]
#
# Without an engine the compose tests skip with the reason (or fail with
# FLOWRELAY_REQUIRE_DOCKER=1, as CI sets it); the cluster test needs no containers and runs.
set -uo pipefail
cd "$(dirname "$0")/.."
if docker info >/dev/null 2>&1; then
    deploy/build-images.sh || exit 1
else
    echo "test-deploy: no Docker engine answers; the compose tests will say why" >&2
fi
exec .venv/bin/python -m pytest tests/deploy "$@"
