"""Threads: conversations whose runs see the earlier turns (see ``flowrelay_api.threads``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response

from flowrelay_api import threads
from flowrelay_api.auth import Principal, Scope, require
from flowrelay_api.context import ApiContext, get_context
from flowrelay_api.schemas import (
    AUTH_ERRORS,
    BODY_ERRORS,
    ErrorResponse,
    RunAccepted,
    RunLinks,
    RunSubmission,
    ThreadCreate,
    ThreadView,
    ValidationErrorResponse,
    json_response,
)
from flowrelay_api.submit import MAX_IDEMPOTENCY_KEY_LENGTH

router = APIRouter(tags=["threads"], responses=AUTH_ERRORS)

Context = Annotated[ApiContext, Depends(get_context)]
ThreadId = Annotated[str, Path(description="The thread's id, as returned by POST /threads.")]
Submitter = Annotated[Principal, Depends(require(Scope.SUBMIT))]
Reader = Annotated[Principal, Depends(require(Scope.READ))]

_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such thread (or it belongs to another tenant)."}}
_INVALID = {422: {"model": ValidationErrorResponse, "description": "Malformed request or unrunnable workflow."}}


@router.post(
    "/threads",
    status_code=201,
    response_model=ThreadView,
    summary="Start a thread",
    description="A conversation: every run sent to it with `POST /threads/{thread_id}/runs` sees the earlier "
    "turns. Threads are kept FLOWRELAY_THREAD_TTL_S after their last change.",
    responses={**BODY_ERRORS, **_INVALID},
)
async def create_thread(request: Request, ctx: Context, caller: Submitter, body: ThreadCreate | None = None) -> Response:
    record = await threads.create_thread(ctx, caller, body or ThreadCreate())
    root = request.scope.get("root_path", "")
    view = await threads.view(ctx, record, limit=0, root_path=root)
    return json_response(view, 201, {"Location": view.links.self})


@router.post(
    "/threads/{thread_id}/runs",
    status_code=202,
    response_model=RunAccepted,
    summary="Send a message to a thread (start a run on it)",
    description="The same body as `POST /runs`; the run's first agent is given the thread's earlier turns (the "
    "newest that fit FLOWRELAY_THREAD_HISTORY_MAX_BYTES). A thread takes one run at a time: while its previous "
    "run is queued, running or waiting for a human, this answers 409 `thread_busy` naming it.",
    responses={
        409: {"model": ErrorResponse, "description": "`thread_busy` (another run has not ended), `thread_full` "
              "(FLOWRELAY_MAX_THREAD_RUNS), or an Idempotency-Key reused with another body."},
        413: {"model": ErrorResponse, "description": "Body larger than FLOWRELAY_MAX_BODY_BYTES."},
        429: {"model": ErrorResponse, "description": "Rate limit or run queue full; see Retry-After."},
        503: {"model": ErrorResponse, "description": "NATS is unavailable; nothing was queued."},
        **BODY_ERRORS, **_INVALID, **_NOT_FOUND,
    },
)
async def send_message(
    request: Request,
    body: RunSubmission,
    ctx: Context,
    caller: Submitter,
    thread_id: ThreadId,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
               description="Client-chosen key; a repeat with the same key and body returns the same run."),
    ] = None,
) -> Response:
    submitted = await threads.send(ctx, caller, thread_id, body, idempotency_key, trace=request.headers)
    record = submitted.record
    links = RunLinks.for_run(record.run_id, request.scope.get("root_path", ""))
    headers = {"Location": links.self}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    accepted = RunAccepted(run_id=record.run_id, status=record.status, links=links, created_at=record.created_at)
    return json_response(accepted, 202, headers)


@router.get(
    "/threads/{thread_id}",
    response_model=ThreadView,
    summary="Get a thread: its messages, runs and usage",
    responses={**_NOT_FOUND, **_INVALID},
)
async def get_thread(
    request: Request,
    ctx: Context,
    caller: Reader,
    thread_id: ThreadId,
    limit: Annotated[int, Query(ge=0, le=threads.MAX_TURNS_SHOWN, description="Newest turns to include.")] = (
        threads.DEFAULT_TURNS
    ),
) -> Response:
    record = await threads.get_thread(ctx, caller, thread_id)
    return json_response(await threads.view(ctx, record, limit=limit, root_path=request.scope.get("root_path", "")))
