"""``GET /runs/{run_id}/events``: a run's trace events as Server-Sent Events.

Each event goes out as ``id: <seq>``, ``event: <type>``, ``data: <TraceEvent JSON>``. The
stream replays from the start (or after ``Last-Event-ID`` / ``?after=``), then follows live
events, and ends:

* right after ``run.completed`` or ``run.cancelled``;
* after ``run.failed``, once the suggester's ``suggestion`` event has been sent, or when
  ``sse_suggestion_grace_s`` has passed since the failure without one (the suggester is a
  separate service; nothing ever waits on it for longer);
* when the record says the run has ended and every stored event has been sent (a
  terminal event that was never written, or expired events): checked on connect and then
  whenever the stream has been idle for :data:`IDLE_RECHECK_S`.

Keep-alive comments and the response itself are :mod:`flowrelay_api.eventstream`'s (a lean
writer: sse-starlette cost more CPU than the run's events). When the client goes away the
generator is closed, which unsubscribes from NATS.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from enum import Enum

from flowrelay_api.context import ApiContext
from flowrelay_api.eventstream import EventStreamResponse, frame
from flowrelay_api.runs import TERMINAL_EVENT_WAIT_S
from flowrelay_bus.events import follow, last_event
from flowrelay_contracts import EventType, RunRecord, TraceEvent
from flowrelay_contracts.messages import utcnow

log = logging.getLogger(__name__)

#: Idle seconds after which a live stream re-reads the record, to end streams of runs that
#: ended without a terminal event reaching the stream.
IDLE_RECHECK_S = 5.0

#: Least time given to a replayed failure's suggestion to arrive (it is normally already
#: stored and delivered at once; this only covers the delivery itself).
MIN_SUGGESTION_WAIT_S = 0.2


def event_stream(ctx: ApiContext, record: RunRecord, after_seq: int) -> EventStreamResponse:
    """The SSE response for ``record``'s run, starting after ``after_seq``."""
    return EventStreamResponse(
        _counted(ctx, _events(ctx, record, after_seq)),
        ping_s=ctx.settings.sse_ping_s,
    )


async def _counted(
    ctx: ApiContext, events: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    ctx.metrics.sse_streams.inc()
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event
    finally:
        ctx.metrics.sse_streams.dec()


async def _events(
    ctx: ApiContext, record: RunRecord, after_seq: int
) -> AsyncIterator[bytes]:
    run_id, tenant = record.run_id, record.tenant
    sent = after_seq
    failure: TraceEvent | None = None
    stop_at: int | None = None  # last event of a run that ended without announcing it
    if record.terminal:  # maybe nothing is left to send (a client resuming after the end)
        last = await last_event(ctx.js, tenant, run_id)
        step = _next_step(record, last, sent)
        if step == _Step.CLOSE:
            return
        if step == _Step.AWAIT_SUGGESTION:
            failure = last
        elif last is not None and not _announced(last) and not _recent(record.finished_at):
            stop_at = last.seq
    if failure is None:
        async with contextlib.aclosing(
            follow(
                ctx.nc,
                tenant,
                run_id,
                after_seq=sent,
                idle_timeout_s=IDLE_RECHECK_S,
                until_terminal=False,
            )
        ) as live:
            async for event in live:
                if event is None:
                    last = await last_event(ctx.js, tenant, run_id)
                    step = _next_step(await ctx.runs.get(tenant, run_id), last, sent)
                    if step == _Step.CLOSE:
                        return
                    if step == _Step.AWAIT_SUGGESTION:
                        failure = last
                        break
                    continue
                yield _to_sse(event)
                sent = event.seq
                if event.type == EventType.RUN_FAILED:
                    failure = event
                    break
                if event.type.terminal or (stop_at is not None and sent >= stop_at):
                    return
    if failure is not None:
        async for event in _suggestion_after(ctx, tenant, failure):
            yield event


async def _suggestion_after(
    ctx: ApiContext, tenant: str, failure: TraceEvent
) -> AsyncIterator[bytes]:
    """Events after a failure until a ``suggestion`` one, within the grace period."""
    grace = ctx.settings.sse_suggestion_grace_s
    waited = (utcnow() - failure.at).total_seconds()
    remaining = min(grace, max(grace - waited, MIN_SUGGESTION_WAIT_S))
    if grace <= 0:
        return
    started = time.monotonic()
    async with contextlib.aclosing(
        follow(
            ctx.nc,
            tenant,
            failure.run_id,
            after_seq=failure.seq,
            idle_timeout_s=remaining,
            until_terminal=False,
        )
    ) as tail:
        async for event in tail:
            if event is None:
                return
            yield _to_sse(event)
            if event.type == EventType.SUGGESTION or time.monotonic() - started >= remaining:
                return


class _Step(Enum):
    FOLLOW = "follow"
    CLOSE = "close"
    AWAIT_SUGGESTION = "await_suggestion"


def _next_step(record: RunRecord | None, last: TraceEvent | None, sent: int) -> _Step:
    """What a stream that has sent events up to ``sent`` does next, given the record and the
    last stored event."""
    if record is not None and not record.terminal:
        return _Step.FOLLOW
    if last is not None and last.seq > sent:
        return _Step.FOLLOW  # more is stored than was sent: it is on its way
    if not _announced(last) and record is not None and _recent(record.finished_at):
        return _Step.FOLLOW  # the executor stores the record first; its terminal event follows
    if last is not None and last.type == EventType.RUN_FAILED:
        return _Step.AWAIT_SUGGESTION
    return _Step.CLOSE


def _announced(last: TraceEvent | None) -> bool:
    """Whether the stored events already tell that the run ended."""
    return last is not None and (last.type.terminal or last.type == EventType.SUGGESTION)


def _recent(moment: datetime | None) -> bool:
    return moment is not None and (utcnow() - moment).total_seconds() < TERMINAL_EVENT_WAIT_S


def _to_sse(event: TraceEvent) -> bytes:
    return frame(data=event.__pydantic_serializer__.to_json(event), id=event.seq, event=event.type.value)
