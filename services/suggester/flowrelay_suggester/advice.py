"""Suggestion-only mode: workflow-building guidance for a run that is not executed.

With ``FLOWRELAY_EXECUTION=suggest`` the API sends run requests to the suggester instead of
the executors. Nothing runs and no model is called; the user gets, for their graph:

* how flowrelay will run it (the pattern, and what each agent receives),
* what the analysis finds (:mod:`flowrelay_suggester.analysis`),
* whether the result will be structured, and what an agent without ``model_id`` uses,
* how to switch to real execution.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

from flowrelay_contracts import Pattern, RunRequested, Suggestion, WorkflowError, WorkflowPlan
from flowrelay_contracts.workflow import DEFAULT_FRAMEWORK
from flowrelay_suggester import analysis
from flowrelay_suggester.analysis import Hints
from flowrelay_suggester.rules import FRAMEWORK_EXTRAS

#: Most agents named one by one in the data-flow description; longer graphs are summarised.
MAX_AGENTS_DESCRIBED = 12

#: The closing suggestion of every suggestion-only run.
EXECUTION_MODE = Suggestion(
    code="suggestion_only_mode",
    title="Nothing was executed",
    detail="flowrelay is in suggestion-only mode: the workflow was checked and explained, no "
    "agent ran and no model was called.",
    fix="To run workflows for real, start the API with FLOWRELAY_EXECUTION=execute, run at least "
    "one executor, and give it a model: FLOWRELAY_DEFAULT_MODEL plus the provider's key (e.g. "
    "OPENAI_API_KEY), or the scripted model for offline use.",
)


def advise(request: RunRequested, *, hints: Hints | None = None) -> list[Suggestion]:
    """Guidance for ``request``'s workflow, ending with how to switch to real execution."""
    hints = hints or Hints()
    planned = analysis.try_plan(request.workflow)
    if isinstance(planned, WorkflowError):
        return [*analysis.problems(request.workflow, planned), EXECUTION_MODE]
    assert planned is not None
    timeout_s = request.options.timeout_s or hints.default_timeout_s
    return [
        _data_flow(planned),
        *analysis.review(request.workflow, timeout_s=timeout_s),
        *_output_checks(planned),
        *_model_checks(planned, hints=hints),
        *_framework_checks(planned),
        EXECUTION_MODE,
    ]


def _data_flow(planned: WorkflowPlan) -> Suggestion:
    """How the graph will run: the pattern and what each agent gets as input."""
    names = [f"`{agent.name}`" for agent in planned.agents]
    if planned.pattern == Pattern.SIMPLE:
        return Suggestion(
            code="pattern_simple",
            title="Runs as a single agent",
            detail=f"{names[0]} receives the run's input and its answer is the run's output.",
            fix="To split the work, add agents and connect them as a chain (sequential) or from one "
            "coordinator to the others (collaborative).",
        )
    if planned.pattern == Pattern.SEQUENTIAL:
        steps = [f"{names[0]} receives the run's input"]
        steps += [f"{later} receives {earlier}'s answer" for earlier, later in pairwise(names)]
        return Suggestion(
            code="pattern_sequential",
            title=f"Runs as a sequential chain of {len(names)} agents",
            detail=f"{' -> '.join(_shorten(names))}: "
            + "; ".join(_shorten(steps))
            + f". The run's output is {names[-1]}'s answer.",
            fix="Write each agent's instructions for exactly its step and the form of what it "
            "receives from the previous agent; reorder the chain by reconnecting the edges.",
        )
    coordinator, helpers = names[0], names[1:]
    return Suggestion(
        code="pattern_collaborative",
        title=f"Runs as a coordinator with {len(helpers)} sub-agents",
        detail=f"{coordinator} receives the run's input and may call "
        f"{', '.join(_shorten(helpers))} as tools, each getting the request {coordinator} writes "
        f"for it. The run's output is {coordinator}'s final answer.",
        fix=f"Tell {coordinator} in its instructions what each sub-agent is for; give each "
        "sub-agent instructions that stand on their own, since it sees only what the "
        "coordinator sends it.",
    )


def _output_checks(planned: WorkflowPlan) -> Iterator[Suggestion]:
    final = analysis.final_agent(planned)
    if final.output_schema is None:
        yield Suggestion(
            code="missing_output_schema",
            title="The result will be free text",
            detail=f"`{final.name}` gives the run's output and has no `output_schema`, so the "
            "answer is whatever text it writes.",
            fix=f"If a program reads the result, set `output_schema` on `{final.name}` to a JSON "
            'Schema object (`{"type": "object", "properties": {...}}`); the output is then '
            "validated JSON.",
        )


def _model_checks(planned: WorkflowPlan, *, hints: Hints) -> Iterator[Suggestion]:
    unpinned = [agent.name for agent in planned.agents if not agent.model_id]
    if not unpinned:
        return
    uses = f"`{hints.default_model}`" if hints.default_model else "the server's default model"
    yield Suggestion(
        code="agent_without_model",
        title="Some agents use the server's default model",
        detail=f"{', '.join(f'`{name}`' for name in _shorten(unpinned))} "
        + (
            "names no `model_id`, so it runs"
            if len(unpinned) == 1
            else "name no `model_id`, so they run"
        )
        + f" on {uses} (FLOWRELAY_DEFAULT_MODEL).",
        fix="Set `model_id` (`<provider>:<model>`, e.g. `openai:gpt-4o-mini`) on agents that need "
        "a particular model; the executors need that provider's key.",
    )


def _framework_checks(planned: WorkflowPlan) -> Iterator[Suggestion]:
    for framework in sorted({agent.framework for agent in planned.agents}):
        if framework == DEFAULT_FRAMEWORK or framework not in FRAMEWORK_EXTRAS:
            continue  # tinyagent is built in; unknown names are reported by the analysis
        yield Suggestion(
            code="framework_needs_extra",
            title=f"Framework `{framework}` must be installed on the executors",
            detail=f"Agents using `{framework}` run only on executors that have its any-agent extra.",
            fix=f"Install `any-agent[{FRAMEWORK_EXTRAS[framework]}]` in the executor image, or use "
            f"`{DEFAULT_FRAMEWORK}`, which is built in.",
        )


def _shorten(items: list[str]) -> list[str]:
    if len(items) <= MAX_AGENTS_DESCRIBED:
        return items
    hidden = len(items) - MAX_AGENTS_DESCRIBED + 1
    return [*items[: MAX_AGENTS_DESCRIBED - 1], f"... ({hidden} more)"]
