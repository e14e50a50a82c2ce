"""Durable runs on the real stack: retries with backoff, resume from checkpoints, budgets.

Its own nats-server, API, suggester and executors (killed and restarted here), the scripted
model as the only stand-in: ``#fail-first`` fails a run's first model calls deterministically,
``#count`` and ``/stats`` count the calls each model really got, and ``@<model>`` scopes a
directive to the agent using that model. Everything is awaited on events and records.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from flowrelay_testkit import (
    Bus,
    Stack,
    agent_node,
    count_token,
    one_agent,
    run_body,
)

from flowrelay_bus.checkpoints import CheckpointStore
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import EventType, RunRecord, RunStatus, TraceEvent


@pytest.fixture
async def model_stats(scripted_model: str) -> Any:
    async def stats() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return (await http.get(scripted_model.removesuffix("/v1") + "/stats")).json()

    return stats


async def submit(own_api: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await own_api.post("/runs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


def of_type(events: list[TraceEvent], kind: EventType) -> list[TraceEvent]:
    return [e for e in events if e.type == kind]


async def wait_event(own_bus: Bus, run_id: str, predicate: Any, *, timeout: float = 60) -> TraceEvent:
    async def first() -> TraceEvent:
        async for event in own_bus.stream_events(run_id):
            if predicate(event):
                return event
        raise AssertionError(f"run {run_id} ended without the awaited event")

    return await asyncio.wait_for(first(), timeout)


async def counted(stats: Any, tok: str, model: str, calls: int, *, timeout: float = 30) -> None:
    """Wait until the scripted model has received ``calls`` requests of ``model`` under ``tok``
    (a model call starts after its ``llm.started`` event is published)."""
    async with asyncio.timeout(timeout):
        while (await stats())["counted_by_model"].get(tok, {}).get(model, 0) < calls:
            await asyncio.sleep(0.05)  # polling the condition, not sleeping as truth


def holder_of(stack: Stack, record: RunRecord) -> Any:
    return next(e for e in stack.executors if (record.executor_id or "").split("-")[-2] == str(e.pid))


# -- retries ----------------------------------------------------------------------------------


async def test_a_run_rate_limited_twice_succeeds_on_its_third_attempt_with_the_waits_in_the_trace(
    own_api, own_bus, executors, model_stats
) -> None:
    executors.start_executor()
    tok = count_token()
    text = f"limited #fail-first=2:429:0.5 #count={tok}"
    run_id = await submit(own_api, run_body(one_agent(), text, retry={
        "attempts": 3, "initial_backoff_s": 0.2, "max_backoff_s": 5, "jitter": 0}))
    record = await own_bus.wait_record(run_id, timeout=60)
    events = await own_bus.events(run_id)

    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.output == f"echo: {text}"
    assert record.attempts == 3
    assert [(r.attempt, r.error.code, r.error.provider_status, r.wait_s) for r in record.retries] == [
        (1, "rate_limited", 429, 0.5), (2, "rate_limited", 429, 0.5)], "the 0.5 s Retry-After beats 0.2 s and 0.4 s"
    retrying = of_type(events, EventType.RUN_RETRYING)
    assert [(e.data["reason"], e.data["wait_s"], e.data["retry_after_s"], e.data["attempt"], e.data["attempts"])
            for e in retrying] == [("rate_limited", 0.5, 0.5, 2, 3), ("rate_limited", 0.5, 0.5, 3, 3)]
    assert [e.data["attempt"] for e in of_type(events, EventType.RUN_STARTED)] == [1, 2, 3]
    # each retry waited at least its wait: the next attempt started after retry_at
    starts = of_type(events, EventType.RUN_STARTED)
    for before, after in zip(retrying, starts[1:], strict=True):
        assert after.seq > before.seq and after.at >= before.at + timedelta(seconds=before.data["wait_s"])
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(await own_bus.terminal_events(run_id)) == 1
    assert (await model_stats())["counted"][tok] == 3


async def test_failures_that_cannot_pass_by_themselves_are_not_retried(own_api, own_bus, executors, model_stats) -> None:
    executors.start_executor()
    tok = count_token()
    run_id = await submit(own_api, run_body(one_agent(), f"refused #fail=401 #count={tok}", retry={"attempts": 5}))
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "invalid_api_key"
    assert record.attempts == 1 and record.retries == []
    assert not of_type(await own_bus.events(run_id), EventType.RUN_RETRYING)
    assert (await model_stats())["counted"][tok] == 1


async def test_the_server_default_policy_applies_when_a_run_sets_none(own_stack, own_api, own_bus, executors) -> None:
    executors.start_executor()
    run_id = await submit(own_api, run_body(one_agent(), f"overloaded #fail-first=1:503 #count={count_token()}"))
    record = await own_bus.wait_record(run_id, timeout=60)
    # the test stack's FLOWRELAY_RETRY_ATTEMPTS is 1: no retry, and the error says so
    assert record.status == RunStatus.FAILED and record.error.code == "provider_error" and record.attempts == 1


async def test_retries_never_pass_the_deadline(own_api, own_bus, executors) -> None:
    executors.start_executor()
    # always 503: retried every 0.5 s until the next wait would end past the 3 s deadline
    always = await submit(own_api, run_body(one_agent(), f"down #fail=503 #count={count_token()}", timeout_s=3, retry={
        "attempts": 10, "initial_backoff_s": 0.5, "max_backoff_s": 0.5, "jitter": 0}))
    # a Retry-After longer than the deadline: not waited for at all
    patient = await submit(own_api, run_body(one_agent(), f"later #fail-first=1:429:60 #count={count_token()}",
                                            timeout_s=5, retry={"attempts": 3}))
    # the last attempt only gets what is left of the deadline: 1.5 s of model delay, 503, retry
    # after 0.2 s with 1.3 s left, and the second 1.5 s delay is cut at the deadline
    slow = await submit(own_api, run_body(one_agent(), f"slow #fail-first=1:503 #delay=1.5 #count={count_token()}",
                                         timeout_s=3, retry={"attempts": 3, "initial_backoff_s": 0.2, "jitter": 0}))

    record = await own_bus.wait_record(always, timeout=60)
    events = await own_bus.events(always)
    # On a loaded machine the last attempt may start so late that the deadline cuts it
    # (timeout) before its 503 comes: either way no retry was scheduled past the deadline.
    assert record.status == RunStatus.FAILED and record.error.code in ("provider_error", "timeout"), record.error
    if record.error.code == "provider_error":
        assert "would pass the run's deadline" in record.error.message
    assert 2 <= len(record.retries) < 6
    deadline = record.started_at + timedelta(seconds=3)
    assert all(r.retry_at < deadline for r in record.retries)
    assert all(e.at < deadline for e in of_type(events, EventType.RUN_STARTED))

    record = await own_bus.wait_record(patient, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "rate_limited"
    assert record.attempts == 1 and record.error.retry_after_s == 60
    assert "the provider asked to wait 60 s" in record.error.message

    record = await own_bus.wait_record(slow, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "timeout", record.error
    assert record.attempts == 2 and "every attempt included" in record.error.message
    # the run's own timestamps: it ended at its deadline, not a whole attempt later
    assert record.finished_at - record.started_at < timedelta(seconds=3 + 1.5)


async def test_a_run_waiting_for_its_retry_holds_no_slot(own_api, own_bus, executors) -> None:
    executors.start_executor(FLOWRELAY_WORKERS="1", FLOWRELAY_SLOTS_PER_WORKER="1")
    waiting = await submit(own_api, run_body(one_agent(), f"wait #fail-first=1:429:12 #count={count_token()}", retry={
        "attempts": 2, "initial_backoff_s": 0, "jitter": 0}))
    await wait_event(own_bus, waiting, lambda e: e.type == EventType.RUN_RETRYING)

    other = await submit(own_api, run_body(one_agent(), "meanwhile"))
    done = await own_bus.wait_record(other, timeout=30)
    assert done.status == RunStatus.SUCCEEDED
    meanwhile = await own_bus.store.get(waiting)
    assert meanwhile.status == RunStatus.QUEUED and meanwhile.attempts == 1 and meanwhile.retry_at is not None
    # (a slot held for the backoff would free up at retry_at, and only then run the other)
    assert done.finished_at < meanwhile.retry_at, "the only slot was free during the backoff"
    assert meanwhile.executor_id is None, "no executor holds a run that waits"

    record = await own_bus.wait_record(waiting, timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 2
    assert record.started_at < done.started_at < done.finished_at < record.finished_at


async def test_a_run_cancelled_while_it_waits_for_its_retry_ends_at_once(own_api, own_bus, executors) -> None:
    executors.start_executor()
    run_id = await submit(own_api, run_body(one_agent(), f"cancel me #fail-first=1:429:30 #count={count_token()}",
                                           retry={"attempts": 2}))
    await wait_event(own_bus, run_id, lambda e: e.type == EventType.RUN_RETRYING)
    response = await own_api.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202
    record = await own_bus.wait_record(run_id, timeout=10)
    assert record.status == RunStatus.CANCELLED and "next attempt" in record.error.message
    assert [e.type for e in await own_bus.terminal_events(run_id)] == [EventType.RUN_CANCELLED]


# -- checkpoints and resume ---------------------------------------------------------------------


def three_agents(**models: str) -> dict[str, Any]:
    names = ["one", "two", "three"]
    nodes = [agent_node(f"n{i}", name, instructions=f"You are {name}.", model_id=f"scripted:{models.get(name, name)}")
             for i, name in enumerate(names, 1)]
    edges = [{"id": f"e{i}", "source": f"n{i}", "target": f"n{i + 1}"} for i in (1, 2)]
    return {"nodes": nodes, "edges": edges}


async def test_a_run_whose_executor_is_killed_during_agent_three_resumes_elsewhere_after_agent_two(
    own_stack, own_api, own_bus, executors, model_stats
) -> None:
    executors.start_executor()
    executors.start_executor()
    tok = count_token()
    text = f"resume #count={tok} #delay=3@three"
    run_id = await submit(own_api, run_body(three_agents(), text))
    third = await wait_event(own_bus, run_id, lambda e: e.type == EventType.LLM_STARTED and e.data["agent"] == "three")
    await counted(model_stats, tok, "three", 1)  # agent three's call is at the model
    running = await own_bus.store.get(run_id)
    holder_of(own_stack, running).kill()

    record = await own_bus.wait_record(run_id, timeout=120)
    events = await own_bus.events(run_id)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.output == f"echo: echo: echo: {text}"
    assert record.attempts == 2 and record.executor_id != running.executor_id
    [resumed] = of_type(events, EventType.RUN_RESUMED)
    assert resumed.seq > third.seq
    assert resumed.data["step"] == 2 and resumed.data["agents"] == ["one", "two"] and resumed.data["attempt"] == 2
    after = [e for e in events if e.seq > resumed.seq]
    assert [e.data["agent"] for e in of_type(after, EventType.AGENT_STARTED)] == ["three"]
    assert of_type(after, EventType.AGENT_STARTED)[0].data["step"] == 3
    # the model saw exactly one call for each of agents one and two, and two for three
    assert (await model_stats())["counted_by_model"][tok] == {"one": 1, "two": 1, "three": 2}
    # usage counts agents one and two once, from their checkpoints
    assert [a.agent for a in record.agents] == ["one", "two", "three"]
    assert all(a.usage.input_tokens > 0 for a in record.agents)
    assert len(await own_bus.terminal_events(run_id)) == 1
    store = await CheckpointStore.open(own_bus.nc, own_bus.js, BusSettings())
    assert await store.load(own_bus.tenant, run_id) == {}, "a finished run's checkpoints are cleared"


async def test_a_retried_sequential_run_resumes_at_the_step_that_failed(own_api, own_bus, executors, model_stats) -> None:
    executors.start_executor()
    tok = count_token()
    text = f"flaky third #count={tok} #fail-first=1:503@three"
    run_id = await submit(own_api, run_body(three_agents(), text, retry={"attempts": 2, "initial_backoff_s": 0}))
    record = await own_bus.wait_record(run_id, timeout=60)
    events = await own_bus.events(run_id)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert [r.error.agent for r in record.retries] == ["three"]
    [resumed] = of_type(events, EventType.RUN_RESUMED)
    assert resumed.data["agents"] == ["one", "two"]
    assert (await model_stats())["counted_by_model"][tok] == {"one": 1, "two": 1, "three": 2}
    # the failed attempt spent nothing that was lost: its finished steps were checkpointed
    assert record.retries[0].usage.input_tokens == 0


async def test_a_retried_collaborative_run_reuses_the_sub_agent_calls_that_finished(
    own_api, own_bus, executors, model_stats
) -> None:
    executors.start_executor()
    first, second = count_token(), count_token()
    # Directives for a sub-agent sit in the coordinator's #call arguments: at the start of the
    # JSON string (no whitespace before them) the coordinator does not read them, and the
    # writer's failure is scoped to its own model.
    request_a = f"#count={first} first part"
    request_b = f"#count={second} second part #fail-first=1:503@wm"
    coordinator = agent_node("c", "coordinator", instructions="Ask analyst, then writer.")
    writer = agent_node("b", "writer", model_id="scripted:wm")
    workflow = {"nodes": [coordinator, agent_node("a", "analyst"), writer],
                "edges": [{"source": "c", "target": "a"}, {"source": "c", "target": "b"}]}
    text = (f'#call=analyst {{"request": "{request_a}"}} #call=writer {{"request": "{request_b}"}}')
    run_id = await submit(own_api, run_body(workflow, text, retry={"attempts": 2, "initial_backoff_s": 0}))
    record = await own_bus.wait_record(run_id, timeout=60)
    events = await own_bus.events(run_id)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.output == f"echo: {request_b}"
    assert [r.error.agent for r in record.retries] == ["writer"]
    resumed = of_type(events, EventType.RUN_RESUMED)
    assert [e.data["agents"] for e in resumed] == [["analyst"]]
    counted = (await model_stats())["counted"]
    assert counted[first] == 1, "the analyst's finished call was reused, not asked again"
    assert counted[second] == 2


# -- budgets ------------------------------------------------------------------------------------


def _cumulative(events: list[TraceEvent], field: str) -> list[float]:
    total, out = 0.0, []
    for event in of_type(events, EventType.LLM_FINISHED):
        if field == "tokens":
            total += event.data["input_tokens"] + event.data["output_tokens"]
        else:
            total += event.data["cost_usd"]
        out.append(total)
    return out


@pytest.mark.parametrize(("option", "limit", "field"), [("max_cost_usd", 0.00002, "cost"), ("max_tokens", 600, "tokens")])
async def test_a_run_over_its_budget_stops_at_the_call_that_passed_it(
    own_api, own_bus, executors, option: str, limit: float, field: str
) -> None:
    executors.start_executor()
    run_id = await submit(own_api, run_body(one_agent(tools=["add"]), '#loop=add {"a": 1, "b": 2}',
                                           max_turns=100, **{option: limit}))
    record = await own_bus.wait_record(run_id, timeout=60)
    events = await own_bus.events(run_id)
    assert record.status == RunStatus.FAILED and record.error.code == "budget_exceeded", record.error
    assert f"options.{option}" in record.error.message and record.error.agent == "assistant"
    spent = _cumulative(events, field)
    assert spent[-1] > limit and all(s <= limit for s in spent[:-1]), "it stopped at the first call past the budget"
    last_call = of_type(events, EventType.LLM_FINISHED)[-1].seq
    assert not [e for e in events if e.seq > last_call and e.type in (EventType.LLM_STARTED, EventType.TOOL_STARTED)]
    # the partial usage is kept, in the record and the terminal event
    assert record.usage.input_tokens + record.usage.output_tokens == int(_cumulative(events, "tokens")[-1])
    terminal = events[-1]
    assert terminal.type == EventType.RUN_FAILED and terminal.data["usage"] == record.usage.model_dump()
    if field == "cost":
        assert record.cost_usd == pytest.approx(spent[-1])
    guided = await own_bus.wait_record(run_id, predicate=lambda r: bool(r.suggestions), timeout=30)
    assert guided.suggestions[0].code == "budget_exceeded" and f"options.{option}" in guided.suggestions[0].fix


async def test_budgets_count_every_attempt(own_api, own_bus, executors) -> None:
    """Steps an earlier attempt finished are reused, not paid again, but still count: a budget
    above agents one and two, below all three, stops the second attempt at agent three (were
    only that attempt's spend counted, it would pass)."""
    executors.start_executor()
    reference = await own_bus.wait_record(await submit(own_api, run_body(
        three_agents(), f"budget #count={count_token()} #delay=0.00000000@three")), timeout=60)  # as long as the text below
    assert reference.status == RunStatus.SUCCEEDED, reference.error
    spent = {a.agent: a.usage.total_tokens for a in reference.agents}
    budget = spent["one"] + spent["two"] + spent["three"] // 2
    run_id = await submit(own_api, run_body(three_agents(), f"budget #count={count_token()} #fail-first=1:503@three",
                                           max_tokens=budget, retry={"attempts": 2, "initial_backoff_s": 0}))
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "budget_exceeded", record.error
    assert record.error.agent == "three" and record.attempts == 2
    assert [r.error.agent for r in record.retries] == ["three"]
    assert record.usage.total_tokens > budget


# -- the API refuses what the deployment does not allow ------------------------------------------


@pytest.mark.parametrize(("options", "loc", "setting"), [
    ({"retry": {"attempts": 11}}, ["body", "options", "retry", "attempts"], "FLOWRELAY_MAX_RETRY_ATTEMPTS"),
    ({"retry": {"max_backoff_s": 601}}, ["body", "options", "retry", "max_backoff_s"], "FLOWRELAY_MAX_RETRY_BACKOFF_S"),
    ({"retry": {"initial_backoff_s": 5, "max_backoff_s": 1}}, ["body", "options", "retry", "max_backoff_s"], "initial_backoff_s"),
    ({"max_cost_usd": 5000}, ["body", "options", "max_cost_usd"], "FLOWRELAY_MAX_MAX_COST_USD"),
    ({"max_tokens": 10**9}, ["body", "options", "max_tokens"], "FLOWRELAY_MAX_MAX_TOKENS"),
    ({"max_cost_usd": float("inf")}, ["body", "options", "max_cost_usd"], "FLOWRELAY_MAX_MAX_COST_USD"),
    ({"retry": {"initial_backoff_s": float("inf")}}, ["body", "options", "retry", "initial_backoff_s"],
     "FLOWRELAY_MAX_RETRY_BACKOFF_S"),
    ({"retry": {"attempts": 0}}, ["body", "options", "retry", "attempts"], "greater than or equal to 1"),
    ({"retry": {"jitter": 1.5}}, ["body", "options", "retry", "jitter"], "less than or equal to 1"),
    ({"max_cost_usd": -1}, ["body", "options", "max_cost_usd"], "greater than 0"),
    ({"retry": {"attempts": 2, "typo": 1}}, ["body", "options", "retry", "typo"], "Extra inputs"),
    # pydantic's lax mode would read these as 1 and 0.5 (found by schemathesis)
    ({"retry": {"jitter": True}}, ["body", "options", "retry", "jitter"], "must be a number"),
    ({"max_tokens": "5"}, ["body", "options", "max_tokens"], "must be a number"),
])
async def test_out_of_range_retry_and_budget_options_are_refused_naming_field_and_setting(
    own_api, own_bus, options: dict[str, Any], loc: list[Any], setting: str
) -> None:
    # json.dumps writes Infinity (as a hostile own_api can); httpx's own encoder refuses it
    response = await own_api.post("/runs", content=json.dumps(run_body(one_agent(), "never queued", **options)),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [problem] = [p for p in response.json()["detail"] if p["loc"] == loc]
    assert setting in problem["msg"]


async def test_a_waiting_retry_survives_the_death_of_every_executor(own_api, own_bus, executors) -> None:
    first = executors.start_executor()
    run_id = await submit(own_api, run_body(one_agent(), f"outlive #fail-first=1:503:4 #count={count_token()}",
                                           retry={"attempts": 2, "initial_backoff_s": 0, "jitter": 0}))
    await wait_event(own_bus, run_id, lambda e: e.type == EventType.RUN_RETRYING)
    await asyncio.to_thread(first.wait_for, r"attempt 2 of 2 in", timeout=30)  # logged once handed back
    first.kill()  # the wait is JetStream's (a delayed nak), not a process's
    executors.start_executor()
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 2
