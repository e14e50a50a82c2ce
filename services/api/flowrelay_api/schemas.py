"""The HTTP shapes of the API: request bodies and responses (the OpenAPI schema).

The bus models (``RunRecord``, ``TraceEvent``...) live in ``flowrelay_contracts``; these
are their faces on the web. Handlers render them with :func:`json_response`, which
serializes once with pydantic-core instead of letting FastAPI validate the return value
against ``response_model`` again (the models are still declared on the routes for /docs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import Response

from flowrelay_contracts import (
    AgentUsage,
    ExecutorCapabilities,
    HumanWait,
    Isolation,
    OutputRef,
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
    input: str = Field(
        min_length=1, pattern=r"\S", description="The user's prompt, given to the first agent (not blank)."
    )
    options: RunOptions = Field(
        default_factory=RunOptions, description="Per-run limits; omitted = server defaults."
    )


class RunLinks(BaseModel):
    """Where to follow a run."""

    self: str
    events: str
    cancel: str
    output: str
    input: str

    @classmethod
    def for_run(cls, run_id: str, root_path: str = "") -> RunLinks:
        base = f"{root_path}/runs/{run_id}"
        return cls(self=base, events=f"{base}/events", cancel=f"{base}/cancel", output=f"{base}/output",
                   input=f"{base}/input")


class RunAccepted(BaseModel):
    """Answer of ``POST /runs``: the run is stored and queued."""

    run_id: str
    status: RunStatus
    links: RunLinks
    created_at: datetime


class RunView(BaseModel):
    """A run as ``GET /runs/{run_id}`` shows it (the stored record, without its input).

    ``workflow`` (the graph as submitted) is in ``GET /runs/{run_id}`` only, not in lists.
    """

    run_id: str
    tenant: str
    status: RunStatus
    output: Any = None
    output_ref: OutputRef | None = Field(
        default=None,
        description="Set instead of `output` when the output is larger than FLOWRELAY_MAX_INLINE_OUTPUT_BYTES: "
        "fetch it from `links.output`.",
    )
    error: RunError | None = None
    suggestions: list[Suggestion] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    cost_note: str | None = None
    mode: RunMode
    isolation: Isolation | None = None
    model_provider: str | None = None
    thread_id: str | None = Field(default=None, description="The thread the run belongs to (POST /threads/{id}/runs).")
    waiting: HumanWait | None = Field(
        default=None, description="The question of ask_human the run waits on (status `waiting`), or the last one "
        "and its answer.",
    )
    agents: list[AgentUsage] = Field(default_factory=list)
    attempts: int = 0
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    workflow: Workflow | None = None
    links: RunLinks

    @classmethod
    def of(cls, record: RunRecord, root_path: str = "", *, with_workflow: bool = False) -> RunView:
        return cls.model_construct(  # the record is already valid: copy, do not re-validate
            **{name: getattr(record, name) for name in _VIEW_FIELDS},
            workflow=record.workflow if with_workflow else None,
            links=RunLinks.for_run(record.run_id, root_path),
        )


_VIEW_FIELDS = tuple(name for name in RunView.model_fields if name not in ("links", "workflow"))


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


# -- threads ---------------------------------------------------------------------------

#: Most metadata entries of a thread, and their sizes.
MAX_THREAD_METADATA = 16
MAX_THREAD_METADATA_KEY = 64
MAX_THREAD_METADATA_VALUE = 512


class ThreadCreate(BaseModel):
    """Body of ``POST /threads`` (all optional)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(default="", max_length=200, description="What the conversation is about (shown in lists).")
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_THREAD_METADATA_KEY)],
        Annotated[str, StringConstraints(max_length=MAX_THREAD_METADATA_VALUE)],
    ] = Field(default_factory=dict, max_length=MAX_THREAD_METADATA,
              description="Your own labels (e.g. the end user's id), returned as given.")


class ThreadLinks(BaseModel):
    self: str
    runs: str

    @classmethod
    def for_thread(cls, thread_id: str, root_path: str = "") -> ThreadLinks:
        base = f"{root_path}/threads/{thread_id}"
        return cls(self=base, runs=f"{base}/runs")


