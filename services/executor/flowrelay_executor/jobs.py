"""What the executor hands a worker (``Job``) and what it gets back (``Outcome``).

These cross the pipe between the executor process and its worker processes (or the
fallback thread); they are internal to the executor, not part of the bus contract.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from flowrelay_contracts import AgentUsage, ErrorCode, RunError, Usage, Workflow


class ModelDefaults(BaseModel):
    """The model used by agents whose node names none, and where to reach it."""

    model_id: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    #: Base URL of flowrelay's scripted stand-in model; model ids ``scripted:<name>`` go there.
    scripted_url: str | None = None


class Job(BaseModel):
    """One run, resolved: limits are concrete numbers, defaults filled in."""

    run_id: str
    workflow: Workflow
    input: str
    timeout_s: float
    max_turns: int
    defaults: ModelDefaults
    attempt: int = 1
    #: The caller's W3C trace context (``traceparent``, ``tracestate``): the run's spans
    #: continue that trace. Empty: the run starts a trace of its own.
    trace_context: dict[str, str] = Field(default_factory=dict)


class Outcome(BaseModel):
    """How a run ended inside a worker."""

    status: Literal["succeeded", "failed", "cancelled"]
    output: Any = None
    error: RunError | None = None
    usage: Usage = Field(default_factory=Usage)
    agents: list[AgentUsage] = Field(default_factory=list)
    cost_usd: float | None = None
    cost_note: str | None = None


def timed_out(job: Job, how: str) -> Outcome:
    """The outcome of a run stopped at its deadline; ``how`` says what stopping took."""
    return Outcome(
        status="failed",
        error=RunError(
            code=ErrorCode.TIMEOUT,
            message=f"the run did not finish within its {job.timeout_s:g} s deadline {how}",
        ),
    )
