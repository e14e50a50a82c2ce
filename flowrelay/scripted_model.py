"""Scripted OpenAI-compatible chat-completions server: flowrelay's only LLM stand-in.

What: a small asyncio HTTP server (Starlette app on uvicorn + uvloop + httptools) that speaks
enough of the OpenAI chat-completions API for any-agent's real request path
(any-agent -> any-llm -> openai client -> HTTP) to run against it offline. Point an agent at
it with ``model_id="openai:<anything>"``, ``api_base="http://127.0.0.1:PORT/v1"`` and any
``api_key``.

Why: ``flowrelay up`` without an API key, the test-suite and the benchmark all need a model
that answers instantly, deterministically and scriptably, without mocking anything inside
any-agent. Because the whole client stack stays real, what passes here also exercises the
code that talks to a real provider. It must never be the bottleneck of a benchmark, so it does
no per-request logging, disables Nagle on every connection and keeps each request O(size).

Behaviour is scripted by directives in the LAST message whose role is ``user`` (text parts of
list content are joined with newlines). A directive starts at the beginning of the text or
after whitespace:

``(none)``
    Answer ``echo: <the whole last user text, unchanged>``.
``#delay=<seconds>``
    Wait before answering (other requests are not blocked); a client that hangs up ends
    the wait (outcome ``client_gone`` in ``/stats``). Capped at ``_MAX_DELAY_S``.
``#fail=<http status>``
    Answer with that status (400-599) and an OpenAI-style error body; 429 also carries
    ``retry-after: 0``.
``#fail-first=<n>:<http status>[:<retry-after seconds>]``
    Fail only the first ``n`` requests of its key (as ``#fail`` does, with ``retry-after``
    set to the given seconds, or ``0`` for a 429 without one), then answer normally. The key
    is the ``#count`` token of the request when it has one, else the whole last user text,
    so a run whose retries send the same request fails exactly ``n`` times, whichever
    process sends them. Counters live as long as the server.
``#call=<tool> <json object>``
    Ask for one call of ``tool`` per turn, in the order written. Once the conversation after
    the last user message holds as many ``tool`` results as there are ``#call`` directives,
    answer with the text of the last tool result (a ``{"result": x}`` envelope, as Google
    ADK wraps return values, is answered with ``x``).
``#loop=<tool> <json object>``
    Always ask for a call of ``tool``; never finish (for testing turn limits). Performed after
    any ``#call`` directives written before it.
``#count=<token>``
    Count this request under ``token`` (``GET /stats`` -> ``counted``, and per model in
    ``counted_by_model``): how many model calls a run really made, e.g. that a redelivered
    run was not executed twice, or that a resumed run did not call its finished agents again.
    ``/stats`` -> ``parameters`` keeps the last such request's fields other than messages and
    tools (``model``, ``temperature``, ``max_tokens``, ...): what really reached the model.
``#recall``
    Answer ``recall: `` and every message before the last user message but the system
    prompt, one per ``|``-separated item: ``user: <text>``, ``assistant: <text>``,
    ``assistant calls <tool>(<arguments>)``, ``tool <tool_call_id>: <result>`` (what a
    conversation's earlier turns looked like to the model).
``#tokens=<n>``
    Answer with a text of exactly ``n`` completion tokens (``n`` four-character words
    ``000 001 ...``), for streaming volume and cost tests. Capped at ``_MAX_TOKENS``.
``#pace=<ms>``
    With ``stream: true``, wait that many milliseconds between chunks (a model writing at
    a human-visible pace). Capped at ``_MAX_PACE_MS``.

``#delay``, ``#fail``, ``#fail-first`` and ``#count`` take an optional ``@<model>`` suffix
(``#delay=5@slow``): the directive then applies only to requests for that model (the
request's ``model``, e.g. ``slow`` for an agent with ``model_id: "scripted:slow"``). Agents
of a sequential workflow pass the directives on in their echoed answers; the suffix is how
one of them is told apart.

smolagents sends tool calls and results as plain messages (an assistant ``Calling tools:``
message, then a user ``Observation:`` message): such an observation counts as a tool result,
not as the user's message, and its ``New task:`` framing of the task is not part of the text.

When the request offers a tool named ``final_answer`` (smolagents' agents answer only
through it), the answer is given as a call of that tool with the answer text as its first
parameter, instead of as content.

With ``response_format`` of type ``json_schema`` the final answer is a minimal JSON instance of
the schema whose first plain string field holds the answer text; with ``json_object`` it is
``{"content": <answer text>}``.

Usage is deterministic: ``prompt_tokens = ceil(chars / 4)`` where chars counts the text of every
message's content plus the compact, key-sorted JSON of ``tools``; ``completion_tokens =
ceil(len(reply) / 4)`` where reply is the content, or the JSON of ``tool_calls`` exactly as
sent. Both are at least 1.

Conversations are checked like the real API checks them: a ``tool`` message must answer a
``tool_calls`` id of an earlier assistant message, and every call must be answered before
the next non-tool message; otherwise 400 (a history cut between a call and its result).

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` gets the same reply as an SSE chunk
stream: the content one token, four characters, per chunk, tool-call arguments in pieces,
then a usage chunk when ``stream_options.include_usage``), ``GET /v1/models``, ``GET /healthz`` and ``GET /stats`` (chat-completion requests
in total and by outcome, requests per second since start, uptime, token totals, and requests
being handled now and at peak). Malformed requests and directives get an OpenAI-style
400, never a 422; unknown fields are ignored.

Every reply is labelled as coming from this stand-in: ``system_fingerprint`` is
``flowrelay-scripted-model`` and every response has the header ``x-flowrelay-scripted-model: 1``.

Run it with ``python -m flowrelay.scripted_model [--host H] [--port P] [--port-file PATH]``: once
listening it prints ``SCRIPTED_MODEL_URL=http://H:P/v1`` (the only output) and writes the same
URL to ``--port-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["FINGERPRINT", "MARKER_HEADER", "URL_LINE_PREFIX", "create_app", "main", "serve"]

FINGERPRINT: Final = "flowrelay-scripted-model"
"""``system_fingerprint`` of every completion; also the model id listed by ``/v1/models``."""

MARKER_HEADER: Final = "x-flowrelay-scripted-model"
"""Response header (value ``1``) that marks every reply as coming from the stand-in."""

URL_LINE_PREFIX: Final = "SCRIPTED_MODEL_URL="
"""Prefix of the single stdout line printed once the server is listening."""

_CHARS_PER_TOKEN: Final = 4
"""Rough OpenAI-tokenizer ratio for English text; good enough for cost/usage plumbing."""

_MAX_DELAY_S: Final = 600.0
"""Upper bound for ``#delay`` so a typo cannot park a request (and shutdown) for hours."""

