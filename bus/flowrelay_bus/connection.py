"""Connecting a service to NATS the same way everywhere."""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker

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
        # Per-message "Received/Processed" lines cost time on the hot path; keep them for DEBUG.
        log_level=logging.DEBUG,
        **options,
    )
