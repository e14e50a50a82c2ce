"""Writing and reading a run's trace events on ``flowrelay.events.<tenant>.<run_id>``.

The writer numbers events 1, 2, 3... per run without gaps. A run taken over after a crash
continues the sequence from the last event stored, and every publish carries a message id
(``<run_id>:<seq>``) so a retried publish is dropped by JetStream instead of duplicated.

The reader replays a run from the start and then follows it live, so a subscriber that
arrives late or reconnects misses nothing. History is read in one of two ways:

* ``direct`` (the services): direct gets by stream sequence, no consumer at all, which
  matters with one follower per SSE client;
* ``consumer`` (tenant users of NATS): a short-lived consumer whose filter is named in its
  create subject, the only way NATS permissions can confine JetStream reads to a tenant.

What is published while the follower's connection reconnects never reaches its
subscription, and a run may end in that moment: a follower that heard nothing for
``RECHECK_S`` asks the stream for the run's last event and reads what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.nuid import NUID

from flowrelay_contracts import EventType, TraceEvent, subjects

#: How long a publisher waits for JetStream to acknowledge stored events.
PUBLISH_ACK_TIMEOUT_S = 10.0

#: A replay consumer left behind (its reader vanished) is removed by the server after this.
REPLAY_INACTIVE_S = 10.0

#: How long a follower holds events that arrived after a missing seq, waiting for it (an
#: event re-sent after a broker crash arrives late, out of stream order).
GAP_WAIT_S = 5.0

#: Longest wait for the next replayed message before the replay is abandoned.
REPLAY_MESSAGE_TIMEOUT_S = 10.0

#: A follower that heard nothing for this long asks the stream whether it missed events.
RECHECK_S = 2.0

#: Most stored events read by one direct get request (the server answers in one go).
DIRECT_BATCH = 256

History = Literal["direct", "consumer"]


class RunEventLog:
    """Appends trace events for one run, in order, with gapless sequence numbers."""

    def __init__(self, js: JetStreamContext, tenant: str, run_id: str, *, last_seq: int = 0) -> None:
        self._js = js
        self.tenant = tenant
        self.run_id = run_id
        self.last_seq = last_seq
        self._subject = subjects.run_events(tenant, run_id)
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Future[Any]] = []
        #: Pipelined events whose store JetStream has not confirmed yet: seq -> (payload, msg id).
        self._unconfirmed: dict[int, tuple[bytes, str]] = {}

    @classmethod
    async def resume(cls, js: JetStreamContext, tenant: str, run_id: str) -> RunEventLog:
        """A writer that continues after the last event already stored for ``run_id``."""
        return cls(js, tenant, run_id, last_seq=await last_event_seq(js, tenant, run_id))

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
        async with self._lock:  # the terminal event comes after every step in the stream
            await self.flush()
            event = self._next(type, data, at)
            ack = await self._js.publish(
                self._subject,
                event.__pydantic_serializer__.to_json(event),
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
            payload, msg_id = event.__pydantic_serializer__.to_json(event), f"{self.run_id}:{event.seq}"
            self._unconfirmed[event.seq] = (payload, msg_id)
            future = await self._js.publish_async(self._subject, payload, headers={subjects.MSG_ID_HEADER: msg_id})
            future.add_done_callback(lambda f, seq=event.seq: self._confirmed(seq, f))
            self._pending.append(future)
            self.last_seq = event.seq
            return event

    def _confirmed(self, seq: int, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._unconfirmed.pop(seq, None)

    async def flush(self, timeout: float = PUBLISH_ACK_TIMEOUT_S) -> None:
        """Wait until JetStream stored every event published with :meth:`emit_nowait`."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)

    async def republish_unconfirmed(self) -> int:
        """Publish again, in order and awaited, every event whose store was never confirmed
        (after a reconnect: it may have been lost in flight, while later ones, buffered during
        the outage, were stored). Each keeps its seq and message id, so one that was stored
        after all is dropped by the duplicate window: the run's seq stays gapless, though a
        re-sent event may sit after later ones in the stream (readers order by seq)."""
        async with self._lock:
            self._pending = []  # acks owed by the broken connection will not come
            again = sorted(self._unconfirmed.items())
            for seq, (payload, msg_id) in again:
                await self._js.publish(self._subject, payload, headers={subjects.MSG_ID_HEADER: msg_id})
                self._unconfirmed.pop(seq, None)
            return len(again)

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


async def last_event(js: JetStreamContext, tenant: str, run_id: str) -> TraceEvent | None:
    """The run's latest stored event, if any."""
    try:
        raw = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.run_events(tenant, run_id))
    except NotFoundError:
        return None
    return TraceEvent.model_validate_json(raw.data)


async def last_event_seq(js: JetStreamContext, tenant: str, run_id: str) -> int:
    last = await last_event(js, tenant, run_id)
    return last.seq if last else 0


