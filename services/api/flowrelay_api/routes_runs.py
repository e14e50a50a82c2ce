"""The asynchronous API: submit a run, look it up, list, follow its events, cancel it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response

from flowrelay_api import runs, sse
from flowrelay_api.auth import Principal, Scope, require
from flowrelay_api.context import ApiContext, get_context
from flowrelay_api.eventstream import EventStreamResponse
from flowrelay_api.schemas import (
    AUTH_ERRORS,
    BODY_ERRORS,
    AnswerAccepted,
    AnswerSubmission,
    CancelAccepted,
    ErrorResponse,
    RunAccepted,
    RunLinks,
    RunList,
    RunSubmission,
    RunView,
    ValidationErrorResponse,
    json_response,
)
from flowrelay_api.submit import MAX_IDEMPOTENCY_KEY_LENGTH, submit
from flowrelay_contracts import RunStatus
from flowrelay_contracts.tenants import TENANT_PATTERN

#: Largest page of ``GET /runs``.
MAX_PAGE_SIZE = 100

#: Page size of ``GET /runs`` without ``limit``.
DEFAULT_PAGE_SIZE = 20

router = APIRouter(tags=["runs"], responses=AUTH_ERRORS)

Context = Annotated[ApiContext, Depends(get_context)]
RunId = Annotated[str, Path(description="The run's id, as returned by POST /runs.")]
Submitter = Annotated[Principal, Depends(require(Scope.SUBMIT))]
Reader = Annotated[Principal, Depends(require(Scope.READ))]
Canceller = Annotated[Principal, Depends(require(Scope.CANCEL))]

_NOT_FOUND = {
    404: {"model": ErrorResponse, "description": "No such run (or it belongs to another tenant)."}
}
_INVALID = {
    422: {
        "model": ValidationErrorResponse,
        "description": "Malformed request or unrunnable workflow.",
    }
}
_UNAVAILABLE = {
    503: {"model": ErrorResponse, "description": "NATS is unavailable; nothing was queued."}
}

#: One event of ``GET /runs/{id}/events`` as an SSE parser yields it (OpenAPI 3.1: the
#: schema of a ``text/event-stream`` response describes each event, as schemathesis reads it).
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "description": "The event's `seq` (absent on `suggestion`)."},
        "event": {"type": "string", "description": "The event's type (`run.started`, ..., `suggestion`)."},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "The TraceEvent (or, for `suggestion`, the Suggestion) as JSON."},
        "retry": {"type": "integer"},
    },
}


def _json_errors(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Error answers of a route whose success is not JSON: FastAPI would document a model's
    answer under the route's media type (``text/event-stream``), but errors are JSON."""
    return {
        status: {"description": spec["description"], "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{spec['model'].__name__}"}}}}
        for status, spec in responses.items()
    }


@router.post(
    "/runs",
    status_code=202,
    response_model=RunAccepted,
    summary="Submit a run",
    description="Checks the workflow and the limits, stores the run as `queued` and puts it on the "
    "executors' queue. Follow it at `links.events` (SSE) or `links.self`. With an `Idempotency-Key` "
    "header, repeating the request returns the same run instead of starting another.",
    responses={
        409: {
            "model": ErrorResponse,
            "description": "Idempotency-Key reused with a different body.",
        },
        413: {"model": ErrorResponse, "description": "Body larger than FLOWRELAY_MAX_BODY_BYTES."},
        429: {"model": ErrorResponse, "description": "Rate limit or run queue full; see Retry-After."},
        **BODY_ERRORS,
        **_INVALID,
        **_UNAVAILABLE,
    },
)
async def create_run(
    request: Request,
    body: RunSubmission,
    ctx: Context,
    caller: Submitter,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
            description="Client-chosen key; a repeat with the same key and body returns the same run.",
        ),
    ] = None,
) -> Response:
    submitted = await submit(ctx, caller, body, idempotency_key, trace=request.headers)
    record = submitted.record
    links = RunLinks.for_run(record.run_id, request.scope.get("root_path", ""))
    headers = {"Location": links.self}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    accepted = RunAccepted(
        run_id=record.run_id, status=record.status, links=links, created_at=record.created_at
    )
    return json_response(accepted, 202, headers)


