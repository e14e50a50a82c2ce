"""Human in the loop through the whole stack: an agent calls ``ask_human`` (the scripted
model's ``#call=ask_human {...}``), the run waits without holding a worker slot, the answer
comes over HTTP, and the run finishes with it (the scripted model answers with the last tool
result: the human's answer). Also across an executor restart, a cancel and a deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from flowrelay_testkit import Bus, Stack, isolated_stack, one_agent, run_body

from flowrelay_contracts import EventType, RunStatus

ASKER = one_agent(name="asker", instructions="Ask when unsure.", tools=["ask_human", "add"])


def ask(question: str, choices: list[str] | None = None, then: str = "") -> str:
    arguments: dict = {"question": question}
    if choices is not None:
        arguments["choices"] = choices
    return f"#call=ask_human {json.dumps(arguments)} {then}".strip()


async def submit(api: httpx.AsyncClient, text: str, **options: object) -> str:
    response = await api.post("/runs", json=run_body(ASKER, text, **options))
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


async def waiting_event(bus: Bus, run_id: str) -> dict:
    """The run's ``run.waiting`` event, once published."""
    async for event in bus.stream_events(run_id):
        if event.type == EventType.RUN_WAITING:
            return event.data
        assert not event.type.terminal, f"the run ended without asking: {event.data}"
    raise AssertionError("no run.waiting")


# -- on the shared stack ----------------------------------------------------------------------


