"""The workflow document: a visual (React Flow) graph of agents, and what it means.

Two shapes are accepted and mean the same thing:

* the designer's graph, ``{"nodes": [...], "edges": [...]}`` (UI fields such as
  ``position`` are ignored), and
* a compact form for API users, ``{"pattern": "sequential", "agents": [...]}``.

:func:`plan` checks the graph and returns a :class:`WorkflowPlan`: which pattern it is and
the agents in execution order. Problems are reported as :class:`WorkflowProblem` items
with a JSON pointer into the request body, so an error names the node or edge at fault.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Frameworks any-agent knows; which of them an executor can run depends on its extras.
KNOWN_FRAMEWORKS = (
    "tinyagent",
    "openai",
    "langchain",
    "llama_index",
    "google",
    "agno",
    "smolagents",
)

DEFAULT_FRAMEWORK = "tinyagent"


class Pattern(StrEnum):
    SIMPLE = "simple"
    SEQUENTIAL = "sequential"
    COLLABORATIVE = "collaborative"


class McpServer(BaseModel):
    """An MCP server whose tools an agent may call.

    ``url`` servers are reached over SSE or streamable HTTP. ``command`` servers are
    started by the executor (stdio): that is code execution, so the operator must
    allowlist the command.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["mcp"] = "mcp"
    url: str | None = None
    transport: Literal["sse", "streamable_http"] = "streamable_http"
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    tools: list[str] | None = Field(default=None, description="Only these tools of the server.")

    @model_validator(mode="after")
    def _one_target(self) -> McpServer:
        if (self.url is None) == (self.command is None):
            raise ValueError("an MCP server needs exactly one of 'url' or 'command'")
        return self


ToolSpec = str | McpServer


