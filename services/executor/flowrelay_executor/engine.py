"""Runs one flowrelay workflow with any-agent: the only module that imports ``any_agent``.

What: :class:`Engine` takes a resolved :class:`~flowrelay_executor.jobs.Job`, builds (or
reuses) one any-agent agent per workflow node, runs them in the workflow's pattern, streams
step events through ``emit`` as they happen, and returns an
:class:`~flowrelay_executor.jobs.Outcome` with output, a structured error, tokens and cost.

Why an adapter: any-agent is in soft maintenance; everything that knows its API (agent
creation, callbacks, ``AgentCancel``, MCP config classes, the span attribute names) is here,
so swapping the agent library means rewriting this module only.

Patterns (from :func:`flowrelay_contracts.plan`):

* ``simple``: one agent.
* ``sequential``: each agent gets the previous agent's output (structured output as JSON
  text); the run's output is the last one's.
* ``collaborative``: the first agent coordinates; every other agent becomes one of its tools
  (any-agent's "agents as tools": an async function awaiting the sub-agent's ``run_async``).

Concurrency (checked in any-agent 1.18's source): a run keeps its conversation in locals of
``TinyAgent._run_async``, and any-agent keys its callback contexts by OpenTelemetry trace id,
so one agent instance serves many concurrent runs as long as every run has its own trace
(ensured here by starting each run from an empty OpenTelemetry context). Instances are
therefore shared per configuration ("recipe") and reused across runs; see :class:`_AgentPool`
for what bounds the small state any-agent leaves behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import time
import traceback
import types
import typing
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Union

from any_agent import AgentCancel, AgentConfig, AgentFramework, AnyAgent
from any_agent.callbacks import Callback
from any_agent.config import MCPSse, MCPStdio, MCPStreamableHttp
from any_agent.tools import MCPClient
from any_agent.tracing.attributes import GenAI
from any_llm import AnyLLM
from opentelemetry import context as otel_context
from pydantic import BaseModel, ConfigDict, Field, create_model

from flowrelay_contracts import (
    AgentSpec,
    AgentUsage,
    ErrorCode,
    EventType,
    Pattern,
    RunError,
    Usage,
    WorkflowError,
    plan,
)
from flowrelay_contracts.workflow import KNOWN_FRAMEWORKS
from flowrelay_executor import costs
from flowrelay_executor.errors import (
    FrameworkNotInstalledError,
    InvalidWorkflowError,
    Redactor,
    RunFailure,
    ToolFailure,
    TurnLimitExceeded,
    classify,
)
from flowrelay_executor.jobs import Job, Outcome
from flowrelay_executor.tools import McpTarget, ToolRegistry

__all__ = ["Engine", "ToolRegistry", "available_frameworks"]

log = logging.getLogger(__name__)

#: Emits one step event; called synchronously as the step happens.
Emit = Callable[[EventType, dict[str, Any]], None]

#: Model ids of this form go to flowrelay's scripted stand-in model.
SCRIPTED_PREFIX: Final = "scripted:"
#: The scripted stand-in accepts any key; the openai client insists on one.
_SCRIPTED_API_KEY: Final = "scripted"

#: Retries inside the provider's SDK client. Zero: the openai client would otherwise retry a
#: 429 or a 5xx with backoff (honouring Retry-After, possibly for minutes) inside one run,
#: hiding the cause and eating the run's deadline. A run fails fast with a classified,
#: ``retryable`` error instead; retrying is the job of whoever owns the run.
_PROVIDER_MAX_RETRIES: Final = 0

#: Runs after which a shared agent instance is replaced by a fresh one. any-agent keeps a
#: trace id per run for good (in its span generator's ``first_llm_calls`` set): this bounds
#: it. A new instance costs ~20-40 ms. (Instances whose run was cancelled are replaced at
#: once: see ``Engine._invoke``.)
_AGENT_MAX_RUNS: Final = 1000

#: Python packages that make each any-agent framework importable (tinyagent needs none).
_FRAMEWORK_PACKAGES: Final[dict[str, tuple[str, ...]]] = {
    "tinyagent": (),
    "openai": ("agents",),
    "langchain": ("langchain", "langgraph"),
    "llama_index": ("llama_index.core",),
    "google": ("google.adk",),
    "agno": ("agno",),
    "smolagents": ("smolagents",),
}

#: ``model_args`` keys that would overwrite what the engine itself sends to the model.
_RESERVED_MODEL_ARGS: Final = frozenset(
    {"model", "messages", "tools", "stream", "response_format", "api_key", "api_base"}
)

#: A tool result that is an error any-agent or an MCP client turned into text.
_TOOL_ERROR_TEXT_RE: Final = re.compile(r"^Error calling (?:MCP )?tool\b")

#: Argument name of the tool through which a coordinator asks a sub-agent.
_SUBAGENT_PARAMETER: Final = "request"

#: Nesting depth up to which output_schema is turned into pydantic models.
_SCHEMA_MAX_DEPTH: Final = 16

#: JSON Schema scalar types and the Python types standing for them.
_SCALARS: Final[dict[str, type]] = {"string": str, "integer": int, "number": float, "boolean": bool}
_JSON_TYPE_OF: Final[dict[type, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}

#: The run whose events any-agent callbacks are reporting. Callbacks belong to an agent
#: configuration shared by many concurrent runs; each run task sets its own value.
_CURRENT_RUN: ContextVar[_Run | None] = ContextVar("flowrelay_current_run", default=None)


def available_frameworks() -> list[str]:
    """The any-agent frameworks importable in this process (``tinyagent`` always)."""
    return [name for name in KNOWN_FRAMEWORKS if _framework_installed(name)]


class Engine:
    """Runs jobs with any-agent. One per worker process; ``run`` is safe to call concurrently.

    ``max_event_field_chars`` bounds every free-text field of an event (tool arguments and
    results, agent outputs) after secrets are redacted.
    """

    def __init__(self, *, tools: ToolRegistry, max_event_field_chars: int = 2000) -> None:
        self._tools = tools
        self._max_chars = max_event_field_chars
        self._pool = _AgentPool(self._build_agent)
        _quiet_library_noise()
        costs.warm()

    async def run(self, job: Job, emit: Emit) -> Outcome:
        """Run ``job``, emitting step events as they happen; never raises for a failed run.

        ``asyncio.CancelledError`` propagates (the caller owns deadlines and cancellation).
        """
        api_key = job.defaults.api_key.get_secret_value() if job.defaults.api_key else None
        run = _Run(
            job=job,
            emit=emit,
            redactor=Redactor.from_environment(extra=[api_key]),
            max_chars=self._max_chars,
        )
        run_token = _CURRENT_RUN.set(run)
        # An empty OpenTelemetry context makes this run's agent spans a new trace, whatever
        # span the caller is in: any-agent keys per-run callback state by trace id.
        otel_token = otel_context.attach(otel_context.Context())
        try:
            output = await self._execute(run)
        except _Failed:
            return run.outcome(status="failed")
        except Exception as exc:  # noqa: BLE001 - a bug or unexpected library error: report it
            if run.failure is None:
                # Logged without exc_info: an exception's text may carry a secret.
                log.error(
                    "run %s: unexpected %s: %s\n%s",
                    job.run_id,
                    type(exc).__qualname__,
                    run.redactor.redact(str(exc)),
                    "".join(traceback.format_tb(exc.__traceback__)),
                )
                run.failure = classify(exc, redactor=run.redactor)
            return run.outcome(status="failed")
        else:
            # The answer may quote a secret (a tool echoed a key): redact it like events.
            return run.outcome(status="succeeded", output=run.redact(output))
        finally:
            await self._pool.release_all(run.leases)
            otel_context.detach(otel_token)
            _CURRENT_RUN.reset(run_token)

    async def aclose(self) -> None:
        """Close the cached agents' model clients (optional; for a clean worker shutdown)."""
        await self._pool.aclose()

    # -- running ------------------------------------------------------------------------

    async def _execute(self, run: _Run) -> Any:
        try:
            workflow_plan = plan(run.job.workflow)
        except WorkflowError as exc:
            raise run.fail(InvalidWorkflowError(f"invalid workflow: {exc}")) from exc
        run.pattern = workflow_plan.pattern
        specs = workflow_plan.agents
        if workflow_plan.pattern == Pattern.COLLABORATIVE:
            workers = [self._recipe(run, spec) for spec in specs[1:]]
            recipes = [self._recipe(run, specs[0], sub_agents=tuple(workers))]
        else:
            recipes = [self._recipe(run, spec) for spec in specs]

        # Create every agent before the first model call, so that a missing key or a
        # broken MCP server of the last agent fails the run before any tokens are spent.
        for recipe in _with_sub_agents(recipes):
            await self._lease(run, recipe)

        if workflow_plan.pattern == Pattern.SEQUENTIAL:
            output: Any = run.job.input
            for recipe in recipes:
                output = await self._invoke(run, recipe, _as_text(output))
            return output
        return await self._invoke(run, recipes[0], run.job.input)

    async def _invoke(self, run: _Run, recipe: _Recipe, prompt: str) -> Any:
        """One agent step: run ``recipe``'s agent on ``prompt``, bracketed by agent events."""
        step = run.begin_step(recipe)
        tally = run.tally(recipe.name)
        before = tally.snapshot()
        run.emit(
            EventType.AGENT_STARTED,
            {"agent": recipe.name, "step": step, "pattern": str(run.pattern)},
        )
        lease = run.leases[recipe]
        try:
            trace = await lease.agent.run_async(prompt)
        except Exception as exc:
            # A failure already recorded deeper down (a tool, a sub-agent, the turn limit)
            # stays the reported one; this exception is only how it unwound.
            raise run.fail(exc, recipe=recipe, step=step) from exc
        except asyncio.CancelledError:
            # any-agent does not clean up after a cancelled run (it catches Exception only):
            # the run's callback context, trace included, stays in the agent for good.
            # Retire the instance so that state goes away with it.
            self._pool.retire(lease)
            raise
        finally:
            run.end_step(recipe)
        output = trace.final_output
        if isinstance(output, BaseModel):
            output = output.model_dump(mode="json", by_alias=True)
        spent = tally.since(before)
        run.emit(
            EventType.AGENT_FINISHED,
            {
                "agent": recipe.name,
                "step": step,
                "output": run.clip(output),
                "input_tokens": spent.usage.input_tokens,
                "output_tokens": spent.usage.output_tokens,
                "cost_usd": costs.total(spent.costs),
            },
        )
        return output

    async def _lease(self, run: _Run, recipe: _Recipe) -> None:
        if recipe in run.leases:
            return
        try:
            run.leases[recipe] = await self._pool.acquire(recipe)
        except Exception as exc:
            raise run.fail(exc, recipe=recipe) from exc

    # -- recipes: what shapes an agent ----------------------------------------------------

    def _recipe(
        self, run: _Run, spec: AgentSpec, *, sub_agents: tuple[_Recipe, ...] = ()
    ) -> _Recipe:
        """Check ``spec`` and resolve everything that shapes its agent (the reuse key)."""
        where = {"agent": spec.name}
        if spec.framework not in _FRAMEWORK_PACKAGES:
            raise run.fail(
                InvalidWorkflowError(
                    f"agent '{spec.name}': unknown framework '{spec.framework}' (known: "
                    f"{', '.join(KNOWN_FRAMEWORKS)})",
                    **where,
                )
            )
        if not _framework_installed(spec.framework):
            raise run.fail(
                FrameworkNotInstalledError(
                    f"agent '{spec.name}' uses framework '{spec.framework}', which is not "
                    f"installed on this executor: pip install 'any-agent[{spec.framework}]' "
                    f"(installed: {', '.join(available_frameworks())})",
                    **where,
                )
            )
        reserved = sorted(_RESERVED_MODEL_ARGS & spec.model_args.keys())
        if reserved:
            raise run.fail(
                InvalidWorkflowError(
                    f"agent '{spec.name}': model_args may not set {', '.join(reserved)} (the "
                    "engine sets them)",
                    **where,
                )
            )
        tools: list[str | McpTarget] = []
        for tool in spec.tools:
            try:
                resolved = self._tools.resolve(tool)
            except RunFailure as exc:
                exc.agent = spec.name
                raise run.fail(exc) from exc
            tools.append(resolved if isinstance(resolved, McpTarget) else str(tool))
        sub_tool_names = [_function_name(sub.name) for sub in sub_agents]
        clashes = sorted(
            name
            for name in set(sub_tool_names)
            if sub_tool_names.count(name) > 1 or name in {t for t in tools if isinstance(t, str)}
        )
        if clashes:
            raise run.fail(
                InvalidWorkflowError(
                    f"agent '{spec.name}': the tool name(s) {', '.join(clashes)} would be used "
                    "twice (sub-agents are offered as tools named after them): rename an agent",
                    **where,
                )
            )
        model = self._model(run, spec)
        return _Recipe(
            name=spec.name,
            framework=spec.framework,
            instructions=spec.instructions,
            model=model,
            model_args=_frozen_json(spec.model_args),
            output_schema=_frozen_json(spec.output_schema) if spec.output_schema else None,
            tools=tuple(tools),
            sub_agents=tuple(zip(sub_tool_names, sub_agents, strict=True)),
        )

    def _model(self, run: _Run, spec: AgentSpec) -> _Model:
        defaults = run.job.defaults
        model_id = spec.model_id or defaults.model_id
        api_base = api_key = None
        if spec.model_id is None:
            api_base = defaults.api_base
            api_key = defaults.api_key.get_secret_value() if defaults.api_key else None
        if model_id.startswith(SCRIPTED_PREFIX):
            name = model_id.removeprefix(SCRIPTED_PREFIX)
            if not defaults.scripted_url:
                raise run.fail(
                    InvalidWorkflowError(
                        f"agent '{spec.name}' asks for the scripted model '{model_id}', but this "
                        "executor has no scripted model configured",
                        agent=spec.name,
                    )
                )
            return _Model(
                label=model_id,
                provider="openai",
                provider_model=f"openai:{name}",
                price_as=f"openai:{name}",
                price_note=f"scripted stand-in, priced as openai:{name}",
                api_base=defaults.scripted_url,
                api_key=_SCRIPTED_API_KEY,
                llm_args=_llm_args("openai"),
            )
        try:
            provider, _ = AnyLLM.split_model_provider(model_id)
            provider_class = AnyLLM.get_provider_class(provider)
        except Exception as exc:
            raise run.fail(
                _UnknownModel(
                    f"agent '{spec.name}': cannot use model id '{model_id}' ({exc}); write it as "
                    "'<provider>:<model>', e.g. 'openai:gpt-4o-mini'",
                    agent=spec.name,
                )
            ) from exc
        if (missing := getattr(provider_class, "MISSING_PACKAGES_ERROR", None)) is not None:
            raise run.fail(
                FrameworkNotInstalledError(
                    f"agent '{spec.name}': model provider '{provider}' needs packages that are "
                    f"not installed on this executor: pip install 'any-llm-sdk[{provider}]' "
                    f"({missing})",
                    agent=spec.name,
                )
            )
        env_name = getattr(provider_class, "ENV_API_KEY_NAME", None)
        key_digest = None
        if api_key is None and env_name:
            # Part of the reuse key, so a rotated (or removed) key builds a new agent.
            value = os.environ.get(env_name, "")
            key_digest = hashlib.sha256(value.encode()).hexdigest()[:16] if value else ""
        return _Model(
            label=model_id,
            provider=str(provider),
            provider_model=model_id,
            price_as=model_id,
            price_note=None,
            api_base=api_base,
            api_key=api_key,
            env_key_digest=key_digest,
            llm_args=_llm_args(str(provider), provider_class),
        )

    # -- building agents ----------------------------------------------------------------

    async def _build_agent(self, recipe: _Recipe) -> _Built:
        """Create the agent for ``recipe``, connecting its MCP servers first.

        MCP servers are connected here rather than by any-agent so that a failed connection
        is closed in the task that opened it (anyio requires it) and reported as the tool's
        failure, not as a provider or internal error.
        """
        strict = recipe.model.provider == "openai"
        clients: list[MCPClient] = []
        try:
            tools: list[Any] = []
            for tool in recipe.tools:
                if isinstance(tool, McpTarget):
                    functions = await _connect_mcp(tool, recipe, clients)
                    tools.extend(
                        _guard_tool(f, f.__name__, agent=recipe.name, strict=strict)
                        for f in functions
                    )
                else:
                    resolved = self._tools.resolve(tool)
                    assert callable(resolved)
                    tools.append(_guard_tool(resolved, tool, agent=recipe.name, strict=strict))
            for tool_name, sub in recipe.sub_agents:
                tools.append(self._sub_agent_tool(tool_name, sub, strict=strict))
            agent = await AnyAgent.create_async(recipe.framework, self._config(recipe, tools))
        except BaseException:
            await _disconnect(clients)
            raise
        return _Built(agent=agent, mcp_clients=clients)

    def _config(self, recipe: _Recipe, tools: list[Any]) -> AgentConfig:
        with _no_sse_warning():
            return self._unchecked_config(recipe, tools)

    def _unchecked_config(self, recipe: _Recipe, tools: list[Any]) -> AgentConfig:
        return AgentConfig(
            model_id=recipe.model.provider_model,
            api_base=recipe.model.api_base,
            api_key=recipe.model.api_key,
            name=recipe.name,
            description=_describe_agent(recipe),
            instructions=recipe.instructions or None,
            tools=tools,
            # Our own list (a fresh one per agent: any-agent inserts its span callbacks into
            # it): the default prints rich panels to stdout.
            callbacks=[_EventCallback(recipe)],
            model_args=json.loads(recipe.model_args) or None,
            output_type=_output_type(recipe),
            any_llm_args=dict(recipe.model.llm_args),
        )

    def _sub_agent_tool(
        self, tool_name: str, sub: _Recipe, *, strict: bool
    ) -> Callable[..., Awaitable[str]]:
        """The coordinator's tool for ``sub``: runs the sub-agent inside the same run.

        ``strict``: the coordinator's provider wants OpenAI strict tool schemas.
        """
        engine = self

        async def ask(request: str) -> str:
            run = _CURRENT_RUN.get()
            if run is None:
                raise RuntimeError("a sub-agent tool was called outside Engine.run")
            return _as_text(await engine._invoke(run, sub, request))

        ask.__name__ = ask.__qualname__ = tool_name
        ask.__doc__ = (
            f"Ask the agent '{sub.name}' to handle a request and return its answer. "
            + (f"Its instructions: {sub.instructions[:500]}" if sub.instructions else "")
        ).strip()
        ask.__annotations__ = {_SUBAGENT_PARAMETER: str, "return": str}
        ask.__input_schema__ = _input_schema(  # type: ignore[attr-defined]
            inspect.signature(ask),
            {_SUBAGENT_PARAMETER: str},
            strict=strict,
        )
        return ask


