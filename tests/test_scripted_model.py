"""Tests for the scripted OpenAI-compatible model server (flowrelay.scripted_model).

The server runs as a real subprocess and any-agent talks to it through its real client stack
(any-agent -> any-llm -> openai -> HTTP), the way flowrelay uses it.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from any_agent import AgentCancel, AgentConfig, AgentRunError, AnyAgent
from any_agent.callbacks import Callback
from any_llm import exceptions as llm_errors
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel

from flowrelay.scripted_model import FINGERPRINT, MARKER_HEADER, URL_LINE_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]

# any-agent's own config models emit this on every AgentConfig; it is not about this module.
pytestmark = pytest.mark.filterwarnings("ignore:SSE is deprecated:DeprecationWarning")


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


class _ScriptedServer:
    """A scripted-model subprocess; ready once it has printed its URL line."""

    def __init__(self, *extra_args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowrelay.scripted_model", "--port", "0", *extra_args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        # Blocks until the server is listening: the line is printed only then. No sleeps.
        self.line = self.proc.stdout.readline().rstrip("\n")
        if not self.line.startswith(URL_LINE_PREFIX):
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"no URL line, got {self.line!r}; stderr:\n{err}")
        self.url = self.line.removeprefix(URL_LINE_PREFIX)
        self.root = self.url.removesuffix("/v1")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="module")
def server() -> Iterator[_ScriptedServer]:
    srv = _ScriptedServer()
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def fresh_server() -> Iterator[_ScriptedServer]:
    srv = _ScriptedServer()
    yield srv
    assert srv.stop() == 0


@pytest.fixture
async def http(server: _ScriptedServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


ADD_CALLS: list[tuple[int, int]] = []


def add(a: int, b: int) -> int:
    """Add two integers."""
    ADD_CALLS.append((a, b))
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def tick() -> str:
    """Say tick."""
    return "tick"


async def _run_agent(
    url: str,
    prompt: str,
    *,
    callbacks: list[Callback] | None = None,
    **config: Any,
) -> Any:
    agent = await AnyAgent.create_async(
        "tinyagent",
        AgentConfig(
            model_id="openai:gpt-4o-mini",
            api_base=url,
            api_key="scripted",
            callbacks=callbacks or [],
            tools=[add, shout, tick],
            **config,
        ),
    )
    try:
        return await agent.run_async(prompt)
    finally:
        # any-agent never closes the provider's HTTP client; do it to keep sockets tidy.
        await agent.llm.client.close()  # type: ignore[attr-defined]


def _chat(text: str | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


class _Recorder(Callback):
    """Records the order of any-agent callback hooks."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def _note(self, name: str, context: Any) -> Any:
        self.events.append(name)
        return context

    def before_llm_call(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        return self._note("llm", context)

    def before_tool_execution(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        return self._note("tool", context)


# --------------------------------------------------------------------------------------------
# Process, CLI and plain endpoints
# --------------------------------------------------------------------------------------------


def test_url_line_port_file_and_clean_signals(tmp_path: Path) -> None:
    port_file = tmp_path / "model.url"
    for sig in (signal.SIGTERM, signal.SIGINT):
        srv = _ScriptedServer("--port-file", str(port_file))
        try:
            assert srv.line.startswith("SCRIPTED_MODEL_URL=http://127.0.0.1:")
            assert srv.url.endswith("/v1")
            assert port_file.read_text() == srv.url  # written before the line is printed
            assert httpx.get(f"{srv.root}/healthz").status_code == 200
        finally:
            assert srv.stop(sig) == 0
        assert list(port_file.parent.glob(".*.tmp")) == []  # atomic write left nothing behind
        port_file.unlink()


async def test_plain_endpoints_are_labelled(server: _ScriptedServer) -> None:
    async with httpx.AsyncClient(base_url=server.root) as client:
        health = await client.get("/healthz")
        models = await client.get("/v1/models")
        stats = await client.get("/stats")
        missing = await client.get("/v1/nope")
    for response in (health, models, stats, missing):
        assert response.headers[MARKER_HEADER] == "1"
    assert health.json()["status"] == "ok"
    assert models.json()["data"][0]["id"] == FINGERPRINT
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    snapshot = stats.json()
    assert {
        "requests_total",
        "requests_by_outcome",
        "requests_per_second",
        "uptime_s",
    } <= set(snapshot)


# --------------------------------------------------------------------------------------------
# Through real any-agent
# --------------------------------------------------------------------------------------------


async def test_echo_through_any_agent(server: _ScriptedServer) -> None:
    trace = await _run_agent(server.url, "ping")
    assert trace.final_output == "echo: ping"
    assert trace.tokens.input_tokens > 0 and trace.tokens.output_tokens > 0


async def test_two_agent_chain_echoes_twice(server: _ScriptedServer) -> None:
    first = await _run_agent(server.url, "ping")
    second = await _run_agent(server.url, first.final_output)
    assert second.final_output == "echo: echo: ping"


async def test_call_reaches_a_real_tool_and_answers_with_its_result(
    server: _ScriptedServer,
) -> None:
    ADD_CALLS.clear()
    recorder = _Recorder()
    trace = await _run_agent(
        server.url,
        'sum please #call=add {"a": 1, "b": 2} #call=add {"a": 30, "b": 4}',
        callbacks=[recorder],
    )
    assert ADD_CALLS == [(1, 2), (30, 4)]
    assert trace.final_output == "34"  # the last tool result, verbatim
    assert recorder.events == ["llm", "tool", "llm", "tool", "llm"]
    tool_spans = [s for s in trace.spans if s.name.startswith("execute_tool")]
    assert [s.attributes["gen_ai.tool.name"] for s in tool_spans] == ["add", "add"]


async def test_call_with_hash_inside_json_and_no_arguments(server: _ScriptedServer) -> None:
    trace = await _run_agent(server.url, '#call=shout {"text": "a #b c"}')
    assert trace.final_output == "A #B C"  # raw_decode keeps " #" inside JSON strings
    trace = await _run_agent(server.url, "#call=tick\nthen answer")
    assert trace.final_output == "tick"


async def test_loop_never_finishes_until_a_turn_limit_cancels(server: _ScriptedServer) -> None:
    class TurnLimitReached(AgentCancel):
        pass

    class TurnLimit(Callback):
        def __init__(self, limit: int) -> None:
            self.limit, self.turns = limit, 0

        def before_llm_call(self, context: Any, *args: Any, **kwargs: Any) -> Any:
            self.turns += 1
            if self.turns > self.limit:
                raise TurnLimitReached(f"more than {self.limit} model calls")
            return context

    with pytest.raises(TurnLimitReached) as caught:
        await _run_agent(server.url, '#loop=add {"a": 1, "b": 1}', callbacks=[TurnLimit(4)])
    tool_spans = [s for s in caught.value.trace.spans if s.name.startswith("execute_tool")]
    assert len(tool_spans) == 4


async def test_fail_401_surfaces_as_openai_authentication_error(server: _ScriptedServer) -> None:
    with pytest.raises(AgentRunError) as caught:
        await _run_agent(server.url, "#fail=401")
    original = caught.value.original_exception
    assert isinstance(original, openai.AuthenticationError)
    assert original.status_code == 401
    assert original.code == "invalid_api_key"
    assert "Incorrect API key provided" in original.message


async def test_fail_with_unified_any_llm_exceptions(server: _ScriptedServer) -> None:
    expected: dict[int, type[llm_errors.AnyLLMError]] = {
        401: llm_errors.AuthenticationError,
        404: llm_errors.ModelNotFoundError,
        429: llm_errors.RateLimitError,
        503: llm_errors.ProviderError,
    }
    for status, error_class in expected.items():
        with pytest.raises(AgentRunError) as caught:
            await _run_agent(
                server.url,
                f"#fail={status}",
                # max_retries=0: the openai client would otherwise retry 429/5xx with backoff.
                any_llm_args={"unified_exceptions": True, "max_retries": 0},
            )
        original = caught.value.original_exception
        assert isinstance(original, error_class), (status, original)
        assert original.status_code == status
        assert isinstance(original.original_exception, openai.APIStatusError)


async def test_connection_refused_is_an_api_connection_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AgentRunError) as caught:
        await _run_agent(f"http://127.0.0.1:{port}/v1", "ping", any_llm_args={"max_retries": 0})
    assert isinstance(caught.value.original_exception, openai.APIConnectionError)


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    number: int


class Report(BaseModel):
    summary: str
    kind: Literal["short", "long"]
    colour: Colour
    score: float
    done: bool
    tags: list[str]
    address: Address
    note: str | None = None


async def test_structured_output_through_tinyagent(server: _ScriptedServer) -> None:
    trace = await _run_agent(server.url, "ping", output_type=Report)
    report = trace.final_output
    assert isinstance(report, Report)
    assert report.summary == "echo: ping"  # the first string field carries the answer
    assert report.kind == "short" and report.colour is Colour.RED


async def test_structured_output_after_a_tool_call(server: _ScriptedServer) -> None:
    trace = await _run_agent(server.url, '#call=add {"a": 2, "b": 3}', output_type=Report)
    assert isinstance(trace.final_output, Report)
    assert trace.final_output.summary == "5"


# --------------------------------------------------------------------------------------------
# Raw HTTP
# --------------------------------------------------------------------------------------------


async def test_delay_requests_overlap(fresh_server: _ScriptedServer) -> None:
    delay, count = 0.5, 10
    async with httpx.AsyncClient(base_url=fresh_server.url, timeout=30) as client:

        async def one() -> None:
            response = await client.post("/chat/completions", json=_chat(f"hi #delay={delay}"))
            assert response.status_code == 200

        await asyncio.gather(*(one() for _ in range(count)))
        stats = (await client.get(f"{fresh_server.root}/stats")).json()
    # All ten were asleep in the server at the same time: a delay blocks nobody else.
    assert stats["in_flight_peak"] == count
    assert stats["in_flight"] == 0


async def test_a_delayed_request_ends_when_its_client_hangs_up() -> None:
    # A worker killed in the middle of a model call (a draining executor handing its run back)
    # leaves its request behind: it must end then, not hold the server's shutdown until
    # uvicorn cancels it with a traceback in the log.
    srv = _ScriptedServer()
    try:
        async with httpx.AsyncClient(base_url=srv.root, timeout=30) as stats:

            async def until(predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
                while not predicate(current := (await stats.get("/stats")).json()):
                    await asyncio.sleep(0.02)  # GET /stats is the server's only window
                return current

            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as caller:
                call = asyncio.create_task(caller.post("/chat/completions", json=_chat("hi #delay=120")))
                await asyncio.wait_for(until(lambda s: s["in_flight"] == 1), 30)
                call.cancel()  # the caller goes away; its connection closes with the client
            gone = await asyncio.wait_for(until(lambda s: s["in_flight"] == 0), 30)
        assert gone["requests_by_outcome"] == {"client_gone": 1}
        srv.proc.send_signal(signal.SIGTERM)
        _, err = srv.proc.communicate(timeout=30)
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    assert "Traceback" not in err and "graceful shutdown exceeded" not in err, err


async def test_usage_is_deterministic_and_follows_the_documented_formula(
    http: httpx.AsyncClient,
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "s" * 21},
            {"role": "user", "content": [{"type": "text", "text": "x" * 40}]},
        ],
        "tools": tools,
    }
    first, second = [(await http.post("/chat/completions", json=request)).json() for _ in "12"]
    assert first["usage"] == second["usage"]
    tools_chars = len(json.dumps(tools, separators=(",", ":"), sort_keys=True))
    prompt = math.ceil((21 + 40 + tools_chars) / 4)
    completion = math.ceil(len("echo: " + "x" * 40) / 4)
    assert first["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    empty = await http.post("/chat/completions", json={"model": "m", "messages": []})
    assert empty.json()["usage"]["prompt_tokens"] == 1  # never zero


async def test_everything_openai_sends_is_accepted(http: httpx.AsyncClient) -> None:
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": 'go #call=add {"a": 1, "b": 2}'},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
                "tool_calls": [
                    {
                        "id": "call_flowrelay_0",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a":1,"b":2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_flowrelay_0", "name": "add", "content": "3"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "add",
                    "description": "Add",
                    "parameters": {
                        "type": "object",
                        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                        "required": ["a", "b"],
                        "additionalProperties": False,
                    },
                    "strict": True,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "stream": False,
        "stream_options": None,
        "seed": 7,
        "user": "u",
        "metadata": {"k": "v"},
        "some_future_field": {"nested": [1, 2, 3]},
    }
    response = await http.post("/chat/completions", json=request)
    assert response.status_code == 200, response.text
    assert response.headers[MARKER_HEADER] == "1"
    body = response.json()
    assert body["system_fingerprint"] == FINGERPRINT
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "3"


async def test_first_turn_of_a_call_is_a_tool_call(http: httpx.AsyncClient) -> None:
    body = (await http.post("/chat/completions", json=_chat('#call=add {"a": 1}'))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"] == {"name": "add", "arguments": '{"a":1}'}


async def test_scripted_failures_have_openai_error_bodies(http: httpx.AsyncClient) -> None:
    expected_codes = {
        400: "invalid_request_error",
        401: "invalid_api_key",
        404: "model_not_found",
        429: "rate_limit_exceeded",
        500: "server_error",
        503: "service_unavailable",
    }
    for status, code in expected_codes.items():
        response = await http.post(
            "/chat/completions",
            json=_chat(f"x #fail={status}"),
            headers={"authorization": "Bearer sk-secret-key-123456"},
        )
        assert response.status_code == status
        assert response.headers[MARKER_HEADER] == "1"
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert code in (error["code"], error["type"])
        assert "sk-secret-key-123456" not in error["message"]  # keys are masked
    not_found = await http.post("/chat/completions", json=_chat("#fail=404"))
    assert "The model `gpt-4o-mini` does not exist" in not_found.json()["error"]["message"]
    limited = await http.post("/chat/completions", json=_chat("#fail=429"))
    assert limited.headers["retry-after"] == "0"


async def test_bad_requests_are_400_not_422(http: httpx.AsyncClient) -> None:
    for content in ("#fail=200", "#delay=soon", '#call=add {"a": ', "#call=add [1]"):
        response = await http.post("/chat/completions", json=_chat(content))
        assert response.status_code == 400, content
        assert response.json()["error"]["type"] == "invalid_request_error"
    not_json = await http.post("/chat/completions", content=b"{nope")
    assert not_json.status_code == 400
    no_messages = await http.post("/chat/completions", json={"model": "m"})
    assert no_messages.status_code == 400


async def test_stream_through_the_openai_client(server: _ScriptedServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "ping"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "echo: ping"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": '#call=add {"a": 1}'}],
            stream=True,
        )
        calls = [
            call
            async for chunk in stream
            for call in (chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
        ]
        # the name first, then the arguments in pieces, as providers stream them
        assert calls[0].function.name == "add" and calls[0].id
        assert "".join(c.function.arguments or "" for c in calls) == '{"a":1}'
        assert {c.index for c in calls} == {0}


async def test_stream_sends_one_token_per_chunk_and_exact_usage(server: _ScriptedServer) -> None:
    from any_llm import AnyLLM
    from any_llm.utils.streaming import ChatCompletionAccumulator

    llm = AnyLLM.create("openai", api_key="x", api_base=server.url)
    plain = await llm.acompletion(model="m", messages=[{"role": "user", "content": "#tokens=25"}])
    stream = await llm.acompletion(model="m", messages=[{"role": "user", "content": "#tokens=25"}],
                                   stream=True, stream_options={"include_usage": True})
    accumulator = ChatCompletionAccumulator()
    texts = []
    async for chunk in stream:
        accumulator.add(chunk)
        texts += [c.delta.content for c in chunk.choices if c.delta.content]
    completion = accumulator.completion
    assert len(texts) == 25 and all(len(t) <= 4 for t in texts)
    assert "".join(texts) == completion.choices[0].message.content == plain.choices[0].message.content
    assert completion.usage.completion_tokens == plain.usage.completion_tokens == 25
    assert completion.usage.prompt_tokens == plain.usage.prompt_tokens


async def test_paced_stream_arrives_chunk_by_chunk(http: httpx.AsyncClient) -> None:
    request = _chat("#tokens=3 #pace=5", stream=True)
    async with http.stream("POST", "/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines[:-1]]
    assert "".join(c or "" for c in contents) == "000 001 002"


async def test_recall_lists_the_earlier_messages(http: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "assistant", "content": "hello Ada"},
        {"role": "user", "content": "#recall"},
    ]
    body = (await http.post("/chat/completions", json={"model": "m", "messages": messages})).json()
    assert body["choices"][0]["message"]["content"] == (
        'recall: user: my name is Ada | assistant calls add({"a":1}) | tool c1: 2 | assistant: hello Ada'
    )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "tool", "tool_call_id": "c9", "content": "orphan result"}, {"role": "user", "content": "hi"}],
        [{"role": "assistant", "content": None,
          "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
         {"role": "user", "content": "a call without its result"}],
    ],
    ids=["result-without-call", "call-without-result"],
)
async def test_tool_calls_and_results_must_pair_like_the_real_api(http: httpx.AsyncClient, messages: list[Any]) -> None:
    response = await http.post("/chat/completions", json={"model": "m", "messages": messages})
    assert response.status_code == 400
    assert "tool" in response.json()["error"]["message"]


class Node(BaseModel):
    name: str
    child: Node | None


@pytest.mark.parametrize(
    "schema_source",
    [
        lambda: to_strict_json_schema(Report),
        lambda: to_strict_json_schema(Node),
        lambda: {
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "code": {"type": "string", "minLength": 3, "maxLength": 5},
                "count": {"type": "integer", "exclusiveMinimum": 2, "maximum": 10},
                "ratio": {"type": ["number", "null"], "minimum": 0.5},
                "pair": {"type": "array", "items": {"$ref": "#/$defs/P"}, "minItems": 2},
                "mixed": {"allOf": [{"$ref": "#/$defs/P"}], "description": "x"},
                "choice": {"oneOf": [{"const": "a"}, {"type": "integer"}]},
            },
            "required": ["when", "code", "count", "pair"],
            "$defs": {
                "P": {
                    "type": "object",
                    "properties": {"x": {"type": "boolean"}},
                    "required": ["x"],
                    "additionalProperties": False,
                }
            },
        },
    ],
    ids=["pydantic-report", "recursive", "constraints"],
)
async def test_structured_output_is_valid_against_the_schema(
    http: httpx.AsyncClient, schema_source: Callable[[], dict[str, Any]]
) -> None:
    schema = schema_source()
    request = _chat(
        "ping",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema, "strict": True},
        },
    )
    response = await http.post("/chat/completions", json=request)
    assert response.status_code == 200
    instance = json.loads(response.json()["choices"][0]["message"]["content"])
    jsonschema.validate(instance, schema)


