"""Worker-pool guarantees of the README's "Execution: isolation, deadlines, delivery",
against real executors (and their real worker processes) on a nats-server of this module's own.

Which worker ran a run is its output: the agent calls the ``worker_pid`` tool and answers
with the result. How often a run called the model comes from the scripted model
(``#count=<token>``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psutil
import pytest
from flowrelay_testkit import (
    Bus,
    count_token,
    executor_pid,
    model_calls,
    one_agent,
    run_body,
)

from flowrelay.stack import ServiceProcess
from flowrelay_contracts import (
    EventType,
    ExecutorCapabilities,
    RunOptions,
    RunRecord,
    RunRequested,
    RunStatus,
    Workflow,
    subjects,
)

pytestmark = pytest.mark.timeout(240)

TOOLS = ["worker_pid", "block", "spin", "sleep_async", "crash_worker", "crash_worker_once"]

#: Asks the agent for the pid of the worker running it, and answers with it.
WHICH_WORKER = "#call=worker_pid {}"

#: What a deadline enforced by cancelling the run in its worker says (``runner.py``) ...
COOPERATIVE = "stopped after"
#: ... and what one enforced by killing the worker says (``pool.py``).
KILLED = "its worker process was killed"


#: The executors of this module's own stack (``own_stack``) offer tinyagent only.
OWN_STACK_ENV = {"FLOWRELAY_FRAMEWORKS": "tinyagent"}



async def _submit(own_api: httpx.AsyncClient, text: str, **options: object) -> str:
    response = await own_api.post("/runs", json=run_body(one_agent(tools=TOOLS), text, **options))
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


async def _worker_of_next_run(own_api: httpx.AsyncClient, bus: Bus) -> int:
    record = await bus.wait_record(await _submit(own_api, WHICH_WORKER), timeout=60)
    assert record.status == RunStatus.SUCCEEDED, record.error
    return int(record.output)


def _workers(executor: ServiceProcess) -> set[int]:
    """Live worker processes of an executor: the children of its fork server."""
    (server,) = [p for p in psutil.Process(executor.pid).children() if "forkserver" in " ".join(p.cmdline())]
    return {p.pid for p in server.children() if p.status() != psutil.STATUS_ZOMBIE}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _running(record: RunRecord) -> bool:
    return record.status == RunStatus.RUNNING


async def _capabilities(bus: Bus, executor: ServiceProcess) -> ExecutorCapabilities:
    """The executor's capabilities entry (its advertiser writes it right after start)."""
    kv = await bus.js.key_value(subjects.EXECUTORS_BUCKET)
    watcher = await kv.watchall()
    try:
        async for entry in watcher:
            if entry is not None and entry.value and entry.key.split("-")[-2] == str(executor.pid):
                return ExecutorCapabilities.model_validate_json(entry.value)
    finally:
        await watcher.stop()
    raise AssertionError("the executor is not advertised")


async def test_a_deadline_first_cancels_the_run_in_its_worker(own_api, own_bus, executors) -> None:
    executor = executors.shared()
    mark = executor.line_count  # its output from here on is this test's
    worker = await _worker_of_next_run(own_api, own_bus)
    run_id = await _submit(own_api, "#delay=30 slow model", timeout_s=1)
    record = await own_bus.wait_record(run_id, timeout=30)
    assert record.status == RunStatus.FAILED and record.error.code == "timeout"
    assert COOPERATIVE in record.error.message and KILLED not in record.error.message
    assert await _worker_of_next_run(own_api, own_bus) == worker, "the worker was not replaced"
    assert "killing worker" not in "".join(executor.output().splitlines(keepends=True)[mark:])