# -- per-run state ----------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    """Tokens and call costs of one agent in one run (all its steps)."""

    usage: Usage = field(default_factory=Usage)
    costs: list[float | None] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    turns: int = 0

    def snapshot(self) -> tuple[Usage, int]:
        return self.usage, len(self.costs)

    def since(self, mark: tuple[Usage, int]) -> _Tally:
        usage, count = mark
        return _Tally(
            usage=Usage(
                input_tokens=self.usage.input_tokens - usage.input_tokens,
                output_tokens=self.usage.output_tokens - usage.output_tokens,
            ),
            costs=self.costs[count:],
        )


class _Failed(Exception):
    """The run has failed; ``_Run.failure`` says why. Unwinds to ``Engine.run``."""


class _StopRun(AgentCancel):
    """Raised from a callback to stop the agent now (``_Run.failure`` says why).

    An ``AgentCancel``: any-agent passes it through unwrapped instead of feeding the
    problem back to the model.
    """


class _UnknownModel(RunFailure):
    code = ErrorCode.UNKNOWN_MODEL


class _Run:
    """What one run accumulates: events, tallies, its failure, the agents it leases."""

    def __init__(self, *, job: Job, emit: Emit, redactor: Redactor, max_chars: int) -> None:
        self.job = job
        self.redactor = redactor
        self.pattern = Pattern.SIMPLE
        self.failure: RunError | None = None
        self.leases: dict[_Recipe, _Lease] = {}
        self._emit = emit
        self._max_chars = max_chars
        self._steps = 0
        self._tallies: dict[str, _Tally] = {}
        self._current_step: dict[str, int] = {}
        self._llm_started: dict[str, float] = {}
        self._tool_started: dict[str, tuple[str, float]] = {}
        self._tool_errors: dict[str, BaseException] = {}

    # events ------------------------------------------------------------------------------

    def emit(self, event: EventType, data: dict[str, Any]) -> None:
        self._emit(event, data)

    def clip(self, value: Any) -> Any:
        """``value`` with secrets redacted and text cut to the event field limit."""
        scrubbed = self._scrub(value)
        if isinstance(scrubbed, str):
            return _truncate(scrubbed, self._max_chars)
        if isinstance(scrubbed, (dict, list)):
            text = json.dumps(scrubbed, ensure_ascii=False, default=str)
            if len(text) > self._max_chars:
                return _truncate(text, self._max_chars)
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
        return self.redactor.redact(str(value))

    # steps and tallies ---------------------------------------------------------------------

    def begin_step(self, recipe: _Recipe) -> int:
        self._steps += 1
        self._current_step[recipe.name] = self._steps
        return self._steps

    def end_step(self, recipe: _Recipe) -> None:
        self._current_step.pop(recipe.name, None)

    def step_of(self, agent: str) -> int | None:
        return self._current_step.get(agent)

    def tally(self, agent: str) -> _Tally:
        if agent not in self._tallies:
            self._tallies[agent] = _Tally()
        return self._tallies[agent]

    # failures ------------------------------------------------------------------------------

    def fail(
        self, exc: BaseException, *, recipe: _Recipe | None = None, step: int | None = None
    ) -> _Failed:
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
            if (
                model is not None
                and model.api_key == _SCRIPTED_API_KEY
                and self.failure.code in (ErrorCode.PROVIDER_UNREACHABLE,)
            ):
                self.failure.message += " (the scripted stand-in model is not running)"
        return _Failed()

    # callback hooks ------------------------------------------------------------------------

    def llm_started(self, recipe: _Recipe) -> None:
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
            raise _StopRun(f"turn limit of {self.job.max_turns} reached")
        self._llm_started[recipe.name] = time.perf_counter()
        self.emit(
            EventType.LLM_STARTED,
            {"agent": recipe.name, "model": recipe.model.label, "turn": tally.turns},
        )

    def llm_finished(self, recipe: _Recipe, input_tokens: int, output_tokens: int) -> None:
        tally = self.tally(recipe.name)
        started = self._llm_started.pop(recipe.name, None)
        cost, note = costs.price(recipe.model.price_as, input_tokens, output_tokens)
        if cost is not None and recipe.model.price_note:
            note = recipe.model.price_note
        tally.usage = tally.usage + Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        tally.costs.append(cost)
        if note:
            tally.notes.add(note)
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
                "latency_ms": _elapsed_ms(started),
            },
        )

    def tool_started(self, recipe: _Recipe, tool: str, arguments: Any) -> None:
        self._tool_started[recipe.name] = (tool, time.perf_counter())
        self.emit(
            EventType.TOOL_STARTED,
            {"agent": recipe.name, "tool": tool, "arguments": self.clip(arguments)},
        )

    def tool_raised(self, agent: str, exc: BaseException) -> None:
        self._tool_errors[agent] = exc

    def tool_finished(self, recipe: _Recipe, result: Any) -> None:
        tool, started = self._tool_started.pop(recipe.name, ("unknown", None))
        raised = self._tool_errors.pop(recipe.name, None)
        error: str | None = None
        if raised is not None:
            failure = ToolFailure.from_exception(tool, raised, redactor=self.redactor)
            failure.agent, failure.step = recipe.name, self.step_of(recipe.name)
            error = f"{type(raised).__name__}: {raised}"
            self.fail(failure)
        elif self.failure is not None:
            error = self.failure.message  # a sub-agent behind this tool failed
        elif isinstance(result, str) and _TOOL_ERROR_TEXT_RE.match(result):
            error = result  # an MCP tool's error, already turned into text
            self.fail(
                ToolFailure(
                    f"tool '{tool}' failed: {result}",
                    tool=tool,
                    agent=recipe.name,
                    step=self.step_of(recipe.name),
                )
            )
        data: dict[str, Any] = {
            "agent": recipe.name,
            "tool": tool,
            "result": self.clip(result),
            "latency_ms": _elapsed_ms(started),
        }
        if error is not None:
            data["error"] = self.clip(error)
        self.emit(EventType.TOOL_FINISHED, data)
        if error is not None:
            # Fail fast instead of letting the model see the error and carry on: the run's
            # outcome then names the broken tool instead of an answer built around it.
            raise _StopRun(f"tool '{tool}' failed")

    # outcome -------------------------------------------------------------------------------

    def outcome(self, *, status: Literal["succeeded", "failed"], output: Any = None) -> Outcome:
        agents = [
            AgentUsage(
                agent=name,
                usage=tally.usage,
                cost_usd=costs.total(tally.costs),
                cost_note="; ".join(sorted(tally.notes)) or None,
            )
            for name, tally in self._tallies.items()
        ]
        usage = sum((a.usage for a in agents), Usage())
        notes = sorted({a.cost_note for a in agents if a.cost_note})
        return Outcome(
            status=status,
            output=output if status == "succeeded" else None,
            error=self.failure if status == "failed" else None,
            usage=usage,
            agents=agents,
            cost_usd=costs.total([a.cost_usd for a in agents]),
            cost_note="; ".join(notes) or None,
        )


