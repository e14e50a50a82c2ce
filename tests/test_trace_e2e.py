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
