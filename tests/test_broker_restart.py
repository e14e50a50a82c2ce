"""A run survives a restart of the NATS server (same store): nothing is lost or doubled."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from flowrelay_testkit import Bus, Stack, free_port, one_agent, run_body

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay_contracts import RunStatus


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
