"""flowrelay on a 3-node NATS cluster at replicas 3, losing the node that leads the run stream.

Three nats-server processes (routes on loopback with their own credentials, a store each,
the deployment's users and no anonymous access on every node), streams and buckets at R3
(``FLOWRELAY_STREAM_REPLICAS=3``), the API and the two executors each connected to a
different node. A client submits runs at a steady pace, as a backend would: with an
``Idempotency-Key``, retrying the same key when the API answers 5xx. Some runs are followed
over SSE, resuming with ``Last-Event-ID`` when a stream is cut, as EventSource does. Partway
through, the node that leads the run stream is killed (SIGKILL); once the rest has carried
the load for a while it is started again on its store, and the load goes on.

Every accepted run must end exactly once: a terminal record, one terminal event, a sane
attempt count; no run the client did not ask for; every SSE follower sees every event of
its run once, in order, up to the terminal one.

Also here: ``flowrelay up --nats-cluster 3`` (the one-command way to try this topology),
services declaring the topology at once on a fresh cluster, an R1 topology moved to R3, and
routes without the cluster's credentials refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import psutil
import pytest
from flowrelay_testkit import Bus, Stack, free_port, one_agent, run_body

from flowrelay import natscluster, natsserver
from flowrelay.credentials import Secrets
from flowrelay.natscluster import NatsCluster
from flowrelay.natsconfig import ROUTE_USER, Role
from flowrelay.stack import ServiceProcess
from flowrelay_bus import topology
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import RunStatus, subjects

pytestmark = pytest.mark.timeout(600)

#: Runs submitted per second by the steady load.
RATE_PER_S = 8

#: Runs accepted before the kill, while the node is down, and after its restart.
PHASE_RUNS = 32

#: Every FOLLOW_EVERY-th accepted run also gets an SSE follower.
FOLLOW_EVERY = 4

#: Deliveries a run may take (the executors' FLOWRELAY_MAX_DELIVER default).
MAX_DELIVER = 5

#: Times a client sends a request again after a 503 before the test gives up.
MAX_RETRIES = 60

#: Terminal event type for each terminal status.
TERMINAL = {RunStatus.SUCCEEDED: "run.completed", RunStatus.FAILED: "run.failed", RunStatus.CANCELLED: "run.cancelled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    root = tmp_path_factory.mktemp("cluster")
    cluster = natscluster.start(root / "nats", Secrets.ensure(root / "secrets"), log_dir=root / "logs")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def stack(cluster: NatsCluster, scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API (and suggester) on node 1, one executor on node 2, another on node 3, started together."""
    a, b, c = cluster.nodes
    stack = Stack(nats_url=a.url, scripted_url=scripted_model, root=tmp_path_factory.mktemp("cluster-stack"),
                  secrets=cluster.secrets, FLOWRELAY_STREAM_REPLICAS="3")
    try:
        stack.api = stack._process("api", "api")
        stack.suggester = stack._process("suggester", "suggester")
        stack.start_executor(wait=False, FLOWRELAY_NATS_URL=b.url)
        stack.start_executor(wait=False, FLOWRELAY_NATS_URL=c.url)
        for service in [stack.api, stack.suggester, *stack.executors]:
            service.wait_ready(timeout=180)
        yield stack
    finally:
        stack.stop()


def connections(cluster: NatsCluster) -> dict[str, list[str]]:
    """Client connection names on each node (its monitoring endpoint)."""
    found = {}
    for node in cluster.nodes:
        with urllib.request.urlopen(f"{node.monitor_url}/connz?limit=1000", timeout=5) as answer:
            found[node.name] = [c.get("name", "") for c in json.loads(answer.read()).get("connections") or []]
    return found


