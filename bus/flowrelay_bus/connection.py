"""Connecting a service to NATS the same way everywhere: as its own user, over TLS if set."""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker
from faststream.nats.security import NatsSecurity, NatsUserPassword

from flowrelay_bus.settings import BusSettings

#: Seconds between reconnect attempts; with unlimited attempts a restarted broker is rejoined.
RECONNECT_WAIT_S = 0.5


def make_broker(settings: BusSettings, *, name: str, **options: object) -> NatsBroker:
    """A FastStream broker that never gives up reconnecting (nats-py stops after 60 tries)."""
    return NatsBroker(
        settings.nats_servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
        security=_security(settings),
        # Per-message "Received/Processed" lines cost time on the hot path; keep them for DEBUG.
        log_level=logging.DEBUG,
        **options,
    )


def _security(settings: BusSettings) -> NatsSecurity | None:
    tls = settings.nats_tls_context()
    if settings.nats_user:
        password = settings.nats_password.get_secret_value() if settings.nats_password else ""
        return NatsUserPassword(settings.nats_user, password, ssl_context=tls)
    if tls is not None:
        return NatsSecurity(ssl_context=tls)
    return None
