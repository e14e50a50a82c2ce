"""What one run accumulates while it executes: events, tallies, its failure, its leases.

Every framework reports through the same few methods here (``llm_started``,
``llm_finished``, ``tool_started``, ``tool_finished``), so every framework's trace has the
same shape. Two context variables tell shared code which run and which agent it is serving:
agents (and their callbacks and tools) are shared by concurrent runs, and in collaborative
runs one agent's hooks can fire inside another's (see ``engine.events``).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from any_agent import AgentCancel

from flowrelay_contracts import (
    AgentUsage,
    Checkpoint,
    ErrorCode,
    EventType,
    Pattern,
    RunError,
    Usage,
)
from flowrelay_executor import costs
from flowrelay_executor.engine.budget import Budget
from flowrelay_executor.engine.resume import StepLog
from flowrelay_executor.engine.text import elapsed_ms, truncate
from flowrelay_executor.errors import BudgetExceeded, Redactor, TurnLimitExceeded, classify
from flowrelay_executor.jobs import Job, Outcome, PauseState

if TYPE_CHECKING:
    from flowrelay_executor.engine.agents import Lease
    from flowrelay_executor.engine.recipes import Recipe
    from flowrelay_executor.engine.streaming import DeltaStream

log = logging.getLogger("flowrelay_executor.engine")

#: Emits one step event; called synchronously as the step happens.
Emit = Callable[[EventType, dict[str, Any]], None]

#: Frames of a traceback logged for an error the engine could not classify.
_LOGGED_FRAMES: Final = 12

#: The run whose events callbacks and tools are reporting. Agents are shared by many
#: concurrent runs; each run task sets its own value.
CURRENT_RUN: ContextVar[RunState | None] = ContextVar("flowrelay_current_run", default=None)

#: The agent running innermost in this context: hooks of any other agent are not its own.
CURRENT_AGENT: ContextVar[str | None] = ContextVar("flowrelay_current_agent", default=None)


class Failed(Exception):
    """The run has failed; ``RunState.failure`` says why. Unwinds to ``Engine.run``."""


class StopRun(AgentCancel):
    """Raised from a hook to stop the agent now (``RunState.failure`` says why).

    An ``AgentCancel``: any-agent passes it through unwrapped instead of feeding the problem
    back to the model. Frameworks that swallow it anyway are stopped at their next hook.
    """


@dataclass(slots=True)
class Tally:
    """Tokens and call costs of one agent in one run (all its steps)."""

    usage: Usage = field(default_factory=Usage)
    costs: list[float | None] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    turns: int = 0

    def snapshot(self) -> tuple[Usage, int]:
        return self.usage, len(self.costs)

    def since(self, mark: tuple[Usage, int]) -> Tally:
        usage, count = mark
        return Tally(
            usage=Usage(
                input_tokens=self.usage.input_tokens - usage.input_tokens,
                output_tokens=self.usage.output_tokens - usage.output_tokens,
            ),
            costs=self.costs[count:],
        )


@dataclass(slots=True)
class _ToolCall:
    agent: str
    tool: str
    started: float


class RunState:
    """What one run accumulates: events, tallies, its failure, the agents it leases."""

    def __init__(self, *, job: Job, emit: Emit, redactor: Redactor, max_chars: int) -> None:
        self.job = job
        self.redactor = redactor
        self.pattern = Pattern.SIMPLE
        self.failure: RunError | None = None
        self.leases: dict[Recipe, Lease] = {}
        #: OpenTelemetry trace id of the run (the caller's, or its own).
        self.trace_id = 0
        #: Set when the run's task was cancelled (deadline, cancel request): an agent still
        #: running in a thread (smolagents) stops at its next hook.
        self.cancelled = False
        #: Checkpoints to reuse from earlier attempts, and the ones this attempt writes.
        self.steps = StepLog(job, emit)  # type: ignore[arg-type]  # it sends CHECKPOINT items
        self.budget = Budget(max_cost_usd=job.max_cost_usd, max_tokens=job.max_tokens)
        #: Set when the run streams tokens (``options.stream_tokens``).
        self.stream: DeltaStream | None = None
        #: What a run on a thread adds to it: (messages, form), once its answer is known.
        self.turn: tuple[list[dict[str, Any]], str] | None = None
        #: Each agent's live message list, as its last ``before_llm_call`` saw it (tinyagent):
        #: what a pause saves (``engine.human``).
        self.live_messages: dict[str, list[Any]] = {}
        #: Agents whose conversation is the run's own (they may ask a person and pause).
        self.top_level: frozenset[str] = frozenset()
        #: Set when the run paused for a person's answer.
        self.pause: PauseState | None = None
        self._clock = time.monotonic()
        self._executed_before = job.resume.state.executed_s if job.resume else 0.0
        self._emit = emit
        self._max_chars = max_chars
        self._steps = 0
        self._tallies: dict[str, Tally] = {}
        self._current_step: dict[str, int] = {}
        self._llm_started: dict[str, float] = {}

    # events ------------------------------------------------------------------------------

    def emit(self, event: EventType, data: dict[str, Any]) -> None:
        self._emit(event, data)

    def clip(self, value: Any) -> Any:
        """``value`` as JSON data, secrets redacted, text cut to the event field limit."""
        scrubbed = self._scrub(value)
        if isinstance(scrubbed, str):
            return truncate(scrubbed, self._max_chars)
        if isinstance(scrubbed, (dict, list)):
            text = json.dumps(scrubbed, ensure_ascii=False, default=str)
            if len(text) > self._max_chars:
                return truncate(text, self._max_chars)
        return scrubbed

    def redact(self, value: Any) -> Any:
        """``value`` with secrets redacted in every string it contains (no truncation)."""
        return self._scrub(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {str(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub(v) for v in value]
        if value is None or isinstance(value, (int, float, bool)):
            return value
        dump = getattr(value, "model_dump", None)  # a pydantic model a tool returned
        if callable(dump):
            return self._scrub(dump(mode="json"))
        return self.redactor.redact(str(value))

    # steps and tallies ---------------------------------------------------------------------

    def begin_step(self, recipe: Recipe) -> int:
        self._steps += 1
        self._current_step[recipe.name] = self._steps
        return self._steps

    def end_step(self, recipe: Recipe) -> None:
        self._current_step.pop(recipe.name, None)

    def step_of(self, agent: str) -> int | None:
        return self._current_step.get(agent)

    def skip_steps(self, count: int) -> None:
        """Steps finished by an earlier attempt keep their numbers: the next one continues."""
        self._steps += count

    def reuse(self, checkpoint: Checkpoint) -> None:
        """Count a reused step's spend as its agent's (it was paid once, by an earlier attempt)."""
        tally = self.tally(checkpoint.agent)
        tally.usage = tally.usage + checkpoint.usage
        tally.costs.append(checkpoint.cost_usd)
        if checkpoint.cost_note:
            tally.notes.add(checkpoint.cost_note)

    def tally(self, agent: str) -> Tally:
        if agent not in self._tallies:
            self._tallies[agent] = Tally()
        return self._tallies[agent]

    @property
    def step_count(self) -> int:
        """Steps begun so far (earlier segments included)."""
        return self._steps

    def executed_s(self) -> float:
        """Seconds this run has executed, earlier segments (before a pause) included."""
        return self._executed_before + time.monotonic() - self._clock

    def tallies_state(self) -> dict[str, dict[str, Any]]:
        """The tallies as JSON data (saved when the run pauses)."""
        return {name: {"input_tokens": t.usage.input_tokens, "output_tokens": t.usage.output_tokens,
                       "costs": t.costs, "notes": sorted(t.notes), "turns": t.turns}
                for name, t in self._tallies.items()}

    def restore(self, state: PauseState) -> None:
        """Continue the tallies and step numbers of the segments before a pause."""
        self._steps = state.steps
        for name, saved in state.tallies.items():
            self._tallies[name] = Tally(
                usage=Usage(input_tokens=saved["input_tokens"], output_tokens=saved["output_tokens"]),
                costs=list(saved["costs"]), notes=set(saved["notes"]), turns=saved["turns"])

    # failures ------------------------------------------------------------------------------

    def fail(
        self, exc: BaseException, *, recipe: Recipe | None = None, step: int | None = None
    ) -> Failed:
        """Record ``exc`` as the run's failure unless one is recorded already."""
        if self.failure is None:
            model = recipe.model if recipe else None
            self.failure = classify(
                exc,
                agent=recipe.name if recipe else None,
                step=step,
                model=model.label if model else None,
                endpoint=model.api_base if model else None,
                redactor=self.redactor,
            )
            if model is not None and model.scripted and self.failure.code in (
                ErrorCode.PROVIDER_UNREACHABLE,
            ):
                self.failure.message += " (the scripted stand-in model is not running)"
            if self.failure.code == ErrorCode.INTERNAL_ERROR:
                self.log_unclassified(exc)
        return Failed()

    def log_unclassified(self, exc: BaseException) -> None:
        """An error no rule recognised: the operator needs its text and where it came from.

        Logged redacted and without ``exc_info`` (an exception's text or locals may hold a
        secret), with the run id the user reports.
        """
        frames = traceback.format_tb(exc.__traceback__)[-_LOGGED_FRAMES:]
        log.error(
            "run %s: unclassified %s: %s\n%s",
            self.job.run_id,
            type(exc).__qualname__,
            self.redactor.redact(str(exc)),
            self.redactor.redact("".join(frames)),
        )

    def stop_if_failed(self) -> None:
        """Stop the agent now if the run has already failed (a hook calls this).

        Some frameworks swallow the ``StopRun`` of a failing tool and ask the model again;
        their next hook lands here.
        """
        if self.failure is not None:
            raise StopRun(self.failure.message)
        if self.cancelled:
            raise StopRun("the run was cancelled")

    # hooks ------------------------------------------------------------------------------------

    def llm_started(self, recipe: Recipe) -> None:
        self.stop_if_failed()
        tally = self.tally(recipe.name)
        tally.turns += 1
        if tally.turns > self.job.max_turns:
            self.fail(
                TurnLimitExceeded(
                    f"agent '{recipe.name}' made {self.job.max_turns} LLM calls (max_turns) "
                    "without finishing; raise max_turns, or make its instructions or tools lead to an "
                    "answer sooner",
                    agent=recipe.name,
                    step=self.step_of(recipe.name),
                )
            )
            raise StopRun(f"turn limit of {self.job.max_turns} reached")
        self._llm_started[recipe.name] = time.perf_counter()
        self.emit(
            EventType.LLM_STARTED,
            {"agent": recipe.name, "model": recipe.model.label, "turn": tally.turns},
        )

    def llm_finished(self, recipe: Recipe, tokens: tuple[int, int] | None, no_tokens_note: str) -> None:
        """One model call ended; ``tokens`` is None when the framework gave no counts."""
        tally = self.tally(recipe.name)
        started = self._llm_started.pop(recipe.name, None)
        if tokens is None:
            input_tokens = output_tokens = None
            cost, note = None, no_tokens_note
        else:
            input_tokens, output_tokens = tokens
            cost, note = costs.price(recipe.model.price_as, input_tokens, output_tokens)
            if cost is not None and recipe.model.price_note:
                note = recipe.model.price_note
            tally.usage = tally.usage + Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        tally.costs.append(cost)
        if note:
            tally.notes.add(note)
        if self.budget.active and self.failure is None:
            usage, total_cost = self.spent()
            if why := self.budget.exceeded(usage, total_cost, cost_note=note, tokens_known=tokens is not None):
                # Recorded now, raised at the agent's next hook or when it returns: raising
                # from an after-call hook is not honoured the same way by every framework.
                self.fail(BudgetExceeded(why, agent=recipe.name, step=self.step_of(recipe.name)))
        self.emit(
            EventType.LLM_FINISHED,
            {
                "agent": recipe.name,
                "model": recipe.model.label,
                "turn": tally.turns,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cost_usd": cost,
                "cost_note": note,
                "latency_ms": elapsed_ms(started),
            },
        )

    def tool_started(self, agent: str, tool: str, arguments: dict[str, Any]) -> _ToolCall:
        self.emit(
            EventType.TOOL_STARTED,
            {"agent": agent, "tool": tool, "arguments": self.clip(arguments)},
        )
        return _ToolCall(agent=agent, tool=tool, started=time.perf_counter())

    def tool_finished(self, call: _ToolCall, result: Any, *, error: str | None = None) -> None:
        data: dict[str, Any] = {
            "agent": call.agent,
            "tool": call.tool,
            "result": self.clip(result),
            "latency_ms": elapsed_ms(call.started),
        }
        if error is not None:
            data["error"] = self.clip(error)
        self.emit(EventType.TOOL_FINISHED, data)

    # outcome -------------------------------------------------------------------------------

    def spent(self) -> tuple[Usage, float | None]:
        """What the run has spent so far: this attempt's calls, the reused steps, and what
        earlier attempts spent on calls no checkpoint keeps."""
        usage = sum((tally.usage for tally in self._tallies.values()), self.job.spent)
        all_costs = [cost for tally in self._tallies.values() for cost in tally.costs]
        return usage, costs.total([*all_costs, self.job.spent_cost_usd])

    def outcome(self, *, status: Literal["succeeded", "failed", "waiting"], output: Any = None) -> Outcome:
        agents = [
            AgentUsage(
                agent=name,
                usage=tally.usage,
                cost_usd=costs.total(tally.costs),
                cost_note="; ".join(sorted(tally.notes)) or None,
            )
            for name, tally in self._tallies.items()
        ]
        usage, total_cost = self.spent()
        notes = sorted({a.cost_note for a in agents if a.cost_note})
        steps = self.steps
        this_attempt = sum((a.usage for a in agents), Usage()) - steps.reused
        turn = self.turn if status == "succeeded" else None
        return Outcome(
            status=status,
            output=output if status == "succeeded" else None,
            error=self.failure if status == "failed" else None,
            usage=usage,
            agents=agents,
            cost_usd=total_cost,
            cost_note="; ".join(notes) or None,
            unsaved=this_attempt - steps.saved,
            unsaved_cost_usd=_difference(
                costs.total([a.cost_usd for a in agents]), costs.total(steps.reused_costs), costs.total(steps.saved_costs)
            ),
            # the turn may quote a secret (a tool echoed a key), like the output
            turn=self.redact(turn[0]) if turn else None,
            turn_form=turn[1] if turn else "messages",
            pause=self.pause if status == "waiting" else None,
        )


def _difference(whole: float | None, *parts: float | None) -> float | None:
    """``whole`` minus ``parts``; None if any is unknown (never a made-up figure)."""
    if whole is None or any(part is None for part in parts):
        return None
    return max(0.0, whole - sum(part for part in parts if part is not None))