async def test_a_spinning_tool_at_the_deadline_gets_its_worker_killed_and_the_run_a_terminal_event(
    own_api, own_bus, executors
) -> None:
    executor = executors.shared()
    mark = executor.line_count  # its output from here on is this test's
    worker = await _worker_of_next_run(own_api, own_bus)
    run_id = await _submit(own_api, '#call=spin {"seconds": 600}', timeout_s=2)
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "timeout"
    assert KILLED in record.error.message
    (terminal,) = await own_bus.terminal_events(run_id)
    assert terminal.type == EventType.RUN_FAILED
    assert terminal.data["error"]["code"] == "timeout" and KILLED in terminal.data["error"]["message"]
    # the trace says which tool held the worker, although the worker never got to report again
    started = [e.data["tool"] for e in await own_bus.stored_events(run_id) if e.type == EventType.TOOL_STARTED]
    assert started == ["spin"]
    await asyncio.to_thread(executor.wait_for, "killing worker", timeout=30, after=mark)  # the log may trail the record
    replacement = await _worker_of_next_run(own_api, own_bus)
    assert replacement != worker and not _alive(worker)


async def test_other_runs_of_a_worker_killed_at_a_deadline_are_queued_again(
    own_api, own_bus, executors, scripted_model
) -> None:
    executors.shared()  # one worker: both runs share it
    token = count_token()
    bystander = await _submit(own_api, f"#delay=8 #count={token} bystander")
    async for event in own_bus.stream_events(bystander):
        if event.type == EventType.LLM_STARTED:  # its model call is under way
            break
    culprit = await _submit(own_api, '#call=block {"seconds": 600}', timeout_s=1)

    record = await own_bus.wait_record(culprit, timeout=60)
    assert record.error.code == "timeout" and KILLED in record.error.message
    record = await own_bus.wait_record(bystander, timeout=90)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.attempts == 2 and await model_calls(scripted_model, token) == 2
    events = await own_bus.stored_events(bystander)
    assert [e.data["attempt"] for e in events if e.type == EventType.RUN_STARTED] == [1, 2]
    assert len(await own_bus.terminal_events(bystander)) == 1


async def test_workers_setting_runs_that_many_worker_processes_and_spreads_runs_over_them(
    own_api, own_bus, executors
) -> None:
    executor = executors.start_executor(FLOWRELAY_WORKERS="2", FLOWRELAY_SLOTS_PER_WORKER="1")
    assert len(_workers(executor)) == 2
    assert (await _capabilities(own_bus, executor)).slots == 2
    # Both at once: one slot per worker, so each goes to a worker of its own.
    ids = [await _submit(own_api, f"#delay=2 {WHICH_WORKER}") for _ in range(2)]
    records = [await own_bus.wait_record(r, timeout=60) for r in ids]
    assert all(r.status == RunStatus.SUCCEEDED and r.attempts == 1 for r in records), [r.error for r in records]
    assert {int(r.output) for r in records} == _workers(executor)


async def test_slots_per_worker_bounds_the_runs_a_worker_runs_at_once(own_api, own_bus, executors) -> None:
    executor = executors.start_executor(FLOWRELAY_WORKERS="1", FLOWRELAY_SLOTS_PER_WORKER="2")
    assert (await _capabilities(own_bus, executor)).slots == 2
    ids = [await _submit(own_api, f"#delay=2 slot {i}") for i in range(3)]
    first, second, third = [await own_bus.wait_record(r, timeout=60) for r in ids]
    assert all(r.status == RunStatus.SUCCEEDED for r in (first, second, third))
    assert second.started_at < first.finished_at, "two slots: the first two ran side by side"
    assert third.started_at >= min(first.finished_at, second.finished_at), "the third waited for a free slot"


