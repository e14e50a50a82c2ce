"""Operations on runs that exist: look up, list, cancel, read the stored trace.

The record in ``RUNS_BUCKET`` is the truth about a run; every change here is a
compare-and-set through :class:`~flowrelay_bus.runs.RunStore`, so the API and the executor
can never both decide how a run ended.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from dataclasses import dataclass
from enum import StrEnum

from flowrelay_api.context import ApiContext
from flowrelay_api.errors import BUS_ERRORS, Conflict, InvalidRequest, RunNotFound
from flowrelay_bus.events import RunEventLog, follow, last_event_seq, terminal_msg_id
from flowrelay_contracts import (
    CancelRequest,
    ErrorCode,
    EventType,
    RunError,
    RunRecord,
    RunStatus,
    TraceEvent,
    subjects,
)
from flowrelay_contracts.ids import is_valid_run_id
from flowrelay_contracts.messages import utcnow

log = logging.getLogger(__name__)

#: Records fetched concurrently while filling a page of ``GET /runs``.
_LIST_FETCH_BATCH = 50

#: Version tag inside list cursors, so their format can change without misreading old ones.
_CURSOR_PREFIX = "v1:"

#: How long a run whose record has ended may still be missing its terminal event (the
#: executor writes the record first, then the event, a moment later).
TERMINAL_EVENT_WAIT_S = 2.0

#: Poll tick while waiting for a late terminal event (only then: it normally is there).
_TRACE_TICK_S = 0.05


async def get_run(ctx: ApiContext, run_id: str) -> RunRecord:
    """The record of ``run_id``; :class:`RunNotFound` (404) if there is none."""
    record = await ctx.runs.get(run_id) if is_valid_run_id(run_id) else None
    if record is None:
        raise RunNotFound(run_id)
    return record


# -- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    runs: list[RunRecord]
    next_cursor: str | None


async def list_runs(
    ctx: ApiContext, *, status: RunStatus | None, limit: int, cursor: str | None
) -> Page:
    """Runs newest first, ``limit`` at a time, after ``cursor``.

    Run ids are time-ordered, so "newest first" is the keys sorted backwards and a cursor
    is just the last id of the previous page (base64, so clients treat it as opaque).
    """
    before = _decode_cursor(cursor) if cursor else None
    keys = sorted(await ctx.runs.keys(), reverse=True)
    if before is not None:
        keys = [k for k in keys if k < before]
    runs: list[RunRecord] = []
    consumed = 0  # keys looked at, up to and including the last run on the page
    while consumed < len(keys) and len(runs) < limit:
        size = limit - len(runs) if status is None else _LIST_FETCH_BATCH
        batch = keys[consumed : consumed + size]
        records = await asyncio.gather(*(ctx.runs.get(key) for key in batch))
        for record in records:
            consumed += 1
            if record is None or (status is not None and record.status != status):
                continue  # expired since the key listing, or filtered out
            runs.append(record)
            if len(runs) == limit:
                break
    more = consumed < len(keys)
    return Page(runs=runs, next_cursor=_encode_cursor(runs[-1].run_id) if runs and more else None)


def _encode_cursor(run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{run_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX) or not is_valid_run_id(text[len(_CURSOR_PREFIX) :]):
        raise InvalidRequest.one(
            ("query", "cursor"),
            "is not a cursor this API issued; pass next_cursor from the previous page",
        )
    return text[len(_CURSOR_PREFIX) :]


# -- cancelling ---------------------------------------------------------------------------


class _CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # was queued: now cancelled, will never start
    REQUESTED = "requested"  # was running: its executor is asked to stop it
    ALREADY_REQUESTED = "already_requested"
    FINISHED = "finished"  # already terminal


async def cancel_run(
    ctx: ApiContext, run_id: str, reason: str = "cancelled by client"
) -> RunRecord:
    """Cancel ``run_id``: queued runs at once, running ones through their executor.

    Raises :class:`RunNotFound` (404) or :class:`Conflict` (409, with the status) when the
    run has already ended. Returns the record as stored after the change.
    """
    if not is_valid_run_id(run_id):
        raise RunNotFound(run_id)
    outcome = _CancelOutcome.FINISHED

    def mutate(record: RunRecord) -> RunRecord | None:
        nonlocal outcome
        if record.terminal:
            outcome = _CancelOutcome.FINISHED
            return None
        if record.status == RunStatus.QUEUED:
            outcome = _CancelOutcome.CANCELLED
            return record.model_copy(
                update={
                    "status": RunStatus.CANCELLED,
                    "finished_at": utcnow(),
                    "cancel_requested": True,
                    "error": RunError(
                        code=ErrorCode.CANCELLED, message=f"{reason} before it started"
                    ),
                }
            )
        if record.cancel_requested:
            outcome = _CancelOutcome.ALREADY_REQUESTED
            return None
        outcome = _CancelOutcome.REQUESTED
        return record.model_copy(update={"cancel_requested": True})

    record = await ctx.runs.update(run_id, mutate)
    if record is None:
        raise RunNotFound(run_id)
    if outcome == _CancelOutcome.FINISHED:
        raise Conflict(f"run {run_id} has already ended: it is {record.status.value}")
    if outcome == _CancelOutcome.CANCELLED:
        await _announce_cancelled(ctx, record, reason)
    else:  # running: (again) ask whichever executor holds it; they all listen on core NATS
        message = CancelRequest(run_id=run_id, reason=reason)
        await ctx.nc.publish(
            subjects.run_cancel(run_id), message.__pydantic_serializer__.to_json(message)
        )
    return record


async def _announce_cancelled(ctx: ApiContext, record: RunRecord, reason: str) -> None:
    """Append ``run.cancelled`` so event streams end. The record is already terminal, so a
    failure here loses nothing: an executor that later receives the request republishes
    the terminal event from the record, and SSE streams close on a terminal record."""
    try:
        events = await RunEventLog.resume(ctx.js, record.run_id)
        await events.emit(
            EventType.RUN_CANCELLED,
            {
                "status": RunStatus.CANCELLED.value,
                "reason": reason,
                "error": record.error.model_dump(mode="json") if record.error else None,
                "by": "api",
            },
            msg_id=terminal_msg_id(record.run_id),
        )
    except BUS_ERRORS as exc:
        log.warning(
            "run %s: cancelled, but its run.cancelled event failed (%s)",
            record.run_id,
            type(exc).__name__,
        )


# -- the trace ----------------------------------------------------------------------------


async def read_trace(ctx: ApiContext, run_id: str) -> list[TraceEvent]:
    """The events stored for a run that has ended, in order, through its terminal event.

    The executor stores the terminal record *before* it publishes the terminal event, so a
    caller that saw the record end may be a moment ahead of the event: this waits for it,
    up to :data:`TERMINAL_EVENT_WAIT_S`, then returns what there is.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + TERMINAL_EVENT_WAIT_S
    trace: list[TraceEvent] = []
    until_seq: int | None = None  # known once the terminal event is in
    async with contextlib.aclosing(
        follow(ctx.nc, run_id, idle_timeout_s=_TRACE_TICK_S, until_terminal=False)
    ) as events:
        async for event in events:
            if event is None:
                if loop.time() >= give_up_at:
                    break
                continue
            trace.append(event)
            if until_seq is None and event.type.terminal:
                until_seq = max(
                    event.seq, await last_event_seq(ctx.js, run_id)
                )  # + suggestions stored
            if until_seq is not None and event.seq >= until_seq:
                break
    return trace