class _EventCallback(Callback):
    """any-agent callback of one agent configuration: forwards hooks to the current run.

    Arguments are read the tinyagent way first (request dicts, ``ChatCompletion``), then from
    the span attributes any-agent's own span callback has just set, which every framework
    fills the same way.
    """

    def __init__(self, recipe: _Recipe) -> None:
        self._recipe = recipe

    def before_llm_call(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := _CURRENT_RUN.get()) is not None:
            run.llm_started(self._recipe)
        return context

    def after_llm_call(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := _CURRENT_RUN.get()) is not None:
            usage = getattr(args[0], "usage", None) if args else None
            if usage is not None:
                input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
                output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            else:
                attributes = _span_attributes(context)
                input_tokens = int(attributes.get(GenAI.USAGE_INPUT_TOKENS, 0) or 0)
                output_tokens = int(attributes.get(GenAI.USAGE_OUTPUT_TOKENS, 0) or 0)
            run.llm_finished(self._recipe, input_tokens, output_tokens)
        return context

    def before_tool_execution(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := _CURRENT_RUN.get()) is not None:
            request = args[0] if args else None
            if isinstance(request, dict) and "name" in request:
                name, arguments = str(request["name"]), request.get("arguments", {})
            else:
                attributes = _span_attributes(context)
                name = str(attributes.get(GenAI.TOOL_NAME, "unknown"))
                arguments = _maybe_json(attributes.get(GenAI.TOOL_ARGS, {}))
            run.tool_started(self._recipe, name, arguments)
        return context

    def after_tool_execution(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := _CURRENT_RUN.get()) is not None:
            run.tool_finished(self._recipe, args[0] if args else None)
        return context


