"""Threads and token streaming through the whole stack: API, NATS, executor, worker, the
scripted model (``#recall`` answers with the conversation's earlier messages; it refuses a
tool result without its call, as the real API does)."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from flowrelay_testkit import Bus, Stack, one_agent, run_body

from flowrelay_contracts import EventType, RunStatus

WORKFLOW = one_agent(name="chat", instructions="Chat.", tools=["add"])


async def new_thread(api: httpx.AsyncClient, **body: object) -> str:
    response = await api.post("/threads", json=body)
    assert response.status_code == 201, response.text
    return response.json()["thread_id"]


async def say(api: httpx.AsyncClient, bus: Bus, thread_id: str, text: str, **options: object) -> dict:
    """One turn: send it, wait for its end, return its record."""
    response = await api.post(f"/threads/{thread_id}/runs", json=run_body(WORKFLOW, text, **options))
    assert response.status_code == 202, response.text
    record = await bus.wait_record(response.json()["run_id"])
    assert record.status == RunStatus.SUCCEEDED, record.error
    return record.model_dump(mode="json")


async def sse(api: httpx.AsyncClient, run_id: str) -> list[dict]:
    events, current = [], {}
    async with api.stream("GET", f"/runs/{run_id}/events") as response:
        async for line in response.aiter_lines():
            if line == "" and "data" in current:
                events.append(json.loads(current["data"]))
                current = {}
            elif line and not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.removeprefix(" ")
    return events


async def test_a_second_turn_answers_from_the_first(api: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = await new_thread(api, title="names", metadata={"user": "u-1"})
    first = await say(api, bus, thread_id, "my name is Ada")
    second = await say(api, bus, thread_id, "#recall")
    assert first["output"] == "echo: my name is Ada"
    assert second["output"] == "recall: user: my name is Ada | assistant: echo: my name is Ada"
    assert second["thread_id"] == thread_id

    events = await bus.events(second["run_id"])
    [started] = [e.data for e in events if e.type == EventType.AGENT_STARTED]
    assert started["history"] == {"turns": 1, "dropped": 0, "as": "messages"}

    view = (await api.get(f"/threads/{thread_id}")).json()
    assert view["title"] == "names" and view["metadata"] == {"user": "u-1"}
    assert [r["run_id"] for r in view["runs"]] == [first["run_id"], second["run_id"]]
    assert [r["status"] for r in view["runs"]] == ["succeeded", "succeeded"]
    assert [(m["role"], m["content"]) for m in view["messages"]] == [
        ("user", "my name is Ada"), ("assistant", "echo: my name is Ada"),
        ("user", "#recall"), ("assistant", second["output"]),
    ]
    assert [r["messages"] for r in view["runs"]] == [[0, 2], [2, 4]]
    assert view["usage"] == {
        "input_tokens": first["usage"]["input_tokens"] + second["usage"]["input_tokens"],
        "output_tokens": first["usage"]["output_tokens"] + second["usage"]["output_tokens"],
    }
    assert view["active_run"] is None


async def test_tool_calls_of_earlier_turns_come_back_with_their_results(api: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = await new_thread(api)
    await say(api, bus, thread_id, '#call=add {"a": 40, "b": 2}')
    recalled = await say(api, bus, thread_id, "#recall")
    # the scripted model refuses (400) a result whose call is missing, or a call without its result
    assert recalled["output"].startswith('recall: user: #call=add {"a": 40, "b": 2} | assistant calls add({"a":40,"b":2})')
    assert "| tool call_flowrelay_" in recalled["output"] and recalled["output"].endswith(": 42 | assistant: 42")
    view = (await api.get(f"/threads/{thread_id}")).json()
    assert [m["role"] for m in view["messages"][:4]] == ["user", "assistant", "tool", "assistant"]


async def test_a_busy_thread_refuses_a_second_message_with_409(api: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = await new_thread(api)
    slow = await api.post(f"/threads/{thread_id}/runs", json=run_body(WORKFLOW, "#delay=600 take your time"))
    slow_id = slow.json()["run_id"]
    await bus.wait_record(slow_id, predicate=lambda r: r.status == RunStatus.RUNNING)

    refused = await api.post(f"/threads/{thread_id}/runs", json=run_body(WORKFLOW, "and this?"))
    assert refused.status_code == 409
    assert refused.json()["code"] == "thread_busy" and slow_id in refused.json()["detail"]
    assert (await api.get(f"/threads/{thread_id}")).json()["active_run"] == slow_id

    assert (await api.post(f"/runs/{slow_id}/cancel")).status_code == 202
    assert (await bus.wait_record(slow_id)).status == RunStatus.CANCELLED
    follow_up = await say(api, bus, thread_id, "#recall")
    assert follow_up["output"] == "recall: "  # the cancelled run added no turn


async def test_of_two_concurrent_messages_exactly_one_becomes_a_run(api: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = await new_thread(api)
    # Each run is held in the model until cancelled: an instant run could end before the
    # last concurrent request is handled, and a message after its end is rightly accepted.
    answers = await asyncio.gather(*(
        api.post(f"/threads/{thread_id}/runs", json=run_body(WORKFLOW, f"#delay=600 message {n}")) for n in range(6)
    ))
    assert sorted(a.status_code for a in answers) == [202] + [409] * 5
    [accepted] = [a.json()["run_id"] for a in answers if a.status_code == 202]
    assert all(accepted in a.json()["detail"] for a in answers if a.status_code == 409)
    assert [r["run_id"] for r in (await api.get(f"/threads/{thread_id}")).json()["runs"]] == [accepted]
    assert (await api.post(f"/runs/{accepted}/cancel")).status_code == 202
    assert (await bus.wait_record(accepted)).status == RunStatus.CANCELLED


async def test_threads_are_per_tenant(api: httpx.AsyncClient, bus: Bus, stack: Stack) -> None:
    thread_id = await new_thread(api)
    await say(api, bus, thread_id, "secret plans")
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    key = (await api.post("/keys", json={"tenant": tenant})).json()["key"]
    async with httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}) as other:
        missing = await other.get("/threads/no-such-thread")
        foreign = await other.get(f"/threads/{thread_id}")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["detail"] == f"thread {thread_id} not found"
        posted = await other.post(f"/threads/{thread_id}/runs", json=run_body(WORKFLOW, "#recall"))
        assert posted.status_code == 404
        own = (await other.post("/threads", json={})).json()
        assert own["tenant"] == tenant


async def test_message_limits_name_the_field_and_the_setting(api: httpx.AsyncClient) -> None:
    thread_id = await new_thread(api)
    too_long = await api.post(f"/threads/{thread_id}/runs", json=run_body(WORKFLOW, "x" * (64 * 1024 + 1)))
    assert too_long.status_code == 422
    [problem] = too_long.json()["detail"]
    assert problem["loc"] == ["body", "input"] and "FLOWRELAY_MAX_THREAD_MESSAGE_BYTES" in problem["msg"]
    bad = await api.post("/threads", json={"metadata": {"k" * 65: "v"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "metadata"]
    assert (await api.get(f"/threads/{thread_id}")).json()["runs"] == []  # nothing was queued


async def test_streamed_deltas_concatenate_to_the_output_with_exact_usage(api: httpx.AsyncClient, bus: Bus) -> None:
    text = "#tokens=300 #pace=1"
    whole = (await api.post("/runs", json=run_body(WORKFLOW, text))).json()["run_id"]
    streamed = (await api.post("/runs", json=run_body(WORKFLOW, text, stream_tokens=True))).json()["run_id"]
    events = await sse(api, streamed)
    record, reference = await bus.wait_record(streamed), await bus.wait_record(whole)

    deltas = [e for e in events if e["type"] == "llm.delta"]
    assert len(deltas) > 1
    assert "".join(d["data"]["text"] for d in deltas) == record.output == reference.output
    assert [d["seq"] for d in deltas] == sorted(d["seq"] for d in deltas)
    assert record.usage == reference.usage and record.usage.output_tokens == 300
    [finished] = [e for e in events if e["type"] == "llm.finished"]
    assert finished["data"]["output_tokens"] == 300 and finished["seq"] > deltas[-1]["seq"]
    assert not [e for e in await bus.events(whole) if e.type == EventType.LLM_DELTA]


async def test_stream_tokens_on_a_thread(api: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = await new_thread(api)
    await say(api, bus, thread_id, "remember the word teapot")
    record = await say(api, bus, thread_id, "#recall", stream_tokens=True)
    deltas = [e.data["text"] for e in await bus.events(record["run_id"]) if e.type == EventType.LLM_DELTA]
    assert "".join(deltas) == record["output"] and "teapot" in record["output"]
