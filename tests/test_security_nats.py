"""NATS least privilege against the real server and stack: who may connect, read and write what.

The session's nats-server runs the generated config (flowrelay.natsconfig): one user per
service, tenant users confined to their own subjects, no anonymous access. Each attempt
below is one an attacker on the network would make (the issue's reproductions: read other
runs, submit, tamper with records, fake an executor, purge the dead letters).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from flowrelay_testkit import Stack, one_agent, run_body
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import NatsUser, Role
from flowrelay_bus.client import FlowrelayClient
from flowrelay_bus.events import follow
from flowrelay_contracts import EventType, RunRequested, RunStatus, subjects

#: How long a refused publish or subscription gets to report its permissions violation.
VIOLATION_WAIT_S = 5.0


class Connection:
    """A NATS connection that collects the server's permission-violation errors."""

    def __init__(self) -> None:
        self.nc: Client | None = None
        self.violations: asyncio.Queue[str] = asyncio.Queue()

    async def open(self, url: str, user: NatsUser | None, **options: Any) -> Client:
        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc).lower():
                self.violations.put_nowait(str(exc))

        credentials = {"user": user.name, "password": user.password} if user else {}
        if user is not None and user.tenant is not None:
            options.setdefault("inbox_prefix", subjects.tenant_inbox_prefix(user.tenant).encode())
        # named apart from the services, whose refusals the suite counts as failures
        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0,
                                     name="probe", **credentials, **options)
        return self.nc

    async def refused(self, fragment: str) -> str:
        """Wait for the violation naming ``fragment`` (case-insensitive)."""
        async with asyncio.timeout(VIOLATION_WAIT_S):
            while True:
                message = await self.violations.get()
                if fragment.lower() in message.lower():
                    return message


@pytest.fixture
async def connect(nats_server: natsserver.NatsServer) -> AsyncIterator[Any]:
    opened: list[Connection] = []

    async def make(user: NatsUser | None, **options: Any) -> Connection:
        connection = Connection()
        await connection.open(nats_server.url, user, **options)
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        if connection.nc is not None and not connection.nc.is_closed:
            await connection.nc.close()


def service_user(secrets: Secrets, role: Role) -> NatsUser:
    return NatsUser(name=role.value, password=secrets.password(role.value), role=role)


def tenant_user(nats_server: natsserver.NatsServer, secrets: Secrets, tenant: str, *, submit: bool = False) -> NatsUser:
    """A tenant's NATS user, made known to the running server (config reload)."""
    user = secrets.add_tenant_user(tenant, submit=submit)
    natsserver.refresh_users(nats_server.store_dir, secrets)
    return user


async def accepted(url: str, user: NatsUser) -> None:
    """Wait until the reloaded server accepts ``user`` (a reload takes a moment)."""
    async with asyncio.timeout(10):
        while True:
            try:
                nc = await nats.connect(url, user=user.name, password=user.password, allow_reconnect=False,
                                        max_reconnect_attempts=0)
            except nats.errors.Error:
                await asyncio.sleep(0.05)
                continue
            await nc.close()
            return


async def submit_as(stack: Stack, api: httpx.AsyncClient, tenant: str, text: str) -> str:
    key = (await api.post("/keys", json={"tenant": tenant})).json()["key"]
    async with httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}) as http:
        response = await http.post("/runs", json=run_body(one_agent(), text))
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


# -- who may connect ----------------------------------------------------------------------------