# -- recipes and the agent pool ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    """Where an agent's model is and how it is priced. ``api_key`` never appears in repr."""

    label: str  # as the workflow wrote it; shown in events and errors
    provider: str
    provider_model: str  # what any-llm gets
    price_as: str
    price_note: str | None
    api_base: str | None
    api_key: str | None = field(repr=False)
    env_key_digest: str | None = None
    llm_args: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class _Recipe:
    """Everything that shapes an agent: equal recipes may share one agent instance."""

    name: str
    framework: str
    instructions: str
    model: _Model
    model_args: str  # canonical JSON
    output_schema: str | None  # canonical JSON
    tools: tuple[str | McpTarget, ...]
    sub_agents: tuple[tuple[str, _Recipe], ...] = ()

    @property
    def per_run(self) -> bool:
        """MCP connections live in anyio task groups that must be closed by the task that
        opened them, so agents with MCP servers are built and closed within one run."""
        return any(isinstance(tool, McpTarget) for tool in self.tools)


@dataclass(eq=False, slots=True)
class _Built:
    agent: AnyAgent
    mcp_clients: list[MCPClient]


@dataclass(eq=False, slots=True)
class _Lease:
    built: _Built
    recipe: _Recipe
    shared: bool
    in_flight: int = 0
    runs: int = 0
    retired: bool = False

    @property
    def agent(self) -> AnyAgent:
        return self.built.agent