@dataclass
class Load:
    """The client side: runs accepted, retries, and what each SSE follower saw."""

    api: httpx.AsyncClient
    accepted: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    followers: dict[str, asyncio.Task[list[dict]]] = field(default_factory=dict)
    seen: dict[str, list[dict]] = field(default_factory=dict)
    resumes: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            await self._submit(n)
            n += 1
            await asyncio.sleep(max(0.0, 1 / RATE_PER_S - (time.monotonic() - started)))

    async def accepted_at_least(self, count: int, *, timeout: float = 120) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.accepted) >= count), timeout)

    async def _submit(self, n: int) -> None:
        body = run_body(one_agent(), f"#delay=0.5 load {n}")
        headers = {"Idempotency-Key": f"load-{n}"}
        while True:  # a backend retries the same key until the run is accepted
            if self.stop.is_set():
                return
            try:
                response = await self.api.post("/runs", json=body, headers=headers)
            except httpx.TransportError as exc:
                self.retries[type(exc).__name__] += 1
            else:
                if response.status_code == 202:
                    break
                assert response.status_code >= 500, response.text  # only "try again" answers
                self.retries[str(response.status_code)] += 1
            await asyncio.sleep(0.2)
        run_id = response.json()["run_id"]
        async with self.changed:
            self.accepted.append(run_id)
            self.changed.notify_all()
        if len(self.accepted) % FOLLOW_EVERY == 0:
            self.followers[run_id] = asyncio.create_task(self._follow(run_id))

    async def _follow(self, run_id: str) -> list[dict]:
        """Every SSE event of the run, resuming after the last id seen when the stream is cut."""
        seen: list[dict] = self.seen.setdefault(run_id, [])
        while not seen or not seen[-1]["event"].startswith(("run.completed", "run.failed", "run.cancelled")):
            headers = {"Last-Event-ID": str(seen[-1]["id"])} if seen else {}
            try:
                async with self.api.stream("GET", f"/runs/{run_id}/events", headers=headers) as response:
                    if response.status_code != 200:
                        raise httpx.TransportError(f"SSE answered {response.status_code}")
                    block: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line:
                            if not line.startswith(":"):
                                name, _, value = line.partition(": ")
                                block[name] = value
                        elif "data" in block:
                            seen.append({"id": int(block["id"]), "event": block["event"]})
                            block = {}
            except httpx.TransportError:
                pass
            if not seen or not seen[-1]["event"].startswith(("run.completed", "run.failed", "run.cancelled")):
                self.resumes += 1
                await asyncio.sleep(0.2)
        return seen


def _free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (``flowrelay up --nats-cluster``
    puts its nodes on ``--nats-port``, +1, +2)."""
    for _ in range(50):
        base = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


async def test_flowrelay_up_runs_on_a_local_three_node_cluster(tmp_path: Path) -> None:
    """``flowrelay up --nats-cluster 3``: the one command to try the clustered topology. Three
    nodes of its own, every stream and bucket at R3, runs working; the node leading the run
    stream SIGKILLed is restarted by the supervisor and runs go on; nothing is left after
    Ctrl-C, and the next start finds the records again in the nodes' stores."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_") and not k.endswith("_API_KEY")}
    data, api_port, nats_port = tmp_path / "data", free_port(), _free_port_run(3)
    argv = [str(Path(sys.executable).parent / "flowrelay"), "up", "--nats-cluster", "3", "--data-dir", str(data),
            "--api-port", str(api_port), "--nats-port", str(nats_port), "--scripted-port", "0",
            "--metrics-port", "0", "--executors", "2", "--workers", "1"]
    urls = [f"nats://127.0.0.1:{nats_port + i}" for i in range(3)]

    def start(label: str) -> ServiceProcess:
        up = ServiceProcess(label, argv, env=env | {"COLUMNS": "250"}, log_path=tmp_path / f"{label}.log").start()
        up.wait_for("Press Ctrl-C to stop", timeout=240)
        return up

    async def execute(text: str) -> dict:
        """``POST /execute`` as a backend does it: the same Idempotency-Key again after a 503
        (while a node is lost and leaders move, NATS may not acknowledge a request)."""
        key = {"Idempotency-Key": f"up-cluster-{text}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=90, headers=headers) as api:
            for _ in range(MAX_RETRIES):
                response = await api.post("/execute", json=run_body(one_agent(), text), headers=key)
                if response.status_code != 503:
                    break
                await asyncio.sleep(0.5)
            assert response.status_code == 200, response.text
            return response.json()

    secrets = Secrets.ensure(data / "secrets")
    headers = {"Authorization": f"Bearer {secrets.admin_key()}"}
    up = start("up")
    try:
        assert "3-node cluster, every stream and bucket at 3 replicas" in up.output()
        for node in range(1, 4):
            config = json.loads((data / "nats-cluster" / f"node-{node}" / "nats.conf").read_text())
            assert config["jetstream"]["sync_interval"] == "always"  # acked means on disk, on every node
        assert ",".join(urls) in up.output()
        assert sum("nats-server" in " ".join(c.cmdline()) for c in psutil.Process(up.pid).children(recursive=True)) == 3
        bus = await Bus.connect(urls, secrets)  # type: ignore[arg-type]  (nats.connect takes a list)
        try:
            for stream in (subjects.RUNS_STREAM, subjects.EVENTS_STREAM, f"KV_{subjects.RUNS_BUCKET}"):
                info = await bus.js.stream_info(stream)
                assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2, stream
            leader = (await bus.js.stream_info(subjects.RUNS_STREAM)).cluster.leader
        finally:
            await bus.close()
        result = await execute("on three nodes")
        assert result["output"] == "echo: on three nodes"

        node = f"nats-{leader.rsplit('-', 1)[1]}"  # server flowrelay-2 is the program nats-2
        pid = next(s["pid"] for s in json.loads((data / "up.json").read_text())["services"] if s["name"] == node)
        mark = up.line_count
        os.kill(pid, signal.SIGKILL)
        up.wait_for(rf"{node} is back", after=mark, timeout=120)
        assert (await execute("after a node's loss"))["output"] == "echo: after a node's loss"
        children = psutil.Process(up.pid).children(recursive=True)
    finally:
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(90) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"orphans: {alive}"

    again = start("up-again")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60, headers=headers) as api:
            record = (await api.get(f"/runs/{result['run_id']}")).json()
        assert record["status"] == "succeeded" and record["output"] == "echo: on three nodes"
    finally:
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(90) == 0