async def test_json_object_response_format(http: httpx.AsyncClient) -> None:
    request = _chat("ping", response_format={"type": "json_object"})
    content = (await http.post("/chat/completions", json=request)).json()["choices"][0]
    assert json.loads(content["message"]["content"]) == {"content": "echo: ping"}


async def test_stats_count_outcomes(fresh_server: _ScriptedServer) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url) as client:
        await client.post("/chat/completions", json=_chat("a"))
        await client.post("/chat/completions", json=_chat('#call=add {"a": 1}'))
        await client.post("/chat/completions", json=_chat("#fail=404"))
        await client.post("/chat/completions", json=_chat("#fail=nope"))
        stats = (await client.get(f"{fresh_server.root}/stats")).json()
    assert stats["requests_total"] == 4
    assert stats["requests_by_outcome"] == {
        "answer": 1,
        "tool_call": 1,
        "scripted_failure": 1,
        "invalid_request": 1,
    }
    assert stats["requests_per_second"] > 0 and stats["uptime_s"] > 0


async def test_count_tokens_count_calls_and_keep_what_reached_the_model(fresh_server: _ScriptedServer) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url) as client:
        for temperature in (0.5, 0.25):
            await client.post("/chat/completions", json=_chat("#count=t-1 a", temperature=temperature, max_tokens=7))
        await client.post("/chat/completions", json=_chat("#count=t-2 b"))
        await client.post("/chat/completions", json=_chat("no token"))
        stats = (await client.get(f"{fresh_server.root}/stats")).json()
    assert stats["counted"] == {"t-1": 2, "t-2": 1}
    assert stats["parameters"]["t-1"] == {"model": "gpt-4o-mini", "temperature": 0.25, "max_tokens": 7}  # the last call's
    assert "messages" not in stats["parameters"]["t-2"]


