"""The HTTP shapes of the API: request bodies and responses (the OpenAPI schema).

The bus models (``RunRecord``, ``TraceEvent``...) live in ``flowrelay_contracts``; these
are their faces on the web. Handlers render them with :func:`json_response`, which
serializes once with pydantic-core instead of letting FastAPI validate the return value
against ``response_model`` again (the models are still declared on the routes for /docs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from flowrelay_contracts import (
    AgentUsage,
    Isolation,
    RunError,
    RunMode,
    RunOptions,
    RunRecord,
    RunStatus,
    Suggestion,
    TraceEvent,
    Usage,
    Workflow,
)

_JSON = "application/json"


class RunSubmission(BaseModel):
    """Body of ``POST /runs`` and ``POST /execute``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "workflow": {
                        "nodes": [
                            {
                                "id": "a",
                                "data": {"name": "writer", "instructions": "Write a haiku."},
                            },
                            {"id": "b", "data": {"name": "critic", "instructions": "Improve it."}},
                        ],
                        "edges": [{"source": "a", "target": "b"}],
                    },
                    "input": "autumn in Lyon",
                    "options": {"timeout_s": 60, "max_turns": 10},
                }
            ]
        },
    )

    workflow: Workflow = Field(
        description="The agent graph (designer nodes/edges, or the compact form)."
    )
    input: str = Field(description="The user's prompt, given to the first agent.")
    options: RunOptions = Field(
        default_factory=RunOptions, description="Per-run limits; omitted = server defaults."
    )


class RunLinks(BaseModel):
    """Where to follow a run."""

    self: str
    events: str
    cancel: str

    @classmethod
    def for_run(cls, run_id: str, root_path: str = "") -> RunLinks:
        base = f"{root_path}/runs/{run_id}"
        return cls(self=base, events=f"{base}/events", cancel=f"{base}/cancel")


class RunAccepted(BaseModel):
    """Answer of ``POST /runs``: the run is stored and queued."""

    run_id: str
    status: RunStatus
    links: RunLinks
    created_at: datetime


class RunView(BaseModel):
    """A run as ``GET /runs/{run_id}`` shows it (the stored record, without its input)."""

    run_id: str
    status: RunStatus
    output: Any = None
    error: RunError | None = None
    suggestions: list[Suggestion] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    cost_note: str | None = None
    mode: RunMode
    isolation: Isolation | None = None
    model_provider: str | None = None
    agents: list[AgentUsage] = Field(default_factory=list)
    attempts: int = 0
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: RunLinks

    @classmethod
    def of(cls, record: RunRecord, root_path: str = "") -> RunView:
        return cls.model_construct(  # the record is already valid: copy, do not re-validate
            **{name: getattr(record, name) for name in _VIEW_FIELDS},
            links=RunLinks.for_run(record.run_id, root_path),
        )


_VIEW_FIELDS = tuple(name for name in RunView.model_fields if name != "links")


class RunList(BaseModel):
    """A page of runs, newest first. Pass ``next_cursor`` as ``cursor`` for the next page."""

    runs: list[RunView]
    next_cursor: str | None = None


class CancelAccepted(BaseModel):
    """Answer of ``POST /runs/{run_id}/cancel``.

    ``cancelled``: the run had not started and never will. ``running``: the executor holding
    it was asked to stop; the terminal status follows shortly (watch the run or its events).
    """

    run_id: str
    status: RunStatus


class ExecuteResult(BaseModel):
    """Answer of ``POST /execute``: the finished run and its whole trace.

    ``mode`` is ``degraded`` when the run failed or nothing was executed (suggest mode):
    then ``suggestions`` stand in for the output.
    """

    run_id: str
    mode: RunMode
    status: RunStatus
    output: Any = None
    suggestions: list[Suggestion] = Field(default_factory=list)
    error: RunError | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    trace: list[TraceEvent] = Field(default_factory=list)


class Health(BaseModel):
    status: str = Field(description="'ok', or 'unavailable' when NATS is not connected.")
    nats: str = Field(description="'connected' or 'disconnected'.")
    executors: int = Field(description="Executors that advertised their capabilities recently.")


class ErrorResponse(BaseModel):
    """Every error that is not a validation error: what went wrong and who is at fault."""

    detail: str


class ValidationProblem(BaseModel):
    loc: list[str | int] = Field(
        description="Path to the culprit, starting with 'body', 'query' or 'header'."
    )
    msg: str = Field(description="What is wrong, starting with the field's dotted path.")
    type: str = Field(description="Machine-readable kind of problem.")


class ValidationErrorResponse(BaseModel):
    """422: the request is malformed, or the workflow cannot run as described."""

    detail: list[ValidationProblem]


def json_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialize ``model`` once (pydantic-core, straight to bytes) into a JSON response."""
    return Response(
        model.__pydantic_serializer__.to_json(model),
        status_code=status_code,
        headers=headers,
        media_type=_JSON,
    )