@router.get(
    "/runs",
    response_model=RunList,
    summary="List runs, newest first",
    description="The runs of the key's tenant (an admin key: of every tenant, or of `tenant`). "
    "Cursor pagination: pass the `next_cursor` of a page as `cursor` to get the next one; it is null "
    "on the last page. With `status`, a page may hold fewer runs than `limit` and still have a cursor.",
    responses={**_INVALID, **_UNAVAILABLE},
)
async def list_runs(
    request: Request,
    ctx: Context,
    caller: Reader,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    tenant: Annotated[
        str | None,
        Query(description="Admin keys: only this tenant's runs.", pattern=f"^{TENANT_PATTERN.pattern}$"),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="Runs per page.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    page = await runs.list_runs(
        ctx, caller, tenant=tenant, status=status, limit=limit, cursor=cursor
    )
    root = request.scope.get("root_path", "")
    return json_response(
        RunList(runs=[RunView.of(r, root) for r in page.runs], next_cursor=page.next_cursor)
    )


@router.get(
    "/runs/{run_id}",
    response_model=RunView,
    summary="Get a run",
    description="Status, output or error, the suggester's guidance, token usage and cost.",
    responses={**_NOT_FOUND, **_INVALID, **_UNAVAILABLE},
)
async def get_run(request: Request, ctx: Context, caller: Reader, run_id: RunId) -> Response:
    record = await runs.get_run(ctx, caller, run_id)
    root = request.scope.get("root_path", "")
    return json_response(RunView.of(record, root, with_workflow=True))


@router.get(
    "/runs/{run_id}/output",
    summary="Get a run's output, however large",
    description="The output as JSON: inline from the record, or from the object store when it was larger "
    "than the record may carry (`output_ref`). 409 while the run has not ended.",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "The output (any JSON value)."},
        409: {"model": ErrorResponse, "description": "The run has not ended yet."},
        **_NOT_FOUND,
    },
)
async def run_output(ctx: Context, caller: Reader, run_id: RunId) -> Response:
    record = await runs.get_run(ctx, caller, run_id)
    return Response(await runs.read_output(ctx, record), media_type="application/json")


@router.get(
    "/runs/{run_id}/events",
    response_class=EventStreamResponse,
    summary="Follow a run's events (Server-Sent Events)",
    description="Replays the run's trace from the start, then streams it live: `id` is the event's "
    "`seq`, `event` its type, `data` the TraceEvent JSON. Reconnect with `Last-Event-ID` (or "
    "`?after=`) to resume. The stream ends after `run.completed` or `run.cancelled`; after "
    "`run.failed` it ends with the suggester's `suggestion` event, or after a short grace period.",
    responses={
        200: {"content": {"text/event-stream": {"schema": _SSE_EVENT}}, "description": "The event stream."},
        **_json_errors({**AUTH_ERRORS, **_NOT_FOUND, **_INVALID, **_UNAVAILABLE}),
    },
)
async def run_events(
    ctx: Context,
    caller: Reader,
    run_id: RunId,
    after: Annotated[int, Query(ge=0, description="Send only events with a greater seq.")] = 0,
    last_event_id: Annotated[
        int, Header(alias="Last-Event-ID", ge=0, description="Set by EventSource on reconnect.")
    ] = 0,
) -> EventStreamResponse:
    after_seq = max(after, last_event_id)
    # A first connection replays everything stored, which tells how far the run got; a
    # resuming one needs the record's current state to end at once after the run's end.
    record = await runs.get_run(ctx, caller, run_id, recent_ok=after_seq == 0)
    return sse.event_stream(ctx, record, after_seq)


@router.post(
    "/runs/{run_id}/input",
    status_code=202,
    response_model=AnswerAccepted,
    summary="Answer a run's question (ask_human)",
    description="A run whose agent called `ask_human` is `waiting` (the question is in its record's `waiting` and "
    "in the `run.waiting` event). The answer is stored, the run turns `queued` and whichever executor takes it "
    "resumes it with the answer as the tool's result. 409 when the run is not waiting (or on another question, "
    "or past its deadline); 422 naming `answer` when it is blank, too long (FLOWRELAY_MAX_ANSWER_BYTES) or not "
    "one of the question's choices.",
    responses={
        409: {"model": ErrorResponse, "description": "`not_waiting`, `stale_wait` or `wait_expired`."},
        **BODY_ERRORS,
        **_INVALID,
        **_NOT_FOUND,
        **_UNAVAILABLE,
    },
)
async def answer_run(ctx: Context, caller: Submitter, run_id: RunId, body: AnswerSubmission) -> Response:
    record = await runs.answer_run(ctx, caller, run_id, body.answer, body.wait_id)
    assert record.waiting is not None
    return json_response(AnswerAccepted(run_id=record.run_id, status=record.status, wait_id=record.waiting.wait_id), 202)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    summary="Cancel a run",
    description="A queued run (or one waiting for an answer) is cancelled at once (`status: cancelled`). A running one is stopped by "
    "its executor within about a second (`status: running` now; the record and the event stream "
    "show the end). A run that has already ended answers 409.",
    responses={
        409: {"model": ErrorResponse, "description": "The run has already ended."},
        **_NOT_FOUND,
        **_INVALID,
        **_UNAVAILABLE,
    },
)
async def cancel_run(ctx: Context, caller: Canceller, run_id: RunId) -> Response:
    record = await runs.cancel_run(ctx, caller, run_id)
    return json_response(CancelAccepted(run_id=record.run_id, status=record.status), 202)