# -- what each framework needs --------------------------------------------------------------

_FINAL_ANSWER_TOOL = {
    "type": "function",
    "function": {
        "name": "final_answer",
        "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    },
}


def _message(body: dict[str, Any]) -> dict[str, Any]:
    return body["choices"][0]["message"]


async def test_an_offered_final_answer_tool_is_called_with_the_answer(http: httpx.AsyncClient) -> None:
    plain = await http.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert _message(plain.json())["content"] == "echo: hi"
    offered = await http.post(
        "/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [_FINAL_ANSWER_TOOL]},
    )
    message = _message(offered.json())
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["function"]["name"] == "final_answer"
    assert json.loads(call["function"]["arguments"]) == {"answer": "echo: hi"}


async def test_smolagents_observations_are_tool_results_and_its_task_framing_is_dropped(
    http: httpx.AsyncClient,
) -> None:
    task = {"role": "user", "content": 'New task:\n#call=add {"a": 2, "b": 3}\n'}
    first = await http.post("/chat/completions", json={"model": "m", "messages": [task], "tools": [_FINAL_ANSWER_TOOL]})
    assert _message(first.json())["tool_calls"][0]["function"]["name"] == "add"
    conversation = [
        task,
        {"role": "assistant", "content": "Calling tools:\n[{'id': 'call_flowrelay_0', 'type': 'function'}]\n"},
        {"role": "user", "content": "Observation:\n5\n"},
    ]
    second = await http.post("/chat/completions", json={"model": "m", "messages": conversation, "tools": [_FINAL_ANSWER_TOOL]})
    [call] = _message(second.json())["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("final_answer", {"answer": "5"})
    echo = await http.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "New task:\nping\n"}]})
    assert _message(echo.json())["content"] == "echo: ping"


