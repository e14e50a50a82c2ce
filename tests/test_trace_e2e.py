"""Live traces: event sequences, SSE resume, late subscribers, cost, secrets, the NATS client."""

from __future__ import annotations

import json

import httpx
from flowrelay_testkit import TEST_SECRET, Bus, one_agent, run_body

from flowrelay_contracts import EventType, RunStatus
from flowrelay_executor.costs import price


async def _sse(api: httpx.AsyncClient, run_id: str, *, headers: dict | None = None, stop_after: int | None = None) -> list[dict]:
    """Read SSE events; with ``stop_after``, disconnect after that many (a client dropping)."""
    events: list[dict] = []
    current: dict = {}
    async with api.stream("GET", f"/runs/{run_id}/events", headers=headers or {}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "" and "data" in current:
                events.append({"id": int(current["id"]), "event": current["event"], "data": json.loads(current["data"])})
                current = {}
                if stop_after is not None and len(events) >= stop_after:
                    break
            elif line and not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.removeprefix(" ")
    return events


async def test_tool_run_yields_the_full_sequence_in_order_with_token_totals(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(tools=["add"]), '#call=add {"a": 1, "b": 2}'))).json()["run_id"]
    events = await bus.events(run_id)
    types = [e.type for e in events]
    assert types == [
        EventType.RUN_STARTED,
        EventType.AGENT_STARTED,
        EventType.LLM_STARTED,
        EventType.LLM_FINISHED,
        EventType.TOOL_STARTED,
        EventType.TOOL_FINISHED,
        EventType.LLM_STARTED,
        EventType.LLM_FINISHED,
        EventType.AGENT_FINISHED,
        EventType.RUN_COMPLETED,
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.run_id == run_id for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    llm = [e.data for e in events if e.type == EventType.LLM_FINISHED]
    totals = events[-1].data["usage"]
    assert totals["input_tokens"] == sum(d["input_tokens"] for d in llm) > 0
    assert totals["output_tokens"] == sum(d["output_tokens"] for d in llm) > 0
    record = await bus.store.get(run_id)
    assert record.usage.model_dump() == totals
    assert record.output == "3"


async def test_sse_resume_with_last_event_id_has_no_gap_and_no_duplicate(api: httpx.AsyncClient) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(tools=["add"]), '#delay=0.3 #call=add {"a": 1, "b": 1}'))).json()["run_id"]
    first = await _sse(api, run_id, stop_after=3)
    rest = await _sse(api, run_id, headers={"Last-Event-ID": str(first[-1]["id"])})
    ids = [e["id"] for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1]["event"] == "run.completed"


async def test_a_subscriber_arriving_after_the_end_gets_every_event(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(), "late"))).json()["run_id"]
    await bus.wait_record(run_id)
    late = await _sse(api, run_id)
    assert [e["id"] for e in late] == list(range(1, len(late) + 1))
    assert late[0]["event"] == "run.started" and late[-1]["event"] == "run.completed"
    over_nats = await bus.events(run_id)
    assert [e.seq for e in over_nats] == [e["id"] for e in late]


async def test_cost_is_computed_for_a_priced_model_and_null_for_an_unknown_one(api: httpx.AsyncClient, bus: Bus) -> None:
    priced = (await api.post("/runs", json=run_body(one_agent(model_id="scripted:gpt-4o-mini"), "cost me"))).json()["run_id"]
    unknown = (await api.post("/runs", json=run_body(one_agent(model_id="scripted:no-such-model-xyz"), "cost me"))).json()["run_id"]
    record = await bus.wait_record(priced)
    expected, _ = price("openai:gpt-4o-mini", record.usage.input_tokens, record.usage.output_tokens)
    assert record.cost_usd is not None and expected is not None
    assert abs(record.cost_usd - expected) < 1e-12 and record.cost_usd > 0
    assert record.agents[0].cost_usd == record.cost_usd

    record = await bus.wait_record(unknown)
    assert record.status == RunStatus.SUCCEEDED
    assert record.cost_usd is None
    assert record.cost_note and "no-such-model-xyz" in record.cost_note