class _AgentPool:
    """Agent instances by recipe, shared by concurrent runs and reused across runs.

    Creation is deduplicated (200 runs arriving for a new recipe build one agent) and runs in
    its own task, so a run cancelled while waiting does not cancel it for the others. An
    instance is retired after ``_AGENT_MAX_RUNS`` runs and closed once its last run ends.
    """

    def __init__(self, build: Callable[[_Recipe], Awaitable[_Built]]) -> None:
        self._build = build
        self._shared: dict[_Recipe, _Lease] = {}
        self._creating: dict[_Recipe, asyncio.Task[_Lease]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def acquire(self, recipe: _Recipe) -> _Lease:
        if recipe.per_run:
            lease = _Lease(built=await self._build(recipe), recipe=recipe, shared=False)
        else:
            lease = self._shared.get(recipe) or await asyncio.shield(self._creation(recipe))
        lease.in_flight += 1
        lease.runs += 1
        if lease.runs >= _AGENT_MAX_RUNS:
            self.retire(lease)
        return lease

    def retire(self, lease: _Lease) -> None:
        """Hand out no more runs to ``lease``'s agent; it is closed after its last run."""
        lease.retired = True
        if self._shared.get(lease.recipe) is lease:
            del self._shared[lease.recipe]

    async def release_all(self, leases: dict[_Recipe, _Lease]) -> None:
        for lease in leases.values():
            lease.in_flight -= 1
            if not lease.shared:
                await _close(lease.built)  # in this task: see _Recipe.per_run
            elif lease.retired and lease.in_flight == 0:
                task = asyncio.get_running_loop().create_task(_close(lease.built))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        leases.clear()

    async def aclose(self) -> None:
        """Retire every cached agent and close those no run is using."""
        for lease in list(self._shared.values()):
            self.retire(lease)
            if lease.in_flight == 0:
                await _close(lease.built)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _creation(self, recipe: _Recipe) -> asyncio.Task[_Lease]:
        task = self._creating.get(recipe)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._create(recipe))
            self._creating[recipe] = task
            task.add_done_callback(_retrieve_exception)
        return task

    async def _create(self, recipe: _Recipe) -> _Lease:
        try:
            lease = _Lease(built=await self._build(recipe), recipe=recipe, shared=True)
            self._shared[recipe] = lease
            return lease
        finally:
            del self._creating[recipe]


