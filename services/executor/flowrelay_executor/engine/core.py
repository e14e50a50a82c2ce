"""The :class:`Engine`: runs one job at a time per call, any number of calls at once."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry import context as otel_context

from flowrelay_executor import costs, tracing
from flowrelay_executor.engine.agents import AgentFactory, AgentPool
from flowrelay_executor.engine.frameworks import ADAPTERS, available_frameworks
from flowrelay_executor.engine.human import WaitForHuman
from flowrelay_executor.engine.patterns import Orchestrator
from flowrelay_executor.engine.run import CURRENT_RUN, Emit, Failed, RunState
from flowrelay_executor.engine.streaming import DeltaStream
from flowrelay_executor.errors import Redactor, classify
from flowrelay_executor.jobs import Job, Outcome
from flowrelay_executor.tools import ToolRegistry

__all__ = ["Engine"]

log = logging.getLogger("flowrelay_executor.engine")

#: Why a framework installed here is not offered when the operator left it out.
NOT_ENABLED: Final = "not enabled on this executor (FLOWRELAY_FRAMEWORKS)"


class Engine:
    """Runs jobs with any-agent. One per worker process; ``run`` is safe to call concurrently.

    ``max_event_field_chars`` bounds every free-text field of an event (tool arguments and
    results, agent outputs) after secrets are redacted. ``frameworks`` limits what is
    offered (default: every installed framework); :meth:`self_check` narrows it to those
    that really work here.
    """

    def __init__(
        self,
        *,
        tools: ToolRegistry,
        max_event_field_chars: int = 2000,
        frameworks: Iterable[str] | None = None,
    ) -> None:
        self._tools = tools
        self._max_chars = max_event_field_chars
        enabled = None if frameworks is None else set(frameworks)
        #: Installed frameworks this engine refuses, and why.
        self._unavailable: dict[str, str] = {
            name: NOT_ENABLED
            for name in available_frameworks()
            if enabled is not None and name not in enabled and name != "tinyagent"
        }
        self._orchestrator = Orchestrator(
            tools=tools, pool=lambda: self._pool, unavailable=self._unavailable
        )
        factory = AgentFactory(tools=tools, sub_agent_tool=self._orchestrator.sub_agent_tool)
        self._pool = AgentPool(factory.build)
        _quiet_library_noise()
        costs.warm()

    @property
    def frameworks(self) -> list[str]:
        """The frameworks this engine runs: installed, enabled and not failed."""
        return [name for name in available_frameworks() if name not in self._unavailable]

    @property
    def framework_versions(self) -> dict[str, str]:
        """The version of what implements each offered framework (for operators)."""
        versions = {name: ADAPTERS[name].version() for name in self.frameworks}
        return {name: version for name, version in versions.items() if version}

    async def self_check(self, *, timeout_s: float) -> dict[str, str]:
        """Run a tiny workflow with each offered framework; refuse those that fail.

        Returns the failures (framework -> why); see ``engine.selfcheck``.
        """
        from flowrelay_executor.engine.selfcheck import check_frameworks

        failures = await check_frameworks(self.frameworks, timeout_s=timeout_s)
        self.refuse(failures)
        return failures

    def refuse(self, failures: Mapping[str, str]) -> None:
        """Stop offering frameworks that failed a self-check (framework -> why)."""
        self._unavailable.update(
            {name: f"it failed this executor's start-up self-check: {why}" for name, why in failures.items()}
        )

    async def run(self, job: Job, emit: Emit) -> Outcome:
        """Run ``job``, emitting step events as they happen; never raises for a failed run.

        ``asyncio.CancelledError`` propagates (the caller owns deadlines and cancellation).
        """
        api_key = job.defaults.api_key.get_secret_value() if job.defaults.api_key else None
        run = RunState(
            job=job,
            emit=emit,
            redactor=Redactor.from_environment(extra=[api_key]),
            max_chars=self._max_chars,
        )
        if job.stream is not None:
            run.stream = DeltaStream(spec=job.stream, emit=emit, redactor=run.redactor, attempt=job.attempt)
        run_token = CURRENT_RUN.set(run)
        # The run's span is a child of the caller's span (the trace context its request
        # carried) or the root of a new trace, never a child of whatever span this task is
        # in. any-agent keys per-run callback state by trace id: AgentPool never lets two
        # runs of one trace share an agent instance.
        run_context, span = tracing.start_run(job)
        run.trace_id = span.get_span_context().trace_id
        otel_token = otel_context.attach(run_context)
        outcome: Outcome | None = None
        try:
            outcome = await self._outcome(run)
            return outcome
        finally:
            if run.stream is not None:
                run.stream.close()  # a cancelled or failed call's text so far
            await self._pool.release_all(run.leases, run.trace_id)
            otel_context.detach(otel_token)
            CURRENT_RUN.reset(run_token)
            error = outcome.error.code.value if outcome and outcome.error else None
            tracing.end_run(span, outcome.status if outcome else "cancelled", error)

    async def _outcome(self, run: RunState) -> Outcome:
        """Run it; every failure becomes a failed outcome (cancellation propagates)."""
        try:
            output = await self._orchestrator.execute(run)
        except WaitForHuman:
            return run.outcome(status="waiting")  # the executor saves run.pause and frees the slot
        except Failed:
            return run.outcome(status="failed")
        except Exception as exc:  # noqa: BLE001 - a bug or unexpected library error: report it
            if run.failure is None:
                run.failure = classify(exc, redactor=run.redactor)
                run.log_unclassified(exc)
            return run.outcome(status="failed")
        else:
            # The answer may quote a secret (a tool echoed a key): redact it like events.
            return run.outcome(status="succeeded", output=run.redact(output))

    async def aclose(self) -> None:
        """Close the cached agents' model clients (optional; for a clean worker shutdown)."""
        await self._pool.aclose()


def _quiet_library_noise() -> None:
    """any-agent and any-llm log through rich handlers on stdout: send their records to
    standard logging instead, like every other library of the worker."""
    for name in ("any_agent", "any_llm"):
        library_log = logging.getLogger(name)
        for handler in library_log.handlers[:]:
            library_log.removeHandler(handler)
        library_log.propagate = True
        library_log.setLevel(logging.WARNING)
