"""Replaying a finished run's events through a consumer (how tenant users of NATS read them).

nats-server starts delivering to a new push consumer before it answers the create request,
so the ``ConsumerInfo`` in that answer may count some stored events as already delivered,
not pending. A replay that read only ``num_pending`` events then stopped short of the
terminal event and followed the live subject of a run that had ended: it waited forever
(seen as ``examples/nats_client.py`` hanging in ``FlowrelayClient.result`` on a busy machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from flowrelay import natsserver
from flowrelay_bus import topology
from flowrelay_bus.events import RunEventLog, follow
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import EventType

pytestmark = pytest.mark.timeout(60)

#: Upper bound for a replay of a few events from a local server (instant when it works).
WAIT_S = 20.0

STEPS = (EventType.RUN_STARTED, EventType.AGENT_STARTED, EventType.AGENT_FINISHED, EventType.RUN_COMPLETED)


@pytest.fixture
async def nc(tmp_path: Path) -> AsyncIterator[Client]:
    server = natsserver.start(tmp_path / "nats")
    connection = await nats.connect(server.url)
    try:
        await topology.declare(connection.jetstream(), BusSettings(nats_url=server.url))
        yield connection
    finally:
        await connection.close()
        server.stop()


async def finished_run(nc: Client, run_id: str) -> None:
    log = RunEventLog(nc.jetstream(), "acme", run_id)
    for step in STEPS:
        await log.emit(step)


async def replay(nc: Client, run_id: str) -> list[EventType]:
    async with asyncio.timeout(WAIT_S):
        return [e.type async for e in follow(nc, "acme", run_id, history="consumer") if e is not None]


async def test_a_finished_run_replays_to_its_terminal_event(nc: Client) -> None:
    await finished_run(nc, "r1")
    assert await replay(nc, "r1") == list(STEPS)


async def test_a_replay_reads_every_event_when_delivery_beat_the_create_answer(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await finished_run(nc, "r2")
    create = JetStreamContext.add_consumer

    async def answered_after_delivery(self: JetStreamContext, stream: str, config: Any = None, **kw: Any) -> Any:
        # The server's own ConsumerInfo, taken once it has delivered what was stored: what
        # the create answer says when the delivery goroutine ran first.
        info = await create(self, stream, config, **kw)
        while info.num_pending:
            await asyncio.sleep(0.01)
            info = await self.consumer_info(stream, info.name)
        return info

    monkeypatch.setattr(JetStreamContext, "add_consumer", answered_after_delivery)
    assert await replay(nc, "r2") == list(STEPS)


async def test_a_replay_of_a_run_without_events_yields_nothing(nc: Client) -> None:
    events = []
    async with asyncio.timeout(WAIT_S):
        async for event in follow(nc, "acme", "r3", history="consumer", idle_timeout_s=0.2):
            if event is None:  # nothing stored, nothing live: the replay ended at once
                break
            events.append(event)
    assert events == []
