"""The engine in-process: real any-agent, real HTTP to the scripted model server.

Nothing inside any-agent is mocked; the scripted model (a subprocess) is driven by the
directives in the run's input (``#call=``, ``#loop=``, ``#fail=``, ``#delay=``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from flowrelay_contracts import ErrorCode, EventType, Workflow
from flowrelay_executor import costs
from flowrelay_executor.engine import Engine, available_frameworks
from flowrelay_executor.errors import Redactor, classify, redact
from flowrelay_executor.jobs import Job, ModelDefaults, Outcome
from flowrelay_executor.tools import McpTarget, ToolRegistry, UnknownToolError

MODEL = "scripted:gpt-4o-mini"
_URL_LINE = re.compile(r"SCRIPTED_MODEL_URL=(\S+)")


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    """Base URL of a scripted model server started for this module."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowrelay.scripted_model", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = _URL_LINE.search(line)
        assert match, f"scripted model did not start: {line!r}"
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    tools = ToolRegistry(builtins=False)
    tools.add_module(importlib.import_module("flowrelay_test_tools"))
    return tools


@pytest.fixture(scope="module")
async def engine(registry: ToolRegistry) -> AsyncIterator[Engine]:
    engine = Engine(tools=registry, max_event_field_chars=300)
    yield engine
    await engine.aclose()


class Recorder:
    """Collects emitted events, checking each one is JSON-serialisable (it goes on a pipe)."""

    def __init__(self) -> None:
        self.events: list[tuple[EventType, dict[str, Any]]] = []

    def __call__(self, type: EventType, data: dict[str, Any]) -> None:
        json.dumps(data)
        self.events.append((type, data))

    @property
    def types(self) -> list[str]:
        return [str(t) for t, _ in self.events]

    def of(self, type: EventType) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == type]


def job(
    url: str,
    agents: list[dict[str, Any]],
    text: str,
    *,
    pattern: str | None = None,
    max_turns: int = 10,
    defaults: ModelDefaults | None = None,
) -> Job:
    workflow: dict[str, Any] = {"agents": agents}
    if pattern:
        workflow["pattern"] = pattern
    return Job(
        run_id=f"run-{time.monotonic_ns()}",
        workflow=Workflow.model_validate(workflow),
        input=text,
        timeout_s=30,
        max_turns=max_turns,
        defaults=defaults or ModelDefaults(model_id=MODEL, scripted_url=url),
    )


async def run(engine: Engine, the_job: Job) -> tuple[Outcome, Recorder]:
    recorder = Recorder()
    outcome = await engine.run(the_job, recorder)
    return outcome, recorder


def stats(url: str) -> dict[str, Any]:
    return httpx.get(url.removesuffix("/v1") + "/stats").json()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- patterns ---------------------------------------------------------------------------


async def test_simple_run_streams_events_with_server_token_counts(
    engine: Engine, model_url: str
) -> None:
    before = stats(model_url)
    outcome, rec = await run(engine, job(model_url, [{"name": "solo"}], "ping"))
    after = stats(model_url)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == "echo: ping"
    assert rec.types == ["agent.started", "llm.started", "llm.finished", "agent.finished"]
    started, llm_start, llm_done, finished = (d for _, d in rec.events)
    assert started == {"agent": "solo", "step": 1, "pattern": "simple"}
    assert llm_start == {"agent": "solo", "model": MODEL, "turn": 1}
    assert llm_done["input_tokens"] == after["prompt_tokens_total"] - before["prompt_tokens_total"]
    assert (
        llm_done["output_tokens"]
        == after["completion_tokens_total"] - before["completion_tokens_total"]
    )
    assert llm_done["latency_ms"] > 0
    assert finished["output"] == "echo: ping"
    assert (finished["input_tokens"], finished["output_tokens"]) == (
        llm_done["input_tokens"],
        llm_done["output_tokens"],
    )
    assert outcome.usage.input_tokens == llm_done["input_tokens"]
    assert [a.agent for a in outcome.agents] == ["solo"]