# -- tools ------------------------------------------------------------------------------


def _guard_tool(
    function: Callable[..., Any], name: str, *, agent: str, strict: bool
) -> Callable[..., Any]:
    """Wrap a registry tool so the run learns about its exception.

    any-agent catches tool exceptions and hands the model ``"Error calling tool: ..."``;
    the exception object itself would be lost. The wrapper records it on the current run
    (see ``_Run.tool_finished``) and re-raises. It also carries a typed JSON schema of the
    parameters: tinyagent would describe every parameter as a string.
    """
    hints = _type_hints(function)

    def note(exc: BaseException) -> None:
        run = _CURRENT_RUN.get()
        if run is not None:
            run.tool_raised(agent, exc)

    guarded: Callable[..., Any]
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await function(*args, **kwargs)
            except Exception as exc:
                note(exc)
                raise

    else:

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                note(exc)
                raise

    guarded.__name__ = name
    guarded.__annotations__ = hints
    guarded.__input_schema__ = _input_schema(  # type: ignore[attr-defined]
        inspect.signature(function), hints, strict=strict
    )
    return guarded


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError, AttributeError, SyntaxError):  # unresolvable: keep as is
        return dict(getattr(function, "__annotations__", {}))


def _input_schema(
    signature: inspect.Signature, hints: dict[str, Any], *, strict: bool
) -> dict[str, Any]:
    """JSON schema of a tool's parameters, in the subset OpenAI strict mode accepts.

    Scalars (and lists and optionals of them, and string literals) get their JSON type;
    anything else is described as a string, as tinyagent does (it parses JSON text back
    into list/dict parameters). In strict mode every parameter is required.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        properties[name] = _json_type(hints.get(name, str))
        if strict or parameter.default is inspect.Parameter.empty:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def _json_type(annotation: Any) -> dict[str, Any]:
    if annotation in _JSON_TYPE_OF:
        return {"type": _JSON_TYPE_OF[annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and args and all(isinstance(a, str) for a in args):
        return {"type": "string", "enum": list(args)}
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            inner = _json_type(others[0])
            if isinstance(inner.get("type"), str):
                return {**inner, "type": [inner["type"], "null"]}
    if origin is list and len(args) == 1 and args[0] in _JSON_TYPE_OF:
        return {"type": "array", "items": {"type": _JSON_TYPE_OF[args[0]]}}
    return {"type": "string"}


def _mcp_params(target: McpTarget) -> MCPStdio | MCPSse | MCPStreamableHttp:
    tools = list(target.tools) if target.tools is not None else None
    if target.url is not None:
        if target.transport == "sse":
            with _no_sse_warning():
                return MCPSse(url=target.url, tools=tools)
        return MCPStreamableHttp(url=target.url, tools=tools)
    assert target.command is not None
    # any-agent starts stdio servers with the worker's whole environment (MCPStdio.env is
    # ignored): run the command through env(1) with the secret variables removed.
    unset = [arg for name in target.unset_env for arg in ("-u", name)]
    return MCPStdio(
        command=shutil.which("env") or "/usr/bin/env",
        args=[*unset, "--", target.command, *target.args],
        tools=tools,
    )


# -- structured output ------------------------------------------------------------------


def _model_from_schema(schema: dict[str, Any], name: str) -> type[BaseModel]:
    """A pydantic model for a JSON object schema (what ``AgentConfig.output_type`` needs).

    Supports the common subset: scalar types, ``enum``/``const``, arrays, nested objects,
    ``anyOf``/``oneOf``/type lists (incl. null), local ``$ref`` to ``$defs``, descriptions.
    Properties not in ``required`` become optional (default null).
    """
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _object_model(schema, name, defs, depth=0)


def _object_model(
    schema: dict[str, Any], name: str, defs: dict[str, Any], depth: int
) -> type[BaseModel]:
    required = set(schema.get("required", []))
    fields: dict[str, Any] = {}
    for index, (prop, sub) in enumerate((schema.get("properties") or {}).items()):
        sub = sub if isinstance(sub, dict) else {}
        annotation = _annotation(sub, f"{name}_{_function_name(prop)}", defs, depth + 1)
        python_name = prop if _usable_field_name(prop) else f"field_{index}"
        options: dict[str, Any] = {"description": sub.get("description")}
        if python_name != prop:
            options["alias"] = prop
        if prop in required:
            fields[python_name] = (annotation, Field(..., **options))
        else:
            fields[python_name] = (annotation | None, Field(None, **options))
    return create_model(name, __config__=ConfigDict(populate_by_name=True), **fields)


def _usable_field_name(name: str) -> bool:
    # Other names (``1st``, ``_id``, ``schema``, ``model_config``...) become aliases.
    return (
        name.isidentifier()
        and not name.startswith(("_", "model_"))
        and not hasattr(BaseModel, name)
    )


def _annotation(schema: dict[str, Any], name: str, defs: dict[str, Any], depth: int) -> Any:
    if depth > _SCHEMA_MAX_DEPTH:
        return Any
    if ref := schema.get("$ref"):
        target = defs.get(str(ref).rsplit("/", 1)[-1])
        return _annotation(target, name, defs, depth + 1) if isinstance(target, dict) else Any
    if "const" in schema:
        return Literal[schema["const"]]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return Literal[tuple(schema["enum"])]
    for keyword in ("anyOf", "oneOf"):
        if isinstance(schema.get(keyword), list) and schema[keyword]:
            options = [
                _annotation(s, f"{name}_{i}", defs, depth + 1)
                for i, s in enumerate(schema[keyword])
            ]
            return functools.reduce(lambda a, b: Union[a, b], options)  # noqa: UP007
    kind = schema.get("type")
    if isinstance(kind, list):
        options = [_annotation({**schema, "type": k}, name, defs, depth) for k in kind]
        if not options:
            return Any
        return functools.reduce(lambda a, b: Union[a, b], options)  # noqa: UP007
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "null":
        return type(None)
    if kind == "array":
        items = schema.get("items")
        return (
            list[_annotation(items, f"{name}_item", defs, depth + 1)]
            if isinstance(items, dict)
            else list[Any]
        )
    if kind == "object":
        if schema.get("properties"):
            return _object_model(schema, name, defs, depth)
        extra = schema.get("additionalProperties")
        return (
            dict[str, _annotation(extra, f"{name}_value", defs, depth + 1)]
            if isinstance(extra, dict)
            else dict[str, Any]
        )
    return Any


def _output_type(recipe: _Recipe) -> type[BaseModel] | None:
    if recipe.output_schema is None:
        return None
    try:
        return _model_from_schema(json.loads(recipe.output_schema), _output_model_name(recipe.name))
    except (TypeError, ValueError) as exc:  # e.g. an unhashable enum value
        raise InvalidWorkflowError(
            f"agent '{recipe.name}': output_schema is not supported: {exc}", agent=recipe.name
        ) from exc


def _output_model_name(agent: str) -> str:
    # OpenAI wants ^[a-zA-Z0-9_-]{1,64}$ for a json_schema name.
    return f"{_function_name(agent)[:50]}_output"


# -- small helpers ----------------------------------------------------------------------


@functools.cache
def _framework_installed(framework: str) -> bool:
    packages = _FRAMEWORK_PACKAGES.get(framework)
    if packages is None:
        return False
    try:
        return all(importlib.util.find_spec(package) is not None for package in packages)
    except (ImportError, ValueError):
        return False


def _llm_args(provider: str, provider_class: Any = None) -> tuple[tuple[str, Any], ...]:
    """Arguments for ``AnyLLM.create``: any-llm's unified exceptions (classifiable by status)
    and no SDK retries where the provider lets us set them."""
    args: dict[str, Any] = {"unified_exceptions": True}
    support = getattr(
        provider_class, "MAX_RETRIES_SUPPORT", "native" if provider == "openai" else None
    )
    if support in ("native", "mapped"):
        args["max_retries"] = _PROVIDER_MAX_RETRIES
    return tuple(sorted(args.items()))


def _function_name(name: str) -> str:
    """``name`` as a valid function (tool) name: letters, digits and ``_``, at most 64."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name.strip()) or "agent"
    if not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = f"agent_{cleaned}"
    return cleaned[:64]