async def follow(
    nc: Client,
    tenant: str,
    run_id: str,
    *,
    after_seq: int = 0,
    idle_timeout_s: float | None = None,
    until_terminal: bool = True,
    history: History = "direct",
) -> AsyncIterator[TraceEvent | None]:
    """Yield the run's events with ``seq > after_seq``, live, in order, without gaps.

    A plain subscription on the run's subject carries live events; what was stored before
    it started (or what it missed) is read from the stream (see the module docstring for
    the two ``history`` readers).

    Stops after the terminal event when ``until_terminal``. With ``idle_timeout_s`` it
    yields ``None`` whenever nothing arrived for that long, so a caller can send keep-alives.
    """
    live: asyncio.Queue[bytes] = asyncio.Queue()
    stored = _stored_direct if history == "direct" else _stored_by_consumer

    async def on_message(msg: Any) -> None:
        live.put_nowait(msg.data)

    sub = await nc.subscribe(subjects.run_events(tenant, run_id), cb=on_message)
    try:
        next_seq = after_seq + 1
        async for event in stored(nc, tenant, run_id, after_seq):
            if event.seq < next_seq:
                continue
            next_seq = event.seq + 1
            yield event
            if until_terminal and event.type.terminal:
                return
        held: dict[int, TraceEvent] = {}  # arrived ahead of a missing seq
        hole_since: float | None = None
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            wait = RECHECK_S
            if idle_timeout_s is not None:
                wait = min(wait, max(0.0, idle_since + idle_timeout_s - loop.time()))
            if held:
                wait = min(wait, max(0.0, (hole_since or 0) + GAP_WAIT_S - loop.time()))
            try:
                data = await asyncio.wait_for(live.get(), wait)
            except TimeoutError:
                data = None
            if data is not None:
                idle_since = loop.time()
                event = TraceEvent.model_validate_json(data)
                if event.seq >= next_seq:
                    held[event.seq] = event
            elif not held:
                # Quiet: perhaps events (the terminal one too) went by while reconnecting.
                if await _last_seq(nc, tenant, run_id, leader=history == "direct") >= next_seq:
                    async for missed in stored(nc, tenant, run_id, next_seq - 1, leader=True):
                        held.setdefault(missed.seq, missed)
                if not held:
                    if idle_timeout_s is not None and loop.time() - idle_since >= idle_timeout_s:
                        idle_since = loop.time()
                        yield None
                    continue
                idle_since = loop.time()
            if held and next_seq not in held:  # a hole: the stream may have it (missed live)
                async for missed in stored(nc, tenant, run_id, next_seq - 1, before_seq=min(held), leader=True):
                    held.setdefault(missed.seq, missed)
            if held and next_seq not in held:
                hole_since = hole_since if hole_since is not None else loop.time()
                if loop.time() - hole_since < GAP_WAIT_S:
                    continue  # re-sent after a broker crash: it arrives out of order
                next_seq = min(held)  # give up on the hole rather than stall the follower
            hole_since = None
            while next_seq in held:
                event = held.pop(next_seq)
                next_seq += 1
                yield event
                if until_terminal and event.type.terminal:
                    return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _last_seq(nc: Client, tenant: str, run_id: str, *, leader: bool) -> int:
    """The ``seq`` of the run's last stored event (0 when none or when NATS cannot say now).

    ``leader``: ask the stream's leader, which has everything acknowledged so far; a direct
    get (all a tenant user may do) can be answered by a replica that is catching up, which
    only delays the answer to a later recheck.
    """
    try:
        raw = await nc.jetstream().get_last_msg(
            subjects.EVENTS_STREAM, subjects.run_events(tenant, run_id), direct=not leader
        )
    except NotFoundError:
        return 0
    except (nats.errors.Error, TimeoutError):
        return 0  # disconnected or no leader yet: the next recheck asks again
    return TraceEvent.model_validate_json(raw.data).seq


async def _stored_direct(
    nc: Client, tenant: str, run_id: str, after_seq: int, *, before_seq: int | None = None, leader: bool = False
) -> AsyncIterator[TraceEvent]:
    """Events of the run stored in the stream with ``after_seq < seq < before_seq``.

    Batched direct gets by default (any replica answers; up to :data:`DIRECT_BATCH` events
    per request, then an end-of-batch marker saying how many are left: one round trip for a
    whole run's history instead of one per event plus one to learn there are no more).
    ``leader`` asks the stream's leader, which has every event acknowledged so far: a gap
    must be read there, since a replica that is catching up may lack exactly the missed
    events.
    """
    subject = subjects.run_events(tenant, run_id)
    stream_seq = 1
    found: list[TraceEvent] = []
    while True:
        if leader:
            stored, pending, last_seq = await _leader_get(nc, subject, stream_seq)
        else:
            stored, pending, last_seq = await _direct_batch(nc, subjects.EVENTS_STREAM, subject, stream_seq)
        for data in stored:
            event = TraceEvent.model_validate_json(data)
            if event.seq > after_seq and (before_seq is None or event.seq < before_seq):
                found.append(event)
        if not pending:
            break
        stream_seq = last_seq + 1
    for event in sorted(found, key=lambda e: e.seq):  # stream order may differ (republished)
        yield event