async def test_a_result_envelope_is_answered_with_its_value(http: httpx.AsyncClient) -> None:
    conversation = [
        {"role": "user", "content": '#call=add {"a": 2, "b": 3}'},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": '{"result": 5}'},
    ]
    response = await http.post("/chat/completions", json={"model": "m", "messages": conversation})
    assert _message(response.json())["content"] == "5"


async def test_running_serves_in_process_until_the_block_ends() -> None:
    from flowrelay.scripted_model import running

    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert _message(response.json())["content"] == "echo: x"
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/models")


# -- deterministic failures for retries ------------------------------------------------------


async def test_fail_first_fails_exactly_n_requests_per_key_then_answers(fresh_server: _ScriptedServer) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url) as client:
        statuses = [
            (await client.post("/chat/completions", json=_chat("go #fail-first=2:429:1.5"))) for _ in range(4)
        ]
        other_key = await client.post("/chat/completions", json=_chat("other #fail-first=2:429:1.5"))
        counted = [
            (await client.post("/chat/completions", json=_chat(f"{i} #fail-first=1:503 #count=k1"))).status_code
            for i in range(3)
        ]
        stats = (await client.get(f"{fresh_server.root}/stats")).json()
    assert [r.status_code for r in statuses] == [429, 429, 200, 200]
    assert [r.headers.get("retry-after") for r in statuses[:2]] == ["1.5", "1.5"]
    assert _message(statuses[2].json())["content"] == "echo: go #fail-first=2:429:1.5"
    assert other_key.status_code == 429, "another text is another key"
    # with #count the token is the key: the text may differ from call to call
    assert counted == [503, 200, 200]
    assert stats["counted"] == {"k1": 3}


