"""Degraded mode through the whole stack: every failure class yields its code and guidance."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from flowrelay_testkit import (
    Bus,
    Stack,
    free_port,
    isolated_stack,
    model_calls,
    one_agent,
    run_body,
)

from flowrelay.natsconfig import Role
from flowrelay_contracts import EventType, RunStatus

TOOLS = ["explode", "needs_key", "crash_worker"]


@pytest.mark.parametrize(
    ("text", "options", "code"),
    [
        ("#fail=401 hi", {}, "invalid_api_key"),
        ("#fail=404 hi", {}, "unknown_model"),
        ("#fail=429 hi", {}, "rate_limited"),
        ("#delay=20 slow", {"timeout_s": 1}, "timeout"),
        ('#call=explode {"reason": "boom"}', {}, "tool_failed"),
        ("#call=needs_key {}", {}, "tool_missing_key"),
    ],
)
async def test_each_failure_class_yields_its_code_and_guidance(api: httpx.AsyncClient, bus: Bus, text: str, options: dict, code: str) -> None:
    response = await api.post("/runs", json=run_body(one_agent(tools=TOOLS), text, **options))
    run_id = response.json()["run_id"]
    record = await bus.wait_record(run_id, timeout=30, predicate=lambda r: r.terminal and r.suggestions)
    assert record.status == RunStatus.FAILED
    assert record.error.code == code
    assert code in [s.code for s in record.suggestions]
    assert all(s.fix for s in record.suggestions)
    events = await bus.stored_events(run_id)
    assert [e.type for e in events][-2:] == ["run.failed", "suggestion"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_execute_answers_a_failure_in_degraded_mode(api: httpx.AsyncClient) -> None:
    body = (await api.post("/execute", json=run_body(one_agent(), "#fail=401 hi"))).json()
    assert body["mode"] == "degraded"
    assert body["status"] == "failed"
    assert "invalid_api_key" in [s["code"] for s in body["suggestions"]]


# -- with a stack of their own: a dead endpoint, a stopped suggester, suggestion-only mode --


@pytest.fixture(scope="module")
def own_stack(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory.mktemp("degraded"), scripted_model) as (stack, _):
        yield stack


@pytest.fixture
async def own(own_stack: Stack) -> AsyncIterator[tuple[Stack, httpx.AsyncClient, Bus]]:
    bus = await own_stack.bus()
    async with httpx.AsyncClient(base_url=own_stack.api_url, timeout=60, headers=own_stack.auth_headers) as client:
        yield own_stack, client, bus
    await bus.close()
    for executor in own_stack.executors:
        executor.kill()
    own_stack.executors.clear()


async def test_unreachable_provider(own) -> None:
    stack, client, bus = own
    stack.start_executor(FLOWRELAY_SCRIPTED_MODEL_URL=f"http://127.0.0.1:{free_port()}/v1")
    run_id = (await client.post("/runs", json=run_body(one_agent(), "anyone there?"))).json()["run_id"]
    record = await bus.wait_record(run_id, timeout=30, predicate=lambda r: r.terminal and r.suggestions)
    assert record.error.code == "provider_unreachable"
    assert "provider_unreachable" in [s.code for s in record.suggestions]


async def test_killed_worker(own) -> None:
    stack, client, bus = own
    stack.start_executor()
    run_id = (await client.post("/runs", json=run_body(one_agent(tools=TOOLS), "#call=crash_worker {}"))).json()["run_id"]
    record = await bus.wait_record(run_id, timeout=30, predicate=lambda r: r.terminal and r.suggestions)
    assert record.error.code == "worker_crashed"
    assert "worker_crashed" in [s.code for s in record.suggestions]


async def test_a_stopped_suggester_catches_up_after_restart(own) -> None:
    stack, client, bus = own
    stack.start_executor()
    assert stack.suggester is not None
    await asyncio.to_thread(stack.suggester.terminate)
    run_ids = [(await client.post("/runs", json=run_body(one_agent(), f"#fail=401 backlog {i}"))).json()["run_id"] for i in range(3)]
    failed = await asyncio.gather(*(bus.wait_record(r, timeout=30) for r in run_ids))
    assert all(r.status == RunStatus.FAILED and not r.suggestions for r in failed), "nobody gave guidance yet"

    await asyncio.to_thread(stack.start_suggester)
    caught_up = await asyncio.gather(*(bus.wait_record(r, timeout=30, predicate=lambda x: bool(x.suggestions)) for r in run_ids))
    assert all("invalid_api_key" in [s.code for s in r.suggestions] for r in caught_up)


async def test_suggestion_only_mode_answers_without_calling_a_model(own, scripted_model: str) -> None:
    """With an executor ready to run anything queued, an API in suggestion-only mode queues
    nothing for it: no run starts and the model is never called."""
    stack, client, bus = own
    stack.start_executor()
    control = (await client.post("/runs", json=run_body(one_agent(), "an executor is listening"))).json()["run_id"]
    assert (await bus.wait_record(control, timeout=60)).status == RunStatus.SUCCEEDED
    port = free_port()
    from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve

    api = ServiceProcess(
        "api", resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API)
        | {"FLOWRELAY_EXECUTION": "suggest", "FLOWRELAY_API_PORT": str(port)},
        log_path=stack.root / "logs" / "api-suggest.log",
    ).start()
    try:
        api.wait_ready()
        token = uuid.uuid4().hex[:16]
        async with httpx.AsyncClient(timeout=60, headers=stack.auth_headers) as http:
            body = (await http.post(f"http://127.0.0.1:{port}/execute",
                                    json=run_body(one_agent(), f"#count={token} plan only"))).json()
        assert body["status"] == "succeeded"
        assert body["mode"] == "degraded"
        assert body["output"] is None
        assert body["suggestions"]
        record = await bus.store.get(body["run_id"])
        assert record.executor_id is None, "no executor ever claimed it"
        started = [e.data for e in await bus.stored_events(body["run_id"]) if e.type == EventType.RUN_STARTED]
        assert started == [{"mode": "degraded"}], "only the suggester 'ran' it"
        assert await model_calls(scripted_model, token) == 0, "suggestion-only mode must not call any model"
    finally:
        api.terminate()
