"""Accepting a run: check it, store its record, queue its request.

The order is what makes a run never vanish:

1. check everything that can be checked without running (the graph, the limits, the
   executors' capabilities), so a bad request costs nothing downstream;
2. reserve the ``Idempotency-Key`` (``kv.create``, atomic) when the client sent one;
3. store the ``RunRecord`` (``queued``), so the run is visible from now on;
   and its entry in the run index (what ``GET /runs`` pages through);
4. publish ``RunRequested`` on ``flowrelay.runs.requested.<tenant>`` with
   ``Nats-Msg-Id: <run_id>`` (and the caller's W3C trace context, so the run's spans
   continue the caller's trace) and wait for the PubAck. If
   that fails the record is marked ``failed`` (``internal_error``), the key is released so
   a retry starts afresh, and the client gets a 503.

Steps 3 and 4 are idempotent for one run id (``create`` refuses a second record, JetStream
drops a second publish inside its duplicate window), which is what lets a repeated
request with the same key finish the job of a first one that died half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel

from flowrelay_api.auth import Principal
from flowrelay_api.backpressure import QUEUE_FULL_RETRY_AFTER_S, TooManyRequests
from flowrelay_api.context import ApiContext
from flowrelay_api.errors import (
    BUS_ERRORS,
    JS_LIMIT_EXCEEDED,
    Conflict,
    InvalidRequest,
    Loc,
    ServiceUnavailable,
    bus_failure,
)
from flowrelay_api.metrics import SubmitOutcome
from flowrelay_api.schemas import RunSubmission
from flowrelay_api.settings import ApiSettings
from flowrelay_api.shape import check_shape
from flowrelay_bus import policy
from flowrelay_bus.outbound import Allowlist, refusal
from flowrelay_contracts import (
    ErrorCode,
    McpServer,
    RunError,
    RunIndexEntry,
    RunOptions,
    RunRecord,
    RunRequested,
    RunStatus,
    WorkflowError,
    plan,
    subjects,
)
from flowrelay_contracts.hitl import ask_human_problems
from flowrelay_contracts.messages import utcnow
from flowrelay_contracts.tracing import trace_context

log = logging.getLogger(__name__)

#: Longest ``Idempotency-Key`` accepted (the IETF draft suggests 255).
MAX_IDEMPOTENCY_KEY_LENGTH = 255

#: A stored-but-queued run is republished on a repeat only this far inside the duplicate
#: window, so the publish is certain to be dropped if the first one did go through.
_REPUBLISH_SAFETY_S = 10.0

#: Attempts to reserve a key that keeps being released under us (publish failures).
_KEY_ATTEMPTS = 3

_UNAVAILABLE = "the message bus (NATS) is not connected; retry later"


@dataclass(frozen=True)
class Submitted:
    """The stored record of an accepted run, and the limits it runs with.

    ``replayed``: the request repeated an ``Idempotency-Key`` and this is the earlier run.
    """

    record: RunRecord
    options: RunOptions
    replayed: bool = False


class _KeyEntry(BaseModel):
    """What an Idempotency-Key maps to: the run, and a fingerprint of the body that made it."""

    run_id: str
    fingerprint: str


#: Called with the run id just before its request is published (see ``submit``).
BeforePublish = Callable[[str], Awaitable[None]]


async def submit(
    ctx: ApiContext,
    caller: Principal,
    body: RunSubmission,
    idempotency_key: str | None = None,
    before_publish: BeforePublish | None = None,
    trace: Mapping[str, str] | None = None,
    *,
    thread_id: str | None = None,
) -> Submitted:
    """Check, store and queue a run; raise an ``ApiError``/``InvalidRequest`` to refuse it.

    ``before_publish`` runs once the run id is known and before anything can happen to the
    run, so a caller can start listening to it (or claim a thread for it) without missing a
    thing; when it raises, nothing is stored. ``trace``: the request's headers; their valid
    W3C trace context goes along with the run request. ``thread_id``: the thread the run continues.
    """
    headers = trace_context(trace)
    if not ctx.connected:
        ctx.metrics.submitted(SubmitOutcome.UNAVAILABLE)
        raise ServiceUnavailable(_UNAVAILABLE)
    options = await _check(ctx, body, caller.tenant)
    request = RunRequested(
        run_id="", tenant=caller.tenant, workflow=body.workflow, input=body.input, options=options,
        thread_id=thread_id,
    )
    if idempotency_key is None:
        request.run_id = ctx.ids.new()
        return await _store_and_queue(ctx, request, None, before_publish, headers)
    return await _submit_once(ctx, request, body, idempotency_key, before_publish, headers)


def _resolve_options(options: RunOptions, settings: ApiSettings) -> RunOptions:
    """Fill in defaults; refuse values above the deployment's limits (422 naming the field)."""
    problems = []
    timeout_s = options.timeout_s if options.timeout_s is not None else settings.default_timeout_s
    if timeout_s > settings.max_timeout_s:
        problems.append(
            (
                ("body", "options", "timeout_s"),
                f"{timeout_s:g} s is above the limit of {settings.max_timeout_s:g} s (FLOWRELAY_MAX_TIMEOUT_S)",
                "less_than_equal",
            )
        )
    if options.wait_timeout_s is not None and options.wait_timeout_s > settings.max_wait_timeout_s:
        problems.append(
            (
                ("body", "options", "wait_timeout_s"),
                f"{options.wait_timeout_s:g} s is above the limit of {settings.max_wait_timeout_s:g} s "
                "(FLOWRELAY_MAX_WAIT_TIMEOUT_S)",
                "less_than_equal",
            )
        )
    max_turns = options.max_turns if options.max_turns is not None else settings.default_max_turns
    if max_turns > settings.max_max_turns:
        problems.append(
            (
                ("body", "options", "max_turns"),
                f"{max_turns} is above the limit of {settings.max_max_turns} (FLOWRELAY_MAX_MAX_TURNS)",
                "less_than_equal",
            )
        )
    problems += policy.option_problems(options, settings)
    if problems:
        raise InvalidRequest(problems)
    return policy.resolve(options.model_copy(update={
        "timeout_s": timeout_s, "max_turns": max_turns,
        "wait_timeout_s": options.wait_timeout_s or settings.default_wait_timeout_s,
    }), settings)