async def _leader_get(nc: Client, subject: str, seq: int) -> tuple[list[bytes], int, int]:
    """The next message on ``subject`` from ``seq`` on, read from the stream's leader (the
    JetStream API: no batches there): (payloads, 1 if there may be more, its sequence)."""
    try:
        raw = await nc.jetstream().get_msg(subjects.EVENTS_STREAM, seq=seq, subject=subject, next=True)
    except NotFoundError:
        return [], 0, 0
    return [raw.data], 1, raw.seq


async def _direct_batch(nc: Client, stream: str, subject: str, seq: int) -> tuple[list[bytes], int, int]:
    """Messages on ``subject`` from stream sequence ``seq`` on, in one batched direct get:
    (payloads, how many more there are, stream sequence of the last one returned)."""
    js = nc.jetstream()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request = json.dumps({"seq": seq, "next_by_subj": subject, "batch": DIRECT_BATCH}).encode()
        await nc.publish(f"{getattr(js, '_prefix', '$JS.API')}.DIRECT.GET.{stream}", request, reply=inbox)
        payloads: list[bytes] = []
        while True:
            msg = await sub.next_msg(timeout=REPLAY_MESSAGE_TIMEOUT_S)
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "404":  # nothing (more) stored on the subject
                return payloads, 0, 0
            if status == "204":  # end of this batch
                return payloads, int(headers.get("Nats-Num-Pending", 0)), int(headers.get("Nats-Last-Sequence", 0))
            if status:
                raise NatsError(f"direct get on {stream} answered {status} {headers.get('Description', '')}".strip())
            payloads.append(msg.data)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _stored_by_consumer(
    nc: Client, tenant: str, run_id: str, after_seq: int, *, before_seq: int | None = None, leader: bool = False
) -> AsyncIterator[TraceEvent]:
    """The same, through a consumer created as ``CONSUMER.CREATE.<stream>.<name>.<subject>``.

    The server refuses a create whose body filter differs from the subject's, so a user
    permitted ``$JS.API.CONSUMER.CREATE.FLOWRELAY_EVENTS.*.flowrelay.events.<tenant>.>``
    can replay its own runs and nothing else. It holds exactly the messages stored when it
    was created; the server removes it once it goes idle. ``leader`` is moot: a consumer is
    served by the stream's leader anyway.

    How many: ``num_pending`` plus ``delivered`` of the create answer. The server may start
    delivering before it answers, and what it delivered is no longer pending: counting
    ``num_pending`` alone stopped short of a finished run's terminal event, and the follower
    then waited forever for a live event that would never come.
    """
    js = nc.jetstream()
    inbox = nc.new_inbox()
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        arrived.put_nowait(msg.data)

    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        info = await js.add_consumer(
            subjects.EVENTS_STREAM,
            ConsumerConfig(
                name=f"replay_{NUID().next().decode()}",
                filter_subject=subjects.run_events(tenant, run_id),
                deliver_subject=inbox,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=REPLAY_INACTIVE_S,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        found: list[TraceEvent] = []
        stored = (info.num_pending or 0) + (info.delivered.consumer_seq if info.delivered else 0)
        for _ in range(stored):
            event = TraceEvent.model_validate_json(await asyncio.wait_for(arrived.get(), REPLAY_MESSAGE_TIMEOUT_S))
            if event.seq > after_seq and (before_seq is None or event.seq < before_seq):
                found.append(event)
        for event in sorted(found, key=lambda e: e.seq):  # stream order may differ (republished)
            yield event
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def replay(nc: Client, stream: str, subject: str) -> list[tuple[int, bytes]]:
    """Every message of ``subject`` stored in ``stream`` now, as ``(stream seq, data)`` in
    stream order, through a consumer whose create subject names the filter (what a tenant's
    NATS user may create: see :func:`_stored_by_consumer`; used for a thread's turns too).

    How many: ``num_pending`` plus ``delivered`` of the create answer (the server may start
    delivering before it answers).
    """
    js = nc.jetstream()
    inbox = nc.new_inbox()
    arrived: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        arrived.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        info = await js.add_consumer(stream, ConsumerConfig(
            name=f"replay_{NUID().next().decode()}", filter_subject=subject, deliver_subject=inbox,
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=REPLAY_INACTIVE_S,
            mem_storage=True, num_replicas=1,
        ))
        count = (info.num_pending or 0) + (info.delivered.consumer_seq if info.delivered else 0)
        found = []
        for _ in range(count):
            msg = await asyncio.wait_for(arrived.get(), REPLAY_MESSAGE_TIMEOUT_S)
            found.append((msg.metadata.sequence.stream, msg.data))
        return found
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