async def test_a_question_waits_is_answered_over_http_and_the_run_finishes_with_it(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, ask("Which colour?", ["red", "blue"]))
    asked = await waiting_event(bus, run_id)
    assert asked["question"] == "Which colour?" and asked["choices"] == ["red", "blue"] and asked["agent"] == "asker"

    record = (await api.get(f"/runs/{run_id}")).json()
    assert record["status"] == "waiting" and record["waiting"]["wait_id"] == asked["wait_id"]
    assert record["waiting"]["answer"] is None and record["usage"]["input_tokens"] > 0

    wrong = await api.post(f"/runs/{run_id}/input", json={"answer": "green"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "answer"]
    assert "'red', 'blue'" in wrong.json()["detail"][0]["msg"]
    stale = await api.post(f"/runs/{run_id}/input", json={"answer": "red", "wait_id": "not-this-one"})
    assert stale.status_code == 409 and stale.json()["code"] == "stale_wait"

    answered = await api.post(f"/runs/{run_id}/input", json={"answer": "blue", "wait_id": asked["wait_id"]})
    assert answered.status_code == 202, answered.text
    assert answered.json() == {"run_id": run_id, "status": "queued", "wait_id": asked["wait_id"]}
    again = await api.post(f"/runs/{run_id}/input", json={"answer": "red"})
    assert again.status_code == 409 and again.json()["code"] == "not_waiting"  # one answer counts

    done = await bus.wait_record(run_id)
    assert done.status == RunStatus.SUCCEEDED and done.output == "blue"
    events = await bus.events(run_id)
    types = [e.type for e in events]
    assert types.count(EventType.RUN_STARTED) == 2 and types.count(EventType.RUN_WAITING) == 1
    [finished] = [e.data for e in events if e.type == EventType.TOOL_FINISHED]
    assert finished["tool"] == "ask_human" and finished["result"] == "blue"
    llm = [e.data for e in events if e.type == EventType.LLM_FINISHED]
    assert done.usage.input_tokens == sum(d["input_tokens"] for d in llm)  # both segments, once each
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_cancel_while_waiting_ends_the_run_at_once(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, ask("Proceed?"))
    await waiting_event(bus, run_id)
    cancelled = await api.post(f"/runs/{run_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    events = await bus.events(run_id)
    assert events[-1].type == EventType.RUN_CANCELLED
    record = await bus.wait_record(run_id)
    assert record.status == RunStatus.CANCELLED and "waited for an answer" in record.error.message
    late = await api.post(f"/runs/{run_id}/input", json={"answer": "yes"})
    assert late.status_code == 409 and late.json()["code"] == "not_waiting"


async def test_an_unanswered_question_fails_the_run_at_its_deadline(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, ask("Anyone there?"), wait_timeout_s=1)
    events = await bus.events(run_id, timeout=60)  # the parked request comes back at the deadline
    assert [e.type for e in events][-2:] == [EventType.RUN_WAITING, EventType.RUN_FAILED]
    record = await bus.wait_record(run_id)
    assert record.status == RunStatus.FAILED and record.error.code == "timeout"
    assert "wait_timeout_s" in record.error.message
    late = await api.post(f"/runs/{run_id}/input", json={"answer": "me"})
    assert late.status_code == 409


async def test_where_ask_human_cannot_pause_is_refused_at_submission(api: httpx.AsyncClient) -> None:
    langchain = one_agent(name="lc", framework="langchain", tools=["ask_human"])
    refused = await api.post("/runs", json=run_body(langchain, "hi"))
    assert refused.status_code == 422
    [problem] = [p for p in refused.json()["detail"] if "ask_human" in p["msg"]]
    assert problem["loc"] == ["body", "workflow", "nodes", 0, "data", "tools", 0]
    too_long = await api.post("/runs", json=run_body(ASKER, "hi", wait_timeout_s=10**9))
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["body", "options", "wait_timeout_s"]
    assert "FLOWRELAY_MAX_WAIT_TIMEOUT_S" in too_long.json()["detail"][0]["msg"]


async def test_answering_a_run_that_does_not_wait_is_409_and_a_blank_answer_422(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, "no question here")
    await bus.wait_record(run_id)
    assert (await api.post(f"/runs/{run_id}/input", json={"answer": "x"})).status_code == 409
    blank = await api.post(f"/runs/{run_id}/input", json={"answer": "   "})
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "answer"]
    assert (await api.post("/runs/no-such-run/input", json={"answer": "x"})).status_code == 404


async def test_a_waiting_run_on_a_thread_keeps_it_busy_and_its_turn_holds_the_answer(api: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = (await api.post("/threads", json={})).json()["thread_id"]
    run_id = (await api.post(f"/threads/{thread_id}/runs", json=run_body(ASKER, ask("Your name?")))).json()["run_id"]
    await waiting_event(bus, run_id)
    busy = await api.post(f"/threads/{thread_id}/runs", json=run_body(ASKER, "hello?"))
    assert busy.status_code == 409 and busy.json()["code"] == "thread_busy" and "waiting" in busy.json()["detail"]
    assert (await api.post(f"/runs/{run_id}/input", json={"answer": "Ada"})).status_code == 202
    assert (await bus.wait_record(run_id)).output == "Ada"
    recall = (await api.post(f"/threads/{thread_id}/runs", json=run_body(ASKER, "#recall"))).json()["run_id"]
    recalled = (await bus.wait_record(recall)).output
    assert "assistant calls ask_human(" in recalled and ": Ada | assistant: Ada" in recalled


# -- on a stack of its own: one slot, executors restarted ----------------------------------


@pytest.fixture(scope="module")
def hitl_stack(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory.mktemp("hitl"), scripted_model,
                        FLOWRELAY_THREAD_HISTORY_MAX_BYTES="4096", FLOWRELAY_MAX_THREAD_MESSAGE_BYTES="2048") as (stack, _):
        yield stack
        for executor in stack.executors:
            executor.kill()


@pytest.fixture
async def own(hitl_stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, Bus]]:
    async with httpx.AsyncClient(base_url=hitl_stack.api_url, timeout=60, headers=hitl_stack.auth_headers) as http:
        connection = await hitl_stack.bus()
        yield http, connection
        await connection.close()


async def test_a_waiting_run_holds_no_slot_and_resumes_on_another_executor(hitl_stack: Stack, own) -> None:
    api, bus = own
    first = hitl_stack.start_executor(FLOWRELAY_WORKERS="1", FLOWRELAY_SLOTS_PER_WORKER="1")
    waiting = await submit(api, ask("Ship it?", ["yes", "no"]))
    asked = await waiting_event(bus, waiting)
    # its only slot is free: another run goes through while the first one waits
    other = await submit(api, "meanwhile")
    assert (await bus.wait_record(other)).output == "echo: meanwhile"

    first.kill()  # the executor that started the run dies while it waits (SIGKILL, workers and all)
    hitl_stack.executors.remove(first)
    answered = await api.post(f"/runs/{waiting}/input", json={"answer": "yes", "wait_id": asked["wait_id"]})
    assert answered.status_code == 202
    hitl_stack.start_executor(FLOWRELAY_WORKERS="1", FLOWRELAY_SLOTS_PER_WORKER="1")
    done = await bus.wait_record(waiting, timeout=60)
    assert done.status == RunStatus.SUCCEEDED and done.output == "yes"
    started = [e.data for e in await bus.events(waiting) if e.type == EventType.RUN_STARTED]
    assert [s["executor_id"] for s in started][0] != started[-1]["executor_id"]
    assert started[-1].get("resumed") is True
    assert "waits for an answer" in first.output()


async def test_history_is_trimmed_to_the_budget_at_turn_boundaries(hitl_stack: Stack, own) -> None:
    api, bus = own
    if not hitl_stack.executors:
        hitl_stack.start_executor()
    thread_id = (await api.post("/threads", json={})).json()["thread_id"]
    for word in ("alpha", "bravo", "charlie"):  # each turn ~1.9 kB: two fit 4096 bytes, three do not
        run_id = (await api.post(f"/threads/{thread_id}/runs", json=run_body(ASKER, f"{word} " + "x" * 900))).json()["run_id"]
        assert (await bus.wait_record(run_id)).status == RunStatus.SUCCEEDED
    recall = (await api.post(f"/threads/{thread_id}/runs", json=run_body(ASKER, "#recall"))).json()["run_id"]
    recalled = (await bus.wait_record(recall)).output
    assert "alpha" not in recalled and "user: bravo" in recalled and "user: charlie" in recalled
    assert recalled.index("bravo") < recalled.index("charlie")  # whole turns, oldest first
    started = [e.data for e in await bus.events(recall) if e.type == EventType.AGENT_STARTED][0]
    assert started["history"]["turns"] == 2 and started["history"]["dropped"] == 1
    assert "FLOWRELAY_THREAD_HISTORY_MAX_BYTES" in started["history"]["dropped_note"]


async def test_the_wait_does_not_count_against_the_run_deadline(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, ask("Still there?"), timeout_s=1)
    await waiting_event(bus, run_id)
    await asyncio.sleep(1.5)  # longer than the run's whole deadline: only the wait, not execution
    assert (await api.post(f"/runs/{run_id}/input", json={"answer": "yes"})).status_code == 202
    done = await bus.wait_record(run_id)
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.output == "yes"
