"""Guidance read from the workflow graph itself, whatever the run's outcome.

Each check looks at the planned workflow (:func:`flowrelay_contracts.plan`) for one kind of
weakness (an agent with no instructions, a chain longer than its deadline, an MCP server
the executors cannot reach...) and returns :class:`Suggestion` items. A graph that cannot be
planned yields one suggestion per :class:`WorkflowProblem`, pointing at the node or edge.

Everything here is pure (no I/O), so failure guidance and suggestion-only mode share it and
unit tests call it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlparse

from flowrelay_contracts import (
    AgentSpec,
    McpServer,
    Pattern,
    Suggestion,
    Workflow,
    WorkflowError,
    WorkflowPlan,
    plan,
)
from flowrelay_contracts.workflow import DEFAULT_FRAMEWORK, KNOWN_FRAMEWORKS

#: Rough wall time of one agent's part of a run with a hosted model: a couple of LLM calls
#: and maybe a tool call. Deliberately modest, so a warning means the deadline is really
#: too tight rather than "could be tight with a slow model".
ESTIMATED_AGENT_SECONDS = 10.0

#: Host names that mean "this machine": inside an executor's container that is the
#: executor itself, not the machine where the user started the MCP server.
_LOCAL_HOSTNAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
)

#: WorkflowProblem message fragment -> what to change; first match wins.
_PROBLEM_FIXES: tuple[tuple[str, str], ...] = (
    (
        "cycle",
        "Remove one edge of the cycle: flowrelay runs chains and coordinator stars, not loops.",
    ),
    (
        "duplicate agent name",
        "Give every agent a unique `name`; it is how the coordinator calls it.",
    ),
    ("duplicate node id", "Give every node a unique `id`."),
    ("duplicate", "Delete the repeated edge."),
    ("unknown node", "Point the edge at an existing node id, or delete it."),
    ("to itself", "Delete the edge from the node to itself."),
    ("only 'agent' nodes", "Set the node's `type` to `agent` or remove it from the graph."),
    ("no agent node", "Add at least one agent node."),
    ("json schema", 'Make `output_schema` a valid JSON Schema object (`{"type": "object", ...}`).'),
    ("structured output", 'Make `output_schema` an object schema (`"type": "object"`).'),
    (
        "coordinator",
        "Draw an edge from one coordinator agent to every other agent, and none between the others.",
    ),
    ("branches", "Keep a sequential chain linear: each agent has at most one next agent."),
    ("not on the chain", "Connect every agent into the one chain, or remove the stray agents."),
    ("exactly one start", "Connect the agents into one chain with a single first agent."),
    (
        "pattern",
        (
            "Connect the agents as one chain (sequential) or from one coordinator to all others "
            "(collaborative), or set `pattern` explicitly."
        ),
    ),
)
_DEFAULT_PROBLEM_FIX = "Correct the workflow at the place named and submit the run again."


@dataclass(frozen=True, kw_only=True)
class Hints:
    """What the deployment knows that a message does not carry (read from settings).

    ``None`` means unknown: the guidance then names the variable without a value.
    """

    default_model: str | None = None
    default_timeout_s: float | None = None
    max_timeout_s: float | None = None


def try_plan(workflow: Workflow | None) -> WorkflowPlan | WorkflowError | None:
    """Plan ``workflow``; the :class:`WorkflowError` is returned, not raised."""
    if workflow is None:
        return None
    try:
        return plan(workflow)
    except WorkflowError as exc:
        return exc


def review(workflow: Workflow | None, *, timeout_s: float | None = None) -> list[Suggestion]:
    """Everything worth fixing in ``workflow``, most important first.

    ``timeout_s`` is the run's effective deadline (``None`` if unknown: no duration check).
    """
    planned = try_plan(workflow)
    if planned is None:
        return []
    if isinstance(planned, WorkflowError):
        assert workflow is not None
        return problems(workflow, planned)
    return [
        *_coordinator_checks(planned),
        *_instruction_checks(planned),
        *_framework_checks(planned),
        *_deadline_checks(planned, timeout_s=timeout_s),
        *_mcp_checks(planned),
    ]


def problems(workflow: Workflow, error: WorkflowError) -> list[Suggestion]:
    """One suggestion per reason the graph cannot be planned."""
    if workflow.pattern == Pattern.COLLABORATIVE and len(workflow.nodes) < 2:
        only = workflow.nodes[0].data.name if workflow.nodes else "the coordinator"
        return [
            Suggestion(
                code="coordinator_without_subagents",
                title="The coordinator has no sub-agents",
                detail=f"The workflow is collaborative but `{only}` has no agents to delegate to.",
                fix="Add the agents it should call and draw an edge from the coordinator to each, "
                "or set `pattern` to `simple` to run a single agent.",
            )
        ]
    return [
        Suggestion(
            code="workflow_problem",
            title=f"Workflow problem at {problem.pointer}",
            detail=problem.message,
            fix=_fix_for_problem(problem.message),
        )
        for problem in error.problems
    ]


def estimated_duration_s(planned: WorkflowPlan) -> float:
    """Rough wall time of a run of ``planned`` with a hosted model.

    A chain runs its agents one after another; a coordinator also needs one more turn of
    its own to combine what its sub-agents returned.
    """
    turns = len(planned.agents)
    if planned.pattern == Pattern.COLLABORATIVE:
        turns += 1
    return turns * ESTIMATED_AGENT_SECONDS


def final_agent(planned: WorkflowPlan) -> AgentSpec:
    """The agent whose answer is the run's output."""
    if planned.pattern == Pattern.COLLABORATIVE:
        return planned.agents[0]
    return planned.agents[-1]


