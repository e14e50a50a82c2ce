"""Message models for everything flowrelay puts on the bus, and the run record.

Every model carries ``schema_version``. A consumer that receives a version it does not
know rejects the message with a failure event saying so (it never guesses), so producers
and consumers can be upgraded one at a time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from flowrelay_contracts.tenants import DEFAULT_TENANT, TENANT_PATTERN
from flowrelay_contracts.workflow import Workflow

#: Version of the wire format described by this module.
SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    """Base of bus messages: tolerant of fields added by newer producers."""

    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION


# -- vocabulary -------------------------------------------------------------------------


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    #: Paused until a person answers its ``ask_human`` question (``POST /runs/{id}/input``);
    #: no worker holds it meanwhile.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class RunMode(StrEnum):
    """How a run produced its answer: the agent ran, or only guidance was given."""

    REAL_EXECUTION = "real_execution"
    DEGRADED = "degraded"


class Isolation(StrEnum):
    """Where the agent ran: a warm worker process, or a thread with its own loop."""

    PROCESS = "process"
    THREAD = "thread"
    NONE = "none"


class ErrorCode(StrEnum):
    """Why a run failed. The suggester keys its guidance on these."""

    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    UNKNOWN_MODEL = "unknown_model"
    RATE_LIMITED = "rate_limited"
    PROVIDER_UNREACHABLE = "provider_unreachable"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"
    MAX_TURNS_EXCEEDED = "max_turns_exceeded"
    TOOL_FAILED = "tool_failed"
    TOOL_MISSING_KEY = "tool_missing_key"
    WORKER_CRASHED = "worker_crashed"
    FRAMEWORK_NOT_INSTALLED = "framework_not_installed"
    INVALID_WORKFLOW = "invalid_workflow"
    INVALID_REQUEST = "invalid_request"
    OUTPUT_TOO_LARGE = "output_too_large"
    QUEUE_FULL = "queue_full"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class EventType(StrEnum):
    RUN_STARTED = "run.started"
    AGENT_STARTED = "agent.started"
    AGENT_FINISHED = "agent.finished"
    RUN_RETRYING = "run.retrying"
    RUN_RESUMED = "run.resumed"
    LLM_STARTED = "llm.started"
    #: Text fragments of a model's answer as it is written (``options.stream_tokens``).
    LLM_DELTA = "llm.delta"
    LLM_FINISHED = "llm.finished"
    TOOL_STARTED = "tool.started"
    TOOL_FINISHED = "tool.finished"
    SUGGESTION = "suggestion"
    #: The run asked a person a question (``ask_human``) and is paused until the answer.
    RUN_WAITING = "run.waiting"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED})


# -- parts ------------------------------------------------------------------------------


def _json_number(value: Any) -> Any:
    """Numbers only: pydantic's lax mode would take ``true`` as 1 and ``"5"`` as 5, which the
    schema (``number``/``integer``) says are not numbers (schemathesis checks)."""
    if isinstance(value, (bool, str)):
        raise ValueError("must be a number, not a " + ("boolean" if isinstance(value, bool) else "string"))
    return value


#: A run option that must arrive as a JSON number (None: the server default).
OptionalFloat = Annotated[float | None, BeforeValidator(_json_number)]
OptionalInt = Annotated[int | None, BeforeValidator(_json_number)]


class RetryOptions(BaseModel):
    """How a run is retried after a retryable failure (rate limited, provider unreachable,
    provider 5xx, worker crashed). ``None`` means the server default; the API resolves them.

    The wait before attempt ``n + 1`` is ``min(max_backoff_s, initial_backoff_s * 2 ** (n - 1))``,
    shortened by up to ``jitter`` of itself at random, and never shorter than the provider's
    ``Retry-After``. No attempt starts past the run's deadline (``timeout_s`` covers all).
    """

    model_config = ConfigDict(extra="forbid")

    attempts: OptionalInt = Field(
        default=None, ge=1, description="Most attempts of the run, the first included (1: never retry)."
    )
    initial_backoff_s: OptionalFloat = Field(
        default=None, ge=0, description="Wait before the second attempt, in seconds."
    )
    max_backoff_s: OptionalFloat = Field(
        default=None, ge=0, description="Longest wait between two attempts (a provider's Retry-After may ask for more)."
    )
    jitter: OptionalFloat = Field(
        default=None, ge=0, le=1, description="Fraction of each wait taken off at random (0: exact waits)."
    )


class RunOptions(BaseModel):
    """Per-run limits. ``None`` means the server default; the API resolves them."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: OptionalFloat = Field(
        default=None, gt=0, description="Deadline for the whole run, every attempt included."
    )
    max_turns: OptionalInt = Field(
        default=None, ge=1, description="Most LLM calls one agent may make in a run."
    )
    retry: RetryOptions | None = Field(
        default=None, description="Retries after retryable failures; omitted = the server's policy."
    )
    max_cost_usd: OptionalFloat = Field(
        default=None, gt=0, description="Stop the run (budget_exceeded) once its model calls cost more than this."
    )
    max_tokens: OptionalInt = Field(
        default=None, ge=1, description="Stop the run (budget_exceeded) once its model calls used more tokens "
        "(input plus output) than this."
    )
    stream_tokens: bool = Field(
        default=False, strict=True, description="Send the models' text as it is written (llm.delta events)."
    )
    wait_timeout_s: float | None = Field(
        default=None, gt=0, description="How long a question of ask_human waits for its answer before the run "
        "fails (timeout); the wait does not count against timeout_s.",
    )


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens - other.input_tokens,
            output_tokens=self.output_tokens - other.output_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class AgentUsage(BaseModel):
    """Token counts and cost of one agent in a run."""

    agent: str
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = 0.0
    cost_note: str | None = None


