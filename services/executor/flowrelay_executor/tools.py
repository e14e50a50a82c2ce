"""The tools an executor offers to agents, by name, and the MCP servers it may use.

What: a :class:`ToolRegistry` maps tool names (what a workflow node lists in ``tools``) to
Python callables. It holds

* any-agent's built-in tools whose optional dependencies are installed (``search_web``,
  ``visit_webpage``, ``search_tavily``),
* operator tools from the modules named in ``FLOWRELAY_TOOL_MODULES`` (comma-separated) and
  from installed packages' ``flowrelay.tools`` entry points. A module contributes its
  ``TOOLS`` list if it has one, else the callables named in ``__all__``, else every public
  function it defines itself (not the ones it imports, not ``_private`` ones).

A listed tool (``TOOLS``, ``__all__``) that any-agent could not describe (no docstring, a
parameter without a type hint) stops the worker at start: the operator said it is a tool. A
discovered function that cannot be one is skipped with a reason, and a module that gives no
tool at all is a start-up warning saying why (:attr:`ToolRegistry.warnings`); both reasons
are advertised (:meth:`ToolRegistry.unavailable`) so the API can explain a refused workflow.

It also checks MCP servers: a ``url`` server is allowed; a ``command`` (stdio) server starts
a program on the executor, so it is allowed only if the command is in
``FLOWRELAY_MCP_STDIO_ALLOWLIST`` (comma-separated, exact match), and it never inherits the
executor's secrets.

Why names and not code: a workflow is data from API users; it may only pick among tools the
operator installed. Unknown names fail the run as ``invalid_workflow`` naming the tool.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Literal

from flowrelay_contracts import McpServer
from flowrelay_executor.errors import InvalidWorkflowError, is_secret_name

__all__ = [
    "ENTRY_POINT_GROUP",
    "ask_human",
    "MCP_STDIO_ALLOWLIST_ENV",
    "TOOL_MODULES_ENV",
    "McpNotAllowedError",
    "McpTarget",
    "MissingToolCredential",
    "ToolRegistry",
    "UnknownToolError",
]

log = logging.getLogger(__name__)

#: Comma-separated module names whose tools are registered.
TOOL_MODULES_ENV: Final = "FLOWRELAY_TOOL_MODULES"
#: Comma-separated commands that MCP stdio servers may run.
MCP_STDIO_ALLOWLIST_ENV: Final = "FLOWRELAY_MCP_STDIO_ALLOWLIST"
#: Entry point group through which installed packages contribute tools.
ENTRY_POINT_GROUP: Final = "flowrelay.tools"

#: What OpenAI-style function calling accepts as a tool name (and a Python identifier).
_TOOL_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class UnknownToolError(InvalidWorkflowError):
    """A workflow names a tool this executor does not have."""


class McpNotAllowedError(InvalidWorkflowError):
    """A workflow asks for an MCP stdio command the operator has not allowed."""


class MissingToolCredential(RuntimeError):
    """Raised by a tool called without the credential it needs (an unset variable)."""

    def __init__(self, env_var_name: str) -> None:
        super().__init__(f"{env_var_name} is not set in the executor's environment")
        self.env_var_name = env_var_name


@dataclass(frozen=True, slots=True)
class McpTarget:
    """An MCP server the executor may connect to, checked against the operator's policy.

    Exactly one of ``url`` and ``command`` is set. ``unset_env`` lists the variables a stdio
    server must not inherit (provider keys and other secrets of the executor).
    """

    url: str | None
    transport: Literal["sse", "streamable_http"]
    command: str | None
    args: tuple[str, ...]
    tools: tuple[str, ...] | None
    unset_env: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Builtin:
    """A tool shipped with any-agent, imported only when a workflow uses it."""

    module: str
    attribute: str
    #: Modules it imports when called; it is offered only if they are installed.
    requires: tuple[str, ...] = ()
    #: Variables it needs; calling it without them raises :class:`MissingToolCredential`.
    env: tuple[str, ...] = ()


#: any-agent's own tools, by the name workflows use. The interactive ones
#: (``ask_user_verification``, ``show_plan``...) are left out: a worker has no console.
_BUILTINS: Final[dict[str, _Builtin]] = {
    "search_web": _Builtin("any_agent.tools.web_browsing", "search_web", ("duckduckgo_search",)),
    "visit_webpage": _Builtin(
        "any_agent.tools.web_browsing", "visit_webpage", ("requests", "markdownify")
    ),
    "search_tavily": _Builtin(
        "any_agent.tools.web_browsing", "search_tavily", ("tavily",), ("TAVILY_API_KEY",)
    ),
}


def ask_human(question: str, choices: list[str] | None = None) -> str:
    """Ask a person a question and wait for the answer; it may take minutes or hours.

    Use it when you need a decision, an approval or a fact only the user has. Ask one
    complete, self-contained question: the person sees nothing else.

    Args:
        question: The question for the person, complete and self-contained.
        choices: The answers the person may choose from, if the question has fixed options; null otherwise.
    """
    # Never reached in a run: flowrelay's engine pauses the run when the model calls this
    # tool (from a hook, before the call: engine.human), and resumes it with the answer as
    # the result. An agent that cannot pause is refused at submission.
    return "ask_human is not available to this agent; answer without asking"


class ToolRegistry:
    """Tool names -> callables, plus the MCP stdio policy. Build one per worker process."""

    def __init__(
        self,
        *,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        builtins: bool = True,
        mcp_stdio_allowlist: Iterable[str] = (),
    ) -> None:
        self._tools: dict[str, Callable[..., Any]] = {}
        self._sources: dict[str, str] = {}
        self._skipped: dict[str, str] = {}
        self._modules: list[str] = []
        #: Start-up problems worth an operator's attention (a module that gave no tool...).
        self.warnings: list[str] = []
        self._offer_builtins = builtins
        self._builtins = {
            name: spec for name, spec in _BUILTINS.items() if builtins and _installed(spec.requires)
        }
        self._stdio_allowlist = frozenset(c.strip() for c in mcp_stdio_allowlist if c.strip())
        self.add(ask_human, source="flowrelay")  # always offered: see engine.human
        for name, function in (tools or {}).items():
            self.add(function, name=name, source="constructor")

    @classmethod
    def from_environment(cls) -> ToolRegistry:
        """Built-ins + ``FLOWRELAY_TOOL_MODULES`` + ``flowrelay.tools`` entry points.

        A module that cannot be imported, or a tool without docstring and type hints, raises
        here: a misconfigured worker should fail at start, not on some user's run.
        """
        registry = cls(mcp_stdio_allowlist=_split_csv(os.environ.get(MCP_STDIO_ALLOWLIST_ENV, "")))
        for module_name in _split_csv(os.environ.get(TOOL_MODULES_ENV, "")):
            registry.add_module(importlib.import_module(module_name))
            registry._modules.append(module_name)
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            registry._add_loaded(entry_point.load(), source=f"entry point {entry_point.value}")
        return registry

    def add(
        self, function: Callable[..., Any], *, name: str | None = None, source: str = ""
    ) -> None:
        """Register ``function`` as tool ``name`` (default: its ``__name__``)."""
        name = name or getattr(function, "__name__", "")
        where = f" (from {source})" if source else ""
        if not _TOOL_NAME_RE.match(name):
            raise ValueError(f"tool name {name!r}{where} is not a valid function name")
        if name in self._tools and self._tools[name] is not function:
            raise ValueError(
                f"tool {name!r}{where} is already registered from {self._sources[name]}"
            )
        _check_signature(function, name, where)
        if name in self._builtins:
            log.info("tool %r%s replaces the built-in of the same name", name, where)
        self._tools[name] = function
        self._sources[name] = source or "code"

    def add_module(self, module: ModuleType) -> list[str]:
        """Register the module's tools (see the module docstring); the names it gave."""
        return self._add_loaded(module, source=f"module {module.__name__}")

    def names(self) -> list[str]:
        """Every tool name a workflow may use here, sorted."""
        return sorted({*self._tools, *self._builtins})

    @property
    def modules(self) -> list[str]:
        """The ``FLOWRELAY_TOOL_MODULES`` this registry loaded."""
        return list(self._modules)

    def unavailable(self) -> dict[str, str]:
        """Tool names a workflow might expect that are not offered here, and why.

        any-agent built-ins whose packages are missing, and functions of tool modules that
        were skipped; the API quotes these reasons when it refuses a workflow.
        """
        missing = {
            name: (
                "it needs the Python package(s) "
                f"{', '.join(m for m in spec.requires if not _installed((m,)))} on the executors"
            )
            for name, spec in _BUILTINS.items()
            if self._offer_builtins and not _installed(spec.requires) and name not in self._tools
        }
        return missing | {n: why for n, why in self._skipped.items() if n not in self._tools}

    def resolve(self, spec: str | McpServer) -> Callable[..., Any] | McpTarget:
        """The callable for a tool name, or the checked target of an MCP server.

        Raises :class:`UnknownToolError` / :class:`McpNotAllowedError` (both
        ``invalid_workflow``) with a message naming what is wrong.
        """
        if isinstance(spec, McpServer):
            return self._resolve_mcp(spec)
        if spec in self._tools:
            return self._tools[spec]
        if spec in self._builtins:
            return _load_builtin(self._builtins[spec])
        if spec in _BUILTINS:
            missing = ", ".join(m for m in _BUILTINS[spec].requires if not _installed((m,)))
            raise UnknownToolError(
                f"tool {spec!r} is not available on this executor: it needs the Python "
                f"package(s) {missing} (pip install them on the executor)"
            )
        if spec in self._skipped:
            raise UnknownToolError(f"tool {spec!r} is not available on this executor: {self._skipped[spec]}")
        known = ", ".join(self.names()) or "none"
        close = difflib.get_close_matches(spec, self.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownToolError(f"unknown tool {spec!r}; {hint}this executor has: {known}")

    def _resolve_mcp(self, server: McpServer) -> McpTarget:
        tools = tuple(server.tools) if server.tools is not None else None
        if server.url is not None:
            return McpTarget(
                url=server.url, transport=server.transport, command=None, args=(), tools=tools
            )
        assert server.command is not None  # McpServer guarantees one of url/command
        if server.command not in self._stdio_allowlist:
            allowed = ", ".join(sorted(self._stdio_allowlist)) or "none"
            raise McpNotAllowedError(
                f"MCP stdio command {server.command!r} is not allowed on this executor (allowed: "
                f"{allowed}); the operator can add it to {MCP_STDIO_ALLOWLIST_ENV}, or use an MCP "
                "server URL instead"
            )
        return McpTarget(
            url=None,
            transport=server.transport,
            command=server.command,
            args=tuple(server.args),
            tools=tools,
            unset_env=tuple(sorted(name for name in os.environ if is_secret_name(name))),
        )

    def _add_loaded(self, loaded: Any, *, source: str) -> list[str]:
        if isinstance(loaded, ModuleType):
            listed = getattr(loaded, "TOOLS", None)
            if listed is None and hasattr(loaded, "__all__"):
                listed = [getattr(loaded, name) for name in loaded.__all__]
                listed = [t for t in listed if callable(t) and not inspect.isclass(t)]
            if listed is None:
                return self._add_discovered(loaded, source=source)
        elif isinstance(loaded, (list, tuple)):
            listed = loaded
        elif callable(loaded):
            listed = [loaded]
        else:
            raise TypeError(f"{source} is neither a module, a list of tools nor a callable")
        for function in listed:
            self.add(function, source=source)
        if not listed:
            self.warnings.append(f"{source} gave no tools: its TOOLS or __all__ list is empty")
        return [getattr(f, "__name__", "") for f in listed]

    def _add_discovered(self, module: ModuleType, *, source: str) -> list[str]:
        """Every public function ``module`` defines is a tool, if any-agent can describe it."""
        added: list[str] = []
        skipped: list[str] = []
        for name, function in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(function):
                continue
            if function.__module__ != module.__name__:  # imported from elsewhere
                continue
            try:
                self.add(function, source=source)
            except (TypeError, ValueError) as exc:
                reason = f"{exc}, so it was not registered"
                self._skipped[name] = reason
                skipped.append(reason)
            else:
                added.append(name)
        self.warnings.extend(skipped)
        if not added:
            why = (
                "every public function it defines was skipped (see above)"
                if skipped
                else "it defines no public function (imported functions and names starting "
                "with '_' are not tools; or list them in TOOLS or __all__)"
            )
            self.warnings.append(f"{source} gave no tools: {why}")
        return added


def _check_signature(function: Callable[..., Any], name: str, where: str) -> None:
    """What any-agent requires of a tool, checked at registration instead of per run."""
    if not callable(function):
        raise TypeError(f"tool {name!r}{where} is not callable")
    if not (function.__doc__ or "").strip():
        raise TypeError(f"tool {name!r}{where} needs a docstring: the model reads it")
    signature = inspect.signature(function)
    if signature.return_annotation is inspect.Signature.empty:
        raise TypeError(f"tool {name!r}{where} needs a return type annotation")
    for parameter in signature.parameters.values():
        if parameter.annotation is inspect.Parameter.empty:
            raise TypeError(
                f"tool {name!r}{where}: parameter {parameter.name!r} needs a type annotation"
            )


def _installed(modules: Iterable[str]) -> bool:
    try:
        return all(importlib.util.find_spec(module) is not None for module in modules)
    except (ImportError, ValueError):
        return False


@functools.cache
def _load_builtin(spec: _Builtin) -> Callable[..., Any]:
    function = getattr(importlib.import_module(spec.module), spec.attribute)
    return _threaded(function, spec.env)


def _threaded(function: Callable[..., Any], env: tuple[str, ...]) -> Callable[..., Any]:
    """Run a blocking built-in (``requests`` I/O) in a thread so it does not stall the loop
    that hundreds of other runs share; check its credentials first."""

    @functools.wraps(function)
    async def call(*args: Any, **kwargs: Any) -> Any:
        for variable in env:
            if not os.environ.get(variable):
                raise MissingToolCredential(variable)
        return await asyncio.to_thread(function, *args, **kwargs)

    return call


def _split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]