async def test_sequential_chain_feeds_each_output_to_the_next(
    engine: Engine, model_url: str
) -> None:
    outcome, rec = await run(
        engine,
        job(model_url, [{"name": "first"}, {"name": "second"}], "ping", pattern="sequential"),
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == "echo: echo: ping"
    assert [(d["agent"], d["step"]) for d in rec.of(EventType.AGENT_STARTED)] == [
        ("first", 1),
        ("second", 2),
    ]
    assert {a.agent for a in outcome.agents} == {"first", "second"}
    assert outcome.usage.input_tokens == sum(a.usage.input_tokens for a in outcome.agents)


async def test_collaborative_coordinator_calls_sub_agent_as_tool(
    engine: Engine, model_url: str
) -> None:
    agents = [{"name": "boss"}, {"name": "Research Helper", "instructions": "Find facts."}]
    outcome, rec = await run(
        engine,
        job(
            model_url, agents, '#call=Research_Helper {"request": "ping"}', pattern="collaborative"
        ),
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == "echo: ping"  # the coordinator answers with the tool's result

    sequence = [(str(t), d.get("agent"), d.get("tool")) for t, d in rec.events]
    tool_start = sequence.index(("tool.started", "boss", "Research_Helper"))
    sub_start = sequence.index(("agent.started", "Research Helper", None))
    sub_end = sequence.index(("agent.finished", "Research Helper", None))
    tool_end = sequence.index(("tool.finished", "boss", "Research_Helper"))
    assert tool_start < sub_start < sub_end < tool_end
    assert rec.of(EventType.TOOL_STARTED)[0]["arguments"] == {"request": "ping"}
    assert rec.of(EventType.TOOL_FINISHED)[0]["result"] == "echo: ping"
    assert [d["step"] for d in rec.of(EventType.AGENT_STARTED)] == [1, 2]
    assert {a.agent for a in outcome.agents} == {"boss", "Research Helper"}


async def test_registered_tool_is_called_with_typed_arguments(
    engine: Engine, model_url: str
) -> None:
    outcome, rec = await run(
        engine, job(model_url, [{"name": "calc", "tools": ["add"]}], '#call=add {"a": 2, "b": 3}')
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == "5"
    assert rec.types == [
        "agent.started",
        "llm.started",
        "llm.finished",
        "tool.started",
        "tool.finished",
        "llm.started",
        "llm.finished",
        "agent.finished",
    ]
    (started,) = rec.of(EventType.TOOL_STARTED)
    (finished,) = rec.of(EventType.TOOL_FINISHED)
    assert started == {"agent": "calc", "tool": "add", "arguments": {"a": 2, "b": 3}}
    assert finished["result"] == 5 and "error" not in finished and finished["latency_ms"] >= 0
    assert [d["turn"] for d in rec.of(EventType.LLM_FINISHED)] == [1, 2]


async def test_turn_limit_fails_the_run_and_keeps_partial_usage(
    engine: Engine, model_url: str
) -> None:
    outcome, rec = await run(
        engine,
        job(
            model_url,
            [{"name": "looper", "tools": ["add"]}],
            '#loop=add {"a": 1, "b": 1}',
            max_turns=3,
        ),
    )
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.code == ErrorCode.MAX_TURNS_EXCEEDED
    assert outcome.error.agent == "looper" and outcome.error.step == 1
    assert "max_turns" in outcome.error.message
    assert len(rec.of(EventType.LLM_FINISHED)) == 3
    assert len(rec.of(EventType.LLM_STARTED)) == 3  # the refused 4th call is not announced
    assert (
        outcome.usage.input_tokens
        == sum(d["input_tokens"] for d in rec.of(EventType.LLM_FINISHED))
        > 0
    )
    assert outcome.cost_usd is not None and outcome.cost_usd > 0


# -- provider failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, ErrorCode.INVALID_API_KEY, False),
        (403, ErrorCode.INVALID_API_KEY, False),
        (404, ErrorCode.UNKNOWN_MODEL, False),
        (429, ErrorCode.RATE_LIMITED, True),
        (500, ErrorCode.PROVIDER_ERROR, True),
        (400, ErrorCode.PROVIDER_ERROR, False),
    ],
)
async def test_provider_http_errors_are_classified(
    engine: Engine, model_url: str, status: int, code: ErrorCode, retryable: bool
) -> None:
    token = f"fail-{status}-{time.monotonic_ns()}"
    outcome, rec = await run(engine, job(model_url, [{"name": "solo"}], f"#fail={status} #count={token}"))
    assert stats(model_url)["counted"][token] == 1  # no SDK retries (they would back off)
    assert outcome.status == "failed"
    error = outcome.error
    assert error is not None
    assert (error.code, error.provider_status, error.retryable) == (code, status, retryable)
    assert (error.agent, error.step) == ("solo", 1)
    assert error.provider_message and error.exception_type
    assert rec.types == ["agent.started", "llm.started"]


async def test_missing_provider_key_fails_fast_naming_the_variable(
    engine: Engine, model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    token = f"nokey-{time.monotonic_ns()}"
    outcome, rec = await run(
        engine, job(model_url, [{"name": "real", "model_id": "openai:gpt-4o-mini"}], f"#count={token} hi")
    )
    assert token not in stats(model_url)["counted"], "it failed before calling any model"
    assert outcome.error is not None and outcome.error.code == ErrorCode.MISSING_API_KEY
    assert "OPENAI_API_KEY" in outcome.error.message
    assert outcome.error.agent == "real"
    assert rec.events == []  # failed before any step: nothing was spent


async def test_missing_key_of_a_later_agent_fails_before_the_first_runs(
    engine: Engine, model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    agents = [{"name": "cheap"}, {"name": "fancy", "model_id": "anthropic:claude-3-5-haiku-latest"}]
    outcome, rec = await run(engine, job(model_url, agents, "hi", pattern="sequential"))
    assert outcome.error is not None and outcome.error.code == ErrorCode.MISSING_API_KEY
    assert "ANTHROPIC_API_KEY" in outcome.error.message and outcome.error.agent == "fancy"
    assert rec.events == []


async def test_unreachable_endpoint_is_provider_unreachable(engine: Engine, model_url: str) -> None:
    defaults = ModelDefaults(
        model_id="openai:gpt-4o-mini",
        api_base=f"http://127.0.0.1:{closed_port()}/v1",
        api_key="sk-unreachable-000000",
    )
    outcome, _ = await run(engine, job(model_url, [{"name": "solo"}], "hi", defaults=defaults))
    assert outcome.error is not None and outcome.error.code == ErrorCode.PROVIDER_UNREACHABLE
    assert outcome.error.retryable and "127.0.0.1" in outcome.error.message
    assert "sk-unreachable" not in outcome.model_dump_json()


# -- tools ------------------------------------------------------------------------------


async def test_tool_that_raises_fails_the_run_naming_it(engine: Engine, model_url: str) -> None:
    outcome, rec = await run(
        engine,
        job(
            model_url, [{"name": "risky", "tools": ["explode"]}], '#call=explode {"reason": "boom"}'
        ),
    )
    assert outcome.error is not None and outcome.error.code == ErrorCode.TOOL_FAILED
    assert "explode" in outcome.error.message and "boom" in outcome.error.message
    assert outcome.error.exception_type == "RuntimeError"
    assert getattr(outcome.error, "tool", "explode") == "explode"
    assert (outcome.error.agent, outcome.error.step) == ("risky", 1)
    (finished,) = rec.of(EventType.TOOL_FINISHED)
    assert "exploded: boom" in finished["error"]
    assert rec.types[-1] == "tool.finished"  # the model is not asked to carry on
    assert outcome.usage.input_tokens > 0


async def test_tool_without_its_key_is_tool_missing_key(
    engine: Engine, model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWRELAY_TEST_TOOL_KEY", raising=False)
    outcome, _ = await run(
        engine, job(model_url, [{"name": "keyless", "tools": ["needs_key"]}], "#call=needs_key {}")
    )
    assert outcome.error is not None and outcome.error.code == ErrorCode.TOOL_MISSING_KEY
    assert (
        "FLOWRELAY_TEST_TOOL_KEY" in outcome.error.message and "needs_key" in outcome.error.message
    )


async def test_builtin_tool_without_its_key_is_tool_missing_key(
    model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "search_tavily" not in ToolRegistry().names():
        pytest.skip("tavily-python is not installed")
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    engine = Engine(tools=ToolRegistry())
    agents = [{"name": "searcher", "tools": ["search_tavily"]}]
    outcome, _ = await run(engine, job(model_url, agents, '#call=search_tavily {"query": "x"}'))
    await engine.aclose()
    assert outcome.error is not None and outcome.error.code == ErrorCode.TOOL_MISSING_KEY
    assert "TAVILY_API_KEY" in outcome.error.message


async def test_unknown_tool_is_invalid_workflow(engine: Engine, model_url: str) -> None:
    outcome, rec = await run(
        engine, job(model_url, [{"name": "solo", "tools": ["teleport"]}], "hi")
    )
    assert outcome.error is not None and outcome.error.code == ErrorCode.INVALID_WORKFLOW
    assert "teleport" in outcome.error.message and outcome.error.agent == "solo"
    assert rec.events == []


async def test_mcp_stdio_command_must_be_allowlisted(engine: Engine, model_url: str) -> None:
    agents = [{"name": "solo", "tools": [{"type": "mcp", "command": "rm", "args": ["-rf", "/"]}]}]
    outcome, _ = await run(engine, job(model_url, agents, "hi"))
    assert outcome.error is not None and outcome.error.code == ErrorCode.INVALID_WORKFLOW
    assert (
        "'rm'" in outcome.error.message and "FLOWRELAY_MCP_STDIO_ALLOWLIST" in outcome.error.message
    )


#: A stdio MCP server, run with ``python -c``: one plain tool, one that reports whether a
#: variable reached the server's environment.
_MCP_SERVER = """
import os
from mcp.server.fastmcp import FastMCP

server = FastMCP("probe")

@server.tool()
def shout(text: str) -> str:
    \"\"\"Upper-case the text.\"\"\"
    return text.upper()

@server.tool()
def env_probe(name: str) -> str:
    \"\"\"Say whether a variable is set.\"\"\"
    return "set" if name in os.environ else "unset"

server.run("stdio")
"""


@pytest.fixture(scope="module")
async def mcp_engine() -> AsyncIterator[Engine]:
    engine = Engine(tools=ToolRegistry(builtins=False, mcp_stdio_allowlist=[sys.executable]))
    yield engine
    await engine.aclose()


def _mcp_agent(**server: Any) -> list[dict[str, Any]]:
    return [{"name": "mcp_user", "tools": [{"type": "mcp", **server}]}]


async def test_mcp_stdio_tools_run_without_the_executors_secrets(
    mcp_engine: Engine, model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWRELAY_TEST_API_KEY", "sk-test-123456")
    agents = _mcp_agent(command=sys.executable, args=["-c", _MCP_SERVER])
    outcome, rec = await run(mcp_engine, job(model_url, agents, '#call=shout {"text": "hi"}'))
    assert outcome.output == "HI", outcome.error
    assert rec.of(EventType.TOOL_STARTED) == [
        {"agent": "mcp_user", "tool": "shout", "arguments": {"text": "hi"}}
    ]
    for name, expected in (("FLOWRELAY_TEST_API_KEY", "unset"), ("PATH", "set")):
        outcome, _ = await run(
            mcp_engine, job(model_url, agents, f'#call=env_probe {{"name": "{name}"}}')
        )
        assert outcome.output == expected, (name, outcome.error)


@pytest.mark.parametrize(
    "server",
    [
        {"command": sys.executable, "args": ["-c", "raise SystemExit(1)"]},
        {"url": f"http://127.0.0.1:{closed_port()}/mcp"},
        {"url": f"http://127.0.0.1:{closed_port()}/sse", "transport": "sse"},
    ],
    ids=["stdio-exits", "http-refused", "sse-refused"],
)
async def test_unusable_mcp_server_fails_as_tool_failed(
    mcp_engine: Engine, model_url: str, server: dict[str, Any]
) -> None:
    outcome, rec = await run(mcp_engine, job(model_url, _mcp_agent(**server), "hi"))
    assert outcome.error is not None and outcome.error.code == ErrorCode.TOOL_FAILED
    assert "MCP server" in outcome.error.message and outcome.error.agent == "mcp_user"
    assert rec.events == []
    outcome, _ = await run(mcp_engine, job(model_url, [{"name": "after"}], "ping"))
    assert outcome.output == "echo: ping"  # the engine (and its loop) are fine


async def test_an_mcp_error_says_the_kind_and_status_never_what_the_endpoint_answered(
    mcp_engine: Engine, model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWRELAY_MCP_URL_ALLOWLIST", "127.0.0.1")  # the failing server is local
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = b"internal detail: db password hunter2-0123456789"
            self.send_response(503, "Unavailable: db password hunter2-0123456789")  # the reason phrase too
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mcp"
        outcome, _ = await run(mcp_engine, job(model_url, _mcp_agent(url=url), "hi"))
    finally:
        server.shutdown()
    assert outcome.error is not None and outcome.error.code == ErrorCode.TOOL_FAILED
    assert "HTTP 503" in outcome.error.message, outcome.error.message
    assert "hunter2" not in outcome.error.model_dump_json()


async def test_sub_agent_failure_fails_the_collaborative_run(
    engine: Engine, model_url: str
) -> None:
    agents = [{"name": "boss"}, {"name": "helper", "tools": ["explode"]}]
    text = '#call=helper {"request": "#call=explode {\\"reason\\": \\"deep\\"}"}'
    outcome, rec = await run(engine, job(model_url, agents, text, pattern="collaborative"))
    assert outcome.error is not None and outcome.error.code == ErrorCode.TOOL_FAILED
    assert outcome.error.agent == "helper" and "explode" in outcome.error.message
    assert [d.get("error") is not None for d in rec.of(EventType.TOOL_FINISHED)] == [True, True]


# -- frameworks, costs, secrets, structured output --------------------------------------


async def test_framework_not_installed_names_the_extra(engine: Engine, model_url: str) -> None:
    assert "tinyagent" in available_frameworks()
    missing = next(
        f for f in ("langchain", "agno", "smolagents", "google") if f not in available_frameworks()
    )
    outcome, _ = await run(engine, job(model_url, [{"name": "solo", "framework": missing}], "hi"))
    assert outcome.error is not None and outcome.error.code == ErrorCode.FRAMEWORK_NOT_INSTALLED
    assert f"pip install 'any-agent[{missing}]'" in outcome.error.message


async def test_cost_of_a_priced_model_matches_genai_prices(engine: Engine, model_url: str) -> None:
    outcome, rec = await run(engine, job(model_url, [{"name": "solo"}], "ping"))
    (llm,) = rec.of(EventType.LLM_FINISHED)
    expected = calc_price(
        PriceUsage(input_tokens=llm["input_tokens"], output_tokens=llm["output_tokens"]),
        model_ref="gpt-4o-mini",
        provider_id="openai",
    ).total_price
    assert llm["cost_usd"] == pytest.approx(float(expected)) and llm["cost_usd"] > 0
    assert outcome.cost_usd == pytest.approx(float(expected))
    assert outcome.agents[0].cost_usd == pytest.approx(float(expected))
    assert "scripted" in (llm["cost_note"] or "")


async def test_cost_of_an_unknown_model_is_none_with_a_note(engine: Engine, model_url: str) -> None:
    outcome, rec = await run(
        engine, job(model_url, [{"name": "solo", "model_id": "scripted:no-such-model"}], "ping")
    )
    assert outcome.status == "succeeded"
    (llm,) = rec.of(EventType.LLM_FINISHED)
    assert llm["cost_usd"] is None and "no-such-model" in llm["cost_note"]
    assert outcome.cost_usd is None and outcome.cost_note
    assert rec.of(EventType.AGENT_FINISHED)[0]["cost_usd"] is None


async def test_mixed_known_and_unknown_costs_make_the_total_unknown(
    engine: Engine, model_url: str
) -> None:
    agents = [{"name": "a"}, {"name": "b", "model_id": "scripted:no-such-model"}]
    outcome, _ = await run(engine, job(model_url, agents, "ping", pattern="sequential"))
    by_agent = {a.agent: a.cost_usd for a in outcome.agents}
    assert by_agent["a"] is not None and by_agent["a"] > 0 and by_agent["b"] is None
    assert outcome.cost_usd is None


async def test_secrets_never_leave_in_events_or_outcome(
    engine: Engine, model_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWRELAY_TEST_API_KEY", "sk-test-123456")
    monkeypatch.setenv("FLOWRELAY_TEST_TOKEN", "plain-secret-value-42")
    text = '#call=lookup_secret_echo {"text": "key sk-test-123456 and plain-secret-value-42"}'
    outcome, rec = await run(
        engine, job(model_url, [{"name": "leaky", "tools": ["lookup_secret_echo"]}], text)
    )
    assert outcome.status == "succeeded", outcome.error
    dumped = json.dumps([d for _, d in rec.events]) + outcome.model_dump_json()
    assert "sk-test-123456" not in dumped and "plain-secret-value-42" not in dumped
    assert "[REDACTED]" in outcome.output
    assert rec.of(EventType.TOOL_STARTED)[0]["arguments"]["text"].count("[REDACTED]") == 2


async def test_long_event_fields_are_truncated(engine: Engine, model_url: str) -> None:
    long = "x" * 1000
    outcome, rec = await run(
        engine,
        job(
            model_url,
            [{"name": "echoer", "tools": ["lookup_secret_echo"]}],
            f'#call=lookup_secret_echo {{"text": "{long}"}}',
        ),
    )
    assert outcome.output == long  # the outcome is complete
    (finished,) = rec.of(EventType.TOOL_FINISHED)
    assert len(finished["result"]) <= 300 and "more chars" in finished["result"]
    assert len(rec.of(EventType.TOOL_STARTED)[0]["arguments"]) <= 300  # JSON text once cut


_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "description": "the answer"},
        "confidence": {"type": "number"},
        "label": {"enum": ["good", "bad"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "source": {
            "type": "object",
            "properties": {"url": {"type": "string"}},
            "required": ["url"],
        },
        "note": {"type": ["string", "null"]},
    },
    "required": ["answer", "confidence", "label", "tags", "source"],
}


async def test_structured_output_is_a_dict_valid_against_the_schema(
    engine: Engine, model_url: str
) -> None:
    outcome, rec = await run(
        engine, job(model_url, [{"name": "typed", "output_schema": _SCHEMA}], "ping")
    )
    assert outcome.status == "succeeded", outcome.error
    assert isinstance(outcome.output, dict)
    jsonschema.validate(outcome.output, _SCHEMA)
    assert outcome.output["answer"] == "echo: ping"
    assert rec.of(EventType.AGENT_FINISHED)[0]["output"] == outcome.output


async def test_structured_output_is_passed_on_as_json_text(engine: Engine, model_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    agents = [{"name": "typed", "output_schema": schema}, {"name": "reader"}]
    outcome, _ = await run(engine, job(model_url, agents, "ping", pattern="sequential"))
    assert outcome.output == 'echo: {"answer": "echo: ping"}'


# -- concurrency, reuse, cancellation ---------------------------------------------------


async def test_concurrent_runs_share_an_agent_and_keep_their_events_apart(
    engine: Engine, model_url: str
) -> None:
    agents = [{"name": "shared", "tools": ["add"]}]
    jobs = [
        job(model_url, agents, f'#delay=0.05 #call=add {{"a": {i}, "b": 1000}}') for i in range(60)
    ]
    results = await asyncio.gather(*(run(engine, j) for j in jobs))
    for i, (outcome, rec) in enumerate(results):
        assert outcome.status == "succeeded", outcome.error
        assert outcome.output == str(i + 1000)
        assert rec.of(EventType.TOOL_STARTED) == [
            {"agent": "shared", "tool": "add", "arguments": {"a": i, "b": 1000}}
        ]
        assert len(rec.of(EventType.LLM_FINISHED)) == 2
    recipes = [r for r in engine._pool._shared if r.name == "shared"]
    assert len(recipes) == 1  # one instance served all 60 runs


async def test_cancellation_propagates_and_the_engine_keeps_working(
    engine: Engine, model_url: str
) -> None:
    task = asyncio.create_task(run(engine, job(model_url, [{"name": "slow"}], "#delay=5 ping")))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # any-agent keeps a cancelled run's state in the agent: that instance is retired.
    assert not [r for r in engine._pool._shared if r.name == "slow"]
    outcome, _ = await run(engine, job(model_url, [{"name": "slow"}], "ping"))
    assert outcome.output == "echo: ping"


async def test_nothing_is_printed_to_stdout(
    engine: Engine, model_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    await run(
        engine, job(model_url, [{"name": "quiet", "tools": ["add"]}], '#call=add {"a": 1, "b": 2}')
    )
    await run(engine, job(model_url, [{"name": "quiet"}], "#fail=500"))
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize(
    ("agent", "code", "needle"),
    [
        ({"model_id": "gpt-4o-mini"}, ErrorCode.UNKNOWN_MODEL, "'<provider>:<model>'"),
        ({"model_args": {"messages": []}}, ErrorCode.INVALID_WORKFLOW, "messages"),
        ({"framework": "crewai"}, ErrorCode.INVALID_WORKFLOW, "crewai"),
    ],
)
async def test_bad_agent_settings_fail_before_any_step(
    engine: Engine, model_url: str, agent: dict[str, Any], code: ErrorCode, needle: str
) -> None:
    outcome, rec = await run(engine, job(model_url, [{"name": "bad", **agent}], "hi"))
    assert outcome.error is not None and outcome.error.code == code
    assert needle in outcome.error.message and rec.events == []


async def test_model_args_reach_the_model(engine: Engine, model_url: str) -> None:
    token = f"args-{time.monotonic_ns()}"
    agents = [{"name": "tuned", "model_args": {"temperature": 0.1, "max_tokens": 50}}]
    outcome, _ = await run(engine, job(model_url, agents, f"#count={token} ping"))
    assert outcome.status == "succeeded", outcome.error
    seen = stats(model_url)["parameters"][token]  # what the model server received
    # any-llm sends max_tokens under the OpenAI API's current name for it
    assert (seen.get("temperature"), seen.get("max_completion_tokens")) == (0.1, 50), seen


# -- registry and error helpers ---------------------------------------------------------


def test_registry_from_environment_loads_tool_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_TOOL_MODULES", "flowrelay_test_tools")
    monkeypatch.setenv("FLOWRELAY_MCP_STDIO_ALLOWLIST", "uvx, npx")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "t0ken-value")
    tools = ToolRegistry.from_environment()
    assert {
        "add",
        "block",
        "spin",
        "explode",
        "crash_worker",
        "needs_key",
        "lookup_secret_echo",
    } <= set(tools.names())
    assert tools.resolve("add")(2, 3) == 5
    with pytest.raises(UnknownToolError, match="teleport"):
        tools.resolve("teleport")
    if "visit_webpage" not in tools.names():  # a built-in whose dependency is missing
        with pytest.raises(UnknownToolError, match="markdownify"):
            tools.resolve("visit_webpage")
    from flowrelay_contracts import McpServer

    target = tools.resolve(McpServer(command="uvx", args=["mcp-server-fetch"]))
    assert isinstance(target, McpTarget) and "SOME_SERVICE_TOKEN" in target.unset_env
    remote = tools.resolve(McpServer(url="http://mcp.example/mcp"))
    assert isinstance(remote, McpTarget) and remote.url == "http://mcp.example/mcp"


def test_registry_rejects_tools_any_agent_could_not_describe() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        """Doc."""
        return x

    with pytest.raises(TypeError, match="type annotation"):
        ToolRegistry(builtins=False).add(untyped)


def test_redact_removes_secret_variables_and_key_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_SECRET", "hunter2hunter2")
    text = "a hunter2hunter2 b sk-abcdef123456 c Bearer abc.def-ghi d"
    assert redact(text) == "a [REDACTED] b [REDACTED] c [REDACTED] d"
    assert Redactor(["xyz"]).redact("xyz") == "xyz"  # too short to be worth redacting


def test_classify_plain_exceptions() -> None:
    assert classify(KeyError("x")).code == ErrorCode.INTERNAL_ERROR
    assert classify(ConnectionRefusedError("refused")).code == ErrorCode.PROVIDER_UNREACHABLE


def test_price_is_none_for_unknown_models() -> None:
    assert costs.price("openai:gpt-4o-mini", 1000, 1000)[0] > 0
    cost, note = costs.price("ollama:llama3", 10, 10)
    assert cost is None and note
    assert costs.total([0.1, None]) is None and costs.total([]) == 0.0


def test_engine_package_is_the_only_any_agent_importer() -> None:
    root = Path(__file__).resolve().parents[1]
    engine = root / "services" / "executor" / "flowrelay_executor" / "engine"
    offenders = [
        str(path.relative_to(root))
        for folder in ("services", "contracts", "bus", "flowrelay")
        for path in (root / folder).rglob("*.py")
        if re.search(r"^\s*(from|import)\s+any_agent\b", path.read_text(), re.MULTILINE)
        and engine not in path.parents
    ]
    assert offenders == []
    assert any(re.search(r"^from any_agent\b", p.read_text(), re.MULTILINE) for p in engine.rglob("*.py"))


# -- frameworks: self-check, tool wrapping, unclassified errors ------------------------------


async def test_self_check_offers_a_framework_whose_tiny_run_works() -> None:
    engine = Engine(tools=ToolRegistry(builtins=False))
    try:
        assert await engine.self_check(timeout_s=60) == {}
        assert engine.frameworks == ["tinyagent"]
        assert engine.framework_versions["tinyagent"]
    finally:
        await engine.aclose()


async def test_self_check_refuses_a_framework_that_reports_made_up_tokens(
    monkeypatch: pytest.MonkeyPatch, model_url: str
) -> None:
    from flowrelay_executor.engine.frameworks.tinyagent import TinyAgentAdapter

    monkeypatch.setattr(TinyAgentAdapter, "tokens", lambda self, args, kwargs: (0, 0))
    engine = Engine(tools=ToolRegistry(builtins=False))
    try:
        failures = await engine.self_check(timeout_s=60)
        assert "token counts" in failures["tinyagent"]
        assert engine.frameworks == []
        outcome, _ = await run(engine, job(model_url, [{"name": "solo"}], "hi"))
        assert outcome.error is not None and outcome.error.code == ErrorCode.FRAMEWORK_NOT_INSTALLED
        assert "self-check" in outcome.error.message
    finally:
        await engine.aclose()


def test_every_tool_is_described_with_an_args_section() -> None:
    from flowrelay_executor import toolbox
    from flowrelay_executor.engine.tooling import wrap_tool

    def scale(value: float, factor: int = 2) -> float:
        """Scale a number."""
        return value * factor

    doc = wrap_tool(scale, "scale", agent="a", strict=False).__doc__ or ""
    assert doc.startswith("Scale a number.")
    assert re.search(r"^Args:\n    value: .+\n    factor: .+$", doc, re.MULTILINE), doc
    for tool in (toolbox.calculator, toolbox.current_time, toolbox.word_count):
        own = tool.__doc__ or ""
        assert "Args:" in own and all(f"{name}:" in own for name in inspect.signature(tool).parameters)
        assert wrap_tool(tool, tool.__name__, agent="a", strict=False).__doc__ == inspect.cleandoc(own)


def test_tool_wrapper_reports_bound_arguments_and_the_return_value() -> None:
    from flowrelay_executor.engine.run import CURRENT_RUN, RunState
    from flowrelay_executor.engine.tooling import wrap_tool

    def scale(value: float, factor: int = 2) -> dict:
        """Scale a number."""
        return {"scaled": value * factor}

    recorder = Recorder()
    state = RunState(job=job("http://unused", [{"name": "a"}], "x"), emit=recorder, redactor=Redactor([]), max_chars=100)
    token = CURRENT_RUN.set(state)
    try:
        assert wrap_tool(scale, "scale", agent="a", strict=False)(3.0, factor=4) == {"scaled": 12.0}
    finally:
        CURRENT_RUN.reset(token)
    assert recorder.of(EventType.TOOL_STARTED) == [{"agent": "a", "tool": "scale", "arguments": {"value": 3.0, "factor": 4}}]
    (finished,) = recorder.of(EventType.TOOL_FINISHED)
    assert finished["result"] == {"scaled": 12.0} and "error" not in finished


def test_unclassified_failure_is_logged_redacted_with_the_run_id(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowrelay_executor.engine.run import RunState

    monkeypatch.setenv("SOME_SERVICE_API_KEY", "hunter2-secret-value")
    the_job = job("http://unused", [{"name": "a"}], "x")
    state = RunState(job=the_job, emit=Recorder(), redactor=Redactor.from_environment(), max_chars=100)
    with caplog.at_level("ERROR", logger="flowrelay_executor.engine"):
        state.fail(KeyError("lookup of hunter2-secret-value failed"))
    assert state.failure is not None and state.failure.code == ErrorCode.INTERNAL_ERROR
    [logged] = [r for r in caplog.records if the_job.run_id in r.getMessage()]
    assert "KeyError" in logged.getMessage() and "[REDACTED]" in logged.getMessage()
    assert "hunter2-secret-value" not in caplog.text
