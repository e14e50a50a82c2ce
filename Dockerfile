# One image for every flowrelay service; compose picks the command.
#
# BASE_IMAGE is any Debian-based image with python3 (3.11) and its venv module. The public
# python image is the default; the deploy tests pass one built from Debian packages
# (deploy/build-images.sh), because no container registry is reachable there.
ARG BASE_IMAGE=python:3.11-slim

# -- build: a virtual environment from the hashed lockfile, then flowrelay itself -------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# build-ca.pem exists only where HTTPS to the package index goes through a proxy with its own CA
# (deploy/build-images.sh copies the host's bundle); the [m] glob lets it be absent. Only this
# stage sees it: the final image copies the environment, not the bundle.
COPY requirements.lock build-ca.pe[m] ./
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && python3 -m venv /opt/flowrelay \
 && /opt/flowrelay/bin/pip install --quiet --require-hashes -r requirements.lock
# Extra any-agent frameworks would be one more layer here (a FRAMEWORKS build arg), before the
# source is copied, so changing flowrelay's code never reinstalls them.
COPY . .
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && /opt/flowrelay/bin/pip install --quiet --no-deps .

# -- runtime: the environment and an unprivileged user ---------------------------------------
FROM ${BASE_IMAGE}
# Bytecode is compiled at build time: any-agent's import costs twice the CPU without it, and the
# service user cannot write into /opt anyway.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/flowrelay/bin:$PATH
RUN useradd --create-home --uid 10001 flowrelay
COPY --from=build /opt/flowrelay /opt/flowrelay
USER flowrelay
WORKDIR /home/flowrelay
