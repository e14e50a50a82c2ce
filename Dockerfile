# flowrelay's two images, one Dockerfile; compose picks the target and the command.
#
#   --target service   API, suggester and scripted model: locks/service/requirements.lock, which is
#                      requirements.lock (what `make install` and the tests run) without the dev
#                      group: the same versions and hashes, no pytest or playwright in production
#   --target executor  executors: locks/executor/uv.lock with the any-agent frameworks named in
#                      FRAMEWORKS (build arg: "" = tinyagent only, the default; a space-separated
#                      subset of openai langchain llama_index smolagents agno google; or "all"),
#                      like `make install FRAMEWORKS=...`, so a framework never changes what the
#                      API and the suggester run on.
#
# BASE_IMAGE is any Debian-based image with python3 (3.11) and its venv module. The public
# python image is the default; the deploy tests pass one built from Debian packages
# (deploy/build-images.sh), because no container registry is reachable there.
#
# Stages are in dependency order for the legacy builder (Debian's engine has no BuildKit), which
# builds every stage before the target: the service image never waits for the frameworks.
ARG BASE_IMAGE=python:3.11-slim

# -- build: the services' environment from the hashed lockfile, then flowrelay itself ---------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# build-ca.pem exists only where HTTPS to the package index goes through a proxy with its own CA
# (deploy/build-images.sh copies the host's bundle); the [m] glob lets it be absent. Only build
# stages see it: the runtime images copy environments, not the bundle.
COPY locks/service/requirements.lock build-ca.pe[m] ./
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && python3 -m venv /opt/flowrelay \
 && /opt/flowrelay/bin/pip install --quiet --require-hashes -r requirements.lock
COPY . .
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && /opt/flowrelay/bin/pip install --quiet --no-deps .

# -- service: API, suggester, scripted model -------------------------------------------------
FROM ${BASE_IMAGE} AS service
# Bytecode is compiled at build time: any-agent's import costs twice the CPU without it, and the
# service user cannot write into /opt anyway.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/flowrelay/bin:$PATH
RUN useradd --create-home --uid 10001 flowrelay
COPY --from=build /opt/flowrelay /opt/flowrelay
USER flowrelay
WORKDIR /home/flowrelay

# -- executor-build: the executors' environment from locks/executor/uv.lock ------------------
FROM ${BASE_IMAGE} AS executor-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    UV_PROJECT_ENVIRONMENT=/opt/flowrelay-executor UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
    UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# uv itself, pinned by hash (locks/build/requirements.lock), in a venv of its own.
COPY locks/build/requirements.lock /tmp/uv.lock.txt
COPY build-ca.pe[m] ./
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet --require-hashes -r /tmp/uv.lock.txt
ARG FRAMEWORKS=""
# First the frameworks and every other dependency: only the lock and flowrelay's metadata, so
# a change to flowrelay's code never reinstalls them.
COPY pyproject.toml README.md ./
COPY locks/executor locks/executor
RUN if [ -f build-ca.pem ]; then export SSL_CERT_FILE=/src/build-ca.pem; fi \
 && extras=$(if [ "$FRAMEWORKS" = all ]; then echo --all-extras; else for f in $FRAMEWORKS; do printf -- '--extra %s ' "$f"; done; fi) \
 && /opt/uv/bin/uv sync --quiet --frozen --no-editable --python python3 --project locks/executor \
        --no-install-package flowrelay $extras
COPY . .
RUN if [ -f build-ca.pem ]; then export SSL_CERT_FILE=/src/build-ca.pem; fi \
 && extras=$(if [ "$FRAMEWORKS" = all ]; then echo --all-extras; else for f in $FRAMEWORKS; do printf -- '--extra %s ' "$f"; done; fi) \
 && /opt/uv/bin/uv sync --quiet --frozen --no-editable --python python3 --project locks/executor $extras

# -- executor: flowrelay-executor from its own environment -----------------------------------
FROM ${BASE_IMAGE} AS executor
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/flowrelay-executor/bin:$PATH
RUN useradd --create-home --uid 10001 flowrelay
COPY --from=executor-build /opt/flowrelay-executor /opt/flowrelay-executor
USER flowrelay
WORKDIR /home/flowrelay
CMD ["flowrelay-executor"]
