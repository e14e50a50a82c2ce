"""Building any-agent agents from recipes, and the pool that shares them across runs.

Concurrency (checked in any-agent 1.18's source): a run keeps its conversation in locals of
the framework's run, and any-agent keys its callback contexts by OpenTelemetry trace id, so
one agent instance serves many concurrent runs as long as every run has its own trace id.
``Engine.run`` gives each run a span of its own, in the caller's trace when its request
carried one (runs of one trace then share a trace id: :class:`AgentPool` gives such a run an
instance of its own while another run of that trace uses the shared one).
Instances are therefore shared per recipe and reused across runs; :class:`AgentPool` bounds
the small state any-agent leaves behind.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from any_agent import AgentConfig, AnyAgent

from flowrelay_executor.engine.events import EventCallback
from flowrelay_executor.engine.frameworks import adapter
from flowrelay_executor.engine.mcp import MCPClient, connect_mcp, disconnect, no_sse_warning
from flowrelay_executor.engine.recipes import Recipe
from flowrelay_executor.engine.schemas import output_type
from flowrelay_executor.engine.tooling import wrap_tool
from flowrelay_executor.tools import McpTarget, ToolRegistry

__all__ = ["AgentFactory", "AgentPool", "Built", "Lease"]

log = logging.getLogger(__name__)

#: Runs after which a shared agent instance is replaced by a fresh one. any-agent keeps a
#: trace id per run for good (in its span generator's ``first_llm_calls`` set): this bounds
#: it. A new instance costs ~20-40 ms. (Instances whose run was cancelled are replaced at
#: once: see ``patterns.Orchestrator.invoke``.)
AGENT_MAX_RUNS: Final = 1000

#: Makes a coordinator's tool for one sub-agent: (tool name, sub-agent, coordinator, strict).
SubAgentTool = Callable[[str, Recipe, str, bool], Callable[..., Any]]


@dataclass(eq=False, slots=True)
class Built:
    agent: AnyAgent
    mcp_clients: list[MCPClient]


@dataclass(eq=False, slots=True)
class Lease:
    built: Built
    recipe: Recipe
    shared: bool
    #: One run at a time (see ``FrameworkAdapter.concurrent_runs``); idle between runs.
    exclusive: bool = False
    in_flight: int = 0
    runs: int = 0
    retired: bool = False
    #: Trace ids of the runs using the instance now (any-agent keys its state by them).
    traces: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def agent(self) -> AnyAgent:
        return self.built.agent


class AgentFactory:
    """Creates the any-agent agent of a recipe: wrapped tools, MCP servers, callbacks."""

    def __init__(self, *, tools: ToolRegistry, sub_agent_tool: SubAgentTool) -> None:
        self._tools = tools
        self._sub_agent_tool = sub_agent_tool
        self._prepared: set[str] = set()

    async def build(self, recipe: Recipe) -> Built:
        """Create the agent for ``recipe``, connecting its MCP servers first."""
        framework = adapter(recipe.framework)
        if recipe.framework not in self._prepared:
            framework.prepare()
            self._prepared.add(recipe.framework)
        strict = recipe.model.provider == "openai"
        clients: list[MCPClient] = []
        try:
            tools: list[Any] = []
            for tool in recipe.tools:
                if isinstance(tool, McpTarget):
                    functions = await connect_mcp(tool, recipe, clients)
                    tools.extend(
                        wrap_tool(f, f.__name__, agent=recipe.name, strict=strict) for f in functions
                    )
                else:
                    resolved = self._tools.resolve(tool)
                    assert callable(resolved)
                    tools.append(wrap_tool(resolved, tool, agent=recipe.name, strict=strict))
            for tool_name, sub in recipe.sub_agents:
                tools.append(self._sub_agent_tool(tool_name, sub, recipe.name, strict))
            tools = [framework.adapt_tool(tool) for tool in tools]
            with no_sse_warning():
                config = self._config(recipe, tools)
            agent = await AnyAgent.create_async(recipe.framework, config)
            framework.install(agent)
        except BaseException:
            await disconnect(clients)
            raise
        return Built(agent=agent, mcp_clients=clients)

    @staticmethod
    def _config(recipe: Recipe, tools: list[Any]) -> AgentConfig:
        return AgentConfig(
            model_id=recipe.model.provider_model,
            api_base=recipe.model.api_base,
            api_key=recipe.model.api_key,
            name=recipe.name,
            description=recipe.description,
            instructions=recipe.instructions or None,
            tools=tools,
            # Our own list (a fresh one per agent: any-agent inserts its span callbacks into
            # it): the default prints rich panels to stdout.
            callbacks=[EventCallback(recipe, adapter(recipe.framework))],
            model_args=adapter(recipe.framework).model_args(json.loads(recipe.model_args), dict(recipe.model.llm_args))
            or None,
            output_type=output_type(recipe),
            any_llm_args=dict(recipe.model.llm_args),
        )


class AgentPool:
    """Agent instances by recipe, shared by concurrent runs and reused across runs.

    Creation is deduplicated (200 runs arriving for a new recipe build one agent) and runs in
    its own task, so a run cancelled while waiting does not cancel it for the others. An
    instance is retired after :data:`AGENT_MAX_RUNS` runs and closed once its last run ends.
    Frameworks that cannot share an instance between concurrent runs get one instance per
    concurrent run, kept idle between runs for the next.

    Runs that continue one caller trace share a trace id, and any-agent would mix the
    callback state of two such runs on one instance: a run whose trace id is already using
    the shared instance gets an instance of its own for the run instead.
    """

    def __init__(self, build: Callable[[Recipe], Awaitable[Built]]) -> None:
        self._build = build
        self._shared: dict[Recipe, Lease] = {}
        self._creating: dict[Recipe, asyncio.Task[Lease]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._idle: dict[Recipe, list[Lease]] = {}

    async def acquire(self, recipe: Recipe, trace_id: int = 0) -> Lease:
        if recipe.per_run:
            lease = Lease(built=await self._build(recipe), recipe=recipe, shared=False)
        elif not adapter(recipe.framework).concurrent_runs:
            idle = self._idle.get(recipe)
            if idle:
                lease = idle.pop()
            else:
                built = await self._build(recipe)
                lease = Lease(built=built, recipe=recipe, shared=False, exclusive=True)
        else:
            lease = self._shared.get(recipe) or await asyncio.shield(self._creation(recipe))
            if lease.traces[trace_id]:
                lease = Lease(built=await self._build(recipe), recipe=recipe, shared=False)
        lease.traces[trace_id] += 1
        lease.in_flight += 1
        lease.runs += 1
        if lease.runs >= AGENT_MAX_RUNS:
            self.retire(lease)
        return lease

    def retire(self, lease: Lease) -> None:
        """Hand out no more runs to ``lease``'s agent; it is closed after its last run."""
        lease.retired = True
        if self._shared.get(lease.recipe) is lease:
            del self._shared[lease.recipe]

    async def release_all(self, leases: dict[Recipe, Lease], trace_id: int = 0) -> None:
        for lease in leases.values():
            lease.in_flight -= 1
            lease.traces[trace_id] -= 1
            if not lease.traces[trace_id]:
                del lease.traces[trace_id]
            if lease.exclusive and not lease.retired:
                self._idle.setdefault(lease.recipe, []).append(lease)
            elif not lease.shared:
                await _close(lease.built)  # in this task: see Recipe.per_run
            elif lease.retired and lease.in_flight == 0:
                task = asyncio.get_running_loop().create_task(_close(lease.built))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        leases.clear()

    async def aclose(self) -> None:
        """Retire every cached agent and close those no run is using."""
        for idle in self._idle.values():
            for lease in idle:
                await _close(lease.built)
        self._idle.clear()
        for lease in list(self._shared.values()):
            self.retire(lease)
            if lease.in_flight == 0:
                await _close(lease.built)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _creation(self, recipe: Recipe) -> asyncio.Task[Lease]:
        task = self._creating.get(recipe)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._create(recipe))
            self._creating[recipe] = task
            task.add_done_callback(_retrieve_exception)
        return task

    async def _create(self, recipe: Recipe) -> Lease:
        try:
            lease = Lease(built=await self._build(recipe), recipe=recipe, shared=True)
            self._shared[recipe] = lease
            return lease
        finally:
            del self._creating[recipe]


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Every waiter may have been cancelled; mark a creation failure as seen so asyncio does
    # not log "exception was never retrieved" (the runs that waited reported it).
    if not task.cancelled():
        task.exception()


async def _close(built: Built) -> None:
    """Close the MCP connections and the model client of an agent no longer used."""
    await disconnect(built.mcp_clients)
    try:
        await built.agent.cleanup_async()
        client = getattr(getattr(built.agent, "llm", None), "client", None)
        close = getattr(client, "close", None)
        if close is not None and inspect.iscoroutinefunction(close):
            await close()
    except Exception:  # closing is best effort; the worker may be shutting down
        log.debug("closing agent %s failed", built.agent.config.name, exc_info=True)