async def test_anonymous_and_wrong_password_connections_are_refused(nats_server: natsserver.NatsServer, secrets: Secrets) -> None:
    for credentials in ({}, {"user": "api", "password": "wrong"}, {"user": "nobody", "password": "x"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0, **credentials)


# -- tenant subscribers ------------------------------------------------------------------------


async def test_a_tenant_user_reads_its_runs_live_and_from_replay_and_nothing_else(
    nats_server: natsserver.NatsServer, secrets: Secrets, stack: Stack, api: httpx.AsyncClient, connect
) -> None:
    mine, theirs = f"acme-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    reader = tenant_user(nats_server, secrets, mine)
    await accepted(nats_server.url, reader)
    tenant = await connect(reader)
    nc = tenant.nc

    # live: subscribed before the run exists, sees every event of it
    live: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_live(msg: Any) -> None:
        live.put_nowait(msg.data)

    await nc.subscribe(subjects.tenant_events(mine), cb=on_live)
    await nc.flush()
    own_run = await submit_as(stack, api, mine, "for acme")
    other_run = await submit_as(stack, api, theirs, "not for acme")
    seen = []
    async with asyncio.timeout(30):
        while not seen or seen[-1]["type"] != EventType.RUN_COMPLETED:
            seen.append(json.loads(await live.get()))
    assert {e["run_id"] for e in seen} == {own_run}

    # replay through a consumer confined to the tenant's subjects (what FlowrelayClient does)
    replayed = [e async for e in follow(nc, mine, own_run, history="consumer") if e is not None]
    assert [e.seq for e in replayed] == list(range(1, len(replayed) + 1)) and replayed[-1].type.terminal

    # another tenant's events: refused by subscription ...
    await nc.subscribe(subjects.tenant_events(theirs))
    assert "subscription" in await tenant.refused(f"flowrelay.events.{theirs}")
    await nc.subscribe("flowrelay.events.>")
    await tenant.refused("flowrelay.events.>")
    await nc.subscribe("_INBOX.>")  # everyone else's replies, other tenants' records among them
    await tenant.refused("_inbox.>")

    # ... and by every way of making a consumer read them
    js = nc.jetstream()
    other_subject = subjects.run_events(theirs, other_run)

    def consumer(filter_subject: str | None = None, filters: list[str] | None = None) -> ConsumerConfig:
        return ConsumerConfig(name=f"x{uuid.uuid4().hex[:8]}", filter_subject=filter_subject, filter_subjects=filters,
                              deliver_subject=nc.new_inbox(), ack_policy=AckPolicy.NONE,
                              deliver_policy=DeliverPolicy.ALL, inactive_threshold=5)

    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):  # the create request itself is refused
        await js.add_consumer(subjects.EVENTS_STREAM, consumer(other_subject), timeout=1)
    await tenant.refused("consumer.create")
    own_subject = subjects.run_events(mine, own_run)
    mismatch = {"stream_name": subjects.EVENTS_STREAM, "config": consumer(other_subject).as_dict()}
    answer = await nc.request(f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.sneaky.{own_subject}",
                              json.dumps(mismatch).encode(), timeout=5)
    assert json.loads(answer.data)["error"]["err_code"] == 10131  # filter does not match the subject
    multi = {"stream_name": subjects.EVENTS_STREAM, "config": consumer(None, [own_subject, other_subject]).as_dict()}
    answer = await nc.request(f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.sneaky2.{own_subject}",
                              json.dumps(multi).encode(), timeout=5)
    assert json.loads(answer.data)["error"]["err_code"] == 10137  # several filters cannot be confined
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.get_msg(subjects.EVENTS_STREAM, seq=1, subject=other_subject, next=True, direct=True)
    await tenant.refused("direct.get")

    # records: its own by direct get, no one else's
    own = await js.get_last_msg(f"KV_{subjects.RUNS_BUCKET}", subjects.run_record_subject(mine, own_run), direct=True)
    assert json.loads(own.data)["tenant"] == mine
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.get_last_msg(f"KV_{subjects.RUNS_BUCKET}", subjects.run_record_subject(theirs, other_run), direct=True)
    await tenant.refused(theirs)


async def test_a_tenant_user_cannot_tamper_with_anything(
    nats_server: natsserver.NatsServer, secrets: Secrets, connect
) -> None:
    reader = tenant_user(nats_server, secrets, f"mallory-{uuid.uuid4().hex[:6]}")
    await accepted(nats_server.url, reader)
    tenant = await connect(reader)
    attempts = {
        "$KV.flowrelay_runs.default.SOMERUN": b'{"output": "TAMPERED", "cost_usd": 999}',  # overwrite a record
        "$KV.flowrelay_executors.fake": b'{"executor_id": "fake", "tools": ["rm_rf"]}',  # a fake executor
        subjects.run_requested("default"): b"{}",  # submit for someone
        subjects.run_requested(reader.tenant): b"{}",  # read-only: not even for itself
        f"$JS.API.STREAM.PURGE.{subjects.DEADLETTER_STREAM}": b"",
        f"$JS.API.STREAM.DELETE.{subjects.RUNS_STREAM}": b"",
        "$JS.API.CONSUMER.CREATE.KV_flowrelay_runs": b"{}",  # a watcher over every record
    }
    for subject, payload in attempts.items():
        await tenant.nc.publish(subject, payload)
        await tenant.refused(subject)


