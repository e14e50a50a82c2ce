"""Writing and reading a run's trace events on ``flowrelay.events.<run_id>``.

The writer numbers events 1, 2, 3... per run without gaps. A run taken over after a crash
continues the sequence from the last event stored, and every publish carries a message id
(``<run_id>:<seq>``) so a retried publish is dropped by JetStream instead of duplicated.

The reader replays a run from the start with an ordered consumer, so a subscriber that
arrives late or reconnects misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from flowrelay_contracts import EventType, TraceEvent, subjects


class RunEventLog:
    """Appends trace events for one run, in order, with gapless sequence numbers."""

    def __init__(self, js: JetStreamContext, run_id: str, *, last_seq: int = 0) -> None:
        self._js = js
        self.run_id = run_id
        self.last_seq = last_seq
        self._subject = subjects.run_events(run_id)
        self._lock = asyncio.Lock()

    @classmethod
    async def resume(cls, js: JetStreamContext, run_id: str) -> RunEventLog:
        """A writer that continues after the last event already stored for ``run_id``."""
        return cls(js, run_id, last_seq=await last_event_seq(js, run_id))

    async def emit(
        self,
        type: EventType,
        data: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
        msg_id: str | None = None,
    ) -> TraceEvent:
        """Publish the next event; ``at`` defaults to now (pass when it happened elsewhere).

        ``msg_id`` replaces the default ``<run_id>:<seq>`` de-duplication id, for events that
        must exist once per run whatever their sequence number (the terminal event).
        """
        async with self._lock:  # seq order must equal stream order
            event = TraceEvent(run_id=self.run_id, seq=self.last_seq + 1, type=type, data=data or {})
            if at is not None:
                event.at = at
            ack = await self._js.publish(
                self._subject,
                event.model_dump_json().encode(),
                headers={subjects.MSG_ID_HEADER: msg_id or f"{self.run_id}:{event.seq}"},
            )
            if ack.duplicate and msg_id is not None:
                return event  # someone else already wrote it; our seq was not used
            self.last_seq = event.seq
            return event


def terminal_msg_id(run_id: str) -> str:
    """De-duplication id of a run's terminal event, whoever writes it (executor or API).

    Whoever announces the end second (a cancel racing an executor, two executors after a
    redelivery) is dropped by JetStream instead of adding a second terminal event.
    """
    return f"{run_id}:terminal"


async def last_event_seq(js: JetStreamContext, run_id: str) -> int:
    try:
        raw = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.run_events(run_id))
    except NotFoundError:
        return 0
    return TraceEvent.model_validate_json(raw.data).seq


async def follow(
    nc: Client,
    run_id: str,
    *,
    after_seq: int = 0,
    idle_timeout_s: float | None = None,
    until_terminal: bool = True,
) -> AsyncIterator[TraceEvent | None]:
    """Yield the run's events with ``seq > after_seq``, live, in order.

    Stops after the terminal event when ``until_terminal``. With ``idle_timeout_s`` it yields
    ``None`` whenever nothing arrived for that long, so a caller can send keep-alives.
    """
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.run_events(run_id),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        stream=subjects.EVENTS_STREAM,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout_s or 3600.0)
            except (TimeoutError, NatsTimeoutError):
                yield None
                continue
            event = TraceEvent.model_validate_json(msg.data)
            if event.seq <= after_seq:
                continue
            after_seq = event.seq
            yield event
            if until_terminal and event.type.terminal:
                return
    finally:
        await sub.unsubscribe()
