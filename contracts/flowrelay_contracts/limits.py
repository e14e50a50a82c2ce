"""Size and shape limits of a workflow: what the executors and NATS can carry.

The API checks them before anything is queued (422 naming the field and the setting); the
executor checks them again for requests published straight to NATS. The walks are
iterative, so a hostile document costs one pass over what was already parsed, never a
recursion error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flowrelay_contracts.workflow import McpServer, Workflow, WorkflowProblem

#: ``model_args`` keys the engine sends itself: a workflow may not override them.
RESERVED_MODEL_ARGS = frozenset(
    {"model", "model_id", "messages", "tools", "stream", "response_format", "api_key", "api_base", "base_url"}
)


@dataclass(frozen=True, slots=True)
class WorkflowLimits:
    """The limits, named as their ``FLOWRELAY_*`` settings in every message."""

    max_nodes: int = 64
    max_edges: int = 256
    max_tools_per_agent: int = 64
    max_json_depth: int = 32
    max_output_schema_bytes: int = 32 * 1024


def workflow_problems(workflow: Workflow, limits: WorkflowLimits, *, pointer: str = "/workflow") -> list[WorkflowProblem]:
    """Every limit ``workflow`` exceeds (empty when it fits)."""
    problems: list[WorkflowProblem] = []

    def problem(where: str, message: str) -> None:
        problems.append(WorkflowProblem(pointer=f"{pointer}{where}", message=message))

    if len(workflow.nodes) > limits.max_nodes:
        problem("/nodes", _over(len(workflow.nodes), limits.max_nodes, "nodes", "FLOWRELAY_MAX_NODES"))
    if len(workflow.edges) > limits.max_edges:
        problem("/edges", _over(len(workflow.edges), limits.max_edges, "edges", "FLOWRELAY_MAX_EDGES"))
    for i, node in enumerate(workflow.nodes[: limits.max_nodes]):
        spec, where = node.data, f"/nodes/{i}/data"
        if len(spec.tools) > limits.max_tools_per_agent:
            problem(f"{where}/tools", _over(len(spec.tools), limits.max_tools_per_agent, "tools",
                                            "FLOWRELAY_MAX_TOOLS_PER_AGENT"))
        if reserved := sorted(RESERVED_MODEL_ARGS & spec.model_args.keys()):
            problem(f"{where}/model_args", f"may not set {', '.join(reserved)}: the engine sends these itself "
                    "(choose the model with 'model_id'; keys and endpoints are the executors' configuration)")
        if (depth := max_depth(spec.model_args)) > limits.max_json_depth:
            problem(f"{where}/model_args", _too_deep(depth, limits.max_json_depth))
        if spec.output_schema is not None:
            size = len(json.dumps(spec.output_schema, separators=(",", ":")).encode())
            if (depth := max_depth(spec.output_schema)) > limits.max_json_depth:
                problem(f"{where}/output_schema", _too_deep(depth, limits.max_json_depth))
            elif size > limits.max_output_schema_bytes:
                problem(f"{where}/output_schema", _over(size, limits.max_output_schema_bytes, "bytes",
                                                        "FLOWRELAY_MAX_OUTPUT_SCHEMA_BYTES"))
        for j, tool in enumerate(spec.tools):
            if isinstance(tool, McpServer) and (depth := max_depth(tool.args)) > limits.max_json_depth:
                problem(f"{where}/tools/{j}/args", _too_deep(depth, limits.max_json_depth))
    return problems


def _over(value: int, limit: int, unit: str, setting: str) -> str:
    return f"{value} {unit} is above the limit of {limit} ({setting})"


def _too_deep(depth: int, limit: int) -> str:
    return f"is nested {depth} levels deep, above the limit of {limit} (FLOWRELAY_MAX_JSON_DEPTH)"


def max_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0, ``{}`` 1), without recursion."""
    deepest = 0
    for depth in _depths(value):
        deepest = max(deepest, depth)
    return deepest


def _depths(value: Any) -> Iterator[int]:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            yield depth + 1
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            yield depth + 1
            stack.extend((child, depth + 1) for child in item)