async def _check(ctx: ApiContext, body: RunSubmission, caller_tenant: str) -> RunOptions:
    try:
        if problems := check_shape(body, ctx.settings):  # first: bounds the work of the rest
            raise InvalidRequest(problems)
        try:
            workflow_plan = plan(body.workflow)
        except WorkflowError as exc:
            raise InvalidRequest.from_workflow(exc.problems) from None
        if problems := ask_human_problems(body.workflow, workflow_plan):
            raise InvalidRequest.from_workflow(problems)
        options = _resolve_options(body.options, ctx.settings)
    except InvalidRequest:
        ctx.metrics.submitted(SubmitOutcome.INVALID)
        raise
    if problems := await _outbound_problems(body, ctx.settings):
        ctx.metrics.submitted(SubmitOutcome.INVALID)
        raise InvalidRequest(problems)
    if ctx.settings.execution == "execute":
        await ctx.queue.check(caller_tenant)
    if ctx.settings.execution == "execute":  # in suggest mode nothing runs: any framework will do
        problems = await ctx.executors.check(body.workflow)
        if problems:
            ctx.metrics.submitted(SubmitOutcome.UNSUPPORTED)
            raise InvalidRequest(problems)
    return options


async def _outbound_problems(body: RunSubmission, settings: ApiSettings) -> list[tuple[Loc, str, str]]:
    """MCP URLs that would make an executor call loopback, private or metadata addresses."""
    allowlist = Allowlist.parse(settings.mcp_url_allowlist)
    checks = [
        ((("body", "workflow", "nodes", i, "data", "tools", j, "url")), tool.url)
        for i, node in enumerate(body.workflow.nodes)
        for j, tool in enumerate(node.data.tools)
        if isinstance(tool, McpServer) and tool.url is not None
    ]
    reasons = await asyncio.gather(*(refusal(url, allowlist) for _, url in checks))
    return [(loc, reason, "url_refused") for (loc, _), reason in zip(checks, reasons, strict=True) if reason]


