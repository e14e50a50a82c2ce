"""Broker restarts: on the same store a run in flight survives (nothing lost or doubled); on
an empty store the next start of the services declares the topology again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from flowrelay_testkit import Bus, Stack, free_port, model_calls, one_agent, run_body

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role
from flowrelay.natsserver import NatsServer
from flowrelay_bus import topology
from flowrelay_bus.events import RunEventLog, follow
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import EventType, RunStatus, TraceEvent, subjects
from flowrelay_contracts.tenants import DEFAULT_TENANT


@dataclass
class Deployment:
    root: Path
    port: int
    secrets: Secrets
    server: NatsServer
    stack: Stack

    def start_server(self, store: str) -> None:
        self.server = natsserver.start_secure(self.root / store, self.secrets, port=self.port,
                                              log_file=self.root / "logs" / f"{store}.log")


@pytest.fixture(scope="module")
def deployment(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("restart")
    port = free_port()
    secrets = Secrets.ensure(root / "secrets")
    server = natsserver.start_secure(root / "nats", secrets, port=port, log_file=root / "logs" / "nats.log")
    stack = Stack(nats_url=server.url, scripted_url=scripted_model, root=root, secrets=secrets,
                  FLOWRELAY_FRAMEWORKS="tinyagent")
    deployment = Deployment(root=root, port=port, secrets=secrets, server=server, stack=stack)
    try:
        stack.start_api()
        stack.start_suggester()
        stack.start_executor()
        yield deployment
    finally:
        deployment.stack.stop()
        deployment.server.stop()


async def test_runs_survive_a_broker_restart(deployment: Deployment, scripted_model: str) -> None:
    stack = deployment.stack
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        bus = await Bus.connect(deployment.server.url, deployment.secrets)
        try:
            token = uuid.uuid4().hex[:16]
            text = f"#delay=2 #count={token} across the restart"
            before = (await api.post("/runs", json=run_body(one_agent(), text))).json()["run_id"]
            await bus.wait_record(before, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)

            await asyncio.to_thread(deployment.server.stop)
            await asyncio.to_thread(deployment.start_server, "nats")  # the same store

            record = await bus.wait_record(before, timeout=90)
            assert record.status == RunStatus.SUCCEEDED
            assert record.output == f"echo: {text}"
            assert record.attempts == 1, "the run was claimed again after the restart"
            assert await model_calls(scripted_model, token) == 1, "the agent ran twice"
            events = await bus.stored_events(before)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            types = [e.type for e in events]
            assert types == [EventType.RUN_STARTED, EventType.AGENT_STARTED, EventType.LLM_STARTED,
                             EventType.LLM_FINISHED, EventType.AGENT_FINISHED, EventType.RUN_COMPLETED], types

            after = (await api.post("/runs", json=run_body(one_agent(), "after the restart"))).json()["run_id"]
            assert (await bus.wait_record(after, timeout=60)).output == "echo: after the restart"
        finally:
            await bus.close()


async def test_a_broker_restarted_on_an_empty_store_is_repaired_by_the_next_start_of_the_services(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    await asyncio.to_thread(deployment.server.stop)
    await asyncio.to_thread(deployment.start_server, "nats-empty")  # same address, nothing stored
    operator = await nats.connect(deployment.server.url, user=Role.OPERATOR.value,
                                  password=deployment.secrets.password(Role.OPERATOR.value))
    try:
        assert await _streams(operator) == set(), "the store is empty"
        await asyncio.to_thread(stack.stop)
        stack.executors.clear()
        await asyncio.to_thread(stack.start_api)  # also makes the bootstrap admin key again
        await asyncio.to_thread(stack.start_suggester)
        await asyncio.to_thread(stack.start_executor)
        assert {subjects.RUNS_STREAM, subjects.EVENTS_STREAM, subjects.INDEX_STREAM, subjects.SUGGESTER_STREAM,
                subjects.DEADLETTER_STREAM, f"KV_{subjects.RUNS_BUCKET}"} <= await _streams(operator)
    finally:
        await operator.close()

    bus = await Bus.connect(deployment.server.url, deployment.secrets)
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
            response = await api.post("/runs", json=run_body(one_agent(), "on a fresh store"))
            assert response.status_code == 202, response.text
            record = await bus.wait_record(response.json()["run_id"], timeout=60)
        assert record.status == RunStatus.SUCCEEDED and record.output == "echo: on a fresh store"
    finally:
        await bus.close()


async def _streams(nc: nats.NATS) -> set[str]:
    return {info.config.name for info in await nc.jetstream().streams_info()}


async def test_a_revoked_bootstrap_key_stays_revoked_when_the_api_starts_again(deployment: Deployment) -> None:
    """FLOWRELAY_BOOTSTRAP_KEY_FILE makes its key an admin key at start, unless it was revoked.
    (Last in this module: the deployment's admin key is gone afterwards.)"""
    stack = deployment.stack
    other = None
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        me = (await api.get("/auth/me")).json()
        other = (await api.post("/keys", json={"tenant": "default", "scopes": ["admin"]})).json()["key"]
        assert (await api.delete(f"/keys/{me['key_id']}")).status_code == 200
    await asyncio.to_thread(stack.api.terminate)
    await asyncio.to_thread(stack.start_api)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as api:
        assert (await api.get("/auth/me", headers=stack.auth_headers)).status_code == 401
        assert (await api.get("/auth/me", headers={"Authorization": f"Bearer {other}"})).status_code == 200


async def test_a_follower_gets_events_published_while_its_connection_was_down(tmp_path) -> None:
    """Live messages published while a follower reconnects never reach its subscription; it
    must find them in the stream (the SSE stream of a run otherwise never ends)."""
    port = free_port()
    secrets = Secrets.ensure(tmp_path / "secrets")
    server = natsserver.start_secure(tmp_path / "nats", secrets, port=port, log_file=tmp_path / "nats.log")
    writer = follower = None

    async def connect(role: Role, reconnect_time_wait: float) -> nats.NATS:
        return await nats.connect(server.url, user=role.value, password=secrets.password(role.value),
                                  max_reconnect_attempts=-1, reconnect_time_wait=reconnect_time_wait)

    try:
        writer = await connect(Role.EXECUTOR, 0.05)
        await topology.declare(writer.jetstream(), BusSettings())
        # The follower (the API's user) comes back only seconds after the server, when the run has ended.
        follower = await connect(Role.API, 3)
        log = RunEventLog(writer.jetstream(), DEFAULT_TENANT, "r-reconnect")
        await log.emit(EventType.RUN_STARTED, {"attempt": 1})
        seen: list[TraceEvent] = []

        async def read() -> None:
            async for event in follow(follower, DEFAULT_TENANT, "r-reconnect"):
                assert event is not None
                seen.append(event)

        reader = asyncio.create_task(read())
        while not seen:
            await asyncio.sleep(0.01)  # the first event arrives at once; nothing else to await
        await asyncio.to_thread(server.stop)
        server = await asyncio.to_thread(
            natsserver.start_secure, tmp_path / "nats", secrets, port=port, log_file=tmp_path / "nats.log"
        )
        await log.emit(EventType.RUN_COMPLETED, {"status": "succeeded"})
        assert not follower.is_connected  # the terminal event was published while it was away
        await asyncio.wait_for(reader, 20)
        assert [e.seq for e in seen] == [1, 2]
    finally:
        for nc in (writer, follower):
            if nc is not None:
                await nc.close()
        server.stop()
