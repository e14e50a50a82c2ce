"""Every tool an agent gets is wrapped here: the one place tool calls become events.

Why a wrapper and not any-agent's tool hooks: what reaches those hooks differs by framework
(LangChain passes ``{}`` and a ``ToolMessage``, Google ADK passes the result as a keyword,
smolagents never calls the after-hook for a raising tool...). The wrapper sits where the
framework calls the Python function, so in every framework it sees

* the call's arguments as the function receives them (``tool.started.arguments``, a JSON
  object),
* the return value itself (``tool.finished.result``, JSON or text, never a repr),
* the exception object, which any-agent would turn into ``"Error calling tool: ..."``:
  recorded as the run's ``tool_failed`` failure, then re-raised for the framework.

It also gives every tool what the strictest framework needs: a typed JSON schema of the
parameters in the subset OpenAI strict mode accepts (tinyagent would describe every
parameter as a string), and a Google-style docstring with an ``Args:`` section (smolagents
refuses a tool without one).
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Final, Literal, Union

from flowrelay_executor.engine.run import CURRENT_RUN, RunState
from flowrelay_executor.errors import ToolFailure

__all__ = ["input_schema", "wrap_tool"]

#: A tool result that is an error any-agent or an MCP client turned into text.
_TOOL_ERROR_TEXT_RE: Final = re.compile(r"^Error calling (?:MCP )?tool\b")

#: A docstring section describing parameters (Google style), as smolagents parses it.
_ARGS_SECTION_RE: Final = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$", re.MULTILINE)

#: JSON Schema types of the Python scalars.
_JSON_TYPE_OF: Final[dict[type, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}


def wrap_tool(
    function: Callable[..., Any],
    name: str,
    *,
    agent: str,
    strict: bool,
    parameter_docs: dict[str, str] | None = None,
) -> Callable[..., Any]:
    """``function`` as tool ``name`` of ``agent``, reporting its calls to the current run.

    ``strict``: the agent's provider wants OpenAI strict tool schemas (every parameter
    required). ``parameter_docs`` describes parameters for the ``Args:`` section when the
    function's docstring has none.
    """
    hints = _type_hints(function)
    signature = inspect.signature(function)

    def started(run: RunState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        run.stop_if_failed()
        return run.tool_started(agent, name, _arguments(signature, args, kwargs))

    def finished(run: RunState, call: Any, result: Any) -> None:
        if isinstance(result, str) and _TOOL_ERROR_TEXT_RE.match(result):
            # An MCP tool's error, already turned into text by the MCP client.
            run.fail(
                ToolFailure(
                    f"tool '{name}' failed: {result}",
                    tool=name,
                    agent=agent,
                    step=run.step_of(agent),
                )
            )
            run.tool_finished(call, result, error=result)
        else:
            run.tool_finished(call, result)

    def raised(run: RunState, call: Any, exc: Exception) -> None:
        if run.failure is None:
            failure = ToolFailure.from_exception(name, exc, redactor=run.redactor)
            failure.agent, failure.step = agent, run.step_of(agent)
            run.fail(failure)
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = run.failure.message  # e.g. the sub-agent behind this tool failed
        run.tool_finished(call, None, error=error)

    wrapped: Callable[..., Any]
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            run = CURRENT_RUN.get()
            if run is None:
                return await function(*args, **kwargs)
            call = started(run, args, kwargs)
            try:
                result = await function(*args, **kwargs)
            except Exception as exc:
                raised(run, call, exc)
                raise
            finished(run, call, result)
            return result

    else:

        @functools.wraps(function)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            run = CURRENT_RUN.get()
            if run is None:
                return function(*args, **kwargs)
            call = started(run, args, kwargs)
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                raised(run, call, exc)
                raise
            finished(run, call, result)
            return result

    wrapped.__name__ = name
    wrapped.__doc__ = _with_args_section(function.__doc__ or "", signature, hints, parameter_docs)
    wrapped.__annotations__ = hints
    wrapped.__input_schema__ = input_schema(signature, hints, strict=strict)  # type: ignore[attr-defined]
    return wrapped


def _arguments(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call as the JSON object a model would have written: parameter name -> value."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return {**{f"arg{i}": value for i, value in enumerate(args)}, **kwargs}
    arguments = dict(bound.arguments)
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD and parameter.name in arguments:
            arguments.update(arguments.pop(parameter.name))
    return arguments


def _with_args_section(
    doc: str,
    signature: inspect.Signature,
    hints: dict[str, Any],
    parameter_docs: dict[str, str] | None,
) -> str:
    """``doc`` with a Google-style ``Args:`` section, written if it has none."""
    doc = inspect.cleandoc(doc)
    parameters = [
        p
        for p in signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if not parameters or _ARGS_SECTION_RE.search(doc):
        return doc
    lines = ["", "Args:"]
    for parameter in parameters:
        described = (parameter_docs or {}).get(parameter.name)
        if described is None:
            kind = _json_type(hints.get(parameter.name, str)).get("type", "string")
            kind = "/".join(kind) if isinstance(kind, list) else kind
            described = f"The {parameter.name.replace('_', ' ')} ({kind})."
        lines.append(f"    {parameter.name}: {described}")
    return doc + "\n" + "\n".join(lines)


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError, AttributeError, SyntaxError):  # unresolvable: keep as is
        return dict(getattr(function, "__annotations__", {}))


def input_schema(
    signature: inspect.Signature, hints: dict[str, Any], *, strict: bool
) -> dict[str, Any]:
    """JSON schema of a tool's parameters, in the subset OpenAI strict mode accepts.

    Scalars (and lists and optionals of them, and string literals) get their JSON type;
    anything else is described as a string, as tinyagent does (it parses JSON text back
    into list/dict parameters). In strict mode every parameter is required.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        properties[name] = _json_type(hints.get(name, str))
        if strict or parameter.default is inspect.Parameter.empty:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def _json_type(annotation: Any) -> dict[str, Any]:
    if annotation in _JSON_TYPE_OF:
        return {"type": _JSON_TYPE_OF[annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and args and all(isinstance(a, str) for a in args):
        return {"type": "string", "enum": list(args)}
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            inner = _json_type(others[0])
            if isinstance(inner.get("type"), str):
                return {**inner, "type": [inner["type"], "null"]}
    if origin is list and len(args) == 1 and args[0] in _JSON_TYPE_OF:
        return {"type": "array", "items": {"type": _JSON_TYPE_OF[args[0]]}}
    return {"type": "string"}