async def _submit_once(
    ctx: ApiContext,
    request: RunRequested,
    body: RunSubmission,
    key: str,
    before_publish: BeforePublish | None,
    headers: dict[str, str],
) -> Submitted:
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        ctx.metrics.submitted(SubmitOutcome.INVALID)
        raise InvalidRequest.one(
            ("header", "Idempotency-Key"),
            f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long",
        )
    # Any header value becomes a valid KV key; the tenant makes keys per tenant, so two
    # tenants choosing the same key get two runs and learn nothing of each other.
    slot = hashlib.sha256(f"{request.tenant}\n{key}".encode()).hexdigest()
    # the thread is part of the request: the same body sent to another thread is another run
    fingerprint = hashlib.sha256(body.__pydantic_serializer__.to_json(body)
                                 + f"\n{request.thread_id or ''}".encode()).hexdigest()
    for _ in range(_KEY_ATTEMPTS):
        request.run_id = ctx.ids.new()
        entry = _KeyEntry(run_id=request.run_id, fingerprint=fingerprint)
        try:
            await ctx.idempotency.create(slot, entry.__pydantic_serializer__.to_json(entry))
        except KeyWrongLastSequenceError:
            pass
        else:
            return await _store_and_queue(ctx, request, slot, before_publish, headers)
        try:
            stored = _KeyEntry.model_validate_json((await ctx.idempotency.get(slot)).value or b"")
        except KeyNotFoundError:
            continue  # released by a failed attempt in the meantime: reserve it again
        if stored.fingerprint != fingerprint:
            ctx.metrics.submitted(SubmitOutcome.CONFLICT)
            raise Conflict(
                "Idempotency-Key was already used with a different request body "
                f"(for run {stored.run_id}); use a new key for a new request"
            )
        return await _replay(ctx, request, stored.run_id, slot, before_publish, headers)
    ctx.metrics.submitted(SubmitOutcome.UNAVAILABLE)
    raise ServiceUnavailable(
        "could not reserve the Idempotency-Key (NATS keeps failing); retry later"
    )


async def _replay(
    ctx: ApiContext,
    request: RunRequested,
    run_id: str,
    key_slot: str,
    before_publish: BeforePublish | None,
    headers: dict[str, str],
) -> Submitted:
    """A repeat of an accepted request: answer with its run, finishing its submission if needed.

    Finishing it can fail like a first submission; the key is then released the same way, or
    every later retry would be answered with the run that was never queued.
    """
    request.run_id = run_id
    if before_publish is not None:
        await before_publish(run_id)
    record = await ctx.runs.get(request.tenant, run_id)
    if record is None:  # the first request is in flight or died before storing: do it here
        submitted = await _store_and_queue(ctx, request, key_slot, None, headers)
        return Submitted(submitted.record, request.options, replayed=True)
    window = timedelta(seconds=ctx.settings.dedup_window_s - _REPUBLISH_SAFETY_S)
    if record.status == RunStatus.QUEUED and utcnow() - record.created_at < window:
        # The first request may have died between storing and publishing. Inside the
        # window this publish is dropped if the first one went through.
        request.created_at = record.created_at
        await _publish(ctx, request, record, key_slot=key_slot, headers=headers)
    ctx.metrics.submitted(SubmitOutcome.REPLAYED)
    return Submitted(record, request.options, replayed=True)


async def _store_and_queue(
    ctx: ApiContext,
    request: RunRequested,
    key_slot: str | None,
    before_publish: BeforePublish | None,
    headers: dict[str, str],
) -> Submitted:
    if before_publish is not None:
        try:
            await before_publish(request.run_id)
        except BaseException:
            if key_slot is not None:  # nothing was stored: a retry with the key starts afresh
                with contextlib.suppress(*BUS_ERRORS):
                    await ctx.idempotency.delete(key_slot)
            raise
    record = RunRecord.queued_for(request)
    entry = RunIndexEntry(run_id=record.run_id, tenant=record.tenant, created_at=record.created_at)
    # Record and index entry go to different streams: written concurrently, their two
    # fsyncs overlap instead of adding up. Only the request, published after both, can
    # start the run; an entry whose record is missing is skipped by listings.
    created, indexed = await asyncio.gather(ctx.runs.create(record), ctx.index.add(entry), return_exceptions=True)
    if isinstance(created, BaseException):
        raise created
    if not created:  # a concurrent repeat stored it first and queues it (its entry is the same)
        existing = await ctx.runs.get(request.tenant, request.run_id)
        ctx.metrics.submitted(SubmitOutcome.REPLAYED)
        return Submitted(existing or record, request.options, replayed=True)
    if isinstance(indexed, BaseException):  # same as a failed publish: the run must not stay queued
        exc = indexed
        log.warning("run %s: indexing failed (%s); marking it failed", record.run_id, type(exc).__name__)
        await _mark_unqueued(ctx, record, key_slot)
        ctx.metrics.submitted(SubmitOutcome.UNAVAILABLE)
        raise ServiceUnavailable(
            f"run {record.run_id} could not be queued: NATS did not acknowledge it; retry the request"
        ) from None
    # The record's revision and digest go along: the executor claims the run against them
    # without reading the record (a record changed since fails the claim's compare-and-set).
    stamp = ctx.runs.stamp(record.tenant, record.run_id)
    await _publish(ctx, request, record, key_slot, headers | ({subjects.RECORD_STAMP_HEADER: stamp} if stamp else {}))
    ctx.queue.accepted(request.tenant)
    ctx.metrics.submitted(SubmitOutcome.ACCEPTED)
    return Submitted(record, request.options)