async def test_every_run_ends_once_when_the_run_stream_leader_dies(cluster: NatsCluster, stack: Stack) -> None:
    placement = connections(cluster)
    a, b, c = cluster.nodes
    assert "flowrelay-api" in placement[a.name]
    assert any(name.startswith("flowrelay-executor-") for name in placement[b.name])
    assert any(name.startswith("flowrelay-executor-") for name in placement[c.name])

    bus = await Bus.connect(cluster.urls, cluster.secrets)  # type: ignore[arg-type]  (nats.connect takes a list)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        info = await bus.js.stream_info(subjects.RUNS_STREAM)
        assert info.config.num_replicas == 3
        assert len(info.cluster.replicas) == 2  # plus the leader
        leader = cluster.node(info.cluster.leader)

        load = Load(api)
        generator = asyncio.create_task(load.run())
        try:
            await load.accepted_at_least(PHASE_RUNS)
            killed_at = len(load.accepted)
            await asyncio.to_thread(cluster.kill, leader)
            await load.accepted_at_least(killed_at + PHASE_RUNS)
            new_leader = (await bus.js.stream_info(subjects.RUNS_STREAM)).cluster.leader
            assert new_leader != leader.name
            await asyncio.to_thread(cluster.restart, leader)
            restarted_at = len(load.accepted)
            await load.accepted_at_least(restarted_at + PHASE_RUNS)
        finally:
            load.stop.set()
            await generator

        records = {run_id: await bus.wait_record(run_id, timeout=120) for run_id in load.accepted}
        for run_id, record in records.items():
            assert record.status == RunStatus.SUCCEEDED, (run_id, record.error)
            assert 1 <= record.attempts <= MAX_DELIVER, (run_id, record.attempts)
            terminal = [e.type for e in await bus.terminal_events(run_id)]
            assert terminal == [TERMINAL[record.status]], (run_id, terminal)
        # A 503 answer left a failed record behind (the API's submit contract); none of those
        # ever ran, and retries with the same key made no second run of any accepted one.
        # Every record in the bucket, from the stream's leader (a KV key listing is a consumer,
        # which may be served by the restarted node before it has caught up).
        bucket = await bus.js.stream_info(f"KV_{subjects.RUNS_BUCKET}", subjects_filter=subjects.run_record_subject("*", "*"))
        stored = {subject.rsplit(".", 1)[1] for subject in bucket.state.subjects or {}}
        assert set(load.accepted) <= stored
        refused = stored - set(load.accepted)
        assert len(set(load.accepted)) == len(load.accepted)
        assert len(refused) <= sum(load.retries.values())
        for run_id in refused:
            record = await bus.store.get(run_id)
            assert record is not None and record.status == RunStatus.FAILED and record.attempts == 0, record
            assert record.error is not None and record.error.code == "internal_error", record.error

        done, pending = await asyncio.wait(load.followers.values(), timeout=60)
        stuck = {run_id: load.seen[run_id] for run_id, task in load.followers.items() if task in pending}
        assert not stuck, f"SSE followers that did not finish (events seen): {stuck}"
        followed = {run_id: task.result() for run_id, task in load.followers.items()}
        for run_id, events in followed.items():
            ids = [e["id"] for e in events]
            assert ids == list(range(1, len(ids) + 1)), (run_id, ids)
            assert [e["event"] for e in events if e["event"] in TERMINAL.values()] == ["run.completed"]

        attempts = Counter(r.attempts for r in records.values())
        print(f"\ncluster test: {len(records)} runs accepted (killed {leader.name} after {killed_at}, "
              f"new run-stream leader {new_leader}, restarted after {restarted_at}); attempts {dict(attempts)}; "
              f"client retries {dict(load.retries)}; {len(followed)} SSE followers, {load.resumes} resumes")
    with contextlib.suppress(Exception):
        await bus.close()


