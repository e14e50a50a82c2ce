"""Waiting for one run to end (``POST /execute``) without creating JetStream consumers.

A KV watch or an ordered consumer per request costs the server a consumer creation and
deletion: about 2 ms each here, and under concurrency those requests queue up in the
server's JetStream API. Instead a :class:`RunWaiter` subscribes on core NATS, which costs
one protocol line, to

* the run record's KV subject, to learn *when* the record may have ended, and
* the run's event subject, to collect its trace as it is published.

Core subscribers see every publish on a subject, including writes JetStream then refuses:
a compare-and-set that lost, a create of an existing key, an event publish dropped as a
duplicate. So a record notification saying "ended" is only a hint to re-read the record
with ``kv.get`` (the one read on the critical path), and the collected events are used
only if they form a clean ``1..N`` sequence ending with the terminal event; otherwise the
trace is replayed from the stream.

The subscriptions are made before the run's request is published (``submit`` calls
:meth:`RunWaiter.start` first), and core NATS keeps one connection's messages in order, so
nothing published for the run afterwards is missed.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KV_OP
from pydantic import ValidationError

from flowrelay_api.context import ApiContext
from flowrelay_api.runs import TERMINAL_EVENT_WAIT_S, read_trace
from flowrelay_contracts import RunRecord, RunStatus, TraceEvent, subjects

#: While waiting, re-read the record at least this often: a notification lost during a
#: reconnect must not leave a finished run unnoticed.
RECHECK_S = 1.0

#: First re-read delay when a notification said "ended" but the store did not yet.
STALE_RECHECK_FIRST_S = 0.002


class RunWaiter:
    """Follows one run's record and events over core NATS while a caller waits for the end."""

    def __init__(self, ctx: ApiContext, tenant: str) -> None:
        self._ctx = ctx
        self.tenant = tenant
        self.run_id: str | None = None
        self._subscriptions: list[Subscription] = []
        self._record_changed = asyncio.Event()
        self._hinted_terminal = False
        self._terminal_arrived = asyncio.Event()
        self._events: dict[int, tuple[bytes, TraceEvent]] = {}
        self._inconsistent = False  # two different events with one seq: trust the stream only

    async def start(self, run_id: str) -> None:
        """Listen for ``run_id``; call before its request is published. Idempotent."""
        if self.run_id is not None:
            return
        self.run_id = run_id
        nc = self._ctx.nc
        self._subscriptions = [
            # ``$KV.<bucket>.<key>`` carries every write of the record (NATS KV convention)
            await nc.subscribe(subjects.run_record_subject(self.tenant, run_id), cb=self._on_record),
            await nc.subscribe(subjects.run_events(self.tenant, run_id), cb=self._on_event),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def finished(self, timeout_s: float, grace_s: float) -> RunRecord | None:
        """The record once the run has ended; None if it has not within ``timeout_s``.

        A failed run gets up to ``grace_s`` more for the suggester to add its guidance.
        """
        assert self.run_id is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        grace_ends: float | None = None
        stale_wait = STALE_RECHECK_FIRST_S
        while True:
            self._record_changed.clear()  # before reading: a change during the read re-wakes us
            hinted_terminal, self._hinted_terminal = self._hinted_terminal, False
            record = await self._ctx.runs.get(self.tenant, self.run_id)
            now = loop.time()
            stale = hinted_terminal and (record is None or not record.terminal)
            if stale and stale_wait < RECHECK_S and now < deadline:
                # The notification can overtake the store (or be a refused write): read
                # again soon, backing off, instead of sleeping a whole recheck period.
                self._hinted_terminal = True
                await asyncio.sleep(stale_wait)
                stale_wait *= 2
                continue
            if record is not None and record.terminal:
                if record.status != RunStatus.FAILED or record.suggestions:
                    return record
                grace_ends = grace_ends or min(deadline, now + grace_s)
                if now >= grace_ends:
                    return record
            elif now >= deadline:
                return None
            wake_at = min(deadline, grace_ends or deadline, now + RECHECK_S)
            try:
                await asyncio.wait_for(self._record_changed.wait(), max(0.0, wake_at - now))
            except TimeoutError:
                pass

    async def trace(self) -> list[TraceEvent]:
        """The run's events, from what was collected when that is complete, else the stream."""
        assert self.run_id is not None, "start() first"
        if 1 in self._events:  # listening since the start: only the terminal event may lag
            # (the executor stores the ended record first and publishes the terminal event after)
            try:
                await asyncio.wait_for(self._terminal_arrived.wait(), TERMINAL_EVENT_WAIT_S)
            except TimeoutError:
                pass
        collected = self._clean_sequence()
        if collected is not None:
            return collected
        return await read_trace(self._ctx, self.tenant, self.run_id)

    async def _on_record(self, msg: Msg) -> None:
        # Only a write that may end the wait is worth a read; a deletion or an unreadable
        # value is checked too. Non-terminal writes (queued, running) are skipped: even if
        # JetStream refused one, the write it lost to has its own notification.
        if not (msg.headers and KV_OP in msg.headers):
            try:
                if not RunRecord.model_validate_json(msg.data).terminal:
                    return
                self._hinted_terminal = True
            except ValidationError:
                pass
        self._record_changed.set()

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = TraceEvent.model_validate_json(msg.data)
        except ValidationError:
            self._inconsistent = True
            return
        if self._events.setdefault(event.seq, (msg.data, event))[0] != msg.data:
            self._inconsistent = True
        if event.type.terminal:
            self._terminal_arrived.set()

    def _clean_sequence(self) -> list[TraceEvent] | None:
        seqs = sorted(self._events)
        if self._inconsistent or seqs != list(range(1, len(seqs) + 1)):
            return None
        events = [self._events[seq][1] for seq in seqs]
        return events if any(e.type.terminal for e in events) else None
