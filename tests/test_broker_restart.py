"""A run survives a restart of the NATS server (same store): nothing is lost or doubled."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest
from flowrelay_testkit import Bus, Stack, free_port, one_agent, run_body

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role
from flowrelay_bus import topology
from flowrelay_bus.events import RunEventLog, follow
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import EventType, RunStatus, TraceEvent
from flowrelay_contracts.tenants import DEFAULT_TENANT


async def test_runs_survive_a_broker_restart(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("restart")
    port = free_port()
    secrets = Secrets.ensure(root / "secrets")
    server = natsserver.start_secure(root / "nats", secrets, port=port, log_file=root / "logs" / "nats.log")
    stack = Stack(nats_url=server.url, scripted_url=scripted_model, root=root, secrets=secrets)
    try:
        stack.start_api()
        stack.start_suggester()
        stack.start_executor()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
            bus = await Bus.connect(server.url, secrets)
            before = (await api.post("/runs", json=run_body(one_agent(), "#delay=2 across the restart"))).json()["run_id"]
            await bus.wait_record(before, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)

            await asyncio.to_thread(server.stop)
            server = await asyncio.to_thread(
                natsserver.start_secure, root / "nats", secrets, port=port, log_file=root / "logs" / "nats.log"
            )

            record = await bus.wait_record(before, timeout=90)
            assert record.status == RunStatus.SUCCEEDED
            assert record.output == "echo: #delay=2 across the restart"
            assert len(await bus.terminal_events(before)) == 1

            after = (await api.post("/runs", json=run_body(one_agent(), "after the restart"))).json()["run_id"]
            assert (await bus.wait_record(after, timeout=60)).output == "echo: after the restart"
            await bus.close()
    finally:
        stack.stop()
        server.stop()


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
