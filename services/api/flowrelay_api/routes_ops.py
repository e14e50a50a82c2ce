"""Operations endpoints: liveness for load balancers, metrics for Prometheus, the executors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from nats.js.errors import NotFoundError
from starlette.responses import Response

from flowrelay_api.auth import Principal, Scope, require
from flowrelay_api.context import ApiContext, get_context
from flowrelay_api.schemas import (
    AUTH_ERRORS,
    ErrorResponse,
    ExecutorsOverview,
    Health,
    QueueDepth,
    json_response,
)
from flowrelay_contracts import subjects

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness and NATS connectivity",
    description="200 while the API is connected to NATS (`status: degraded` with `problems` when, say, the "
    "JetStream store is full), 503 while it is not (it keeps reconnecting). "
    "`executors` counts executors that advertised themselves in the last few seconds.",
    responses={503: {"model": Health, "description": "NATS is disconnected."}},
)
async def healthz(ctx: Annotated[ApiContext, Depends(get_context)]) -> Response:
    connected = ctx.connected
    problems = ctx.health.problems() if connected else ["NATS is not connected"]
    health = Health(
        status="unavailable" if not connected else "degraded" if problems else "ok",
        nats="connected" if connected else "disconnected",
        executors=len(ctx.executors.live),
        problems=problems,
    )
    return json_response(health, 200 if connected else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Needs a key with the `metrics` scope (or `admin`): give the scraper its own.",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        **AUTH_ERRORS,
    },
)
async def metrics(
    ctx: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Principal, Depends(require(Scope.METRICS))],
) -> Response:
    body, content_type = ctx.metrics.render()
    return Response(body, media_type=content_type)


@router.get(
    "/executors",
    response_model=ExecutorsOverview,
    summary="Live executors and the run queue",
    description="Each executor that advertised itself in the last few seconds, with its frameworks, "
    "tools (and the tools it cannot offer, with the reason), slots, runs it holds, isolation and "
    "metrics port; and the run queue's depth. `flowrelay status` shows this. Needs the `admin` "
    "scope: it describes the whole deployment, every tenant's queue included.",
    responses={503: {"model": ErrorResponse, "description": "NATS is unavailable."}, **AUTH_ERRORS},
)
async def executors(
    ctx: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Principal, Depends(require(Scope.ADMIN))],
) -> Response:
    live = sorted(ctx.executors.live, key=lambda e: e.executor_id)
    return json_response(ExecutorsOverview(executors=live, queue=await _queue_depth(ctx)))


async def _queue_depth(ctx: ApiContext) -> QueueDepth:
    """From the executors' shared consumer; before any executor created it, the stream's size."""
    try:
        info = await ctx.js.consumer_info(subjects.RUNS_STREAM, subjects.EXECUTORS_CONSUMER)
    except NotFoundError:
        stream = await ctx.js.stream_info(subjects.RUNS_STREAM)
        return QueueDepth(waiting=stream.state.messages, held=0)
    return QueueDepth(waiting=info.num_pending or 0, held=info.num_ack_pending or 0)