async def test_retry_after_reaches_any_llms_rate_limit_error(server: _ScriptedServer) -> None:
    with pytest.raises(AgentRunError) as caught:
        await _run_agent(server.url, "limited #fail-first=1:429:7",
                         any_llm_args={"unified_exceptions": True, "max_retries": 0})
    original = caught.value.original_exception
    assert isinstance(original, llm_errors.RateLimitError)
    assert original.retry_after == "7"
    # a 503's Retry-After is only on the SDK's response
    with pytest.raises(AgentRunError) as caught:
        await _run_agent(server.url, "overloaded #fail-first=1:503:3",
                         any_llm_args={"unified_exceptions": True, "max_retries": 0})
    original = caught.value.original_exception
    assert isinstance(original, llm_errors.ProviderError)
    assert original.original_exception.response.headers["retry-after"] == "3"


async def test_model_scoped_directives_apply_to_that_model_only(fresh_server: _ScriptedServer) -> None:
    text = "x #fail=500@slow #count=scoped"
    async with httpx.AsyncClient(base_url=fresh_server.url) as client:
        fast = await client.post("/chat/completions", json={**_chat(text), "model": "fast"})
        slow = await client.post("/chat/completions", json={**_chat(text), "model": "slow"})
        bad = await client.post("/chat/completions", json=_chat("x #delay=1@"))
        stats = (await client.get(f"{fresh_server.root}/stats")).json()
    assert (fast.status_code, slow.status_code, bad.status_code) == (200, 500, 400)
    assert stats["counted_by_model"] == {"scoped": {"fast": 1, "slow": 1}}


async def test_bad_fail_first_directives_are_400(http: httpx.AsyncClient) -> None:
    for content in ("#fail-first=2", "#fail-first=x:429", "#fail-first=1:200", "#fail-first=1:429:soon"):
        response = await http.post("/chat/completions", json=_chat(content))
        assert response.status_code == 400, content