class RunError(BaseModel):
    """A structured failure: enough for a user and for the suggester to act on."""

    code: ErrorCode
    message: str
    exception_type: str | None = None
    provider_status: int | None = None
    provider_message: str | None = None
    step: int | None = None
    agent: str | None = None
    tool: str | None = None
    retryable: bool = False
    #: What the provider's ``Retry-After`` asked for, in seconds (when it sent one).
    retry_after_s: float | None = None


class OutputRef(BaseModel):
    """Where an output too large for the record is kept (``GET /runs/{id}/output`` serves it)."""

    bucket: str
    name: str
    bytes: int
    sha256: str


class Suggestion(BaseModel):
    """One piece of degraded-mode guidance: what went wrong and the concrete fix."""

    code: str
    title: str
    detail: str
    fix: str


# -- bus messages -----------------------------------------------------------------------

#: A tenant id, by the rules of :mod:`flowrelay_contracts.tenants`.
TenantId = Annotated[str, Field(pattern=f"^{TENANT_PATTERN.pattern}$", description="Who the run belongs to.")]


class RunRequested(_Message):
    """Published on ``RUN_REQUESTED`` (or ``RUN_ADVISE``) once a request is accepted."""

    run_id: str
    workflow: Workflow
    input: str
    options: RunOptions = Field(default_factory=RunOptions)
    created_at: datetime = Field(default_factory=utcnow)
    #: Executors take the tenant from the subject the request arrived on (which the
    #: publisher's NATS permissions vouch for), never from this field alone.
    tenant: TenantId = DEFAULT_TENANT
    #: The conversation this run continues (``POST /threads/{id}/runs``): its agent sees the
    #: thread's earlier turns.
    thread_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    #: Set on the request that resumes a run paused by ``ask_human``: the answered wait's id.
    resume: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class TraceEvent(_Message):
    """One step of a run, published on ``flowrelay.events.<run_id>``.

    ``seq`` counts from 1 per run without gaps, so a subscriber can resume after the last
    one it saw (SSE ``Last-Event-ID``). ``data`` depends on ``type`` (see the README).
    """

    run_id: str
    seq: int
    type: EventType
    at: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)


