"""What the executor hands a worker (``Job``) and what it gets back (``Outcome``).

These cross the pipe between the executor process and its worker processes (or the
fallback thread); they are internal to the executor, not part of the bus contract.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, Field, SecretStr

from flowrelay_contracts import AgentUsage, Checkpoint, ErrorCode, RunError, Usage, Workflow

#: The event "type" under which a worker hands a finished step's checkpoint to the executor
#: (``data`` is a :class:`~flowrelay_contracts.Checkpoint`). It travels in order with the
#: run's events but is stored in the checkpoint bucket, never published as an event.
CHECKPOINT: Final = "flowrelay.checkpoint"


class ModelDefaults(BaseModel):
    """The model used by agents whose node names none, and where to reach it."""

    model_id: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    #: Base URL of flowrelay's scripted stand-in model; model ids ``scripted:<name>`` go there.
    scripted_url: str | None = None


class StreamSpec(BaseModel):
    """Token streaming of one run (``options.stream_tokens``): how fragments are batched."""

    #: A fragment waits at most this long for more text before it is sent.
    interval_s: float = 0.1
    #: Most characters in one ``llm.delta`` (keeps every event far below the size limit).
    max_chars: int = 4096


class JobHistory(BaseModel):
    """A thread's earlier turns given to the run's first agent (oldest first)."""

    messages: list[dict[str, Any]] = Field(default_factory=list)
    turns: int = 0
    #: Older turns left out to stay within FLOWRELAY_THREAD_HISTORY_MAX_BYTES.
    dropped: int = 0


class PauseState(BaseModel):
    """Everything needed to resume a run paused by ``ask_human`` (see ``engine.human``);
    the executor saves it as the run's checkpoint."""

    #: Which top-level agent asked (its place in the workflow's order).
    step_index: int
    agent: str
    messages: list[dict[str, Any]]
    tool_call_id: str
    #: Calls of the same model message after ``ask_human`` (never run).
    later_calls: list[str] = Field(default_factory=list)
    question: str
    choices: list[str] | None = None
    #: Per agent: ``input_tokens``, ``output_tokens``, ``costs`` (one per model call),
    #: ``notes``, ``turns``: the run's totals continue from these.
    tallies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    steps: int = 0
    #: Seconds the run has executed so far (its deadline covers every segment).
    executed_s: float = 0.0
    #: For a thread run's first agent: where its turn starts in ``messages``, its history.
    turn_prefix: int | None = None
    history: JobHistory | None = None


class ResumePoint(BaseModel):
    """A paused run's saved state and the answer it resumes with."""

    wait_id: str
    state: PauseState
    answer: str


class Job(BaseModel):
    """One run, resolved: limits are concrete numbers, defaults filled in."""

    run_id: str
    workflow: Workflow
    input: str
    #: What is left of the run's deadline for this attempt (all of it for the first).
    timeout_s: float
    #: The run's whole deadline (``options.timeout_s``), for messages; None: ``timeout_s``.
    run_timeout_s: float | None = None
    max_turns: int
    defaults: ModelDefaults
    attempt: int = 1
    tenant: str = "default"
    #: Finished steps of earlier attempts, by name: their outputs are reused, not recomputed.
    checkpoints: dict[str, Checkpoint] = Field(default_factory=dict)
    #: Budgets of the whole run (None: none) and what earlier attempts spent on calls that no
    #: checkpoint keeps: it counts against the budgets and is part of the run's usage.
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    spent: Usage = Field(default_factory=Usage)
    spent_cost_usd: float | None = 0.0
    #: The caller's W3C trace context (``traceparent``, ``tracestate``): the run's spans
    #: continue that trace. Empty: the run starts a trace of its own.
    trace_context: dict[str, str] = Field(default_factory=dict)
    stream: StreamSpec | None = None
    #: Set for runs on a thread (possibly with no earlier turns): the outcome then carries
    #: the turn the run adds.
    history: JobHistory | None = None
    #: Set when the run resumes after an answer to ``ask_human``.
    resume: ResumePoint | None = None


class Outcome(BaseModel):
    """How a run ended inside a worker."""

    #: ``waiting``: paused by ``ask_human`` (``pause`` says where); no worker holds it any more.
    status: Literal["succeeded", "failed", "cancelled", "waiting"]
    output: Any = None
    error: RunError | None = None
    usage: Usage = Field(default_factory=Usage)
    agents: list[AgentUsage] = Field(default_factory=list)
    cost_usd: float | None = None
    cost_note: str | None = None
    #: What this attempt spent on model calls that no checkpoint keeps (paid again on a retry).
    unsaved: Usage = Field(default_factory=Usage)
    unsaved_cost_usd: float | None = 0.0
    #: What a run on a thread adds to it (user message first), secrets redacted; and whether
    #: those are the answering agent's real messages or the user's text and the answer.
    turn: list[dict[str, Any]] | None = None
    turn_form: Literal["messages", "text"] = "messages"
    pause: PauseState | None = None


class CannotStart(Exception):
    """The run cannot start (its thread is busy, its saved state is gone...): it fails with ``error``."""

    def __init__(self, error: RunError) -> None:
        super().__init__(error.message)
        self.error = error


def timed_out(job: Job, how: str) -> Outcome:
    """The outcome of a run stopped at its deadline; ``how`` says what stopping took."""
    return Outcome(
        status="failed",
        error=RunError(
            code=ErrorCode.TIMEOUT,
            message=f"the run did not finish within its {job.run_timeout_s or job.timeout_s:g} s deadline "
            + ("(every attempt included) " if job.attempt > 1 else "") + how,
        ),
    )