class ThreadRunView(BaseModel):
    """One run of a thread. ``messages``: where its turn sits in the thread's ``messages``
    (``[start, end)``), or null (it failed or was cancelled, or its turn is not shown)."""

    run_id: str
    status: RunStatus | None = Field(description="null when the run's record has expired.")
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    created_at: datetime
    messages: tuple[int, int] | None = None


class ThreadView(BaseModel):
    """A thread: its runs (oldest first), their usage, and the conversation so far.

    ``messages`` are the stored turns' OpenAI chat messages, oldest first, exactly as the
    answering agent saw and wrote them (tool calls next to their results). Only the newest
    ``limit`` turns are included; ``turns_omitted`` counts the older ones left out.
    """

    thread_id: str
    tenant: str
    title: str
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    active_run: str | None = Field(description="The run in progress (queued, running or waiting), if any.")
    runs: list[ThreadRunView]
    usage: Usage
    cost_usd: float | None = None
    messages: list[dict[str, Any]]
    turns_omitted: int = 0
    links: ThreadLinks


class AnswerSubmission(BaseModel):
    """Body of ``POST /runs/{run_id}/input``: the answer to the run's ``ask_human`` question."""

    model_config = ConfigDict(extra="forbid")

    answer: str = Field(min_length=1, description="The answer (one of the question's choices, when it offers some).")
    wait_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The question answered (`waiting.wait_id` of the run): refused (409) if the run now waits on another.",
    )


class AnswerAccepted(BaseModel):
    """Answer of ``POST /runs/{run_id}/input``: the answer is stored and the run is queued to resume."""

    run_id: str
    status: RunStatus
    wait_id: str


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


class Identity(BaseModel):
    """Answer of ``GET /auth/me``: who the credential says you are."""

    key_id: str | None = Field(description="Id of the API key (null for a JWT or with auth off).")
    tenant: str
    scopes: list[str]
    name: str = ""
    via: str = Field(description="'key', 'jwt', or 'none' when FLOWRELAY_AUTH=none.")


class KeyCreate(BaseModel):
    """Body of ``POST /keys``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Tenant the key acts for: its runs are the only ones it sees.",
    )
    scopes: list[Literal["submit", "read", "cancel", "metrics", "admin"]] = Field(
        default_factory=lambda: ["submit", "read", "cancel"], min_length=1, max_length=5
    )
    name: str = Field(default="", max_length=200, description="What the key is for (shown in lists).")


class KeyView(BaseModel):
    """A key as listed: everything but the secret, which is shown once, at creation."""

    key_id: str
    tenant: str
    scopes: list[str]
    name: str
    created_at: datetime
    created_by: str | None = None
    revoked_at: datetime | None = None


class KeyCreated(KeyView):
    """Answer of ``POST /keys``. ``key`` is shown this once and stored nowhere: keep it."""

    key: str


class KeyList(BaseModel):
    keys: list[KeyView]


class Health(BaseModel):
    status: str = Field(
        description="'ok'; 'degraded' when NATS is connected but cannot do its work (see problems); "
        "'unavailable' when NATS is not connected."
    )
    nats: str = Field(description="'connected' or 'disconnected'.")
    executors: int = Field(description="Executors that advertised their capabilities recently.")
    problems: list[str] = Field(default_factory=list, description="What is wrong, one sentence each.")


class QueueDepth(BaseModel):
    """The run queue as JetStream counts it (all executors share one consumer)."""

    waiting: int = Field(description="Run requests queued that no executor has taken yet.")
    held: int = Field(description="Run requests executors hold (running, or about to), not acked yet.")


class ExecutorsOverview(BaseModel):
    """Answer of ``GET /executors``: who runs work now, what they offer, what waits."""

    executors: list[ExecutorCapabilities] = Field(
        description="Executors that advertised themselves in the last few seconds."
    )
    queue: QueueDepth


class ErrorResponse(BaseModel):
    """Every error that is not a validation error: what went wrong and who is at fault."""

    detail: str
    code: str | None = Field(
        default=None, description="'unauthenticated' (401) or 'forbidden' (403) where set."
    )


#: What a route reading a JSON body answers when it is not JSON at all (or not UTF-8).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not JSON (send UTF-8 JSON)."},
}

#: What every authenticated route may answer: no or a bad key, a key without the scope.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No credential, or an unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this route needs."},
}


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
