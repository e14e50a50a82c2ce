"""Workflow patterns and tools end to end through the bus, and the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from flowrelay_testkit import chain, one_agent, run_body

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


async def _execute(api: httpx.AsyncClient, body: dict) -> dict:
    response = await api.post("/execute", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _last_attempt(trace: list[dict]) -> list[dict]:
    """The events of the attempt that finished (a redelivered run starts again)."""
    starts = [i for i, e in enumerate(trace) if e["type"] == "run.started"]
    return trace[starts[-1]:]


async def test_sequential_chain_feeds_each_agent_the_previous_output(api: httpx.AsyncClient) -> None:
    result = await _execute(api, run_body(chain("first", "second"), "ping"))
    assert result["status"] == "succeeded"
    assert result["output"] == "echo: echo: ping"
    started = [e["data"]["agent"] for e in _last_attempt(result["trace"]) if e["type"] == "agent.started"]
    assert started == ["first", "second"]


async def test_collaborative_coordinator_calls_a_sub_agent_as_a_tool(api: httpx.AsyncClient) -> None:
    result = await _execute(api, _example("collaborative"))
    assert result["status"] == "succeeded", result
    assert result["output"] == "42"
    trace = _last_attempt(result["trace"])
    calls = [e for e in trace if e["type"] == "tool.started"]
    assert [c["data"]["agent"] for c in calls][:1] == ["coordinator"]
    assert calls[0]["data"]["tool"] == "analyst"
    assert any(c["data"]["agent"] == "analyst" and c["data"]["tool"] == "calculator" for c in calls)
    agents = [e["data"]["agent"] for e in trace if e["type"] == "agent.started"]
    assert agents[:2] == ["coordinator", "analyst"]


async def test_a_tool_call_reaches_the_registered_tool(api: httpx.AsyncClient) -> None:
    body = run_body(one_agent(tools=["add"]), '#call=add {"a": 20, "b": 22}')
    result = await _execute(api, body)
    assert result["output"] == "42"
    finished = next(e for e in result["trace"] if e["type"] == "tool.finished")
    assert finished["data"]["tool"] == "add" and "42" in str(finished["data"]["result"])


async def test_structured_output_example_returns_an_object(api: httpx.AsyncClient) -> None:
    result = await _execute(api, _example("structured"))
    assert result["status"] == "succeeded", result
    assert set(result["output"]) >= {"summary", "city", "confidence"}


@pytest.mark.parametrize("name", ["simple", "sequential"])
async def test_examples_run_offline(api: httpx.AsyncClient, name: str) -> None:
    result = await _execute(api, _example(name))
    assert result["status"] == "succeeded"
    assert result["output"].startswith("echo: ")


async def test_unknown_tool_is_rejected_at_submit_time_naming_it(api: httpx.AsyncClient) -> None:
    response = await api.post("/runs", json=run_body(one_agent(tools=["no_such_tool"]), "x"))
    assert response.status_code == 422
    assert "no_such_tool" in response.text


async def test_framework_no_executor_has_is_rejected_with_the_extra_to_install(api: httpx.AsyncClient) -> None:
    response = await api.post("/runs", json=run_body(one_agent(framework="langchain"), "x"))
    assert response.status_code == 422
    assert "any-agent[langchain]" in response.text


@pytest.mark.parametrize(
    ("workflow", "culprit"),
    [
        ({"nodes": [], "edges": []}, "no agent"),
        ({"nodes": [{"id": "a", "data": {"name": "a"}}, {"id": "a", "data": {"name": "b"}}], "edges": []}, "duplicate node id 'a'"),
        ({"nodes": [{"id": "a", "data": {"name": "a"}}], "edges": [{"source": "a", "target": "ghost"}]}, "ghost"),
        (chain("a", "b") | {"edges": [{"source": "n1", "target": "n2"}, {"source": "n2", "target": "n1"}]}, "cycle"),
        ({"nodes": [{"id": f"n{i}", "data": {"name": f"a{i}"}} for i in range(3)],
          "edges": [{"source": "n0", "target": "n2"}, {"source": "n1", "target": "n2"}], "pattern": "sequential"},
         "exactly one start"),
        (one_agent(output_schema={"type": "object", "properties": {"x": {"type": "nonsense"}}}), "output_schema"),
    ],
)
async def test_invalid_graphs_get_422_naming_the_culprit(api: httpx.AsyncClient, workflow: dict, culprit: str) -> None:
    response = await api.post("/runs", json={"workflow": workflow, "input": "x"})
    assert response.status_code == 422, response.text
    assert culprit in response.text
