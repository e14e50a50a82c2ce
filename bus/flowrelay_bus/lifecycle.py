"""Stopping a service's NATS connection cleanly, whether or not NATS is still there.

FastStream's ``broker.stop()`` drains the connection, and nats-py's ``drain()`` raises
(``ConnectionReconnectingError``, ``UnexpectedEOF``...) when the server went away first: a
service stopped after NATS, or during an outage, would end with "Application shutdown
failed" and a traceback although there is nothing left to flush. This closes such a
connection without draining and says so in one line.
"""

from __future__ import annotations

import contextlib
import logging

from faststream.nats import NatsBroker

log = logging.getLogger(__name__)


async def stop_broker(broker: NatsBroker) -> None:
    """Drain and close ``broker``'s connection; just close it if NATS is unreachable.

    Safe to call from a FastStream ``on_shutdown`` hook (the app's own stop follows).
    """
    try:
        connection = broker.connection
    except Exception:  # noqa: BLE001 - never connected: nothing to close but the broker
        connection = None
    try:
        await broker.stop()
    except Exception as exc:  # noqa: BLE001 - any drain failure means: nothing left to flush
        log.info("NATS was not reachable at shutdown (%s); closed without draining", type(exc).__name__)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
        # FastStream's application stops its broker once more after the shutdown hooks;
        # without a connection that stop has nothing to drain (and so cannot fail).
        broker._connection = None
