"""Writing and reading a run's trace events on ``flowrelay.events.<run_id>``.

The writer numbers events 1, 2, 3... per run without gaps. A run taken over after a crash
continues the sequence from the last event stored, and every publish carries a message id
(``<run_id>:<seq>``) so a retried publish is dropped by JetStream instead of duplicated.

The reader replays a run from the start with an ordered consumer, so a subscriber that
arrives late or reconnects misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from flowrelay_contracts import EventType, TraceEvent, subjects

#: How long a publisher waits for JetStream to acknowledge stored events.
PUBLISH_ACK_TIMEOUT_S = 10.0


class RunEventLog:
    """Appends trace events for one run, in order, with gapless sequence numbers."""

    def __init__(self, js: JetStreamContext, run_id: str, *, last_seq: int = 0) -> None:
        self._js = js
        self.run_id = run_id
        self.last_seq = last_seq
        self._subject = subjects.run_events(run_id)
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Future[Any]] = []

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
        """Publish the next event and wait for JetStream to store it.

        ``at`` defaults to now (pass it when the step happened elsewhere). ``msg_id``
        replaces the default ``<run_id>:<seq>`` de-duplication id, for events that must
        exist once per run whatever their sequence number (the terminal event).
        """
        async with self._lock:  # seq order must equal stream order
            await self.flush()
            event = self._next(type, data, at)
            ack = await self._js.publish(
                self._subject,
                event.model_dump_json().encode(),
                headers={subjects.MSG_ID_HEADER: msg_id or f"{self.run_id}:{event.seq}"},
            )
            if ack.duplicate and msg_id is not None:
                return event  # someone else already wrote it; our seq was not used
            self.last_seq = event.seq
            return event

    async def emit_nowait(
        self, type: EventType, data: dict[str, Any] | None = None, *, at: datetime | None = None
    ) -> TraceEvent:
        """Publish the next event without waiting for its store acknowledgement.

        Publishes from one connection reach the stream in order, so step events are
        pipelined: a run does not wait a round trip per step. :meth:`flush` (also done by
        :meth:`emit`) waits for every acknowledgement and raises if one failed.
        """
        async with self._lock:
            event = self._next(type, data, at)
            self._pending.append(
                await self._js.publish_async(
                    self._subject,
                    event.model_dump_json().encode(),
                    headers={subjects.MSG_ID_HEADER: f"{self.run_id}:{event.seq}"},
                )
            )
            self.last_seq = event.seq
            return event

    async def flush(self, timeout: float = PUBLISH_ACK_TIMEOUT_S) -> None:
        """Wait until JetStream stored every event published with :meth:`emit_nowait`."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)

    def _next(self, type: EventType, data: dict[str, Any] | None, at: datetime | None) -> TraceEvent:
        event = TraceEvent(run_id=self.run_id, seq=self.last_seq + 1, type=type, data=data or {})
        if at is not None:
            event.at = at
        return event


def terminal_msg_id(run_id: str) -> str:
    """De-duplication id of a run's terminal event, whoever writes it (executor or API).

    Whoever announces the end second (a cancel racing an executor, two executors after a
    redelivery) is dropped by JetStream instead of adding a second terminal event.
    """
    return f"{run_id}:terminal"


async def last_event(js: JetStreamContext, run_id: str) -> TraceEvent | None:
    """The run's latest stored event, if any."""
    try:
        raw = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.run_events(run_id))
    except NotFoundError:
        return None
    return TraceEvent.model_validate_json(raw.data)


async def last_event_seq(js: JetStreamContext, run_id: str) -> int:
    last = await last_event(js, run_id)
    return last.seq if last else 0


async def follow(
    nc: Client,
    run_id: str,
    *,
    after_seq: int = 0,
    idle_timeout_s: float | None = None,
    until_terminal: bool = True,
) -> AsyncIterator[TraceEvent | None]:
    """Yield the run's events with ``seq > after_seq``, live, in order, without gaps.

    A plain subscription on the run's subject carries live events; what was stored before
    it started (or what it missed) is read from the stream with direct gets. This costs the
    server no consumer per follower, which matters with one follower per SSE client.

    Stops after the terminal event when ``until_terminal``. With ``idle_timeout_s`` it
    yields ``None`` whenever nothing arrived for that long, so a caller can send keep-alives.
    """
    js = nc.jetstream()
    live: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        live.put_nowait(msg.data)

    sub = await nc.subscribe(subjects.run_events(run_id), cb=on_message)
    try:
        next_seq = after_seq + 1
        async for event in _stored(js, run_id, after_seq):
            next_seq = event.seq + 1
            yield event
            if until_terminal and event.type.terminal:
                return
        while True:
            try:
                data = await asyncio.wait_for(live.get(), idle_timeout_s)
            except TimeoutError:
                yield None
                continue
            event = TraceEvent.model_validate_json(data)
            if event.seq < next_seq:
                continue  # already read from the stream
            if event.seq > next_seq:  # a live message was missed: read the gap from the stream
                async for missed in _stored(js, run_id, next_seq - 1, before_seq=event.seq):
                    next_seq = missed.seq + 1
                    yield missed
            next_seq = event.seq + 1
            yield event
            if until_terminal and event.type.terminal:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _stored(
    js: JetStreamContext, run_id: str, after_seq: int, *, before_seq: int | None = None
) -> AsyncIterator[TraceEvent]:
    """Events of the run stored in the stream with ``after_seq < seq < before_seq``."""
    subject = subjects.run_events(run_id)
    stream_seq = 1
    while True:
        try:
            raw = await js.get_msg(subjects.EVENTS_STREAM, seq=stream_seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return
        event = TraceEvent.model_validate_json(raw.data)
        if before_seq is not None and event.seq >= before_seq:
            return
        if event.seq > after_seq:
            yield event
        stream_seq = raw.seq + 1
