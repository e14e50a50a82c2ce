"""MCP servers: connecting them for an agent, and the any-agent configs that describe them.

The engine connects MCP servers itself rather than letting any-agent do it, so that a failed
connection is closed in the task that opened it (anyio requires it) and reported as the
tool's failure (``tool_failed`` naming the server), not as a provider or internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from any_agent import AgentFramework
from any_agent.config import MCPSse, MCPStdio, MCPStreamableHttp
from any_agent.tools import MCPClient

from flowrelay_bus.outbound import Allowlist, refusal
from flowrelay_executor.errors import ToolFailure
from flowrelay_executor.tools import McpTarget

#: The executors' outbound allowlist (see flowrelay_bus.outbound), read by the worker.
MCP_URL_ALLOWLIST_ENV = "FLOWRELAY_MCP_URL_ALLOWLIST"

if TYPE_CHECKING:
    from flowrelay_executor.engine.recipes import Recipe

__all__ = ["MCPClient", "connect_mcp", "disconnect", "no_sse_warning"]

log = logging.getLogger(__name__)


def _mcp_params(target: McpTarget) -> MCPStdio | MCPSse | MCPStreamableHttp:
    tools = list(target.tools) if target.tools is not None else None
    if target.url is not None:
        if target.transport == "sse":
            with no_sse_warning():
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



async def connect_mcp(target: McpTarget, recipe: Recipe, clients: list[MCPClient]) -> list[Any]:
    """Connect one MCP server (appending its client to ``clients``) and list its tools.

    A URL is checked against the outbound policy first, after this worker's own DNS lookup
    (the API checked it at submission; a name may resolve differently by now).
    """
    if target.url is not None:
        allowlist = Allowlist.parse(os.environ.get(MCP_URL_ALLOWLIST_ENV, ""))
        if (reason := await refusal(target.url, allowlist)) is not None:
            raise ToolFailure(f"agent '{recipe.name}' may not use MCP server {target.url}: {reason}",
                              tool=f"mcp:{target.url}", exception_type="OutboundRefused", agent=recipe.name)
    with no_sse_warning():
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
            f"agent '{recipe.name}' could not use MCP server {label}: {_describe(cause)}",
            tool=f"mcp:{label}",
            exception_type=type(cause).__name__,
            agent=recipe.name,
        ) from failure


async def disconnect(clients: list[MCPClient]) -> None:
    for client in reversed(clients):
        try:
            await client.disconnect()
        except (Exception, BaseExceptionGroup):  # a half-open connection may fail to close
            log.debug("disconnecting MCP client failed", exc_info=True)
    clients.clear()


def _describe(cause: BaseException) -> str:
    """What went wrong, without what the endpoint answered: an error text from an arbitrary
    endpoint could carry anything (a refused internal service's banner, say), so only the
    kind of failure and an HTTP status leave the executor."""
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(status, int):
        return f"{type(cause).__name__} (HTTP {status})"
    return type(cause).__name__


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
def no_sse_warning() -> Iterator[None]:
    """Silence any-agent's "SSE is deprecated" warning while building configs.

    AgentConfig and MCPClient validate values against every member of a union including
    MCPSse, whose validator warns: once per tool per agent built, about nothing we
    configured. (Building a config never awaits, so no other run sees the filter.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SSE is deprecated", category=DeprecationWarning)
        yield