class RunFailed(_Message):
    """Published on ``RUN_FAILED`` when a run fails; the suggester turns it into guidance."""

    run_id: str
    tenant: TenantId = DEFAULT_TENANT
    error: RunError
    workflow: Workflow | None = None
    input: str | None = None
    options: RunOptions = Field(default_factory=RunOptions)
    elapsed_s: float | None = None
    attempt: int = 1
    #: ``seq`` of the terminal event, so suggestion events continue the run's sequence.
    last_seq: int = 0
    failed_at: datetime = Field(default_factory=utcnow)


class CancelRequest(_Message):
    run_id: str
    tenant: TenantId = DEFAULT_TENANT
    reason: str = "cancelled by client"
    requested_at: datetime = Field(default_factory=utcnow)


class DeadLetter(_Message):
    """A message that can never be processed, kept with the reason."""

    subject: str
    reason: str
    payload: str
    run_id: str | None = None
    tenant: str | None = None
    received_at: datetime = Field(default_factory=utcnow)


class ExecutorCapabilities(_Message):
    """What one executor can run; refreshed in ``EXECUTORS_BUCKET`` while it lives."""

    executor_id: str
    #: Frameworks that passed the executor's start-up self-check (a real tiny run each).
    frameworks: list[str]
    #: Version of what implements each framework (e.g. ``openai`` -> openai-agents'), if known.
    framework_versions: dict[str, str] = Field(default_factory=dict)
    tools: list[str]
    #: Commands this executor may start as stdio MCP servers (FLOWRELAY_MCP_STDIO_ALLOWLIST).
    mcp_stdio_commands: list[str] = Field(default_factory=list)
    slots: int
    isolation: Isolation
    execution: Literal["execute", "suggest"] = "execute"
    updated_at: datetime = Field(default_factory=utcnow)
    #: Modules the executor loads tools from (``FLOWRELAY_TOOL_MODULES``), for advice.
    tool_modules: list[str] = Field(default_factory=list)
    #: Tools a workflow might expect that this executor does not offer, and why (a built-in
    #: whose package is missing, a function of a tool module that could not be a tool).
    unavailable_tools: dict[str, str] = Field(default_factory=dict)
    #: Runs it holds right now (as of ``updated_at``).
    running: int = 0
    #: When it started, and where its Prometheus metrics are served (None: not served).
    started_at: datetime | None = None
    metrics_port: int | None = None


class RunIndexEntry(_Message):
    """One run in ``INDEX_STREAM``: written once, when its record is created, so the stream
    lists runs in creation order without a consumer (``GET /runs`` pages through it)."""

    run_id: str
    tenant: TenantId = DEFAULT_TENANT
    created_at: datetime = Field(default_factory=utcnow)


# -- durable runs: retries and step checkpoints --------------------------------------


class RetryRecord(BaseModel):
    """One attempt of a run that failed retryably and was scheduled again (``RunRecord.retries``)."""

    attempt: int
    executor_id: str | None = None
    error: RunError
    #: The wait before the next attempt, and when it may start.
    wait_s: float
    retry_at: datetime
    #: Model spend of this attempt that no checkpoint keeps (it is paid again only if re-run).
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = 0.0
    failed_at: datetime = Field(default_factory=utcnow)


class CheckpointKind(StrEnum):
    """What a checkpoint holds the result of."""

    #: A step of the workflow's pattern (sequential: each agent but the last).
    AGENT_STEP = "agent_step"
    #: A completed call of a sub-agent by its coordinator (collaborative).
    SUB_AGENT_CALL = "sub_agent_call"
    #: A run paused by ``ask_human``: the asking agent's conversation, to resume it from.
    HUMAN_WAIT = "human_wait"


