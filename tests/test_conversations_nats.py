"""Threads, token streaming and ask_human for a backend on NATS alone (``FlowrelayClient``
with a tenant's ``client-<T>`` user): the same behaviour as over HTTP, within the tenant's
permissions (the session fails on any violation by a service; a refusal of the client shows
as an error here)."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import nats.errors
import pytest
from flowrelay_testkit import Bus, one_agent

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import NatsUser
from flowrelay_bus.client import FlowrelayClient
from flowrelay_bus.events import replay
from flowrelay_contracts import EventType, RunStatus, subjects

WORKFLOW = one_agent(name="chat", instructions="Chat.", tools=["ask_human"])


async def client_user(nats_server: natsserver.NatsServer, secrets: Secrets, tenant: str) -> NatsUser:
    user = secrets.add_tenant_user(tenant, submit=True)
    natsserver.refresh_users(nats_server.store_dir, secrets)
    async with asyncio.timeout(10):  # the reloaded server accepts the user a moment later
        while True:
            try:
                nc = await nats.connect(nats_server.url, user=user.name, password=user.password,
                                        allow_reconnect=False, max_reconnect_attempts=0)
            except nats.errors.Error:
                await asyncio.sleep(0.05)
                continue
            await nc.close()
            return user


@pytest.fixture
async def client(nats_server: natsserver.NatsServer, secrets: Secrets, stack) -> FlowrelayClient:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    user = await client_user(nats_server, secrets, tenant)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async with await FlowrelayClient.connect(nats_server.url, tenant=tenant, user=user.name, password=user.password,
                                             error_cb=on_error) as connected:
        yield connected
    assert not [e for e in errors if "permissions violation" in e.lower()], errors


async def test_a_nats_client_chats_on_a_thread_with_streamed_text(client: FlowrelayClient) -> None:
    thread_id = await client.create_thread(title="over nats")
    first = await client.submit(WORKFLOW, "my name is Grace", thread_id=thread_id)
    assert (await client.result(first)).output == "echo: my name is Grace"

    second = await client.submit(WORKFLOW, "#recall", thread_id=thread_id, options={"stream_tokens": True})
    streamed = "".join([text async for text in client.text(second)])
    record = await client.result(second)
    assert record.status == RunStatus.SUCCEEDED and record.thread_id == thread_id
    assert streamed == record.output == "recall: user: my name is Grace | assistant: echo: my name is Grace"

    turns = await client.turns(thread_id)
    assert [t.run_id for t in turns] == [first, second]
    assert turns[1].messages[0] == {"role": "user", "content": "#recall"}
    thread = await client.thread(thread_id)
    assert thread is not None and thread.title == "over nats"
    assert [r.status for r in thread.runs] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED]


async def test_a_nats_client_answers_a_question(client: FlowrelayClient) -> None:
    text = "#call=ask_human " + json.dumps({"question": "Deploy now?", "choices": ["yes", "no"]})
    run_id = await client.submit(WORKFLOW, text)
    async for event in client.events(run_id):
        if event.type == EventType.RUN_WAITING:
            asked = event.data
            break
    assert asked["question"] == "Deploy now?"

    refused = await client.answer(run_id, "maybe")
    assert refused["accepted"] is False and refused["code"] == "invalid_answer" and refused["field"] == "answer"
    taken = await client.answer(run_id, "no", wait_id=asked["wait_id"])
    assert taken == {"accepted": True, "run_id": run_id, "status": "queued", "wait_id": asked["wait_id"]}
    assert (await client.result(run_id)).output == "no"
    again = await client.answer(run_id, "yes")
    assert again["accepted"] is False and again["code"] == "not_waiting"


async def test_a_second_run_on_a_busy_thread_over_nats_fails_naming_the_busy_run(client: FlowrelayClient, bus: Bus) -> None:
    thread_id = await client.create_thread()
    slow = await client.submit(WORKFLOW, "#delay=600 slowly", thread_id=thread_id)
    bus.tenant = client.tenant
    bus.store.tenant = client.tenant
    await bus.wait_record(slow, predicate=lambda r: r.status == RunStatus.RUNNING)
    second = await client.submit(WORKFLOW, "me too", thread_id=thread_id)
    refused = await client.result(second)
    assert refused.status == RunStatus.FAILED and refused.error.code == "invalid_request"
    assert slow in refused.error.message and "one run at a time" in refused.error.message
    await client.cancel(slow)
    assert (await client.result(slow)).status == RunStatus.CANCELLED


async def test_a_client_cannot_read_another_tenants_thread(nats_server, secrets, stack) -> None:
    mine, theirs = f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"
    me, them = await client_user(nats_server, secrets, mine), await client_user(nats_server, secrets, theirs)
    async with await FlowrelayClient.connect(nats_server.url, tenant=theirs, user=them.name, password=them.password) as other:
        thread_id = await other.create_thread(title="theirs")
        run_id = await other.submit(WORKFLOW, "private", thread_id=thread_id)
        await other.result(run_id)
        assert len(await other.turns(thread_id)) == 1

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    nc = await nats.connect(nats_server.url, user=me.name, password=me.password, name="probe", error_cb=on_error,
                            inbox_prefix=subjects.tenant_inbox_prefix(mine).encode(), allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=2)
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await js.get_last_msg(f"KV_{subjects.THREADS_BUCKET}", subjects.thread_record_subject(theirs, thread_id),
                                  direct=True)
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await replay(nc, subjects.THREADS_STREAM, subjects.thread_turns(theirs, thread_id))
        with pytest.raises((TimeoutError, nats.errors.Error)):  # nor write another tenant's thread record
            await js.publish(subjects.thread_record_subject(theirs, thread_id), b"{}")
    finally:
        await nc.close()
    assert sum("permissions violation" in v for v in violations) >= 3
