"""The walking skeleton end to end: HTTP -> NATS -> executor -> worker -> events -> record.

Services run as real processes (their commands shared with compose.yaml), any-agent runs in
real worker processes and talks HTTP to the scripted model.
"""

from __future__ import annotations

import json

import httpx
import pytest
from flowrelay_testkit import Bus, one_agent, run_body

from flowrelay_contracts import EventType, RunStatus


async def _read_sse(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> list[dict]:
    """Read a whole SSE response (it must end by itself after the terminal event)."""
    events: list[dict] = []
    current: dict = {}
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line == "":
                if "data" in current:
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                current[field] = value.removeprefix(" ")
    return events


async def test_one_agent_run_succeeds_with_the_models_answer_and_ordered_events(api: httpx.AsyncClient, bus: Bus) -> None:
    response = await api.post("/runs", json=run_body(one_agent(), "hello flowrelay"))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    run_id = accepted["run_id"]

    sse = await _read_sse(api, f"/runs/{run_id}/events")
    types = [e["event"] for e in sse]
    assert types[0] == EventType.RUN_STARTED
    assert types[-1] == EventType.RUN_COMPLETED
    assert [int(e["id"]) for e in sse] == list(range(1, len(sse) + 1)), "ids are the gapless per-run sequence"
    assert types.index("agent.started") < types.index("llm.started") < types.index("llm.finished") < types.index("agent.finished")
    assert json.loads(sse[-1]["data"])["data"]["output"] == "echo: hello flowrelay"

    record = (await api.get(f"/runs/{run_id}")).json()
    assert record["status"] == RunStatus.SUCCEEDED
    assert record["output"] == "echo: hello flowrelay"
    assert record["mode"] == "real_execution"
    assert record["usage"]["input_tokens"] > 0 and record["usage"]["output_tokens"] > 0
    assert record["started_at"] and record["finished_at"] and record["created_at"]


async def test_missing_provider_key_fails_fast_with_a_suggestion_naming_the_variable(api: httpx.AsyncClient, bus: Bus) -> None:
    workflow = one_agent(model_id="openai:gpt-4o-mini")
    run_id = (await api.post("/runs", json=run_body(workflow, "hi"))).json()["run_id"]

    record = await bus.wait_record(run_id, timeout=15, predicate=lambda r: r.terminal and r.suggestions)
    assert record.status == RunStatus.FAILED
    assert record.error is not None and record.error.code == "missing_api_key"
    assert "OPENAI_API_KEY" in record.error.message
    assert any("OPENAI_API_KEY" in s.fix for s in record.suggestions)
    assert record.attempts == 1, "a missing key is not retried"

    body = (await api.get(f"/runs/{run_id}")).json()
    assert body["status"] == "failed" and body["mode"] == "degraded"
    assert body["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workflow": one_agent()}, "input"),
        ({"input": "x"}, "workflow"),
        ({"workflow": {"nodes": "not a list"}, "input": "x"}, "nodes"),
        ({"workflow": one_agent(), "input": "x", "options": {"timeout_s": -1}}, "timeout_s"),
        ({"workflow": {"nodes": [{"id": "a", "data": {}}], "edges": []}, "input": "x"}, "name"),
    ],
)
async def test_malformed_bodies_get_422_naming_the_field(api: httpx.AsyncClient, body: dict, field: str) -> None:
    response = await api.post("/runs", json=body)
    assert response.status_code == 422, response.text
    assert field in response.text


async def test_unknown_run_is_404_with_a_message(api: httpx.AsyncClient) -> None:
    for path in ("/runs/no-such-run", "/runs/no-such-run/events"):
        response = await api.get(path)
        assert response.status_code == 404
        assert "no-such-run" in response.text


async def test_execute_keeps_the_original_synchronous_contract(api: httpx.AsyncClient) -> None:
    response = await api.post("/execute", json=run_body(one_agent(), "sync please"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "real_execution"
    assert body["output"] == "echo: sync please"
    assert body["suggestions"] == []
    assert [e["type"] for e in body["trace"]][-1] == "run.completed"


async def test_healthz_reports_nats_and_executors(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json()["nats"] == "connected"