class Checkpoint(_Message):
    """The stored result of one finished step of a run (``CHECKPOINTS_BUCKET``).

    A later attempt of the same run (redelivered after a crash, or retried) takes the
    output from here instead of calling the model again. ``name`` identifies the step
    within its run (letters, digits, ``-``, ``_``, ``=``: it is the last token of the key).
    """

    run_id: str
    tenant: TenantId = DEFAULT_TENANT
    name: str = Field(pattern=r"^[A-Za-z0-9_=-]{1,128}$")
    kind: CheckpointKind
    #: Step number in the run's trace (``agent.started``'s ``step``).
    step: int
    agent: str
    #: SHA-256 of the text the step was given: a checkpoint answers only the same question.
    input_sha256: str
    output: Any = None
    #: Set instead of ``output`` when the output was too large for a KV value.
    output_ref: OutputRef | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = 0.0
    cost_note: str | None = None
    attempt: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    #: Anything else a kind needs to resume (free-form, JSON).
    data: dict[str, Any] = Field(default_factory=dict)


# -- human in the loop -------------------------------------------------------------------


class HumanWait(BaseModel):
    """A question of ``ask_human`` waiting for (or holding) its answer (``RunRecord.waiting``).

    While the run is ``waiting`` no worker holds it: its conversation is saved in a checkpoint
    and its request is parked in the run queue until ``deadline``. An answer (``POST
    /runs/{id}/input``) is stored here, the run turns ``queued`` and a resume request is
    queued for whichever executor takes it.
    """

    wait_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    agent: str
    question: str
    choices: list[str] | None = None
    asked_at: datetime = Field(default_factory=utcnow)
    deadline: datetime
    answer: str | None = None
    answered_at: datetime | None = None
    #: The run's options, for the request that resumes it.
    options: RunOptions = Field(default_factory=RunOptions)
    #: Stream sequence of the parked request (removed once the run resumes).
    parked_seq: int | None = None


class HumanInput(_Message):
    """An answer to a waiting run: body of ``POST /runs/{id}/input`` and payload of a request
    on ``flowrelay.runs.input.<tenant>.<run_id>``. ``wait_id`` (optional) guards against
    answering a question that is no longer the one asked."""

    answer: str
    wait_id: str | None = None


# -- run record -------------------------------------------------------------------------


class RunRecord(_Message):
    """The state of one run, stored in ``RUNS_BUCKET`` and served by ``GET /runs/{id}``."""

    run_id: str
    tenant: TenantId = DEFAULT_TENANT
    status: RunStatus = RunStatus.QUEUED
    input: str = ""
    #: The workflow as submitted (what the console draws); absent for records made before.
    workflow: Workflow | None = None
    output: Any = None
    #: Set instead of ``output`` when the output is larger than the record may carry.
    output_ref: OutputRef | None = None
    error: RunError | None = None
    suggestions: list[Suggestion] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    agents: list[AgentUsage] = Field(default_factory=list)
    cost_usd: float | None = None
    cost_note: str | None = None
    mode: RunMode = RunMode.REAL_EXECUTION
    isolation: Isolation | None = None
    model_provider: str | None = None
    #: The thread the run belongs to, if any.
    thread_id: str | None = None
    #: The question the run waits on (status ``waiting``), or its answer before it resumes.
    waiting: HumanWait | None = None
    executor_id: str | None = None
    attempts: int = 0
    #: Attempts that failed retryably and were scheduled again, oldest first.
    retries: list[RetryRecord] = Field(default_factory=list)
    #: While a retry waits (status ``queued``): when its next attempt may start.
    retry_at: datetime | None = None
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def queued_for(cls, request: RunRequested) -> RunRecord:
        """The record of a run accepted as ``request``, before anything happened to it: what
        the API stores (and an executor adopting a request published straight to NATS).

        One constructor for both, so an executor can rebuild the record the API stored from
        the request alone (``RunStore.presume``: the claim then skips reading it)."""
        return cls(run_id=request.run_id, tenant=request.tenant, input=request.input, workflow=request.workflow,
                   created_at=request.created_at, thread_id=request.thread_id)

    @property
    def terminal(self) -> bool:
        return self.status.terminal
