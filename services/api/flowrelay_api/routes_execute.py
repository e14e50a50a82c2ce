"""``POST /execute``: the original synchronous endpoint, on top of the asynchronous path.

It submits exactly like ``POST /runs``, then waits for the run's record to end (see
:mod:`flowrelay_api.waiting`) and answers with the result and the whole trace. If the run has not ended by its own deadline
plus ``execute_margin_s`` the answer is 504; a run that no executor picked up by then is
cancelled, so it does not start later for a caller that is gone.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from flowrelay_api import runs
from flowrelay_api.auth import Principal, Scope, require
from flowrelay_api.context import ApiContext, get_context
from flowrelay_api.errors import ApiError, GatewayTimeout
from flowrelay_api.schemas import (
    AUTH_ERRORS,
    BODY_ERRORS,
    ErrorResponse,
    ExecuteResult,
    RunSubmission,
    ValidationErrorResponse,
    json_response,
)
from flowrelay_api.submit import MAX_IDEMPOTENCY_KEY_LENGTH, submit
from flowrelay_api.waiting import RunWaiter
from flowrelay_contracts import RunMode, RunRecord, RunStatus, TraceEvent

router = APIRouter(tags=["execute"], responses=AUTH_ERRORS)


@router.post(
    "/execute",
    response_model=ExecuteResult,
    summary="Run a workflow and wait for the result",
    description="Same body as `POST /runs`. Blocks until the run ends (at most its `timeout_s` plus a "
    "margin) and returns the output, or for a failed run the error and the suggester's guidance "
    "(`mode: degraded`), with every trace event.",
    responses={
        409: {
            "model": ErrorResponse,
            "description": "Idempotency-Key reused with a different body.",
        },
        413: {"model": ErrorResponse, "description": "Body larger than FLOWRELAY_MAX_BODY_BYTES."},
        429: {"model": ErrorResponse, "description": "Rate limit or run queue full; see Retry-After."},
        **BODY_ERRORS,
        422: {
            "model": ValidationErrorResponse,
            "description": "Malformed request or unrunnable workflow.",
        },
        503: {"model": ErrorResponse, "description": "NATS is unavailable; nothing was queued."},
        504: {"model": ErrorResponse, "description": "The run did not end in time."},
    },
)
async def execute(
    request: Request,
    body: RunSubmission,
    ctx: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Principal, Depends(require(Scope.SUBMIT))],
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    ] = None,
) -> Response:
    async with RunWaiter(ctx, caller.tenant) as waiter:
        submitted = await submit(
            ctx, caller, body, idempotency_key, before_publish=waiter.start, trace=request.headers
        )
        run_id = submitted.record.run_id
        await waiter.start(run_id)  # no-op unless the submission was a replay
        settings = ctx.settings
        wait_s = (
            submitted.options.timeout_s or settings.default_timeout_s
        ) + settings.execute_margin_s
        record = await waiter.finished(wait_s, settings.sse_suggestion_grace_s)
        if record is None:
            record = await _give_up(ctx, caller, run_id, wait_s)
        trace = await waiter.trace()
    return json_response(_result(record, trace))


def _result(record: RunRecord, trace: list[TraceEvent]) -> ExecuteResult:
    degraded = record.mode == RunMode.DEGRADED or record.status == RunStatus.FAILED
    return ExecuteResult(
        run_id=record.run_id,
        mode=RunMode.DEGRADED if degraded else record.mode,
        status=record.status,
        output=record.output,
        suggestions=record.suggestions,
        error=record.error,
        usage=record.usage,
        cost_usd=record.cost_usd,
        trace=trace,
    )


async def _give_up(ctx: ApiContext, caller: Principal, run_id: str, wait_s: float) -> RunRecord:
    """The wait expired: the run if it ended just now; else cancel it if it never started,
    and raise 504."""
    status = "unknown"
    try:
        record = await runs.get_run(ctx, caller, run_id)
        if record.terminal:
            return record
        status = record.status.value
        if record.status == RunStatus.QUEUED:
            record = await runs.cancel_run(
                ctx, caller, run_id, reason=f"cancelled by POST /execute after waiting {wait_s:g} s"
            )
            status = record.status.value
    except ApiError:
        pass  # ended or vanished meanwhile: the 504 still tells where to look
    raise GatewayTimeout(
        f"run {run_id} did not end within {wait_s:g} s (it is {status}); see GET /runs/{run_id}"
    )