async def test_workers_above_the_rss_limit_are_recycled_after_their_runs_finish(own_api, own_bus, executors) -> None:
    # Every worker is above 64 MB (any-agent alone is more): the first stats poll retires it.
    executor = executors.start_executor(FLOWRELAY_RECYCLE_RSS_MB="64")
    (old,) = _workers(executor)
    in_flight = await _submit(own_api, '#call=sleep_async {"seconds": 12} ' + WHICH_WORKER)
    await asyncio.to_thread(executor.wait_for, r"recycling worker 1 \(pid \d+\): RSS \d+ MB above 64 MB", timeout=60)
    record = await own_bus.wait_record(in_flight, timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 1, "the retiring worker finished its run"
    assert int(record.output) == old
    new = await _worker_of_next_run(own_api, own_bus)
    assert new != old and not _alive(old)


async def test_kill_grace_gives_a_blocked_run_that_long_to_stop_by_itself(own_api, own_bus, executors) -> None:
    executors.start_executor(FLOWRELAY_KILL_GRACE_S="60")
    worker = await _worker_of_next_run(own_api, own_bus)
    run_id = await _submit(own_api, '#call=block {"seconds": 4}', timeout_s=1)
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "timeout"
    assert COOPERATIVE in record.error.message, "stopped once the tool returned, within the grace"
    assert await _worker_of_next_run(own_api, own_bus) == worker


async def test_crash_policy_retry_runs_a_crashed_run_again_on_a_fresh_worker(
    own_api, own_bus, executors, tmp_path: Path
) -> None:
    executor = executors.start_executor(FLOWRELAY_WORKER_CRASH_POLICY="retry")
    marker = tmp_path / "crashed-once"
    run_id = await _submit(own_api, f'#call=crash_worker_once {{"marker": "{marker}"}}',
                           retry={"attempts": 2, "initial_backoff_s": 0})
    record = await own_bus.wait_record(run_id, timeout=90)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.output == "survived" and record.attempts == 2
    assert [r.error.code for r in record.retries] == ["worker_crashed"]
    await asyncio.to_thread(executor.wait_for, "died", timeout=30)  # the log may trail the record
    assert len(await own_bus.terminal_events(run_id)) == 1


async def test_crash_policy_retry_gives_up_after_the_runs_attempts(own_api, own_bus, executors) -> None:
    executors.start_executor(FLOWRELAY_WORKER_CRASH_POLICY="retry")
    run_id = await _submit(own_api, "#call=crash_worker {}", retry={"attempts": 2, "initial_backoff_s": 0})
    record = await own_bus.wait_record(run_id, timeout=90)
    assert record.status == RunStatus.FAILED and record.error.code == "worker_crashed"
    assert record.attempts == 2 and len(record.retries) == 1


async def test_crash_policy_fail_fails_a_crashed_run_at_once(own_api, own_bus, executors, tmp_path: Path) -> None:
    """A run that asks for retries still gets none for a crash: the deployment said so."""
    executors.start_executor(FLOWRELAY_WORKER_CRASH_POLICY="fail")
    marker = tmp_path / "crashed-once"
    run_id = await _submit(own_api, f'#call=crash_worker_once {{"marker": "{marker}"}}',
                           retry={"attempts": 2, "initial_backoff_s": 0})
    record = await own_bus.wait_record(run_id, timeout=90)
    assert record.status == RunStatus.FAILED and record.error.code == "worker_crashed"
    assert record.attempts == 1 and record.retries == []
    assert await _worker_of_next_run(own_api, own_bus) > 0, "the worker was replaced"


async def test_thread_isolation_runs_agents_on_a_thread_and_still_fails_a_blocked_run_at_its_deadline(
    own_api, own_bus, executors
) -> None:
    executors.start_executor(FLOWRELAY_ISOLATION="thread")
    record = await own_bus.wait_record(await _submit(own_api, WHICH_WORKER), timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.isolation == "thread"
    assert int(record.output) == executor_pid(record), "the agent ran inside the executor process"
    started = (await own_bus.stored_events(record.run_id))[0]
    assert started.type == EventType.RUN_STARTED and started.data["isolation"] == "thread"

    # The thread cannot be killed: the run still ends at its deadline (the thread stays busy).
    blocked = await own_bus.wait_record(await _submit(own_api, '#call=block {"seconds": 600}', timeout_s=1), timeout=60)
    assert blocked.status == RunStatus.FAILED and blocked.error.code == "timeout"
    assert "its thread could not be killed" in blocked.error.message
    assert [e.type for e in await own_bus.terminal_events(blocked.run_id)] == [EventType.RUN_FAILED]


async def test_executor_defaults_caps_output_limits_and_default_model_endpoint(
    own_api, own_bus, executors, scripted_model
) -> None:
    """Requests published straight to NATS carry no resolved options: the executor's own
    defaults and caps apply. Its default model is reached at FLOWRELAY_DEFAULT_API_BASE with
    FLOWRELAY_DEFAULT_API_KEY (no provider key is set: without it the run would fail)."""
    executor = executors.start_executor(
        FLOWRELAY_DEFAULT_TIMEOUT_S="2", FLOWRELAY_MAX_TIMEOUT_S="3", FLOWRELAY_DEFAULT_MAX_TURNS="2",
        FLOWRELAY_MAX_INLINE_OUTPUT_BYTES="1024", FLOWRELAY_MAX_OUTPUT_BYTES="3000",
        FLOWRELAY_MCP_STDIO_ALLOWLIST="flowrelay-test-mcp", FLOWRELAY_DEFAULT_MODEL="openai:gpt-4o-mini",
        FLOWRELAY_DEFAULT_API_BASE=scripted_model, FLOWRELAY_DEFAULT_API_KEY="sk-default-endpoint-key-0123456789",
    )

    async def straight(text: str, **options: object) -> RunRecord:
        run_id = f"direct-{count_token()}"
        request = RunRequested(run_id=run_id, workflow=Workflow.model_validate(one_agent(tools=TOOLS)), input=text,
                               options=RunOptions(**options))
        await own_bus.js.publish(subjects.run_requested(own_bus.tenant), request.model_dump_json().encode(),
                              headers={subjects.MSG_ID_HEADER: run_id})
        return await own_bus.wait_record(run_id, timeout=60)

    record = await straight("plain")
    assert record.status == RunStatus.SUCCEEDED and record.output == "echo: plain", record.error
    record = await straight("#delay=60 no deadline given")
    assert record.error.code == "timeout" and "within its 2 s deadline" in record.error.message
    record = await straight("#delay=60 asks for more", timeout_s=100)
    assert record.error.code == "timeout" and "within its 3 s deadline" in record.error.message
    record = await straight('#loop=worker_pid {}')
    assert record.error.code == "max_turns_exceeded" and "made 2 LLM calls" in record.error.message
    record = await straight("m" * 2000)  # echoed: above the inline limit, within the output limit
    assert record.status == RunStatus.SUCCEEDED and record.output is None and record.output_ref is not None
    record = await straight("l" * 4000)
    assert record.error.code == "output_too_large" and "FLOWRELAY_MAX_OUTPUT_BYTES" in record.error.message

    assert (await _capabilities(own_bus, executor)).mcp_stdio_commands == ["flowrelay-test-mcp"]
    allowed = [{"type": "mcp", "command": "flowrelay-test-mcp"}]
    response = await own_api.post("/runs", json=run_body(one_agent(tools=allowed), "allowed"))
    assert response.status_code == 202, response.text  # the API accepts what a live executor allows
    await own_bus.wait_record(response.json()["run_id"], timeout=60)


async def test_stream_interval_batches_the_fragments_of_a_paced_answer(own_api, own_bus, executors) -> None:
    """100 tokens 20 ms apart take two seconds: with the default 100 ms interval they come as
    a dozen llm.delta events or more, within a 5 s interval (the most allowed) as one, sent
    when the call ends."""
    executors.start_executor(FLOWRELAY_STREAM_INTERVAL_MS="5000")
    run_id = await _submit(own_api, "#tokens=100 #pace=20", stream_tokens=True)
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED, record.error
    deltas = [e for e in await own_bus.stored_events(run_id) if e.type == EventType.LLM_DELTA]
    assert len(deltas) == 1 and deltas[0].data["text"] == record.output
