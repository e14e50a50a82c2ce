"""The executor under faults: deadlines that kill, crashes, SIGKILL, SIGTERM, poison, cancel.

This module runs its own nats-server and services, so killing executors here cannot
disturb the other tests.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import time

import httpx
import psutil
import pytest
from flowrelay_testkit import one_agent, run_body

from flowrelay_contracts import EventType, RunStatus, Workflow, subjects
from flowrelay_executor.jobs import Job, ModelDefaults
from flowrelay_executor.worker import WorkerOptions, run_worker

#: Tools of the agent used here (from tests/support/flowrelay_test_tools.py).
TOOLS = ["add", "block", "crash_worker"]


async def _submit(own_api: httpx.AsyncClient, text: str, **options: object) -> str:
    response = await own_api.post("/runs", json=run_body(one_agent(tools=TOOLS), text, **options))
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


async def test_blocking_tool_past_deadline_is_killed_and_the_next_run_succeeds(own_api, own_bus, executors) -> None:
    executor = executors.shared()
    mark = executor.line_count  # its output from here on is this test's
    run_id = await _submit(own_api, '#call=block {"seconds": 60}', timeout_s=2)
    record = await own_bus.wait_record(run_id, timeout=30)
    assert record.status == RunStatus.FAILED
    assert record.error is not None and record.error.code == "timeout"
    assert "its worker process was killed" in record.error.message
    await asyncio.to_thread(executor.wait_for, "killing worker", timeout=30, after=mark)  # the log may trail the record

    after = await _submit(own_api, "still alive?")
    assert (await own_bus.wait_record(after, timeout=60)).output == "echo: still alive?"


async def test_worker_crash_fails_its_run_and_the_pool_refills(own_api, own_bus, executors) -> None:
    executor = executors.shared()
    mark = executor.line_count  # its output from here on is this test's
    run_id = await _submit(own_api, "#call=crash_worker {}")
    record = await own_bus.wait_record(run_id, timeout=30)
    assert record.status == RunStatus.FAILED
    assert record.error.code == "worker_crashed"
    after = await _submit(own_api, "after the crash")
    assert (await own_bus.wait_record(after, timeout=60)).status == RunStatus.SUCCEEDED
    await asyncio.to_thread(executor.wait_for, "died", timeout=30, after=mark)  # the log may trail the record


async def test_poison_message_gets_a_failure_event_and_the_consumer_keeps_going(own_api, own_bus, executors) -> None:
    executors.shared()
    await own_bus.js.publish(subjects.run_requested(own_bus.tenant), json.dumps({"run_id": "poison-1", "schema_version": 99}).encode())
    await own_bus.js.publish(subjects.run_requested(own_bus.tenant), b"not json at all")
    events = await own_bus.events("poison-1", timeout=30)
    assert events[-1].type == EventType.RUN_FAILED
    assert "schema_version" in events[-1].data["error"]["message"]
    record = await own_bus.store.get("poison-1")
    assert record.status == RunStatus.FAILED and record.error.code == "invalid_request"

    letters = await own_bus.js.pull_subscribe(subjects.DEADLETTER, stream=subjects.DEADLETTER_STREAM)
    reasons: list[str] = []
    while not (any("not JSON" in r for r in reasons) and any("schema_version" in r for r in reasons)):
        reasons += [json.loads(m.data)["reason"] for m in await letters.fetch(1, timeout=20)]

    run_id = await _submit(own_api, "after poison")
    assert (await own_bus.wait_record(run_id, timeout=30)).status == RunStatus.SUCCEEDED


async def test_cancel_a_running_run(own_api, own_bus, executors) -> None:
    executors.shared()
    run_id = await _submit(own_api, "#delay=30 cancel me")
    await own_bus.wait_record(run_id, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
    response = await own_api.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202
    record = await own_bus.wait_record(run_id, timeout=20)  # long before the model's 30 s answer
    assert record.status == RunStatus.CANCELLED and record.error.code == "cancelled"
    assert [e.type for e in await own_bus.terminal_events(run_id)] == [EventType.RUN_CANCELLED]


async def test_turn_limit_stops_a_looping_agent(own_api, own_bus, executors) -> None:
    executors.shared()
    run_id = await _submit(own_api, '#loop=add {"a": 1, "b": 1}', max_turns=3)
    record = await own_bus.wait_record(run_id, timeout=30)
    assert record.status == RunStatus.FAILED and record.error.code == "max_turns_exceeded"
    assert record.usage.input_tokens > 0, "the partial trace's usage is kept"


async def test_idempotency_key_returns_the_same_run(own_api, own_bus, executors) -> None:
    body = run_body(one_agent(tools=TOOLS), "once")
    headers = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = await own_api.post("/runs", json=body, headers=headers)
    second = await own_api.post("/runs", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] == second.json()["run_id"]


async def test_sigkill_of_the_executor_holding_a_run_hands_it_to_another(own_api, own_bus, executors) -> None:
    pair = [executors.start_executor(), executors.start_executor()]
    run_id = await _submit(own_api, "#delay=3 survive")
    running = await own_bus.wait_record(run_id, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
    holder = next(e for e in pair if (running.executor_id or "").split("-")[-2] == str(e.pid))
    holder.kill()

    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED
    assert record.output == "echo: #delay=3 survive"
    assert record.executor_id != running.executor_id
    assert record.attempts == 2
    assert len(await own_bus.terminal_events(run_id)) == 1


def test_a_worker_whose_executor_vanished_stops_its_runs_quietly(
    scripted_model: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # An executor SIGKILLed (or OOM-killed) leaves its worker to notice the closed socket:
    # it must end its runs and exit, not report them into the closed socket ("unhandled
    # exception during asyncio.run() shutdown" with a traceback in the executor's log).
    parent_end, child_end = socket.socketpair()
    worker = multiprocessing.get_context("spawn").Process(
        target=run_worker, args=(child_end, WorkerOptions(frameworks=("tinyagent",))), daemon=True
    )
    worker.start()
    child_end.close()
    try:
        lines = parent_end.makefile("rb")
        assert json.loads(lines.readline())["op"] == "ready"
        job = Job(run_id="orphan", workflow=Workflow.model_validate(one_agent()), input="#delay=60 orphaned",
                  timeout_s=120, max_turns=5, defaults=ModelDefaults(model_id="scripted:gpt-4o-mini",
                                                                     scripted_url=scripted_model))
        parent_end.sendall(json.dumps({"op": "run", "job": job.model_dump(mode="json")}).encode() + b"\n")
        while (message := json.loads(lines.readline())).get("type") != "llm.started":  # in the model call
            assert message["op"] == "event", message
        lines.close()
        parent_end.close()  # the executor is gone
        worker.join(60)
    finally:
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err


@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_sigterm_hands_back_a_run_longer_than_the_drain_grace_and_exits(own_api, own_bus, executors, isolation) -> None:
    executor = executors.start_executor(FLOWRELAY_DRAIN_GRACE_S="1", FLOWRELAY_ISOLATION=isolation)
    run_id = await _submit(own_api, "#delay=120 longer than the drain grace")
    await own_bus.wait_record(run_id, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
    workers = psutil.Process(executor.pid).children(recursive=True)
    code = await asyncio.to_thread(executor.terminate, 30)  # SIGKILL after 30 s would make it -9
    assert code == 0, "the executor exited by itself, not waiting for its worker's run"
    gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, 10)
    assert alive == [], "its worker processes are stopped with it"
    output = executor.output()
    assert "handing back 1 unfinished runs" in output and "died" not in output
    # the handed-back run was stopped at once, not left to run until its worker was killed
    assert "did not stop" not in output and "still busy" not in output
    assert (await own_api.post(f"/runs/{run_id}/cancel")).status_code == 202  # not for the next executor here


async def test_cancel_a_queued_run_before_it_starts(own_api, own_bus, executors) -> None:
    executors.stop_shared()  # nothing may take the run before it is cancelled
    run_id = await _submit(own_api, "queued then cancelled")  # no executor is running
    response = await own_api.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202
    assert (await own_bus.store.get(run_id)).status == RunStatus.CANCELLED
    executors.start_executor()
    marker = await _submit(own_api, "after the cancelled one")
    await own_bus.wait_record(marker, timeout=60)
    record = await own_bus.store.get(run_id)
    assert record.status == RunStatus.CANCELLED and record.attempts == 0, "it never ran"
    assert len(await own_bus.terminal_events(run_id)) == 1


@pytest.mark.timeout(420)
async def test_soak_every_run_ends_exactly_once_while_an_executor_is_killed_and_restarted(own_api, own_bus, executors) -> None:
    executors.start_executor()
    flaky = executors.start_executor()
    run_ids = await asyncio.gather(*(_submit(own_api, f"#delay=0.2 soak {i}") for i in range(300)))

    async def chaos() -> None:
        nonlocal flaky
        for _ in range(3):
            await asyncio.sleep(1.5)  # chaos cadence, not synchronisation
            await asyncio.to_thread(flaky.kill)
            flaky = await asyncio.to_thread(executors.start_executor)

    chaos_task = asyncio.create_task(chaos())
    records = await asyncio.gather(*(own_bus.wait_record(r, timeout=240) for r in run_ids))
    await chaos_task
    assert {r.status for r in records} == {RunStatus.SUCCEEDED}, {(r.error.code, r.error.message) for r in records if r.error}
    assert all(r.output == f"echo: #delay=0.2 soak {i}" for i, r in enumerate(records))
    terminal_counts = await asyncio.gather(*(own_bus.terminal_events(r) for r in run_ids))
    assert [len(t) for t in terminal_counts] == [1] * len(run_ids)


async def test_falls_back_to_a_thread_when_worker_processes_cannot_start(own_api, own_bus, executors) -> None:
    executor = executors.start_executor(FLOWRELAY_WORKER_START_TIMEOUT_S="0.001")
    assert "falling back to thread isolation" in executor.output()
    run_id = await _submit(own_api, "fallback")
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.isolation == "thread"
    started = (await own_bus.stored_events(run_id))[0]
    assert started.type == EventType.RUN_STARTED and started.data["isolation"] == "thread"


async def test_workers_are_recycled_after_their_run_budget(own_api, own_bus, executors) -> None:
    executor = executors.start_executor(FLOWRELAY_RECYCLE_AFTER_RUNS="2")
    for i in range(4):
        run_id = await _submit(own_api, f"recycle {i}")
        assert (await own_bus.wait_record(run_id, timeout=60)).output == f"echo: recycle {i}"
    await asyncio.to_thread(executor.wait_for, "recycling worker 1", timeout=30)  # the log may trail the record
    await asyncio.to_thread(executor.wait_for, "recycling worker 2", timeout=30)  # the log may trail the record