async def test_a_secret_in_a_tool_argument_never_appears_in_events_or_records(api: httpx.AsyncClient, bus: Bus) -> None:
    text = '#call=lookup_secret_echo {"text": "token ' + TEST_SECRET + '"}'
    run_id = (await api.post("/runs", json=run_body(one_agent(tools=["lookup_secret_echo"]), text))).json()["run_id"]
    events = await bus.events(run_id)
    assert any(e.type == EventType.TOOL_STARTED for e in events)
    for event in events:
        assert TEST_SECRET not in event.model_dump_json()
    record = (await api.get(f"/runs/{run_id}")).text
    assert TEST_SECRET not in record.replace(json.dumps(text)[1:-1], "")  # the user's own input is theirs
    assert TEST_SECRET not in json.dumps((await bus.store.get(run_id)).output)


async def test_runs_are_listed_newest_first_with_a_status_filter_and_cursor(api: httpx.AsyncClient, bus: Bus) -> None:
    ids = [(await api.post("/runs", json=run_body(one_agent(), f"list {i}"))).json()["run_id"] for i in range(3)]
    for run_id in ids:
        await bus.wait_record(run_id)
    page = (await api.get("/runs", params={"limit": 2, "status": "succeeded"})).json()
    assert [r["run_id"] for r in page["runs"]] == ids[::-1][:2]
    assert all(r["status"] == "succeeded" for r in page["runs"])
    following = (await api.get("/runs", params={"limit": 2, "status": "succeeded", "cursor": page["next_cursor"]})).json()
    assert following["runs"][0]["run_id"] == ids[0]


#: The data of each step event, as the README's trace table documents it.
DOCUMENTED_STEP_FIELDS = {
    EventType.AGENT_STARTED: {"agent", "step", "pattern"},
    EventType.AGENT_FINISHED: {"agent", "step", "pattern", "output", "input_tokens", "output_tokens", "cost_usd"},
    EventType.LLM_STARTED: {"agent", "model", "turn"},
    EventType.LLM_FINISHED: {"agent", "model", "turn", "input_tokens", "output_tokens", "cost_usd", "cost_note", "latency_ms"},
    EventType.TOOL_STARTED: {"agent", "tool", "arguments"},
    EventType.TOOL_FINISHED: {"agent", "tool", "result", "latency_ms"},
}


async def test_started_step_and_terminal_events_carry_the_documented_fields(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(tools=["add"]), '#call=add {"a": 1, "b": 2}'))).json()["run_id"]
    events = await bus.events(run_id)
    record = await bus.store.get(run_id)
    assert events[0].type == EventType.RUN_STARTED
    assert events[0].data == {"attempt": 1, "executor_id": record.executor_id, "isolation": "process",
                              "model_provider": "scripted", "tenant": bus.tenant}
    for event in events[1:-1]:
        assert DOCUMENTED_STEP_FIELDS[event.type] <= set(event.data), (event.type, event.data)
    assert [e.data["pattern"] for e in events if e.type == EventType.AGENT_STARTED] == ["simple"]

    end = events[-1].data
    assert events[-1].type == EventType.RUN_COMPLETED
    assert (end["status"], end["output"], end["error"]) == ("succeeded", "3", None)
    assert end["usage"] == record.usage.model_dump() and end["usage"]["input_tokens"] > 0
    assert end["cost_usd"] == record.cost_usd and end["cost_usd"] > 0 and end["cost_note"] == record.cost_note
    assert end["agents"] == [a.model_dump(mode="json") for a in record.agents]
    assert [a["agent"] for a in end["agents"]] == ["assistant"] and end["agents"][0]["cost_usd"] == end["cost_usd"]
    assert (end["mode"], end["isolation"]) == ("real_execution", "process")


async def test_a_failed_runs_terminal_event_carries_the_error_and_degraded_mode(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(), "#fail=401 no entry"))).json()["run_id"]
    events = await bus.events(run_id)
    end = events[-1]
    assert end.type == EventType.RUN_FAILED
    record = await bus.store.get(run_id)
    assert end.data["status"] == "failed" and end.data["output"] is None
    assert end.data["error"]["code"] == "invalid_api_key" == record.error.code
    assert end.data["error"]["message"] == record.error.message
    assert (end.data["mode"], end.data["isolation"]) == ("degraded", "process")
    assert [a["agent"] for a in end.data["agents"]] == ["assistant"]