_SCHEMA_MAX_DEPTH: Final = 32
"""Nesting bound for structured-output instances; recursive schemas stop here."""

_KEEP_ALIVE_S: Final = 75
"""Idle keep-alive timeout. Longer than httpx's 5 s pool expiry, so the client, not the server,
closes idle connections and a request never races a server-side close."""

_GRACEFUL_SHUTDOWN_S: Final = 2.0
"""How long SIGTERM waits for in-flight (possibly delayed) requests before closing them."""

_BACKLOG: Final = 4096
"""Listen backlog: a benchmark may open hundreds of connections at once."""

_DIRECTIVE_RE: Final = re.compile(r"(?:(?<=\s)|^)#(delay|fail-first|fail|call|loop|count|tokens|pace)=")
"""A directive starts the text or follows whitespace, so ``a#b=`` inside words is inert."""

_RECALL_RE: Final = re.compile(r"(?:(?<=\s)|^)#recall(?=\s|$)")
"""``#recall`` takes no value."""

_MAX_TOKENS: Final = 100_000
"""Upper bound for ``#tokens``."""

_MAX_PACE_MS: Final = 1000.0
"""Upper bound for ``#pace``."""

_STREAM_CHUNK_CHARS: Final = 4
"""Content characters per streamed chunk (one token of the usage estimate)."""

_STREAM_ARGUMENT_CHARS: Final = 8
"""Tool-call argument characters per streamed chunk (providers send them in pieces)."""

_TOOL_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")
"""Tool names allowed by OpenAI function calling (plus dots, which some MCP tools use)."""

_UNRECORDED_PARAMETERS: Final = frozenset({"messages", "tools"})
"""Request fields ``/stats`` does not repeat per ``#count`` token (large, and seen otherwise)."""

_COUNT_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")
"""What ``#count=`` accepts as a token."""

