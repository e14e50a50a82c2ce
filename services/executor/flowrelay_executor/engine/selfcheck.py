"""The start-up self-check: an executor offers a framework only if a real run works.

Importable is not working: openai-agents imported fine and failed every run, agno failed
every second run of an agent, smolagents refused flowrelay's tools. So before a worker says
it is ready, each framework runs a tiny workflow through the whole engine, exactly as a
user's run would go: any-agent, the framework, its HTTP client and flowrelay's adapter,
callbacks and tool wrapper.

The model is flowrelay's scripted stand-in, served in this process on a loopback port for
the duration of the check (no network, no key, milliseconds per call). The workflow: one
agent with one tool, asked to call it, run twice on the same (warm) agent. It passes when
both runs succeed with the tool's result as output, the trace has exactly one
``tool.started`` with the call's JSON arguments and one ``tool.finished`` with the tool's
return value, and every ``llm.finished`` carries token counts or null plus a ``cost_note``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

from flowrelay_contracts import EventType, Workflow
from flowrelay_executor.jobs import Job, ModelDefaults
from flowrelay_executor.tools import ToolRegistry

__all__ = ["check_frameworks"]

log = logging.getLogger(__name__)

#: The probe tool's name, arguments and the output they must produce.
_TOOL: Final = "flowrelay_selfcheck_add"
_ARGUMENTS: Final = {"a": 2, "b": 3}
_EXPECTED: Final = 5

#: Runs of the same agent: the second one uses the warm instance (agent reuse).
_RUNS: Final = 2


def flowrelay_selfcheck_add(a: int, b: int) -> int:
    """Add two integers (flowrelay's start-up self-check).

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


async def check_frameworks(frameworks: list[str], *, timeout_s: float) -> dict[str, str]:
    """Check each framework; the ones that failed, with the reason (empty: all passed)."""
    from flowrelay.scripted_model import running
    from flowrelay_executor.engine.core import Engine

    tools = ToolRegistry(builtins=False, tools={_TOOL: flowrelay_selfcheck_add})
    engine = Engine(tools=tools, max_event_field_chars=500)
    failures: dict[str, str] = {}
    try:
        async with running() as url:
            for framework in frameworks:
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout_s):
                        problem = await _check(engine, framework, url)
                except TimeoutError:
                    problem = f"no answer within {timeout_s:g} s"
                except Exception as exc:  # noqa: BLE001 - any failure disqualifies the framework
                    problem = f"{type(exc).__name__}: {exc}"
                if problem is None:
                    log.info("framework %s passed its self-check (%.2f s)", framework, time.perf_counter() - started)
                else:
                    log.warning("framework %s is not offered: its self-check failed: %s", framework, problem)
                    failures[framework] = problem
    finally:
        await engine.aclose()
    return failures


async def _check(engine: Any, framework: str, url: str) -> str | None:
    workflow = Workflow.model_validate(
        {"agents": [{"name": "selfcheck", "framework": framework, "tools": [_TOOL]}]}
    )
    for attempt in range(1, _RUNS + 1):
        job = Job(
            run_id=f"selfcheck-{framework}-{attempt}",
            workflow=workflow,
            input=f"#call={_TOOL} {json.dumps(_ARGUMENTS)}",
            timeout_s=60,
            max_turns=4,
            defaults=ModelDefaults(model_id="scripted:selfcheck", scripted_url=url),
        )
        events: list[tuple[EventType, dict[str, Any]]] = []
        outcome = await engine.run(job, lambda type_, data, seen=events: seen.append((type_, data)))
        problem = _judge(outcome, events)
        if problem is not None:
            return f"run {attempt}: {problem}"
    return None


def _judge(outcome: Any, events: list[tuple[EventType, dict[str, Any]]]) -> str | None:
    if outcome.status != "succeeded":
        error = outcome.error
        return f"{outcome.status}: {error.code}: {error.message}" if error else outcome.status
    if str(outcome.output).strip() != str(_EXPECTED):
        return f"output {outcome.output!r}, expected {_EXPECTED!r}"
    of = lambda kind: [d for t, d in events if t == kind]  # noqa: E731
    started, finished = of(EventType.TOOL_STARTED), of(EventType.TOOL_FINISHED)
    if [(d["tool"], d["arguments"]) for d in started] != [(_TOOL, _ARGUMENTS)]:
        return f"tool.started events {started!r}, expected one with arguments {_ARGUMENTS}"
    if [d.get("result") for d in finished] != [_EXPECTED] or any(d.get("error") for d in finished):
        return f"tool.finished events {finished!r}, expected one with result {_EXPECTED}"
    calls = of(EventType.LLM_FINISHED)
    if not calls:
        return "no llm.finished event"
    for call in calls:
        counted = isinstance(call["input_tokens"], int) and isinstance(call["output_tokens"], int)
        unknown = call["input_tokens"] is None and call["output_tokens"] is None and call["cost_note"]
        if not (counted and call["input_tokens"] > 0) and not unknown:
            return f"llm.finished without token counts or a cost_note: {call!r}"
    if {d["agent"] for t, d in events if "agent" in d} != {"selfcheck"}:
        return "events name an agent that did not run"
    return None
