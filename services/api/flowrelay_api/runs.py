"""Operations on runs that exist: look up, list, cancel, read the stored trace.

The record in ``RUNS_BUCKET`` is the truth about a run; every change here is a
compare-and-set through :class:`~flowrelay_bus.runs.RunStore`, so the API and the executor
can never both decide how a run ended.

Every operation takes the caller: a run of another tenant is :class:`RunNotFound`, exactly
like a run that does not exist, so a key learns nothing about other tenants' runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from dataclasses import dataclass

from flowrelay_api.auth import Principal
from flowrelay_api.context import ApiContext
from flowrelay_api.errors import Conflict, Forbidden, Gone, InvalidRequest, RunNotFound
from flowrelay_bus import hitl
from flowrelay_bus.cancel import CancelOutcome, broadcast_cancel, record_cancel
from flowrelay_bus.events import follow, last_event_seq
from flowrelay_bus.outputs import OutputMissing
from flowrelay_contracts import HumanInput, RunRecord, RunStatus, TraceEvent
from flowrelay_contracts.ids import is_valid_run_id
from flowrelay_contracts.tenants import is_valid_tenant

log = logging.getLogger(__name__)

#: Index entries examined by one ``GET /runs`` call with a status filter before it answers
#: with what it found and a cursor to go on (a rare status cannot make one call scan all).
MAX_LIST_SCAN = 1_000

#: Records fetched concurrently while filling a page of ``GET /runs``.
_LIST_FETCH_BATCH = 50

#: Version tag inside list cursors, so their format can change without misreading old ones.
_CURSOR_PREFIX = "v2:"

#: How long a run whose record has ended may still be missing its terminal event (the
#: executor writes the record first, then the event, a moment later).
TERMINAL_EVENT_WAIT_S = 2.0

#: Poll tick while waiting for a late terminal event (only then: it normally is there).
_TRACE_TICK_S = 0.05


async def get_run(ctx: ApiContext, caller: Principal, run_id: str, *, recent_ok: bool = False) -> RunRecord:
    """The record of ``run_id`` if the caller may see it; :class:`RunNotFound` (404) if not.

    ``recent_ok``: a record this process created or read may do, though it may be stale
    (the SSE stream only needs to know the run and follows its events from there; a client
    following the run it just submitted then costs no read).
    """
    record = None
    if is_valid_run_id(run_id):
        if recent_ok and not caller.is_admin:
            record = ctx.runs.known(caller.tenant, run_id)
        if record is None:
            record = await (ctx.runs.find(run_id) if caller.is_admin else ctx.runs.get(caller.tenant, run_id))
    if record is None or not caller.sees_tenant(record.tenant):
        raise RunNotFound(run_id)
    return record


# -- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    runs: list[RunRecord]
    next_cursor: str | None


async def list_runs(
    ctx: ApiContext,
    caller: Principal,
    *,
    tenant: str | None,
    status: RunStatus | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """The caller's runs (an admin's: every tenant's, or ``tenant``'s), newest first.

    Pages come from the run index (creation order, read with direct gets: no consumer); the
    cursor is the index position of the last run looked at.
    """
    scope = _list_scope(caller, tenant)
    before = _decode_cursor(cursor) if cursor else None
    runs: list[RunRecord] = []
    scanned = 0
    while len(runs) < limit and scanned < MAX_LIST_SCAN:
        want = limit - len(runs) if status is None else _LIST_FETCH_BATCH
        batch = await ctx.index.newest(scope, before_seq=before, limit=min(want, MAX_LIST_SCAN - scanned))
        if not batch:
            return Page(runs=runs, next_cursor=None)
        records = await asyncio.gather(*(ctx.runs.get(i.entry.tenant, i.entry.run_id) for i in batch))
        for item, record in zip(batch, records, strict=True):
            scanned += 1
            before = item.seq
            if record is None or (status is not None and record.status != status):
                continue  # expired since it was indexed, or filtered out
            runs.append(record)
            if len(runs) == limit:
                break
    more = await ctx.index.newest(scope, before_seq=before, limit=1) if before is not None else []
    return Page(runs=runs, next_cursor=_encode_cursor(before) if more else None)


def _list_scope(caller: Principal, tenant: str | None) -> str | None:
    """The tenant to list (None: every tenant, admins only)."""
    if tenant is None:
        return None if caller.is_admin else caller.tenant
    if not is_valid_tenant(tenant):
        raise InvalidRequest.one(("query", "tenant"), "is not a tenant id")
    if not caller.sees_tenant(tenant):
        raise Forbidden("listing another tenant's runs needs the 'admin' scope; omit 'tenant' to list your own")
    return tenant


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text[len(_CURSOR_PREFIX) :]
    if not text.startswith(_CURSOR_PREFIX) or not number.isdigit() or len(number) > 20:
        raise InvalidRequest.one(
            ("query", "cursor"),
            "is not a cursor this API issued; pass next_cursor from the previous page",
        )
    return int(number)


# -- cancelling ---------------------------------------------------------------------------


async def cancel_run(
    ctx: ApiContext, caller: Principal, run_id: str, reason: str = "cancelled by client"
) -> RunRecord:
    """Cancel ``run_id``: queued runs at once, running ones through their executor.

    Raises :class:`RunNotFound` (404) or :class:`Conflict` (409, with the status) when the
    run has already ended. Returns the record as stored after the change.
    """
    found = await get_run(ctx, caller, run_id)
    record, outcome = await record_cancel(ctx.runs, ctx.js, found.tenant, run_id, reason, by="api")
    if record is None:
        raise RunNotFound(run_id)
    if outcome == CancelOutcome.FINISHED:
        raise Conflict(f"run {run_id} has already ended: it is {record.status.value}")
    if outcome in (CancelOutcome.REQUESTED, CancelOutcome.ALREADY_REQUESTED):
        # (again) ask whichever executor holds it; they all listen on core NATS
        await broadcast_cancel(ctx.nc, record.tenant, run_id, reason, recorded=True)
    return record


# -- answering ----------------------------------------------------------------------------


async def answer_run(ctx: ApiContext, caller: Principal, run_id: str, answer: str, wait_id: str | None) -> RunRecord:
    """Answer the ``ask_human`` question ``run_id`` waits on (see ``flowrelay_bus.hitl``).

    404 as for every run operation; 409 (``code`` ``not_waiting``, ``stale_wait`` or
    ``wait_expired``) when the run does not wait on this question; 422 naming ``answer``.
    """
    found = await get_run(ctx, caller, run_id)
    try:
        return await hitl.answer_run(ctx.runs, ctx.js, found.tenant, run_id, HumanInput(answer=answer, wait_id=wait_id),
                                     max_answer_bytes=ctx.settings.max_answer_bytes)
    except hitl.InputRefused as refused:
        if refused.code == "not_found":
            raise RunNotFound(run_id) from None
        if refused.code == "invalid_answer":
            raise InvalidRequest.one(("body", refused.field or "answer"), refused.message) from None
        conflict = Conflict(refused.message)
        conflict.code = refused.code
        raise conflict from None


# -- the output ---------------------------------------------------------------------------


async def read_output(ctx: ApiContext, record: RunRecord) -> bytes:
    """The run's output as JSON bytes, from the record or the object store it links."""
    if not record.terminal:
        raise Conflict(f"run {record.run_id} has not ended (it is {record.status.value}); its output comes at the end")
    if record.output_ref is None:
        return json.dumps(record.output, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        return await ctx.outputs.get(record.output_ref)
    except OutputMissing as exc:
        raise Gone(f"the output of run {record.run_id} is no longer stored ({exc})") from None


# -- the trace ----------------------------------------------------------------------------


async def read_trace(ctx: ApiContext, tenant: str, run_id: str) -> list[TraceEvent]:
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
        follow(ctx.nc, tenant, run_id, idle_timeout_s=_TRACE_TICK_S, until_terminal=False)
    ) as events:
        async for event in events:
            if event is None:
                if loop.time() >= give_up_at:
                    break
                continue
            trace.append(event)
            if until_seq is None and event.type.terminal:
                # + suggestions stored
                until_seq = max(event.seq, await last_event_seq(ctx.js, tenant, run_id))
            if until_seq is not None and event.seq >= until_seq:
                break
    return trace