_ERROR_TEMPLATES: Final[dict[int, tuple[str, str, str | None]]] = {
    # status: (message, type, code) -- shaped like what api.openai.com returns, so error
    # classification in the client stack (openai -> any-llm) sees realistic inputs.
    400: ("Invalid request (scripted failure).", "invalid_request_error", "invalid_request"),
    401: (
        (
            "Incorrect API key provided: {key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        ),
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: (
        "Permission denied: you are not allowed to sample from model `{model}`.",
        "invalid_request_error",
        "permission_denied",
    ),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        (
            "Rate limit reached for {model} in organization org-scripted on requests per min "
            "(RPM): Limit 3, Used 3, Requested 1. Please try again in 0s."
        ),
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        "server_error",
    ),
    502: ("Bad gateway.", "server_error", "bad_gateway"),
    503: (
        "The engine is currently overloaded, please try again later.",
        "server_error",
        "service_unavailable",
    ),
}

_STRING_FORMAT_EXAMPLES: Final[dict[str, str]] = {
    # Minimal valid values for the formats pydantic emits, so model_validate_json accepts them.
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "PT0S",
    "email": "echo@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}

_JSON_START: Final = frozenset('{["-0123456789tfn')
"""First characters a JSON document can start with (after whitespace)."""

_SMOLAGENTS_TASK_PREFIX: Final = "New task:\n"
_SMOLAGENTS_CALL_PREFIX: Final = "Calling tools:"
_SMOLAGENTS_OBSERVATION_PREFIX: Final = "Observation:"
"""How smolagents frames the task, its tool calls and their results in plain messages."""

_FINAL_ANSWER_TOOL: Final = "final_answer"
"""A tool through which some agents must give their answer (see ``_final_answer_parameter``)."""


# --------------------------------------------------------------------------------------------
# Request interpretation
# --------------------------------------------------------------------------------------------


class _ScriptError(ValueError):
    """A directive in the last user message cannot be understood (answered with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class _ToolStep:
    name: str
    arguments: str  # compact JSON text, sent verbatim as function.arguments
    repeat: bool  # True for #loop: never completes


@dataclass(frozen=True, slots=True)
class _FailFirst:
    count: int
    status: int
    retry_after: str | None


@dataclass(slots=True)
class _Script:
    delay_s: float = 0.0
    fail_status: int | None = None
    fail_first: _FailFirst | None = None
    steps: list[_ToolStep] = field(default_factory=list)
    count_token: str | None = None
    recall: bool = False
    tokens: int | None = None
    pace_s: float = 0.0


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _is_observation(messages: list[Any], index: int) -> bool:
    """A user message carrying a tool result, the way smolagents writes its conversation:
    an assistant ``Calling tools:`` message followed by a user ``Observation:`` message."""
    if index == 0 or not isinstance(messages[index - 1], dict):
        return False
    previous = _content_text(messages[index - 1].get("content"))
    text = _content_text(messages[index].get("content"))
    return (
        messages[index - 1].get("role") == "assistant"
        and previous.startswith(_SMOLAGENTS_CALL_PREFIX)
        and text.startswith(_SMOLAGENTS_OBSERVATION_PREFIX)
    )


def _last_user_index(messages: list[Any]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if (
            isinstance(message, dict)
            and message.get("role") == "user"
            and not _is_observation(messages, index)
        ):
            return index
    return None


def _user_text(message: Any) -> str:
    """The text of the user's message, without smolagents' ``New task:`` framing."""
    text = _content_text(message.get("content"))
    if text.startswith(_SMOLAGENTS_TASK_PREFIX):
        text = text.removeprefix(_SMOLAGENTS_TASK_PREFIX).removesuffix("\n")
    return text


def _parse_tool_step(text: str, start: int, *, repeat: bool) -> _ToolStep:
    """Parse ``<tool> <json object>`` starting at ``start`` (just after ``#call=``/``#loop=``)."""
    directive = "#loop" if repeat else "#call"
    name_match = _TOOL_NAME_RE.match(text, start)
    if name_match is None:
        raise _ScriptError(f"{directive}= needs a tool name")
    position = name_match.end()
    while position < len(text) and text[position] in " \t":
        position += 1
    arguments: Any = {}
    # No JSON here (end of line, end of text, or the next directive) means "no arguments".
    if position < len(text) and text[position] in _JSON_START:
        try:
            # raw_decode stops at the end of the document, so trailing text or a following
            # " #directive" is left alone, and "#" inside JSON strings is handled correctly.
            arguments, _ = json.JSONDecoder().raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise _ScriptError(
                f"{directive}={name_match.group()} has malformed JSON arguments: {exc.msg}"
            ) from exc
        if not isinstance(arguments, dict):
            raise _ScriptError(f"{directive}={name_match.group()} arguments must be a JSON object")
    return _ToolStep(
        name=name_match.group(),
        arguments=_compact_json(arguments),
        repeat=repeat,
    )


def _http_status(value: str, directive: str) -> int:
    if not value.isdigit() or not 400 <= int(value) <= 599:
        raise _ScriptError(f"{directive} needs an HTTP error status 400-599, got {value!r}")
    return int(value)


def _non_negative(value: str, *, what: str, not_a_number: str) -> float:
    """``value`` as a finite number >= 0, or a :class:`_ScriptError` saying which directive."""
    try:
        number = float(value)
    except ValueError:
        raise _ScriptError(f"{not_a_number}, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise _ScriptError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def _parse_fail_first(value: str) -> _FailFirst:
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        raise _ScriptError(f"#fail-first= needs <n>:<status>[:<retry-after seconds>], got {value!r}")
    retry_after = None
    if len(parts) == 3:
        _non_negative(parts[2], what="#fail-first= retry-after",
                      not_a_number="#fail-first= retry-after must be a number of seconds")
        retry_after = parts[2]
    return _FailFirst(count=int(parts[0]), status=_http_status(parts[1], "#fail-first="), retry_after=retry_after)


def _parse_script(text: str, model: str | None = None) -> _Script:
    """The directives of ``text`` that apply to a request for ``model``."""
    script = _Script(recall=_RECALL_RE.search(text) is not None)
    for match in _DIRECTIVE_RE.finditer(text):
        kind, start = match.group(1), match.end()
        if kind in ("call", "loop"):
            script.steps.append(_parse_tool_step(text, start, repeat=kind == "loop"))
            continue
        value = text[start:].split(maxsplit=1)[0] if text[start:].strip() else ""
        value, scoped, only_for = value.partition("@")
        if scoped and not only_for:
            raise _ScriptError(f"#{kind}= has '@' without a model name")
        if scoped and only_for != model:
            continue  # scoped to another model
        if kind == "fail-first":
            script.fail_first = _parse_fail_first(value)  # the last #fail-first wins
            continue
        if kind == "count":
            if not _COUNT_TOKEN_RE.fullmatch(value):
                raise _ScriptError(f"#count= needs a token of 1-64 letters, digits, '-' or '_', got {value!r}")
            script.count_token = value
        elif kind == "tokens":
            if not value.isdigit() or int(value) < 1:
                raise _ScriptError(f"#tokens= needs a whole number of tokens >= 1, got {value!r}")
            script.tokens = min(int(value), _MAX_TOKENS)
        elif kind == "pace":
            pace = _non_negative(value, what="#pace=", not_a_number="#pace= needs milliseconds")
            script.pace_s = min(pace, _MAX_PACE_MS) / 1000
        elif kind == "delay":
            delay = _non_negative(value, what="#delay=", not_a_number="#delay= needs a number of seconds")
            script.delay_s = min(delay, _MAX_DELAY_S)  # the last #delay wins
        else:
            script.fail_status = _http_status(value, "#fail=")  # the last #fail wins
    return script


def _next_step(steps: list[_ToolStep], results_seen: int) -> _ToolStep | None:
    """The tool call to request this turn, or None when every #call has its result."""
    remaining = results_seen
    for step in steps:
        if step.repeat:
            return step
        if remaining:
            remaining -= 1
            continue
        return step
    return None


def _tokens(chars: int) -> int:
    return max(1, -(-chars // _CHARS_PER_TOKEN))  # ceiling division, at least one token


def _prompt_chars(messages: list[Any], tools: Any) -> int:
    chars = sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    if tools:
        chars += len(json.dumps(tools, separators=(",", ":"), sort_keys=True))
    return chars


def _mask_key(authorization: str) -> str:
    """Mask an API key the way OpenAI does in 401 messages (never echo a secret in full)."""
    key = authorization.removeprefix("Bearer ").strip()
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


# --------------------------------------------------------------------------------------------
# Structured output: a minimal instance of a JSON schema
# --------------------------------------------------------------------------------------------


class _InstanceBuilder:
    """Build a small JSON value valid against a (pydantic/OpenAI-style) JSON schema.

    The first plain string field receives the answer text, so structured replies still carry
    the echo; everything else gets the smallest valid value (0, false, [], "", first enum).
    """

    def __init__(self, root: dict[str, Any], text: str) -> None:
        self._root = root
        self._text: str | None = text  # None once used
        self._ref_path: list[str] = []  # $refs being expanded, to cut recursive schemas

    def build(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > _SCHEMA_MAX_DEPTH:
            return None
        if "$ref" in schema:
            ref = schema["$ref"]
            self._ref_path.append(ref)
            try:
                return self.build(self._resolve(ref), depth + 1)
            finally:
                self._ref_path.pop()
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for keyword in ("anyOf", "oneOf"):
            options = schema.get(keyword)
            if isinstance(options, list) and options:
                return self.build(self._pick_option(options), depth + 1)
        if isinstance(schema.get("allOf"), list):
            return self.build(self._merge_all_of(schema), depth + 1)

        kind = schema.get("type")
        if isinstance(kind, list):  # e.g. ["string", "null"]: prefer the non-null type
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            count = schema.get("minItems", 0)
            return [self.build(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        return None

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}  # remote refs never appear in what the openai client sends
        node: Any = self._root
        for part in ref.lstrip("#").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node

    def _pick_option(self, options: list[Any]) -> Any:
        # Take the first option, except one that re-enters a $ref we are already expanding:
        # for a recursive `child: Node | None` that picks null and keeps the instance finite.
        for option in options:
            if not (isinstance(option, dict) and option.get("$ref") in self._ref_path):
                return option
        return options[-1]

    def _merge_all_of(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict) and "$ref" in part:
                part = self._resolve(part["$ref"])
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        # All declared properties, not only required ones: still valid, and it lets the answer
        # text land in the first string field even when that field is optional.
        result = {name: self.build(sub, depth + 1) for name, sub in properties.items()}
        extra = schema.get("additionalProperties")
        for name in schema.get("required", []):
            if name not in result:
                result[name] = self.build(extra if isinstance(extra, dict) else {}, depth + 1)
        return result

    def _string(self, schema: dict[str, Any]) -> str:
        value = _STRING_FORMAT_EXAMPLES.get(schema.get("format", ""))
        if value is None:
            value = ""
            if self._text is not None and "pattern" not in schema:
                value, self._text = self._text, None
        max_length = schema.get("maxLength")
        if isinstance(max_length, int):
            value = value[:max_length]
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            value = value.ljust(min_length, "x")
        return value

    @staticmethod
    def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
        value: float = 0
        step = 1 if integer else 0.5
        if isinstance(schema.get("minimum"), (int, float)):
            value = max(value, schema["minimum"])
        if isinstance(schema.get("exclusiveMinimum"), (int, float)):
            value = max(value, schema["exclusiveMinimum"] + step)
        if isinstance(schema.get("maximum"), (int, float)):
            value = min(value, schema["maximum"])
        if isinstance(schema.get("exclusiveMaximum"), (int, float)):
            value = min(value, schema["exclusiveMaximum"] - step)
        return math.ceil(value) if integer else value


def _structured_content(response_format: Any, answer: str) -> str | None:
    """JSON content honouring ``response_format``, or None when plain text is wanted."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        schema = schema if isinstance(schema, dict) else {}
        return json.dumps(_InstanceBuilder(schema, answer).build(schema), ensure_ascii=False)
    if kind == "json_object":
        return json.dumps({"content": answer}, ensure_ascii=False)
    return None


def _final_answer_parameter(tools: Any) -> str | None:
    """The parameter of an offered ``final_answer`` tool, or None if none is offered.

    Agents that answer only through such a tool (smolagents; tinyagent with some providers)
    never accept plain text as the answer: the stand-in calls it, as a real model would.
    """
    if not isinstance(tools, list):
        return None
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == _FINAL_ANSWER_TOOL:
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, dict) else None
            required = parameters.get("required") if isinstance(parameters, dict) else None
            names = [*(required or []), *(properties or {})]
            return str(names[0]) if names else "answer"
    return None


def _result_text(content: Any) -> str:
    """A tool result as answer text; ``{"result": x}`` (Google ADK's envelope for any return
    value that is not an object) is answered with ``x``, so every framework gives ``5``."""
    text = _content_text(content)
    if text.startswith('{"result"'):
        with contextlib.suppress(ValueError):
            value = json.loads(text)
            if isinstance(value, dict) and set(value) == {"result"}:
                inner = value["result"]
                return inner if isinstance(inner, str) else _compact_json(inner)
    return text


def _tool_call(name: str, arguments: str, number: int, turn: int = 0) -> list[dict[str, Any]]:
    # One call per turn; the id is deterministic and unique within the conversation (``turn``
    # is where the last user message sits, so earlier turns' calls have other ids).
    return [
        {
            "id": f"call_flowrelay_{turn}_{number}" if turn else f"call_flowrelay_{number}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
    ]


def _recall(earlier: list[Any]) -> str:
    """The earlier messages of a conversation as one line (see ``#recall``)."""
    items: list[str] = []
    for message in earlier:
        if not isinstance(message, dict) or message.get("role") == "system":
            continue
        role, text = message.get("role"), _content_text(message.get("content"))
        if role == "tool":
            items.append(f"tool {message.get('tool_call_id')}: {text}")
            continue
        if text:
            items.append(f"{role}: {text}")
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                items.append(f"{role} calls {function.get('name')}({function.get('arguments')})")
    return "recall: " + " | ".join(items)


def _generated_text(tokens: int) -> str:
    """``tokens`` four-character words: exactly that many completion tokens."""
    return "".join(f"{i % 1000:03d} " for i in range(tokens)).rstrip()  # 4n - 1 chars: n tokens


def _pairing_error(messages: list[Any]) -> str | None:
    """What the real API would refuse about tool calls and results in ``messages``."""
    open_calls: list[str] = []
    answered: set[str] = set()
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceding message "
                        f"with 'tool_calls' (tool_call_id {call_id!r} answers no open call).")
            open_calls.remove(call_id)
            answered.add(call_id)
            continue
        if open_calls:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                    f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(open_calls)}")
        if role == "assistant":
            open_calls = [c.get("id") for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    return None


def _reply(
    script: _Script, later: list[Any], user_text: str, response_format: Any, tools: Any = None,
    earlier: list[Any] | None = None,
) -> tuple[str | None, list[dict[str, Any]] | None]:
    """This turn's (content, tool_calls), given the messages after the last user message."""
    results = [
        _result_text(m.get("content"))
        for m in later
        if isinstance(m, dict) and m.get("role") == "tool"
    ] or [
        _content_text(m.get("content")).removeprefix(_SMOLAGENTS_OBSERVATION_PREFIX).strip()
        for i, m in enumerate(later)
        if isinstance(m, dict) and m.get("role") == "user" and _is_observation(later, i)
    ]
    step = _next_step(script.steps, len(results))
    turn = len(earlier or [])
    if step is not None:
        return None, _tool_call(step.name, step.arguments, len(results), turn)
    if script.steps:
        answer = results[-1]
    elif script.recall:
        answer = _recall(earlier or [])
    elif script.tokens is not None:
        answer = _generated_text(script.tokens)
    else:
        answer = f"echo: {user_text}"
    structured = _structured_content(response_format, answer)
    content = answer if structured is None else structured
    parameter = _final_answer_parameter(tools)
    if parameter is not None:
        return None, _tool_call(_FINAL_ANSWER_TOOL, _compact_json({parameter: content}), len(results), turn)
    return content, None


# --------------------------------------------------------------------------------------------
# HTTP app
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stats:
    """Counters behind ``GET /stats``. ``in_flight`` counts valid chat requests being handled;
    only ``#delay`` makes a handler wait, so without delays its peak stays at 1."""

    started: float = field(default_factory=time.monotonic)
    total: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    in_flight_peak: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    counted: Counter[str] = field(default_factory=Counter)
    #: Per ``#count`` token, the request's parameters besides messages and tools (the last
    #: request's), so a test can see what reached the model, e.g. a node's ``model_args``.
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    counted_by_model: dict[str, Counter[str]] = field(default_factory=dict)
    #: Requests seen per ``#fail-first`` key.
    fail_first_seen: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        uptime = time.monotonic() - self.started
        return {
            "server": FINGERPRINT,
            "uptime_s": round(uptime, 3),
            "requests_total": self.total,
            "requests_by_outcome": dict(self.by_outcome),
            "requests_per_second": round(self.total / uptime, 3) if uptime > 0 else 0.0,
            "in_flight": self.in_flight,
            "in_flight_peak": self.in_flight_peak,
            "prompt_tokens_total": self.prompt_tokens,
            "completion_tokens_total": self.completion_tokens,
            "counted": dict(self.counted),
            "parameters": self.parameters,
            "counted_by_model": {token: dict(models) for token, models in self.counted_by_model.items()},
        }


def _json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # One pre-serialised body, so uvicorn sends headers + body as two small writes at most.
    return Response(
        _compact_json(payload).encode(),
        status_code=status,
        headers={MARKER_HEADER: "1", **(headers or {})},
        media_type="application/json",
    )


def _error_response(
    status: int,
    message: str,
    error_type: str,
    code: str | None,
    param: str | None = None,
    retry_after: str | None = None,
) -> Response:
    # 429 carries retry-after like the real API. Note: the openai client treats 0 as "no hint"
    # and falls back to its own backoff (about 0.5 s, then 1 s) for its two default retries.
    if retry_after is None and status == 429:
        retry_after = "0"
    headers = {"retry-after": retry_after} if retry_after is not None else None
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return _json_response(body, status, headers)


def _scripted_failure(
    status: int, model: str, authorization: str, retry_after: str | None = None
) -> Response:
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    message, error_type, code = _ERROR_TEMPLATES.get(
        status, (f"Scripted failure with HTTP status {status}.", default_type, None)
    )
    message = message.format(model=model, key=_mask_key(authorization))
    return _error_response(status, message, error_type, code, retry_after=retry_after)


def _completion_body(
    *,
    model: str,
    content: str | None,
    tool_calls: list[dict[str, Any]] | None,
    usage: dict[str, int],
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{os.urandom(12).hex()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": usage,
    }


def _stream_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The completion as chat.completion.chunk objects, as a provider streams it: the role,
    the content one token (four characters) per chunk, each tool call's name and then its
    arguments in pieces, the finish reason, and the usage last when asked for."""
    message = body["choices"][0]["message"]
    base = {k: body[k] for k in ("id", "created", "model", "system_fingerprint", "service_tier")}
    base["object"] = "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    content = message["content"] or ""
    chunks += [chunk({"content": content[i : i + _STREAM_CHUNK_CHARS]}) for i in range(0, len(content), _STREAM_CHUNK_CHARS)]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                             "function": {"name": function["name"], "arguments": ""}}]}))
        arguments = function["arguments"]
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + _STREAM_ARGUMENT_CHARS]}}]})
                   for i in range(0, len(arguments), _STREAM_ARGUMENT_CHARS)]
    chunks.append(chunk({}, body["choices"][0]["finish_reason"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


def _stream_response(body: dict[str, Any], include_usage: bool, pace_s: float = 0.0) -> Response:
    """The completion as an SSE chunk stream: one body at once, or chunk by chunk ``pace_s`` apart."""
    chunks = _stream_chunks(body, include_usage)
    headers = {MARKER_HEADER: "1", "cache-control": "no-cache"}
    if not pace_s:
        text = "".join(f"data: {_compact_json(chunk)}\n\n" for chunk in chunks)
        return Response((text + "data: [DONE]\n\n").encode(), headers=headers, media_type="text/event-stream")

    async def paced() -> AsyncIterator[bytes]:
        for number, chunk in enumerate(chunks):
            if number:
                await asyncio.sleep(pace_s)
            yield f"data: {_compact_json(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(paced(), headers=headers, media_type="text/event-stream")


async def _wait_unless_gone(request: Request, seconds: float) -> bool:
    """Wait ``seconds`` unless the client hangs up first; whether it is still there.

    A caller killed in the middle of a delayed call (a worker a draining executor stopped)
    must not leave its request parked for the rest of the delay: that held the server's
    shutdown until uvicorn cancelled it, with a traceback in the log.
    """

    async def hung_up() -> None:
        # The body is read: the next ASGI message is the disconnect, whenever it comes.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(hung_up())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()
    return not done


def create_app() -> Starlette:
    """The ASGI app (for uvicorn or in-process httpx use). Stats start when it is created."""
    stats = _Stats()

    async def chat_completions(request: Request) -> Response:
        stats.total += 1
        try:
            body = json.loads(await request.body())
        except ValueError:
            stats.by_outcome["invalid_request"] += 1
            message = "We could not parse the JSON body of your request."
            return _error_response(400, message, "invalid_request_error", None)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            stats.by_outcome["invalid_request"] += 1
            message = "Missing required parameter: 'messages'."
            code = "missing_required_parameter"
            return _error_response(400, message, "invalid_request_error", code, "messages")
        messages: list[Any] = body["messages"]
        model = body["model"] if isinstance(body.get("model"), str) else FINGERPRINT
        user_index = _last_user_index(messages)
        user_text = "" if user_index is None else _user_text(messages[user_index])
        try:
            script = _parse_script(user_text, model)
        except _ScriptError as exc:
            stats.by_outcome["invalid_request"] += 1
            message = f"Scripted model directive error: {exc}"
            return _error_response(400, message, "invalid_request_error", None, "messages")

        if script.count_token is not None:
            stats.counted[script.count_token] += 1
            stats.parameters[script.count_token] = {
                k: v for k, v in body.items() if k not in _UNRECORDED_PARAMETERS
            }
            stats.counted_by_model.setdefault(script.count_token, Counter())[model] += 1
        failing_first = None
        if (first := script.fail_first) is not None:
            key = script.count_token if script.count_token is not None else user_text
            stats.fail_first_seen[key] += 1
            if stats.fail_first_seen[key] <= first.count:
                failing_first = first
        stats.in_flight += 1
        stats.in_flight_peak = max(stats.in_flight_peak, stats.in_flight)
        try:
            if script.delay_s and not await _wait_unless_gone(request, script.delay_s):
                stats.by_outcome["client_gone"] += 1
                return Response(status_code=499)  # nobody reads it: the connection is closed
        finally:
            stats.in_flight -= 1
        if script.fail_status is not None or failing_first is not None:
            stats.by_outcome["scripted_failure"] += 1
            authorization = request.headers.get("authorization", "")
            if failing_first is not None:
                return _scripted_failure(failing_first.status, model, authorization, failing_first.retry_after)
            assert script.fail_status is not None
            return _scripted_failure(script.fail_status, model, authorization)

        if (pairing := _pairing_error(messages)) is not None:
            stats.by_outcome["invalid_request"] += 1
            return _error_response(400, pairing, "invalid_request_error", None, "messages")
        later = messages[user_index + 1 :] if user_index is not None else []
        earlier = messages[:user_index] if user_index is not None else []
        content, tool_calls = _reply(
            script, later, user_text, body.get("response_format"), body.get("tools"), earlier
        )
        stats.by_outcome["tool_call" if tool_calls else "answer"] += 1
        reply = content if content is not None else _compact_json(tool_calls)
        usage = {
            "prompt_tokens": _tokens(_prompt_chars(messages, body.get("tools"))),
            "completion_tokens": _tokens(len(reply)),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        stats.prompt_tokens += usage["prompt_tokens"]
        stats.completion_tokens += usage["completion_tokens"]
        completion = _completion_body(
            model=model, content=content, tool_calls=tool_calls, usage=usage
        )
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return _stream_response(completion, include_usage, script.pace_s)
        return _json_response(completion)

    async def list_models(_: Request) -> Response:
        model = {"id": FINGERPRINT, "object": "model", "created": 0, "owned_by": "flowrelay"}
        return _json_response({"object": "list", "data": [model]})

    async def healthz(_: Request) -> Response:
        return _json_response({"status": "ok", "server": FINGERPRINT})

    async def stats_endpoint(_: Request) -> Response:
        return _json_response(stats.snapshot())

    async def unknown_route(request: Request, exc: Exception) -> Response:
        # Same shape as the real API's answer to a wrong URL (e.g. api_base without /v1).
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = f"Invalid URL ({request.method} {request.url.path})"
        return _error_response(status, message, "invalid_request_error", None)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/stats", stats_endpoint, methods=["GET"]),
        ],
        exception_handlers={404: unknown_route, 405: unknown_route},
    )


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


class _NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY asserted on every connection.

    uvicorn writes the status/headers and the body of a reply separately; with Nagle on, a
    keep-alive client then waits for a delayed ACK (about 40 ms) before the body leaves.
    uvloop and asyncio already set TCP_NODELAY; doing it here keeps that true whatever loop runs.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class _Server(uvicorn.Server):
    """uvicorn server that reports its URL once listening and exits 0 on SIGTERM/SIGINT."""

    def __init__(
        self, config: uvicorn.Config, on_ready: Callable[[str], None] | None, handle_signals: bool
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._handle_signals = handle_signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit and self._on_ready is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._on_ready(f"http://{shown}:{port}/v1")

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after a graceful shutdown, which turns SIGTERM
        # into exit status -15 and SIGINT into a KeyboardInterrupt traceback. A clean stop
        # should exit 0, so install the handlers ourselves and do not re-raise.
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serve the scripted model on the running loop until stopped.

    ``on_ready(base_url)`` is called once the socket is listening (with port 0, the URL carries
    the port actually bound). Pass a literal IP as ``host``: a name resolving to several
    addresses would bind several sockets, each to its own free port.
    ``handle_signals`` makes SIGINT/SIGTERM stop it gracefully (main thread only).
    """
    config = uvicorn.Config(
        create_app(),
        host=host,
        port=port,
        http=_NoDelayHttpToolsProtocol,
        lifespan="off",
        access_log=False,  # per-request logging would cost more than answering
        proxy_headers=False,  # no proxy in front; skips a middleware hop per request
        log_config=None,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=_KEEP_ALIVE_S,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        backlog=_BACKLOG,
    )
    await _Server(config, on_ready, handle_signals).serve()


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the scripted model on the running loop for the duration of the block.

    Yields the base URL (``.../v1``). For in-process use, e.g. the executor's start-up
    self-check, which must not depend on any model outside the process.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[str] = loop.create_future()
    config = uvicorn.Config(
        create_app(), host=host, port=port, http=_NoDelayHttpToolsProtocol, lifespan="off",
        access_log=False, log_config=None, log_level="warning", server_header=False,
        date_header=False, timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config, lambda url: ready.done() or ready.set_result(url), handle_signals=False)
    task = loop.create_task(server.serve())
    task.add_done_callback(lambda t: ready.done() or ready.set_exception(
        RuntimeError("the scripted model stopped before it was listening")
    ))
    try:
        yield await ready
    finally:
        server.should_exit = True
        await task


def _write_atomically(path: Path, text: str) -> None:
    # Readers polling for the file must never see it half-written: write aside, then rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional speed; asyncio works the same
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: serve until SIGTERM/SIGINT, announcing the URL once listening."""
    parser = argparse.ArgumentParser(
        prog="flowrelay-scripted-model",
        description="Offline, scripted OpenAI-compatible chat-completions server (a stand-in).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="IP address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument("--port-file", type=Path, help="also write the base URL to this file")
    args = parser.parse_args(argv)

    def announce(url: str) -> None:
        if args.port_file is not None:
            _write_atomically(args.port_file, url)
        print(f"{URL_LINE_PREFIX}{url}", flush=True)

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        runner.run(serve(args.host, args.port, on_ready=announce, handle_signals=True))


if __name__ == "__main__":
    sys.exit(main())
