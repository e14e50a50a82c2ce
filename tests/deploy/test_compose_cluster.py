"""deploy/compose.cluster.yaml in real containers: flowrelay on three NATS nodes at replicas 3.

Brought up the way the file's header tells users (``flowrelay secrets init ... --nats-cluster
nats,nats-2,nats-3``, then compose with both files). In order: every stream and bucket is
replicated on the three nodes, the node leading the run stream is killed while runs are in
flight and more are submitted (every accepted run ends once), the node is started again and
holds its replica again, and ``down`` leaves nothing behind. The host reaches NATS through node 1's published port only, so node 1 is
never the one killed: leadership is moved off it first.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from flowrelay_composekit import (
    CLUSTER_NODES,
    REQUIRE_ENV,
    ComposeProject,
    docker,
    engine_problem,
    ensure_images,
    finished,
    live_executors,
    versions,
)
from flowrelay_testkit import REPO, Bus, one_agent, run_body

from flowrelay_bus import topology
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import RunStatus, subjects

pytestmark = pytest.mark.timeout(600)

#: The example override under test.
CLUSTER_FILE = REPO / "deploy" / "compose.cluster.yaml"

#: Every stream flowrelay declares, the streams behind its buckets and object store, and the
#: API keys' bucket the API declares.
STREAMS = [*topology.stream_names(BusSettings()), f"KV_{subjects.API_KEYS_BUCKET}"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ComposeProject]:
    if problem := engine_problem():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but containers cannot run: {problem}")
        pytest.skip(problem)
    log_dir = tmp_path_factory.mktemp("compose-cluster")
    ensure_images(log_dir)
    project = ComposeProject(log_dir=log_dir, overrides=[CLUSTER_FILE], cluster=True)
    print(f"\ncompose cluster test: project {project.name} on {versions()}")
    project.watch_events()
    try:
        project.compose("up", "-d", "--no-build")
        for service in (*CLUSTER_NODES, "api"):
            project.wait_healthy(service)
        yield project
    finally:
        if request.session.testsfailed:
            print(f"compose logs: {project.save_logs()}")
        project.down()


@pytest.fixture(scope="module")
async def api(project: ComposeProject) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=project.api_url, timeout=60, headers=project.auth_headers) as client:
        yield client


@pytest.fixture(scope="module")
async def bus(project: ComposeProject) -> AsyncIterator[Bus]:
    connection = await Bus.connect(project.nats_url, project.secrets)
    yield connection
    await connection.close()


async def placement(bus: Bus, stream: str) -> tuple[str, set[str]]:
    """The stream's leader and every node holding it."""
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, (stream, info.cluster)
    return info.cluster.leader, {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}


async def step_down(bus: Bus, stream: str) -> str:
    """Ask the stream's leader to step down; the node elected next, from JetStream's advisory."""
    elected = await bus.nc.subscribe(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}")
    try:
        await bus.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=10)
        return json.loads((await elected.next_msg(timeout=30)).data)["leader"]
    finally:
        await elected.unsubscribe()


async def submit_retrying(api: httpx.AsyncClient, body: dict, key: str) -> str:
    """As a backend would: the same Idempotency-Key again while the API answers 5xx."""
    while True:
        response = await api.post("/runs", json=body, headers={"Idempotency-Key": key})
        if response.status_code == 202:
            return response.json()["run_id"]
        assert response.status_code >= 500, response.text
        await asyncio.sleep(0.2)  # a client's retry pause; the answer itself is what is awaited


async def test_every_stream_and_bucket_has_three_replicas_on_the_three_nodes(bus: Bus) -> None:
    await live_executors(bus, 2)  # every service has declared the topology by now
    for stream in STREAMS:
        info = await bus.js.stream_info(stream)
        assert info.config.num_replicas == 3, stream
        _, nodes = await placement(bus, stream)
        assert nodes == set(CLUSTER_NODES), (stream, nodes)


async def test_runs_survive_losing_the_run_stream_leader(project: ComposeProject, api: httpx.AsyncClient, bus: Bus) -> None:
    leader, _ = await placement(bus, subjects.RUNS_STREAM)
    while leader == CLUSTER_NODES[0]:  # the host's only way in: move leadership elsewhere first
        leader = await step_down(bus, subjects.RUNS_STREAM)
    in_flight = [await submit_retrying(api, run_body(one_agent(), f"#delay=2 in flight {i}"), f"in-flight-{i}")
                 for i in range(6)]
    await bus.wait_record(in_flight[0], terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
    [victim] = project.containers(leader)
    mark = project.event_mark
    docker("kill", victim.id)
    after_kill = [await submit_retrying(api, run_body(one_agent(), f"while {leader} is down {i}"), f"down-{i}")
                  for i in range(6)]
    for run_id in in_flight + after_kill:
        record = await finished(bus, run_id, timeout=120)
        assert record.status == RunStatus.SUCCEEDED, (run_id, record.error)
    new_leader, _ = await placement(bus, subjects.RUNS_STREAM)
    assert new_leader != leader

    await asyncio.to_thread(project.compose, "start", leader)
    await asyncio.to_thread(project.wait_healthy, leader, after=mark)
    after_restart = await submit_retrying(api, run_body(one_agent(), "after the restart"), "after-restart")
    assert (await finished(bus, after_restart)).output == "echo: after the restart"
    info = await bus.js.stream_info(subjects.RUNS_STREAM)
    assert leader in {info.cluster.leader, *(p.name for p in info.cluster.replicas)}


async def test_down_leaves_nothing_behind(project: ComposeProject) -> None:
    assert any(project.leftovers().values())
    project.save_logs()  # the last chance to keep them
    await asyncio.to_thread(project.compose, "down", "-v", "--remove-orphans", "-t", "10")
    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}