async def test_services_starting_together_declare_the_topology(tmp_path: Path) -> None:
    """Concurrent declarations of R3 streams stall JetStream for seconds; none may fail for it.
    A deployment that ran at R1 (a single server's topology) is brought to R3 the same way."""
    secrets = Secrets.ensure(tmp_path / "secrets")
    fresh = natscluster.start(tmp_path / "nats", secrets, log_dir=tmp_path / "logs")
    try:
        roles = (Role.API, Role.EXECUTOR, Role.SUGGESTER)  # as the services connect, one per node
        connections = [await nats.connect(url, user=role.value, password=secrets.password(role.value))
                       for url, role in zip(fresh.urls, roles, strict=True)]
        await topology.declare(connections[1].jetstream(), BusSettings(stream_replicas=1))
        settings = BusSettings(stream_replicas=3)
        await asyncio.gather(*(topology.declare(nc.jetstream(), settings) for nc in connections))
        streams = topology.stream_names(settings)
        for stream in streams:
            info = await connections[0].jetstream().stream_info(stream)
            assert info.config.num_replicas == 3, stream
        for nc in connections:
            await nc.close()
    finally:
        fresh.stop()


async def test_moving_to_r3_waits_for_a_node_that_is_restarting(tmp_path: Path) -> None:
    """Three replicas cannot be placed while one of three nodes is down (or not yet seen as up
    by the cluster, right after it formed): the change is asked again, not dropped."""
    secrets = Secrets.ensure(tmp_path / "secrets")
    fresh = natscluster.start(tmp_path / "nats", secrets, log_dir=tmp_path / "logs")
    nc = None
    try:
        nc = await nats.connect(fresh.urls[0], user=Role.EXECUTOR.value, password=secrets.password(Role.EXECUTOR.value))
        await topology.declare(nc.jetstream(), BusSettings(stream_replicas=1))
        down = fresh.nodes[2]
        fresh.kill(down)
        moving = asyncio.create_task(topology.declare(nc.jetstream(), BusSettings(stream_replicas=3)))
        await asyncio.to_thread(fresh.restart, down)
        await asyncio.wait_for(moving, topology.PLACEMENT_DEADLINE_S * 2)
        settings = BusSettings(stream_replicas=3)
        streams = topology.stream_names(settings)
        for stream in streams:
            assert (await nc.jetstream().stream_info(stream)).config.num_replicas == 3, stream
    finally:
        if nc is not None:
            await nc.close()
        fresh.stop()


def test_a_route_without_the_cluster_credentials_is_refused(cluster: NatsCluster, tmp_path: Path) -> None:
    """Routes carry every message and every JetStream replica: a server that knows the
    route port but not the route password must not join."""
    a, b, c = cluster.nodes
    port = b.address.route_port
    for label, route in (("none", f"nats-route://127.0.0.1:{port}"),
                         ("wrong", f"nats-route://{ROUTE_USER}:not-the-password@127.0.0.1:{port}")):
        stranger = ServiceProcess(
            f"stranger-{label}",
            [str(natsserver.find_binary()), "-a", "127.0.0.1", "-p", "-1", "--cluster_name", cluster.name,
             "--cluster", "nats://127.0.0.1:-1", "--routes", route],
            env=dict(os.environ), log_path=tmp_path / f"stranger-{label}.log",
        ).start()
        try:
            stranger.wait_for(r"Route Error 'Authorization Violation'", timeout=30)
        finally:
            stranger.terminate(timeout=5)
    with urllib.request.urlopen(f"{b.monitor_url}/routez", timeout=5) as answer:
        peers = {route["remote_name"] for route in json.loads(answer.read())["routes"]}
    assert peers == {a.name, c.name}


def test_cluster_nodes_keep_their_own_stores(cluster: NatsCluster) -> None:
    stores = [Path(node.store_dir) for node in cluster.nodes]
    assert len(set(stores)) == 3
    for store in stores:
        assert (store / "jetstream").is_dir()
