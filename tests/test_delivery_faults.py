"""Delivery under broker faults: runs in flight when nats-server restarts are executed once.

Reproduction (issue 12): runs still executing when nats-server is killed and restarted were
run a second time alongside the first (a redelivery took the run while its holder still ran
it), with duplicated ``seq`` numbers, events after the terminal event and SSE streams that
never ended. Here every accepted run must end exactly once: one model call per run (counted
by the scripted model), one terminal event, gapless ``seq``, ``attempts == 1``, and every
SSE follower sees the end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flowrelay_testkit import Bus, Stack, free_port, one_agent, run_body

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL
from flowrelay.natsserver import NatsServer
from flowrelay_contracts import EventType, RunStatus

#: Long enough that every run is in flight across the restart.
RUN_S = 10
RUNS = 16

#: The test kit's FLOWRELAY_ACK_WAIT_S.
ACK_WAIT_S = 4


class Restartable:
    """A stack on its own nats-server that a test may restart (same store, same port)."""

    def __init__(self, root: Path, scripted_url: str) -> None:
        self.root = root
        self.secrets = Secrets.ensure(root / "secrets")
        self.port = free_port()
        self.server = self._start()
        self.stack = Stack(nats_url=self.server.url, scripted_url=scripted_url, root=root, secrets=self.secrets)

    def _start(self) -> NatsServer:
        # As flowrelay deploys it: fsync before every ack. Without it a SIGKILL lost acked
        # events here (the server's write buffer had not reached the file yet).
        return natsserver.start_secure(self.root / "nats", self.secrets, port=self.port,
                                       sync_interval=DEFAULT_SYNC_INTERVAL, log_file=self.root / "logs" / "nats.log")

    async def restart(self, *, down_s: float) -> None:
        """Kill the server (SIGKILL, as a crash), stay down ``down_s``, start it on the same
        store and port."""
        await asyncio.to_thread(self.server.kill)
        await asyncio.sleep(down_s)  # the outage itself is what is being simulated
        self.server = await asyncio.to_thread(self._start)

    def stop(self) -> None:
        self.stack.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def restartable(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    deployment = Restartable(tmp_path_factory.mktemp("restart-load"), scripted_model)
    try:
        deployment.stack.start_api()
        deployment.stack.start_suggester()
        deployment.stack.start_executor()
        deployment.stack.start_executor()
        yield deployment
    finally:
        deployment.stop()


async def _sse_until_end(client: httpx.AsyncClient, run_id: str) -> list[str]:
    """Follow a run's SSE stream, reconnecting with Last-Event-ID, until it closes after the end."""
    seen: list[str] = []
    last = 0
    while True:
        try:
            async with client.stream("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": str(last)}) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("id:"):
                        last = int(line.split(":", 1)[1])
                    elif line.startswith("event:"):
                        seen.append(line.split(":", 1)[1].strip())
            if any(EventType(t).terminal for t in seen if t in EventType._value2member_map_):
                return seen
        except (httpx.HTTPError, json.JSONDecodeError):
            await asyncio.sleep(0.2)  # the API is reconnecting to NATS


@pytest.mark.timeout(400)
async def test_runs_in_flight_across_a_broker_restart_are_executed_exactly_once(
    restartable: Restartable, scripted_model: str
) -> None:
    stack = restartable.stack
    tokens = [uuid.uuid4().hex[:16] for _ in range(RUNS)]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, headers=stack.auth_headers) as api:
        bus = await Bus.connect(stack.nats_url, stack.secrets)
        try:
            run_ids = []
            for token in tokens:
                response = await api.post("/runs", json=run_body(one_agent(), f"#delay={RUN_S} #count={token} hold"))
                assert response.status_code == 202, response.text
                run_ids.append(response.json()["run_id"])
            followers = [asyncio.create_task(_sse_until_end(api, r)) for r in run_ids]
            await asyncio.gather(*(bus.wait_record(r, terminal=False, timeout=60,
                                                   predicate=lambda rec: rec.status == RunStatus.RUNNING)
                                   for r in run_ids))

            await restartable.restart(down_s=ACK_WAIT_S + 1)  # past ack_wait: redeliveries are due
            records = await asyncio.gather(*(bus.wait_record(r, timeout=120) for r in run_ids), return_exceptions=True)
            if any(isinstance(r, BaseException) for r in records):
                states = [(r, (await bus.store.get(r)).status, (await bus.store.get(r)).attempts,
                           [e.type.value for e in await bus.stored_events(r)]) for r in run_ids]
                pytest.fail(f"runs did not end: {states}")
            done, pending = await asyncio.wait(followers, timeout=60)
            if pending:
                states = [(r, rec.attempts, [f"{e.seq}:{e.type.value}" for e in await bus.stored_events(r)])
                          for r, rec, f in zip(run_ids, records, followers, strict=True) if f in pending]
                pytest.fail(f"SSE streams did not end for {len(pending)} runs: {states}")
            streams = [f.result() for f in followers]

            async with httpx.AsyncClient(timeout=30) as http:
                counted = (await http.get(scripted_model.removesuffix("/v1") + "/stats")).json()["counted"]
            for run_id, token, record, sse in zip(run_ids, tokens, records, streams, strict=True):
                assert record.status == RunStatus.SUCCEEDED, (run_id, record.error)
                assert record.attempts == 1, f"run {run_id} was claimed {record.attempts} times"
                assert counted.get(token) == 1, f"run {run_id} called the model {counted.get(token)} times"
                stored = await bus.stored_events(run_id)
                assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
                assert sum(e.type.terminal for e in stored) == 1 and stored[-1].type.terminal
                assert sse[-1] in ("run.completed",) and sse.count("run.started") == 1
        finally:
            await bus.close()