class AgentSpec(BaseModel):
    """One agent: the ``data`` of a graph node."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    instructions: str = ""
    model_id: str | None = None
    framework: str = DEFAULT_FRAMEWORK
    tools: list[ToolSpec] = Field(default_factory=list)
    model_args: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] | None = None


class Node(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    type: str = "agent"
    data: AgentSpec


class Edge(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    source: str
    target: str


class Workflow(BaseModel):
    """A workflow graph. ``pattern`` is optional: it is detected from the edges."""

    model_config = ConfigDict(extra="ignore")

    nodes: list[Node] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)
    pattern: Pattern | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_compact(cls, value: Any) -> Any:
        """Turn ``{"pattern", "agents": [...]}`` into nodes and edges."""
        if not isinstance(value, dict) or "agents" not in value or "nodes" in value:
            return value
        agents = value["agents"]
        if not isinstance(agents, list):
            return value  # let field validation report the shape
        pattern = value.get("pattern")
        nodes = [{"id": f"agent-{i + 1}", "data": data} for i, data in enumerate(agents)]
        ids = [n["id"] for n in nodes]
        if pattern == Pattern.COLLABORATIVE:
            edges = [{"source": ids[0], "target": other} for other in ids[1:]]
        else:
            edges = [{"source": a, "target": b} for a, b in zip(ids, ids[1:], strict=False)]
        return {"nodes": nodes, "edges": edges, "pattern": pattern}


class WorkflowProblem(BaseModel):
    """One thing wrong with a workflow; ``pointer`` is a JSON pointer into the body."""

    pointer: str
    message: str


class WorkflowError(ValueError):
    """The workflow cannot run; ``problems`` says where and why."""

    def __init__(self, problems: list[WorkflowProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.pointer}: {p.message}" for p in problems))


class WorkflowPlan(BaseModel):
    """What a valid workflow means: its pattern and its agents in execution order.

    For ``collaborative`` the first agent is the coordinator; the others are its tools.
    """

    pattern: Pattern
    agents: list[AgentSpec]

    @property
    def coordinator(self) -> AgentSpec | None:
        return self.agents[0] if self.pattern == Pattern.COLLABORATIVE else None


def plan(workflow: Workflow, *, pointer: str = "/workflow") -> WorkflowPlan:
    """Check ``workflow`` and work out how to run it; raise :class:`WorkflowError`."""
    problems: list[WorkflowProblem] = []

    def problem(where: str, message: str) -> None:
        problems.append(WorkflowProblem(pointer=f"{pointer}{where}", message=message))

    agents: dict[str, AgentSpec] = {}
    for i, node in enumerate(workflow.nodes):
        if node.type != "agent":
            problem(f"/nodes/{i}/type", f"node {node.id!r} has type {node.type!r}; only 'agent' nodes run")
        elif node.id in agents:
            problem(f"/nodes/{i}/id", f"duplicate node id {node.id!r}")
        else:
            agents[node.id] = node.data
    if not agents:
        problem("/nodes", "the workflow has no agent node")

    names: dict[str, int] = {}
    for i, node in enumerate(workflow.nodes):
        if node.data.name in names and node.type == "agent":
            problem(f"/nodes/{i}/data/name", f"duplicate agent name {node.data.name!r}")
        names.setdefault(node.data.name, i)
        if node.data.output_schema is not None:
            schema_error = _check_json_schema(node.data.output_schema)
            if schema_error:
                problem(f"/nodes/{i}/data/output_schema", f"invalid JSON Schema: {schema_error}")

    successors: dict[str, list[str]] = {node_id: [] for node_id in agents}
    seen_edges: set[tuple[str, str]] = set()
    for i, edge in enumerate(workflow.edges):
        label = edge.id or f"{edge.source}->{edge.target}"
        for end in ("source", "target"):
            node_id = getattr(edge, end)
            if node_id not in agents:
                problem(f"/edges/{i}/{end}", f"edge {label!r} points to unknown node {node_id!r}")
        if edge.source == edge.target:
            problem(f"/edges/{i}", f"edge {label!r} connects node {edge.source!r} to itself")
        if (edge.source, edge.target) in seen_edges:
            problem(f"/edges/{i}", f"edge {label!r} is a duplicate")
        seen_edges.add((edge.source, edge.target))
        if edge.source in successors and edge.target in agents and edge.source != edge.target:
            successors[edge.source].append(edge.target)
    if problems:
        raise WorkflowError(problems)

    cycle = _find_cycle(successors)
    if cycle:
        raise WorkflowError(
            [WorkflowProblem(pointer=f"{pointer}/edges", message=f"the graph has a cycle: {' -> '.join(cycle)}")]
        )

    pattern = workflow.pattern or _detect_pattern(successors)
    if pattern is None:
        raise WorkflowError(
            [
                WorkflowProblem(
                    pointer=f"{pointer}/edges",
                    message="cannot tell the pattern from the edges: connect the agents as a "
                    "chain (sequential) or from one coordinator to the others (collaborative), "
                    "or set 'pattern'",
                )
            ]
        )
    order = _order_for(pattern, successors, pointer)
    return WorkflowPlan(pattern=pattern, agents=[agents[node_id] for node_id in order])


def _detect_pattern(successors: dict[str, list[str]]) -> Pattern | None:
    nodes = list(successors)
    edge_count = sum(len(targets) for targets in successors.values())
    if len(nodes) == 1:
        return Pattern.SIMPLE
    indegree = _indegrees(successors)
    is_chain = edge_count == len(nodes) - 1 and all(len(t) <= 1 for t in successors.values()) and all(
        d <= 1 for d in indegree.values()
    )
    if is_chain:
        return Pattern.SEQUENTIAL
    hubs = [n for n, targets in successors.items() if len(targets) == len(nodes) - 1]
    if len(hubs) == 1 and edge_count == len(nodes) - 1:
        return Pattern.COLLABORATIVE
    return None


def _order_for(pattern: Pattern, successors: dict[str, list[str]], pointer: str) -> list[str]:
    nodes = list(successors)
    indegree = _indegrees(successors)
    starts = [n for n in nodes if indegree[n] == 0]
    if pattern == Pattern.SIMPLE:
        if len(nodes) != 1:
            raise WorkflowError(
                [WorkflowProblem(pointer=f"{pointer}/nodes", message=f"pattern 'simple' takes one agent, got {len(nodes)}")]
            )
        return nodes
    if pattern == Pattern.SEQUENTIAL:
        if len(starts) != 1:
            raise WorkflowError(
                [
                    WorkflowProblem(
                        pointer=f"{pointer}/edges",
                        message=f"a sequential chain needs exactly one start, found {len(starts)}: "
                        + ", ".join(repr(s) for s in starts),
                    )
                ]
            )
        order = [starts[0]]
        while successors[order[-1]]:
            if len(successors[order[-1]]) > 1:
                raise WorkflowError(
                    [WorkflowProblem(pointer=f"{pointer}/edges", message=f"node {order[-1]!r} branches; a sequential chain cannot")]
                )
            order.append(successors[order[-1]][0])
        if len(order) != len(nodes):
            missing = [n for n in nodes if n not in order]
            raise WorkflowError(
                [WorkflowProblem(pointer=f"{pointer}/edges", message=f"nodes not on the chain: {', '.join(missing)}")]
            )
        return order
    # collaborative: one coordinator with an edge to every other agent
    hubs = [n for n, targets in successors.items() if set(targets) == set(nodes) - {n}]
    if len(nodes) < 2 or len(hubs) != 1:
        raise WorkflowError(
            [
                WorkflowProblem(
                    pointer=f"{pointer}/edges",
                    message="a collaborative workflow needs one coordinator with an edge to every other agent",
                )
            ]
        )
    hub = hubs[0]
    return [hub] + [n for n in nodes if n != hub]


def _indegrees(successors: dict[str, list[str]]) -> dict[str, int]:
    indegree = {n: 0 for n in successors}
    for targets in successors.values():
        for target in targets:
            indegree[target] += 1
    return indegree


def _find_cycle(successors: dict[str, list[str]]) -> list[str] | None:
    """A cycle of the graph as a node path, or None; iterative (a long chain cannot
    exhaust the recursion limit)."""
    white, grey, black = 0, 1, 2
    colour = {n: white for n in successors}
    for root in successors:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        branches = [iter(successors[root])]
        colour[root] = grey
        while branches:
            nxt = next(branches[-1], None)
            if nxt is None:
                colour[path.pop()] = black
                branches.pop()
            elif colour[nxt] == grey:
                return path[path.index(nxt) :] + [nxt]
            elif colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                branches.append(iter(successors[nxt]))
    return None


def _check_json_schema(schema: dict[str, Any]) -> str | None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return exc.message
    if schema.get("type") not in (None, "object"):
        return "structured output must be an object schema ('type': 'object')"
    return None