def is_local_url(url: str) -> bool:
    """True if ``url`` names this machine (loopback or unspecified address, ``localhost``)."""
    host = (urlparse(url).hostname or "").lower()
    if host in _LOCAL_HOSTNAMES or host.endswith(".localhost"):
        return True
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def mentions(text: str, name: str) -> bool:
    """Whether ``text`` refers to the agent ``name`` (``_``, ``-`` and spaces are alike)."""
    words = [w for w in re.split(r"[\s_\-]+", name.lower()) if w]
    if not words:
        return False
    pattern = r"[\s_\-]*".join(re.escape(w) for w in words)
    return re.search(rf"(?<![a-z0-9]){pattern}(?![a-z0-9])", text.lower()) is not None


# -- checks -----------------------------------------------------------------------------


def _coordinator_checks(planned: WorkflowPlan) -> Iterator[Suggestion]:
    coordinator = planned.coordinator
    if coordinator is None:
        return
    helpers = [agent.name for agent in planned.agents[1:]]
    named = ", ".join(f"`{name}`" for name in helpers)
    if coordinator.instructions.strip() and not any(
        mentions(coordinator.instructions, name) for name in helpers
    ):
        yield Suggestion(
            code="coordinator_ignores_subagents",
            title=f"Coordinator `{coordinator.name}` does not mention its sub-agents",
            detail=f"`{coordinator.name}` can call {named} as tools, but its instructions name none "
            "of them, so it may answer alone without delegating.",
            fix=f"Name each sub-agent ({named}) in `{coordinator.name}`'s instructions and say when "
            "to call it and what to do with its answer.",
        )


def _instruction_checks(planned: WorkflowPlan) -> Iterator[Suggestion]:
    for agent in planned.agents:
        if agent.instructions.strip():
            continue
        role = _role(planned, agent)
        yield Suggestion(
            code="agent_without_instructions",
            title=f"Agent `{agent.name}` has no instructions",
            detail=f"`{agent.name}` ({role}) runs with an empty system prompt, so it only sees "
            "its input and guesses what to do with it.",
            fix=f"Write `instructions` for `{agent.name}`: its task, the form of its answer, and "
            + (
                "which sub-agent to call for what."
                if role == "the coordinator"
                else "when it is done."
            ),
        )


def _framework_checks(planned: WorkflowPlan) -> Iterator[Suggestion]:
    for agent in planned.agents:
        if agent.framework in KNOWN_FRAMEWORKS:
            continue
        known = ", ".join(f"`{name}`" for name in KNOWN_FRAMEWORKS)
        yield Suggestion(
            code="unknown_framework",
            title=f"Agent `{agent.name}` names an unknown framework",
            detail=f"`{agent.framework}` is not an any-agent framework.",
            fix=f"Set `framework` to one of {known}; `{DEFAULT_FRAMEWORK}` needs no extra install.",
        )


def _deadline_checks(planned: WorkflowPlan, *, timeout_s: float | None) -> Iterator[Suggestion]:
    if timeout_s is None or len(planned.agents) < 2:
        return
    expected = estimated_duration_s(planned)
    if expected <= timeout_s:
        return
    shape = "chain" if planned.pattern == Pattern.SEQUENTIAL else "coordinator and its sub-agents"
    yield Suggestion(
        code="chain_exceeds_timeout",
        title="The workflow is likely to outlast its deadline",
        detail=f"The {shape} has {len(planned.agents)} agents; at about "
        f"{ESTIMATED_AGENT_SECONDS:g} s per agent that is about {expected:g} s, more than the "
        f"{timeout_s:g} s allowed.",
        fix=f"Raise `options.timeout_s` to at least {expected:g} (within FLOWRELAY_MAX_TIMEOUT_S), "
        "or split the workflow into shorter runs, or use a faster model.",
    )


def _mcp_checks(planned: WorkflowPlan) -> Iterator[Suggestion]:
    for agent in planned.agents:
        for tool in agent.tools:
            if not isinstance(tool, McpServer):
                continue
            if tool.url is not None and is_local_url(tool.url):
                yield Suggestion(
                    code="mcp_localhost",
                    title=f"MCP server of `{agent.name}` points at localhost",
                    detail=f"`{tool.url}` is resolved on the executor that runs the agent: in a "
                    "container or on another machine, localhost is the executor itself, not "
                    "where the MCP server runs.",
                    fix="Use an address the executors can reach: the server's service or host "
                    "name on the executors' network (in Docker, e.g. `host.docker.internal`), "
                    "or run the MCP server next to the executors.",
                )
            elif tool.command is not None:
                yield Suggestion(
                    code="mcp_stdio_command",
                    title=f"MCP server of `{agent.name}` is a local command",
                    detail=f"`{tool.command}` is started by each executor worker as a subprocess: "
                    "it must be installed on every executor and allowed by the operator, and it "
                    "inherits the worker's environment, API keys included.",
                    fix="Install the command on the executors and have the operator allowlist it, "
                    "or, better, run the MCP server as a service and give its `url` instead.",
                )


# -- helpers ----------------------------------------------------------------------------


def _role(planned: WorkflowPlan, agent: AgentSpec) -> str:
    if planned.pattern == Pattern.SIMPLE:
        return "the only agent"
    if planned.coordinator is agent:
        return "the coordinator"
    if planned.pattern == Pattern.COLLABORATIVE:
        return "a sub-agent"
    position = planned.agents.index(agent) + 1
    return f"step {position} of {len(planned.agents)}"


def _fix_for_problem(message: str) -> str:
    lowered = message.lower()
    for fragment, fix in _PROBLEM_FIXES:
        if fragment in lowered:
            return fix
    return _DEFAULT_PROBLEM_FIX
