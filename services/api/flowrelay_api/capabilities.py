"""Which frameworks and tools the running executors offer, and checking workflows against it.

Executors advertise an ``ExecutorCapabilities`` entry in ``EXECUTORS_BUCKET`` and refresh
it while they live; the bucket's TTL removes the entry of an executor that died. The bucket
is read with one batched direct get (:func:`flowrelay_bus.kvscan.scan`: no consumer left
behind), still too much for every request, so:

* a background task re-reads it every :data:`POLL_INTERVAL_S` into a snapshot that
  accepting requests and ``/healthz`` use for free;
* a workflow the snapshot would *reject* is checked again against a fresh read, so a
  just-started executor is never refused because the snapshot is a second old.

A stale snapshot can therefore only let through a run that no executor can take; the
executor then fails it with ``framework_not_installed`` and the suggester explains the fix.
With no executor at all, everything is accepted: runs wait in the queue until one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging

from nats.aio.client import Client
from pydantic import ValidationError

from flowrelay_api.errors import BUS_ERRORS, Loc
from flowrelay_bus.kvscan import scan
from flowrelay_contracts import ExecutorCapabilities, McpServer, Workflow, subjects
from flowrelay_contracts.workflow import KNOWN_FRAMEWORKS

log = logging.getLogger(__name__)

#: Seconds between background reads of the executors bucket.
POLL_INTERVAL_S = 2.0

#: Bound on one read of the bucket (entries are few and small).
READ_TIMEOUT_S = 5.0

Problem = tuple[Loc, str, str]


class ExecutorDirectory:
    """A snapshot of the live executors' capabilities, kept fresh in the background."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._snapshot: list[ExecutorCapabilities] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> list[ExecutorCapabilities]:
        """Executors seen in the last read (at most :data:`POLL_INTERVAL_S` old)."""
        return self._snapshot

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="flowrelay-api-executor-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> list[ExecutorCapabilities]:
        """Read every entry of the bucket now; entries present are live (the TTL expires the rest)."""
        found: list[ExecutorCapabilities] = []
        for entry in await scan(self._nc, subjects.EXECUTORS_BUCKET, timeout=READ_TIMEOUT_S):
            try:
                found.append(ExecutorCapabilities.model_validate_json(entry.value))
            except ValidationError:
                log.warning("ignoring unreadable capabilities entry %r", entry.key)
        self._snapshot = found
        return found

    async def check(self, workflow: Workflow) -> list[Problem]:
        """Problems of nodes no live executor can run; empty when none or no executor runs."""
        unknown = _unknown_frameworks(workflow)
        if unknown:
            return unknown
        if not self._snapshot:
            return []
        problems = _unsupported(workflow, self._snapshot)
        if problems:  # the snapshot says no: confirm with a fresh read before refusing
            fresh = await self.refresh()
            problems = _unsupported(workflow, fresh) if fresh else []
        return problems

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                await self.refresh()
            except (*BUS_ERRORS, ValidationError, RuntimeError) as exc:  # keep the last snapshot; retry later
                log.debug("reading executor capabilities failed: %s", type(exc).__name__)


def _unknown_frameworks(workflow: Workflow) -> list[Problem]:
    return [
        (
            ("body", "workflow", "nodes", i, "data", "framework"),
            (
                f"node {node.id!r} uses framework {node.data.framework!r}, which any-agent does "
                f"not know; use one of: {', '.join(KNOWN_FRAMEWORKS)}"
            ),
            "framework_unknown",
        )
        for i, node in enumerate(workflow.nodes)
        if node.data.framework not in KNOWN_FRAMEWORKS
    ]


def _unsupported(workflow: Workflow, executors: list[ExecutorCapabilities]) -> list[Problem]:
    frameworks = {f for e in executors for f in e.frameworks}
    tools = {t for e in executors for t in e.tools}
    stdio = {c for e in executors for c in e.mcp_stdio_commands}
    problems: list[Problem] = []
    for i, node in enumerate(workflow.nodes):
        spec = node.data
        if spec.framework not in frameworks:
            problems.append(
                (
                    ("body", "workflow", "nodes", i, "data", "framework"),
                    (
                        f"node {node.id!r} (agent {spec.name!r}) needs framework {spec.framework!r}, "
                        f"which no running executor has (they have: "
                        f"{', '.join(sorted(frameworks)) or 'none'}); install it on the executors "
                        f"with pip install 'any-agent[{spec.framework}]'"
                    ),
                    "framework_not_installed",
                )
            )
        for j, tool in enumerate(spec.tools):
            if isinstance(tool, str) and tool not in tools:
                problems.append(
                    (
                        ("body", "workflow", "nodes", i, "data", "tools", j),
                        f"node {node.id!r} (agent {spec.name!r}) uses tool {tool!r}, "
                        + _tool_advice(tool, tools, executors),
                        "tool_not_registered",
                    )
                )
            elif isinstance(tool, McpServer) and tool.command is not None and tool.command not in stdio:
                problems.append(
                    (
                        ("body", "workflow", "nodes", i, "data", "tools", j, "command"),
                        (
                            f"stdio MCP command {tool.command!r} is not allowed on any running executor "
                            f"(allowed: {', '.join(sorted(stdio)) or 'none'}): a stdio server runs code on "
                            "the executor, so the operator must list it in FLOWRELAY_MCP_STDIO_ALLOWLIST; "
                            "or reach the server by URL"
                        ),
                        "mcp_command_not_allowed",
                    )
                )
    return problems


def _tool_advice(tool: str, tools: set[str], executors: list[ExecutorCapabilities]) -> str:
    """Why no executor offers ``tool`` and what fixes it, from what the executors reported.

    In order: a reason an executor gave (a built-in's missing package, a function of a tool
    module that could not be a tool), a registered name it is probably a typo of, or how to
    add a tool, naming the modules the executors already load when there are some.
    """
    for executor in executors:
        if reason := executor.unavailable_tools.get(tool):
            return f"which the running executors do not offer: {reason}"
    registered = ", ".join(sorted(tools)) or "none"
    close = difflib.get_close_matches(tool, sorted(tools), n=1)
    if close:
        return f"which no running executor registers; did you mean {close[0]!r}? (registered: {registered})"
    modules = sorted({m for e in executors for m in e.tool_modules})
    where = (
        f"in one of the modules they load tools from ({', '.join(modules)}) or in another module "
        "listed in FLOWRELAY_TOOL_MODULES"
        if modules
        else "in a module on their PYTHONPATH listed in FLOWRELAY_TOOL_MODULES"
    )
    return (
        f"which no running executor registers (registered: {registered}); to add it, define a "
        f"public function {tool}() with a docstring and type hints {where}, and restart the "
        "executors"
    )