def _describe_agent(recipe: _Recipe) -> str:
    return recipe.instructions[:200] if recipe.instructions else f"flowrelay agent '{recipe.name}'"


def _with_sub_agents(recipes: Iterable[_Recipe]) -> list[_Recipe]:
    ordered: list[_Recipe] = []
    for recipe in recipes:
        ordered.append(recipe)
        ordered.extend(_with_sub_agents(sub for _, sub in recipe.sub_agents))
    return ordered


def _frozen_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _as_text(output: Any) -> str:
    return (
        output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    )


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _span_attributes(context: Any) -> dict[str, Any]:
    span = getattr(context, "current_span", None)
    return dict(getattr(span, "attributes", None) or {})


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"…[{len(text) - limit} more chars]"
    return text[: max(0, limit - len(marker))] + marker


def _elapsed_ms(started: float | None) -> float | None:
    return None if started is None else round((time.perf_counter() - started) * 1000, 3)


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Every waiter may have been cancelled; mark a creation failure as seen so asyncio does
    # not log "exception was never retrieved" (the runs that waited reported it).
    if not task.cancelled():
        task.exception()


async def _close(built: _Built) -> None:
    """Close the MCP connections and the model client of an agent no longer used."""
    await _disconnect(built.mcp_clients)
    try:
        await built.agent.cleanup_async()
        client = getattr(getattr(built.agent, "llm", None), "client", None)
        close = getattr(client, "close", None)
        if close is not None and inspect.iscoroutinefunction(close):
            await close()
    except Exception:  # closing is best effort; the worker may be shutting down
        log.debug("closing agent %s failed", built.agent.config.name, exc_info=True)


