"""Delivery guarantees of the README's "Execution: isolation, deadlines, delivery", each
against real executors on a nats-server of this module's own.

How often JetStream handed a request out is read from the shared consumer itself
(``delivered.consumer_seq`` counts every delivery, redeliveries included), how often a run
called the model from the scripted model (``#count=<token>``), and who ran it from the record.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from flowrelay_testkit import (
    count_token,
    executor_pid,
    model_calls,
    one_agent,
    run_body,
)

from flowrelay_bus.events import RunEventLog
from flowrelay_contracts import EventType, RunRecord, RunRequested, RunStatus, Workflow, subjects
from flowrelay_contracts.messages import utcnow

pytestmark = pytest.mark.timeout(240)

#: The test kit's FLOWRELAY_ACK_WAIT_S.
ACK_WAIT_S = 4.0


#: The executors of this module's own stack (``own_stack``) offer tinyagent only.
OWN_STACK_ENV = {"FLOWRELAY_FRAMEWORKS": "tinyagent"}



async def _submit(own_api: httpx.AsyncClient, text: str, **options: object) -> str:
    response = await own_api.post("/runs", json=run_body(one_agent(), text, **options))
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


def _running(record: RunRecord) -> bool:
    return record.status == RunStatus.RUNNING


async def test_heartbeats_keep_a_run_longer_than_ack_wait_with_its_first_delivery(
    own_api, own_bus, executors, scripted_model
) -> None:
    executors.shared()
    token = count_token()
    consumer = await own_bus.run_consumer()
    assert consumer.config.ack_wait == ACK_WAIT_S, "FLOWRELAY_ACK_WAIT_S is the shared consumer's ack_wait"
    before = consumer.delivered.consumer_seq
    run_id = await _submit(own_api, f"#delay={3 * ACK_WAIT_S:g} #count={token} long")
    record = await own_bus.wait_record(run_id, timeout=90)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.attempts == 1
    settled = await own_bus.wait_queue_settled()
    assert settled.delivered.consumer_seq - before == 1, "the request was delivered again while it ran"
    assert await model_calls(scripted_model, token) == 1
    assert [e.type for e in await own_bus.stored_events(run_id)].count(EventType.RUN_STARTED) == 1


async def test_a_request_delivered_twice_runs_once_and_ends_once(own_bus, executors, scripted_model) -> None:
    executors.shared()
    token = count_token()
    request = RunRequested(run_id=f"twice-{token}", workflow=Workflow.model_validate(one_agent()),
                           input=f"#delay=2 #count={token} twice")
    subject = subjects.run_requested(own_bus.tenant)
    await own_bus.js.publish(subject, request.model_dump_json().encode(), headers={subjects.MSG_ID_HEADER: "first"})
    await own_bus.wait_record(request.run_id, terminal=False, predicate=_running)
    await own_bus.js.publish(subject, request.model_dump_json().encode(), headers={subjects.MSG_ID_HEADER: "second"})

    record = await own_bus.wait_record(request.run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 1
    await own_bus.wait_queue_settled()  # the duplicate was taken too, and acknowledged
    assert await model_calls(scripted_model, token) == 1
    assert len(await own_bus.terminal_events(request.run_id)) == 1


async def test_a_lost_terminal_event_is_republished_from_the_record(own_bus, executors) -> None:
    """The holder stored the outcome and died before announcing it: whoever gets the request
    again announces the stored end (once), without running the agent again."""
    executors.shared()
    run_id = f"unannounced-{count_token()}"
    now = utcnow()
    await own_bus.store.create(RunRecord(
        run_id=run_id, status=RunStatus.SUCCEEDED, input="x", output="stored before the crash", attempts=1,
        executor_id="gone-1-abc", started_at=now, finished_at=now,
    ))
    await RunEventLog(own_bus.js, own_bus.tenant, run_id).emit(EventType.RUN_STARTED, {"attempt": 1})
    request = RunRequested(run_id=run_id, workflow=Workflow.model_validate(one_agent()), input="x")
    for copy in ("redelivered", "and again"):
        await own_bus.js.publish(subjects.run_requested(own_bus.tenant), request.model_dump_json().encode(),
                              headers={subjects.MSG_ID_HEADER: copy})
        events = await own_bus.events(run_id, timeout=60)
        assert [(e.seq, e.type) for e in events] == [(1, EventType.RUN_STARTED), (2, EventType.RUN_COMPLETED)]
        assert events[-1].data["output"] == "stored before the crash" and events[-1].data["status"] == "succeeded"
        await own_bus.wait_queue_settled()
    assert len(await own_bus.stored_events(run_id)) == 2
    record = await own_bus.store.get(run_id)
    assert record.attempts == 1 and record.executor_id == "gone-1-abc", "the run was not claimed again"


async def test_an_executor_fetches_only_as_many_requests_as_it_has_free_slots(own_api, own_bus, executors) -> None:
    """A busy executor leaves the next request in the queue, where an idle one takes it at
    once (competing consumers: start more to scale)."""
    busy = executors.start_executor(FLOWRELAY_SLOTS_PER_WORKER="1")
    before = (await own_bus.run_consumer()).delivered.consumer_seq
    long_run = await _submit(own_api, "#delay=60 hold the only slot")
    await own_bus.wait_record(long_run, terminal=False, predicate=_running)
    quick = await _submit(own_api, "quick")
    idle = executors.start_executor(FLOWRELAY_SLOTS_PER_WORKER="1")

    record = await own_bus.wait_record(quick, timeout=90)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 1
    assert executor_pid(record) == idle.pid
    assert (await own_bus.store.get(long_run)).status == RunStatus.RUNNING, "it took the slot of the long run"
    assert (await own_bus.run_consumer()).delivered.consumer_seq - before == 2, (
        "the busy executor fetched the request it had no slot for (it was delivered again)"
    )
    assert executor_pid(await own_bus.store.get(long_run)) == busy.pid
    await own_api.post(f"/runs/{long_run}/cancel")
    assert (await own_bus.wait_record(long_run, timeout=30)).status == RunStatus.CANCELLED


async def test_sigterm_hands_back_what_outlives_the_drain_grace_and_takes_no_new_work(
    own_api, own_bus, executors, scripted_model
) -> None:
    # A long ack_wait: a run that was not handed back would wait a minute for redelivery.
    slow_redelivery = {"FLOWRELAY_ACK_WAIT_S": "90", "FLOWRELAY_DRAIN_GRACE_S": "1"}
    draining = executors.start_executor(**slow_redelivery)
    token = count_token()
    unfinished = await _submit(own_api, f"#delay=6 #count={token} outlives the drain")
    await own_bus.wait_record(unfinished, terminal=False, predicate=_running)

    mark = draining.line_count
    draining.process.terminate()  # SIGTERM
    await asyncio.to_thread(draining.wait_for, r"draining: 1 runs in flight", after=mark, timeout=30)
    arrived_during_drain = await _submit(own_api, "submitted while draining")
    assert await asyncio.to_thread(draining.process.wait, 60) == 0
    assert (await own_bus.store.get(arrived_during_drain)).status == RunStatus.QUEUED, "a draining executor took new work"

    successor = executors.start_executor(**slow_redelivery)
    record = await own_bus.wait_record(unfinished, timeout=45)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 2
    assert executor_pid(record) == successor.pid
    assert await model_calls(scripted_model, token) == 2, "cut at the grace, then run again in full"
    late = await own_bus.wait_record(arrived_during_drain, timeout=45)
    assert late.status == RunStatus.SUCCEEDED and late.attempts == 1 and executor_pid(late) == successor.pid
    assert len(await own_bus.terminal_events(unfinished)) == 1


async def test_sigterm_lets_in_flight_runs_finish_within_the_drain_grace(own_api, own_bus, executors) -> None:
    executor = executors.start_executor(FLOWRELAY_DRAIN_GRACE_S="60")
    run_id = await _submit(own_api, "#delay=3 drain me")
    await own_bus.wait_record(run_id, terminal=False, predicate=_running)
    assert await asyncio.to_thread(executor.terminate, 90) == 0
    record = await own_bus.store.get(run_id)
    assert record is not None and record.status == RunStatus.SUCCEEDED and record.attempts == 1
    assert executor_pid(record) == executor.pid and len(await own_bus.terminal_events(run_id)) == 1


async def test_a_request_delivered_more_than_max_deliver_times_fails_and_is_dead_lettered(
    own_api, own_bus, executors, scripted_model
) -> None:
    """No outcome stored after FLOWRELAY_MAX_DELIVER deliveries: the run fails naming the
    setting, the request goes to the dead-letter stream, and nothing runs it again."""
    first = executors.start_executor(FLOWRELAY_DRAIN_GRACE_S="0")
    info = await own_bus.run_consumer()
    assert info.config.max_deliver == -1, "JetStream must never give up on a request by itself"
    token = count_token()
    run_id = await _submit(own_api, f"#delay=30 #count={token} handed back")
    await own_bus.wait_record(run_id, terminal=False, predicate=_running)
    assert await asyncio.to_thread(first.terminate, 60) == 0  # hands it back: delivery 2 is next

    executors.start_executor(FLOWRELAY_MAX_DELIVER="1")
    record = await own_bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED and record.error.code == "internal_error"
    assert "FLOWRELAY_MAX_DELIVER=1" in record.error.message
    assert record.attempts == 1, "it was not claimed again"
    letters = await own_bus.js.pull_subscribe(subjects.DEADLETTER, stream=subjects.DEADLETTER_STREAM)
    reasons = []
    while not any(r.get("run_id") == run_id for r in reasons):
        reasons += [json.loads(m.data) for m in await letters.fetch(1, timeout=30)]
    letter = next(r for r in reasons if r.get("run_id") == run_id)
    assert "FLOWRELAY_MAX_DELIVER=1" in letter["reason"] and letter["tenant"] == own_bus.tenant
    await own_bus.wait_queue_settled()
    assert await model_calls(scripted_model, token) == 1
    terminal = await own_bus.terminal_events(run_id)
    assert [e.type for e in terminal] == [EventType.RUN_FAILED]
