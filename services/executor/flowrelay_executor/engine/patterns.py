"""The workflow patterns, run with any-agent agents (from :func:`flowrelay_contracts.plan`).

* ``simple``: one agent.
* ``sequential``: each agent gets the previous agent's output (structured output as JSON
  text); the run's output is the last one's.
* ``collaborative``: the first agent coordinates; every other agent becomes one of its tools
  (any-agent's "agents as tools": an async function awaiting the sub-agent's ``run_async``).

Each agent step is bracketed by ``agent.started`` / ``agent.finished`` and runs with
``CURRENT_AGENT`` set to that agent, which is how hooks firing inside another agent's run
are told apart (``engine.events``).

Durable steps (``engine.resume``): a sequential step other than the last, and every
completed sub-agent call, leave a checkpoint; a later attempt of the run reuses the
checkpoints that answer the same input instead of calling the model again, and says so
with ``run.resumed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

from pydantic import BaseModel

from flowrelay_contracts import CheckpointKind, EventType, Pattern, WorkflowError, plan
from flowrelay_executor import costs
from flowrelay_executor.engine.agents import AgentPool
from flowrelay_executor.engine.frameworks import adapter
from flowrelay_executor.engine.history import Conversation
from flowrelay_executor.engine.human import ASK_HUMAN, WaitForHuman, pause_state, resumed_messages
from flowrelay_executor.engine.recipes import Recipe, recipe_for
from flowrelay_executor.engine.run import CURRENT_AGENT, CURRENT_RUN, Failed, RunState
from flowrelay_executor.engine.streaming import stream_support
from flowrelay_executor.engine.text import as_text
from flowrelay_executor.engine.tooling import wrap_tool
from flowrelay_executor.errors import InvalidWorkflowError
from flowrelay_executor.tools import ToolRegistry

__all__ = ["Orchestrator"]

#: Argument name of the tool through which a coordinator asks a sub-agent.
SUBAGENT_PARAMETER: Final = "request"


class Orchestrator:
    """Runs a workflow's agents in its pattern; one per engine."""

    def __init__(
        self,
        *,
        tools: ToolRegistry,
        pool: Callable[[], AgentPool],
        unavailable: Mapping[str, str],
    ) -> None:
        self._tools = tools
        self._pool = pool
        self._unavailable = unavailable

    async def execute(self, run: RunState) -> Any:
        """Run the workflow of ``run``'s job; its output (raises ``Failed``)."""
        try:
            workflow_plan = plan(run.job.workflow)
        except WorkflowError as exc:
            raise run.fail(InvalidWorkflowError(f"invalid workflow: {exc}")) from exc
        run.pattern = workflow_plan.pattern
        specs = workflow_plan.agents

        def recipe(spec: Any, sub_agents: tuple[Recipe, ...] = ()) -> Recipe:
            return recipe_for(
                run, spec, tools=self._tools, unavailable=self._unavailable, sub_agents=sub_agents
            )

        if workflow_plan.pattern == Pattern.COLLABORATIVE:
            workers = tuple(recipe(spec) for spec in specs[1:])
            recipes = [recipe(specs[0], workers)]
        else:
            recipes = [recipe(spec) for spec in specs]

        # Create every agent before the first model call, so that a missing key or a
        # broken MCP server of the last agent fails the run before any tokens are spent.
        for each in _with_sub_agents(recipes):
            await self._lease(run, each)

        # The agents whose conversation is the run's own: a chain's steps, or the coordinator.
        sequential = workflow_plan.pattern == Pattern.SEQUENTIAL
        chain = recipes if sequential else recipes[:1]
        run.top_level = frozenset(each.name for each in chain)
        start, prompt, conversation = self._opening(run, chain[0])
        if sequential and run.job.resume is None:
            start, prompt = self._reused_steps(run, chain, prompt)
        output: Any = prompt
        for number in range(start, len(chain)):
            # every step but the last leaves a checkpoint (the last output is the run's)
            name = run.steps.step_name(number + 1) if sequential and number < len(chain) - 1 else None
            try:
                output = await self.invoke(run, chain[number], output if number == start else as_text(output),
                                           checkpoint=name, conversation=conversation if number == 0 else None,
                                           resumed=number == start and run.job.resume is not None)
            except WaitForHuman as wait:
                run.pause = pause_state(run, wait, step_index=number, conversation=conversation if number == 0 else None)
                raise
        if conversation is not None:
            run.turn = conversation.turn(run.job.input, output, answer_is_agents=len(chain) == 1)
        return output

    def _opening(self, run: RunState, first: Recipe) -> tuple[int, str | list[dict[str, Any]], Conversation | None]:
        """Where the run starts: (index in the chain, that agent's prompt, the thread
        conversation of the first agent). A fresh run starts with the first agent on the
        user's input (on a thread: with the earlier turns, ``engine.history``); a run
        resuming after ``ask_human`` starts with the agent that asked, on its saved
        conversation with the answer (``engine.human``)."""
        job = run.job
        if job.resume is not None:
            state = job.resume.state
            run.restore(state)
            messages = resumed_messages(state, job.resume.answer)
            call = run.tool_started(state.agent, ASK_HUMAN, {"question": state.question, "choices": state.choices})
            run.tool_finished(call, job.resume.answer)
            conversation = None
            if state.turn_prefix is not None and state.history is not None:
                conversation = Conversation.resumed(messages, prefix=state.turn_prefix, history=state.history,
                                                    framework=first.framework)
            return state.step_index, messages, conversation
        if job.history is None:
            return 0, job.input, None
        conversation = Conversation.start(job.history, job.input, framework=first.framework,
                                          instructions=first.instructions)
        return 0, conversation.prompt, conversation

    def _reused_steps(self, run: RunState, chain: list[Recipe], prompt: str | list[dict[str, Any]]
                      ) -> tuple[int, str | list[dict[str, Any]]]:
        """The steps of a sequential run an earlier attempt finished (``engine.resume``):
        how many to skip, and the prompt of the first one to run."""
        output: Any = run.job.input
        reused: list[str] = []
        for index, each in enumerate(chain[:-1], start=1):
            found = run.steps.reusable(run.steps.step_name(index), agent=each.name, prompt=as_text(output))
            if found is None:
                break
            run.reuse(found)
            reused.append(each.name)
            output = found.output
        if not reused:
            return 0, prompt
        run.skip_steps(len(reused))
        run.emit(EventType.RUN_RESUMED, {
            "step": len(reused), "agents": reused, "pattern": str(run.pattern), "attempt": run.job.attempt,
        })
        return len(reused), as_text(output)

    async def invoke(
        self,
        run: RunState,
        recipe: Recipe,
        prompt: str | list[dict[str, Any]],
        *,
        checkpoint: str | None = None,
        kind: CheckpointKind = CheckpointKind.AGENT_STEP,
        conversation: Conversation | None = None,
        resumed: bool = False,
    ) -> Any:
        """One agent step: run ``recipe``'s agent on ``prompt``, bracketed by agent events;
        once it finished, its output is checkpointed under the name ``checkpoint`` (if any).
        ``conversation``: the thread this first agent continues (``engine.history``);
        ``resumed``: the step continues after a person answered its ``ask_human``."""
        step = run.begin_step(recipe)
        tally = run.tally(recipe.name)
        before = tally.snapshot()
        started: dict[str, Any] = {"agent": recipe.name, "step": step, "pattern": str(run.pattern)}
        if resumed:
            started["resumed"] = True
        if conversation is not None and not resumed:
            started["history"] = conversation.notice()
        if run.stream is not None:
            started["stream_tokens"], note = stream_support(recipe)
            if note:
                started["stream_note"] = note
        run.emit(EventType.AGENT_STARTED, started)
        lease = run.leases[recipe]
        agent_token = CURRENT_AGENT.set(recipe.name)
        try:
            trace = await lease.agent.run_async(prompt)
        except WaitForHuman:
            raise  # the run pauses (engine.human); nothing failed
        except Exception as exc:
            # A failure already recorded deeper down (a tool, a sub-agent, the turn limit)
            # stays the reported one; this exception is only how it unwound.
            raise run.fail(exc, recipe=recipe, step=step) from exc
        except asyncio.CancelledError:
            # any-agent does not clean up after a cancelled run (it catches Exception only):
            # the run's callback context, trace included, stays in the agent for good.
            # Retire the instance so that state goes away with it.
            run.cancelled = True
            self._pool().retire(lease)
            raise
        finally:
            CURRENT_AGENT.reset(agent_token)
            run.end_step(recipe)
            adapter(recipe.framework).after_run(lease.agent)
        if run.failure is not None:
            # The framework swallowed the stop (it fed a tool's error to the model and
            # carried on): the run has failed all the same.
            raise Failed()
        output = trace.final_output
        if isinstance(output, BaseModel):
            output = output.model_dump(mode="json", by_alias=True)
        spent = tally.since(before)
        run.emit(
            EventType.AGENT_FINISHED,
            {
                "agent": recipe.name,
                "step": step,
                "pattern": str(run.pattern),
                "output": run.clip(output),
                "input_tokens": spent.usage.input_tokens,
                "output_tokens": spent.usage.output_tokens,
                "cost_usd": costs.total(spent.costs),
            },
        )
        if checkpoint is not None:
            run.steps.save(
                checkpoint, kind=kind, step=step, agent=recipe.name, output=run.redact(output),
                # a message list (a thread's first agent) answers the user's input
                prompt=prompt if isinstance(prompt, str) else run.job.input,
                usage=spent.usage, step_costs=spent.costs, cost_note="; ".join(sorted(tally.notes)) or None,
            )
        return output

    def sub_agent_tool(
        self, tool_name: str, sub: Recipe, coordinator: str, strict: bool
    ) -> Callable[..., Awaitable[str]]:
        """``coordinator``'s tool for ``sub``: runs the sub-agent inside the same run.

        ``strict``: the coordinator's provider wants OpenAI strict tool schemas.
        """
        orchestrator = self

        async def ask(request: str) -> str:
            run = CURRENT_RUN.get()
            if run is None:
                raise RuntimeError("a sub-agent tool was called outside Engine.run")
            name = run.steps.call_name(sub.name, request)
            if (found := run.steps.reusable(name, agent=sub.name, prompt=request)) is not None:
                run.reuse(found)
                run.skip_steps(1)
                run.emit(EventType.RUN_RESUMED, {
                    "step": found.step, "agents": [sub.name], "pattern": str(run.pattern),
                    "attempt": run.job.attempt, "call": name,
                })
                return as_text(found.output)
            return as_text(await orchestrator.invoke(run, sub, request, checkpoint=name,
                                                     kind=CheckpointKind.SUB_AGENT_CALL))

        ask.__name__ = ask.__qualname__ = tool_name
        ask.__doc__ = (
            f"Ask the agent '{sub.name}' to handle a request and return its answer. "
            + (f"Its instructions: {sub.instructions[:500]}" if sub.instructions else "")
        ).strip()
        ask.__annotations__ = {SUBAGENT_PARAMETER: str, "return": str}
        return wrap_tool(
            ask,
            tool_name,
            agent=coordinator,
            strict=strict,
            parameter_docs={
                SUBAGENT_PARAMETER: f"What to ask the agent '{sub.name}', in plain words."
            },
        )

    async def _lease(self, run: RunState, recipe: Recipe) -> None:
        if recipe in run.leases:
            return
        try:
            run.leases[recipe] = await self._pool().acquire(recipe, run.trace_id)
        except Exception as exc:
            raise run.fail(exc, recipe=recipe) from exc


def _with_sub_agents(recipes: Iterable[Recipe]) -> list[Recipe]:
    ordered: list[Recipe] = []
    for recipe in recipes:
        ordered.append(recipe)
        ordered.extend(_with_sub_agents(sub for _, sub in recipe.sub_agents))
    return ordered