async def _connect_mcp(target: McpTarget, recipe: _Recipe, clients: list[MCPClient]) -> list[Any]:
    """Connect one MCP server (appending its client to ``clients``) and list its tools."""
    with _no_sse_warning():
        client = MCPClient(
            config=_mcp_params(target), framework=AgentFramework.from_string(recipe.framework)
        )
    clients.append(client)
    label = target.url or target.command or "?"
    try:
        await client.connect()
        return await client.list_tools()
    except (Exception, BaseExceptionGroup, asyncio.CancelledError) as exc:
        # When a transport fails, anyio cancels the task group the transport opened in this
        # task: the failure arrives here as a CancelledError. Closing the transport here, in
        # this task, ends that cancellation and re-raises the transport's real error.
        failure: BaseException = exc
        clients.remove(client)
        try:
            await client.disconnect()
        except (Exception, BaseExceptionGroup) as closing:  # noqa: BLE001 - it is reported
            failure = closing
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this run itself is being cancelled: not the server's fault
        cause = _innermost(failure)
        raise ToolFailure(
            f"agent '{recipe.name}' could not use MCP server {label}: "
            f"{type(cause).__name__}: {cause}",
            tool=f"mcp:{label}",
            exception_type=type(cause).__name__,
            agent=recipe.name,
        ) from failure


async def _disconnect(clients: list[MCPClient]) -> None:
    for client in reversed(clients):
        try:
            await client.disconnect()
        except (Exception, BaseExceptionGroup):  # a half-open connection may fail to close
            log.debug("disconnecting MCP client failed", exc_info=True)
    clients.clear()


def _innermost(exc: BaseException) -> BaseException:
    """The most specific exception inside ``exc`` (through exception groups and causes)."""
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            return exc


@contextlib.contextmanager
def _no_sse_warning() -> Iterator[None]:
    """Silence any-agent's "SSE is deprecated" warning while building configs.

    AgentConfig and MCPClient validate values against every member of a union including
    MCPSse, whose validator warns: once per tool per agent built, about nothing we
    configured. (Building a config never awaits, so no other run sees the filter.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SSE is deprecated", category=DeprecationWarning)
        yield


def _quiet_library_noise() -> None:
    """any-agent and any-llm log through rich handlers on stdout: send their records to
    standard logging instead, like every other library of the worker."""
    for name in ("any_agent", "any_llm"):
        library_log = logging.getLogger(name)
        for handler in library_log.handlers[:]:
            library_log.removeHandler(handler)
        library_log.propagate = True
        library_log.setLevel(logging.WARNING)