async def _publish(
    ctx: ApiContext,
    request: RunRequested,
    record: RunRecord,
    key_slot: str | None,
    headers: dict[str, str],
) -> None:
    if ctx.settings.execution == "suggest":
        subject, stream = subjects.RUN_ADVISE, subjects.SUGGESTER_STREAM
    else:
        subject, stream = subjects.run_requested(request.tenant), subjects.RUNS_STREAM
    try:
        await ctx.js.publish(
            subject,
            request.__pydantic_serializer__.to_json(request),
            stream=stream,
            headers={subjects.MSG_ID_HEADER: request.run_id, **headers},
        )
    except Exception as exc:  # noqa: BLE001 - whatever failed, the run must not stay "queued"
        log.warning(
            "run %s: queueing failed (%s); marking it failed", request.run_id, type(exc).__name__
        )
        ctx.health.saw(exc)
        if getattr(exc, "err_code", None) == JS_LIMIT_EXCEEDED:  # the stream's cap, a race past the gauge
            await _mark_unqueued(ctx, record, key_slot, RunError(
                code=ErrorCode.QUEUE_FULL, retryable=True,
                message="the run queue was full (FLOWRELAY_MAX_QUEUED_RUNS / _PER_TENANT); retry later"))
            ctx.metrics.submitted(SubmitOutcome.UNAVAILABLE)
            raise TooManyRequests(
                f"run {request.run_id} could not be queued: the run queue is full (FLOWRELAY_MAX_QUEUED_RUNS / "
                "FLOWRELAY_MAX_QUEUED_RUNS_PER_TENANT); retry later",
                code="queue_full", retry_after_s=QUEUE_FULL_RETRY_AFTER_S) from None
        await _mark_unqueued(ctx, record, key_slot)
        ctx.metrics.submitted(SubmitOutcome.UNAVAILABLE)
        failure = bus_failure(exc, connected=ctx.connected)
        failure.detail = f"run {request.run_id} could not be queued ({failure.detail}); the run is marked failed"
        raise failure from None


async def _mark_unqueued(
    ctx: ApiContext, record: RunRecord, key_slot: str | None, error: RunError | None = None
) -> None:
    """Best effort: the record says why the run never started; a retry may reuse the key."""
    error = error or RunError(
        code=ErrorCode.INTERNAL_ERROR,
        message="the run could not be queued: NATS did not acknowledge the request",
        retryable=True,
    )

    def to_failed(current: RunRecord) -> RunRecord | None:
        if current.status != RunStatus.QUEUED:
            return None
        return current.model_copy(update={"status": RunStatus.FAILED, "error": error, "finished_at": utcnow()})

    run_id = record.run_id
    try:
        await ctx.runs.update(record.tenant, run_id, to_failed)
    except (*BUS_ERRORS, RuntimeError) as exc:  # RuntimeError: CAS kept conflicting
        log.error(
            "run %s: could not mark it failed (%s); it stays queued", run_id, type(exc).__name__
        )
    if key_slot is not None:
        try:
            await ctx.idempotency.delete(key_slot)
        except BUS_ERRORS as exc:
            log.warning(
                "run %s: could not release its Idempotency-Key (%s)", run_id, type(exc).__name__
            )
