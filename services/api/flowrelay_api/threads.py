"""Threads over HTTP: create one, send it a message (a run), read the conversation.

The concurrency policy is **reject** (LangGraph's double-texting "reject"): a thread takes
one run at a time. A message sent while the thread's previous run is queued, running or
waiting for a human is answered 409 ``thread_busy`` naming that run; nothing is queued.
The claim is a compare-and-set on the thread's record made after the request was checked
and before the run is stored (``submit``'s ``before_publish``), so of two concurrent
messages exactly one becomes a run.

Like runs, a thread of another tenant is not found (404), exactly like a missing one;
admin keys may read any tenant's threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from flowrelay_api.auth import Principal
from flowrelay_api.context import ApiContext
from flowrelay_api.errors import ApiError, Conflict, InvalidRequest
from flowrelay_api.schemas import (
    RunSubmission,
    ThreadCreate,
    ThreadLinks,
    ThreadRunView,
    ThreadView,
)
from flowrelay_api.submit import Submitted, submit
from flowrelay_bus.threads import ThreadBusy, ThreadFull, ThreadMissing
from flowrelay_contracts import RunRecord, Usage
from flowrelay_contracts.ids import is_valid_run_id
from flowrelay_contracts.threads import ThreadRecord

#: Turns ``GET /threads/{id}`` shows without ``limit``, and at most.
DEFAULT_TURNS = 100
MAX_TURNS_SHOWN = 1000


class ThreadNotFound(ApiError):
    status_code = 404

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id} not found")


class ThreadBusyError(Conflict):
    code = "thread_busy"


class ThreadFullError(Conflict):
    code = "thread_full"


async def create_thread(ctx: ApiContext, caller: Principal, body: ThreadCreate) -> ThreadRecord:
    record = ThreadRecord(thread_id=ctx.ids.new(), tenant=caller.tenant, title=body.title, metadata=body.metadata)
    if not await ctx.threads.create(record):  # a ULID made here twice: never, but never silently
        raise Conflict(f"thread id {record.thread_id} is taken; retry")
    return record


async def get_thread(ctx: ApiContext, caller: Principal, thread_id: str) -> ThreadRecord:
    """The thread if the caller may see it; :class:`ThreadNotFound` (404) if not."""
    record = None
    if is_valid_run_id(thread_id):
        record = await (ctx.threads.find(thread_id) if caller.is_admin else ctx.threads.get(caller.tenant, thread_id))
    if record is None or not caller.sees_tenant(record.tenant):
        raise ThreadNotFound(thread_id)
    return record


async def send(
    ctx: ApiContext, caller: Principal, thread_id: str, body: RunSubmission, idempotency_key: str | None,
    trace: Mapping[str, str] | None = None,
) -> Submitted:
    """Start a run on the thread: checked like ``POST /runs``, then the thread is claimed."""
    thread = await get_thread(ctx, caller, thread_id)
    if thread.tenant != caller.tenant:
        raise ThreadNotFound(thread_id)  # admins read other tenants' threads, runs go to their own
    limit = ctx.settings.max_thread_message_bytes
    if (size := len(body.input.encode())) > limit:
        raise InvalidRequest.one(("body", "input"), f"{size} bytes is above the limit of {limit} for a message on a "
                                 "thread (FLOWRELAY_MAX_THREAD_MESSAGE_BYTES)", "too_large")

    async def claim(run_id: str) -> None:
        try:
            await ctx.threads.claim(caller.tenant, thread_id, run_id, max_runs=ctx.settings.max_thread_runs)
        except ThreadMissing:
            raise ThreadNotFound(thread_id) from None
        except ThreadBusy as exc:
            raise ThreadBusyError(str(exc)) from None
        except ThreadFull as exc:
            raise ThreadFullError(str(exc)) from None

    return await submit(ctx, caller, body, idempotency_key, before_publish=claim, trace=trace, thread_id=thread_id)


async def view(ctx: ApiContext, thread: ThreadRecord, *, limit: int, root_path: str = "") -> ThreadView:
    """The thread as ``GET /threads/{id}`` shows it: runs with their outcome, usage, and the
    messages of the newest ``limit`` turns."""
    unknown = [run.run_id for run in thread.runs if run.status is None or not run.status.terminal]
    records = dict(zip(unknown, await asyncio.gather(*(ctx.runs.get(thread.tenant, r) for r in unknown)), strict=True))
    shown = {run.run_id for run in thread.runs if run.turn is not None}
    shown_ids = [run.run_id for run in thread.runs if run.run_id in shown][-limit:] if limit else []
    refs = [run.turn for run in thread.runs if run.run_id in shown_ids and run.turn is not None]
    turns = {turn.run_id: turn for turn in await ctx.threads.read_turns(thread, refs)}

    messages: list[dict] = []
    runs: list[ThreadRunView] = []
    for run in thread.runs:
        record: RunRecord | None = records.get(run.run_id)
        span = None
        if (turn := turns.get(run.run_id)) is not None:
            span = (len(messages), len(messages) + len(turn.messages))
            messages.extend(turn.messages)
        runs.append(ThreadRunView(
            run_id=run.run_id, created_at=run.created_at, messages=span,
            status=record.status if record is not None else run.status,
            usage=record.usage if record is not None else (run.usage or Usage()),
            cost_usd=record.cost_usd if record is not None else run.cost_usd,
        ))
    # a run that used tokens at an unknown price makes the total unknown, never a made-up 0
    costs = [r.cost_usd for r in runs if r.usage.input_tokens or r.usage.output_tokens]
    active = thread.active_run
    if active is not None and not any(r.run_id == active and r.status is not None and not r.status.terminal
                                      for r in runs):
        active = None
    return ThreadView(
        thread_id=thread.thread_id, tenant=thread.tenant, title=thread.title, metadata=thread.metadata,
        created_at=thread.created_at, updated_at=thread.updated_at, active_run=active, runs=runs,
        usage=sum((r.usage for r in runs), Usage()),
        cost_usd=None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 10),
        messages=messages, turns_omitted=len(shown) - len(shown_ids),
        links=ThreadLinks.for_thread(thread.thread_id, root_path),
    )