async def test_a_tenant_client_submits_follows_and_cancels_over_nats_for_itself_only(
    nats_server: natsserver.NatsServer, secrets: Secrets, stack: Stack, api: httpx.AsyncClient, connect
) -> None:
    tenant = f"backend-{uuid.uuid4().hex[:6]}"
    user = tenant_user(nats_server, secrets, tenant, submit=True)
    await accepted(nats_server.url, user)
    async with await FlowrelayClient.connect(nats_server.url, tenant=tenant, user=user.name, password=user.password) as client:
        run_id = await client.submit(one_agent(), "over nats")
        events = [event async for event in client.events(run_id)]
        assert events[0].type == EventType.RUN_STARTED and events[-1].type == EventType.RUN_COMPLETED
        record = await client.result(run_id)
        assert record.status == RunStatus.SUCCEEDED and record.output == "echo: over nats" and record.tenant == tenant
        # the API lists it for the tenant's key: the executor indexed the NATS-submitted run
        key = (await api.post("/keys", json={"tenant": tenant, "scopes": ["read"]})).json()["key"]
        async with httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}) as http:
            assert run_id in [r["run_id"] for r in (await http.get("/runs")).json()["runs"]]

        slow = await client.submit(one_agent(), "#delay=20 cancel me over nats")
        async for event in client.events(slow):
            if event.type == EventType.RUN_STARTED:
                await client.cancel(slow)
            if event.type.terminal:
                assert event.type == EventType.RUN_CANCELLED
                break
    attacker = await connect(user)
    await attacker.nc.publish(subjects.run_requested("default"), b"{}")
    await attacker.refused(subjects.run_requested("default"))
    await attacker.nc.publish(subjects.run_cancel("default", "SOMERUN"), b"{}")
    await attacker.refused("flowrelay.runs.cancel.default")


async def test_a_run_id_of_another_tenant_submitted_over_nats_is_refused(
    nats_server: natsserver.NatsServer, secrets: Secrets, stack: Stack, api: httpx.AsyncClient, bus
) -> None:
    victim_run = await submit_as(stack, api, "default", "the original")
    await bus.wait_record(victim_run)
    tenant = f"copycat-{uuid.uuid4().hex[:6]}"
    user = tenant_user(nats_server, secrets, tenant, submit=True)
    await accepted(nats_server.url, user)
    async with await FlowrelayClient.connect(nats_server.url, tenant=tenant, user=user.name, password=user.password) as client:
        # A hostile client sets its own message id (the run id would be dropped as a duplicate
        # inside JetStream's window, which is no protection after it).
        request = RunRequested(run_id=victim_run, tenant=tenant, workflow=one_agent(), input="hijack")
        await client._js.publish(subjects.run_requested(tenant), request.model_dump_json().encode(),
                                 headers={subjects.MSG_ID_HEADER: uuid.uuid4().hex})
        letters = await bus.js.pull_subscribe(subjects.DEADLETTER, stream=subjects.DEADLETTER_STREAM)
        try:
            async with asyncio.timeout(30):
                while True:
                    for msg in await letters.fetch(10, timeout=5):
                        await msg.ack()
                        letter = json.loads(msg.data)
                        if letter.get("run_id") == victim_run:
                            assert "already used" in letter["reason"] and letter["tenant"] == tenant
                            break
                    else:
                        continue
                    break
        finally:
            await letters.unsubscribe()
    original = await bus.store.get(victim_run)
    assert original.tenant == "default" and original.output == "echo: the original"


# -- the services' own users ---------------------------------------------------------------------


@pytest.mark.parametrize(("role", "subject"), [
    (Role.EXECUTOR, "$KV.flowrelay_api_keys.evil"),  # only the API may write keys
    (Role.EXECUTOR, f"$JS.API.DIRECT.GET.KV_{subjects.API_KEYS_BUCKET}"),  # ... or read them
    (Role.EXECUTOR, subjects.run_requested("default")),  # executors take runs, they do not submit
    (Role.SUGGESTER, "$KV.flowrelay_executors.fake"),
    (Role.SUGGESTER, subjects.run_requested("default")),
    (Role.API, "$KV.flowrelay_executors.fake"),  # only executors advertise
    (Role.API, f"$JS.API.STREAM.PURGE.{subjects.DEADLETTER_STREAM}"),  # nobody but the operator purges
    (Role.API, f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}"),
    (Role.SUGGESTER, f"$JS.API.CONSUMER.MSG.NEXT.{subjects.RUNS_STREAM}.{subjects.EXECUTORS_CONSUMER}"),
])
async def test_each_service_user_may_do_only_its_own_work(secrets: Secrets, connect, role: Role, subject: str) -> None:
    service = await connect(service_user(secrets, role))
    await service.nc.publish(subject, b"{}")
    await service.refused(subject)


def test_service_users_hit_no_permission_violation_while_the_suite_runs(nats_server: natsserver.NatsServer, session_root) -> None:
    """Whatever ran so far through the shared stack, its services stayed inside their permissions.

    (The session fixture checks the whole log again at teardown.)"""
    log = (session_root / "logs" / "nats.log").read_text()
    assert natsserver.permission_violations(log, users=("api", "executor", "suggester"), client_prefix="flowrelay-") == []
