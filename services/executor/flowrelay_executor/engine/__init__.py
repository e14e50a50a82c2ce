"""Runs flowrelay workflows with any-agent: the only package that imports ``any_agent``.

What: :class:`Engine` takes a resolved :class:`~flowrelay_executor.jobs.Job`, builds (or
reuses) one any-agent agent per workflow node, runs them in the workflow's pattern, streams
step events through ``emit`` as they happen, and returns an
:class:`~flowrelay_executor.jobs.Outcome` with output, a structured error, tokens and cost.

Why one package: any-agent is in soft maintenance; everything that knows its API lives here,
so swapping the agent library means rewriting this package only. By concern:

* ``core``: the :class:`Engine` (one run, start to outcome; the self-check entry point).
* ``patterns``: simple / sequential / collaborative orchestration, sub-agents as tools.
* ``run``: per-run state: events, token tallies, the failure, the turn limit.
* ``events``: any-agent callback hooks -> trace events (the same shape for every framework).
* ``tooling``: the wrapper every tool gets (tool events, failures, schemas, docstrings).
* ``recipes``: what shapes an agent (the reuse key) and the checks on a node.
* ``agents``: building agents (``AgentConfig``) and the pool sharing them across runs.
* ``schemas``: ``output_schema`` (JSON Schema) -> pydantic.
* ``mcp``: MCP servers.
* ``frameworks/<name>``: one small adapter per framework (token counts, state any-agent
  leaves behind, switches such as openai-agents tracing).
* ``selfcheck``: the start-up check an executor runs before it offers a framework.
* ``preload``: what the fork server imports once for every worker.
"""

from __future__ import annotations

from flowrelay_executor.engine.core import Engine
from flowrelay_executor.engine.frameworks import available_frameworks
from flowrelay_executor.tools import ToolRegistry

__all__ = ["Engine", "ToolRegistry", "available_frameworks"]
