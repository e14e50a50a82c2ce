"""Driving ``compose.yaml`` from the host: the engine check, one compose project, its events.

The deploy tests run the real file with the real images (built by ``deploy/build-images.sh``
when no container registry is reachable) through whichever compose the machine has: v2
(``docker compose``) or Debian's v1 (``docker-compose`` 1.29). A test override
(``tests/deploy/compose.test.yaml``) only makes executors small, so that a handful of runs
spreads over every replica, and redelivery after a crash quick.

Each project gets its own secrets, made the way the compose file's header tells users to:
``flowrelay secrets init DIR --nats-config DIR/nats.conf --container-readable`` (with
``--nats-cluster`` for the cluster example); the test talks to the API with the admin key
and to NATS as the operator user, both read from that directory.

Waits are on events, never on sleeps: container health from ``docker events``, readiness of
executors from their entries in the executors bucket, runs from their records and events.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats.errors
from flowrelay_testkit import REPO, Bus, free_port
from nats.js.errors import ServiceUnavailableError

from flowrelay.credentials import Secrets
from flowrelay.stack import ServiceProcess, resolve
from flowrelay_contracts import ExecutorCapabilities, RunRecord, RunStatus, subjects

#: The test override of compose.yaml (small executors, quick redelivery).
TEST_OVERRIDE = REPO / "tests" / "deploy" / "compose.test.yaml"

#: Set by ``make test-deploy``: an engine must be there, so its absence fails instead of skipping.
REQUIRE_ENV = "FLOWRELAY_REQUIRE_DOCKER"

#: Images the tests run; deploy/build-images.sh makes them (and prints these names).
IMAGE = os.environ.get("FLOWRELAY_IMAGE", "flowrelay:local")
EXECUTOR_IMAGE = os.environ.get("FLOWRELAY_EXECUTOR_IMAGE", "flowrelay-executor:local")
NATS_IMAGE = os.environ.get("FLOWRELAY_NATS_IMAGE", "flowrelay-nats:local")

#: The any-agent frameworks built into the executor image besides tinyagent (its FRAMEWORKS
#: build arg; deploy/build-images.sh reads the same variable).
FRAMEWORKS = frozenset(os.environ.get("FLOWRELAY_FRAMEWORKS", "").split())

#: The example cluster's node names (deploy/compose.cluster.yaml): node 1 keeps the name "nats".
CLUSTER_NODES = ("nats", "nats-2", "nats-3")

#: A project's resources carry this label (v1 and v2 alike); ``down`` must remove all of them.
PROJECT_LABEL = "com.docker.compose.project"


def engine_problem() -> str | None:
    """Why containers cannot run here (None when they can)."""
    if not shutil.which("docker"):
        return "no docker client on this machine (make test-deploy installs docker.io)"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[:200]}"
    if compose_command() is None:
        return "no compose: neither `docker compose` nor `docker-compose` (make test-deploy installs docker-compose)"
    return None


def compose_command() -> list[str] | None:
    """``docker compose`` (v2) if it works, else ``docker-compose`` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def versions() -> str:
    engine = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True).stdout.strip()
    cmd = compose_command() or ["?"]
    compose = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True).stdout.strip()
    return f"engine {engine}, {' '.join(cmd)} {compose}"


def ensure_images(log_dir: Path) -> None:
    """Build the images unless they exist (make test-deploy has built them already)."""
    present = all(
        subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0
        for name in (IMAGE, EXECUTOR_IMAGE, NATS_IMAGE)
    )
    if not present:
        env = os.environ | {"FLOWRELAY_BUILD_LOG_DIR": str(log_dir)}
        subprocess.run([str(REPO / "deploy" / "build-images.sh")], check=True, env=env, timeout=1800)


@dataclass
class Container:
    id: str
    service: str
    name: str

    @property
    def hostname(self) -> str:
        """What ``socket.gethostname()`` says inside (the executor id starts with it)."""
        return self.id[:12]


class ComposeProject:
    """One compose project of ``compose.yaml`` (plus ``overrides``) on free loopback ports,
    with its own name and its own secrets in ``log_dir/secrets``."""

    def __init__(self, *, log_dir: Path, overrides: Sequence[Path] = (), cluster: bool = False) -> None:
        command = compose_command()
        assert command is not None
        self.name = f"flowrelaytest{uuid.uuid4().hex[:8]}"
        self.log_dir = log_dir
        self.secrets = make_secrets(log_dir / "secrets", cluster=cluster)
        self.api_port = free_port()
        self.nats_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.auth_headers = {"Authorization": f"Bearer {self.secrets.admin_key()}"}
        files = [REPO / "compose.yaml", TEST_OVERRIDE, *overrides]
        self._base = [*command, "-p", self.name, *(arg for f in files for arg in ("-f", str(f)))]
        # Nothing from the developer's shell (provider keys, FLOWRELAY_* settings) reaches compose.
        keep = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_") and not k.endswith("_API_KEY")}
        self.env = keep | {
            "FLOWRELAY_IMAGE": IMAGE,
            "FLOWRELAY_EXECUTOR_IMAGE": EXECUTOR_IMAGE,
            "FLOWRELAY_NATS_IMAGE": NATS_IMAGE,
            "FLOWRELAY_API_BIND": f"127.0.0.1:{self.api_port}",
            "FLOWRELAY_NATS_BIND": f"127.0.0.1:{self.nats_port}",
            "FLOWRELAY_SECRETS_DIR": str(self.secrets.root),
        }
        self.events: ServiceProcess | None = None

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._base, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def watch_events(self) -> None:
        """Record the project's container events from now on (health changes, deaths, starts)."""
        argv = ["docker", "events", "--format", "{{json .}}", "--filter", f"label={PROJECT_LABEL}={self.name}"]
        self.events = ServiceProcess("docker-events", argv, env=os.environ, log_path=self.log_dir / "docker-events.log").start()

    def wait_healthy(self, service: str, *, after: int = 0, timeout: float = 180) -> None:
        """Block until a container of ``service`` reports healthy (an event after line ``after``)."""
        assert self.events is not None
        self.events.wait_for(rf'"status":"health_status: healthy".*"com\.docker\.compose\.service":"{service}"',
                             after=after, timeout=timeout)

    @property
    def event_mark(self) -> int:
        assert self.events is not None
        return self.events.line_count

    def containers(self, service: str, *, all_: bool = False) -> list[Container]:
        argv = ["docker", "ps", "--no-trunc", "--format", "{{json .}}",
                "--filter", f"label={PROJECT_LABEL}={self.name}",
                "--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            argv.append("-a")
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [Container(id=r["ID"], service=service, name=r["Names"]) for r in rows]

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still labelled with this project."""
        label = f"label={PROJECT_LABEL}={self.name}"
        found = {}
        for kind, argv in {
            "containers": ["docker", "ps", "-a", "-q", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
        }.items():
            found[kind] = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
        return found

    def save_logs(self) -> Path:
        """Every container's output in ``log_dir/compose.log`` (kept once the project is down)."""
        path = self.log_dir / "compose.log"
        if self.leftovers()["containers"]:
            path.write_text(self.compose("logs", "--no-color", check=False, timeout=120).stdout)
        return path

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        if self.events is not None:
            self.events.terminate(timeout=5)


def make_secrets(directory: Path, *, cluster: bool = False) -> Secrets:
    """The deployment's secrets, made by the command compose.yaml's header gives users."""
    argv = [*resolve(["flowrelay"]), "secrets", "init", str(directory),
            "--nats-config", str(directory / "nats.conf"), "--container-readable"]
    if cluster:
        argv += ["--nats-cluster", ",".join(CLUSTER_NODES)]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return Secrets(directory)


def docker(*args: str, timeout: float = 120) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=timeout).stdout


# -- talking to the deployment ----------------------------------------------------------------

#: What JetStream answers (or fails to) while a stream has no leader.
_NOT_ANSWERED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)

#: Terminal event type (after ``run.``) of each terminal status.
TERMINAL = {RunStatus.SUCCEEDED: "completed", RunStatus.FAILED: "failed", RunStatus.CANCELLED: "cancelled"}


async def live_executors(bus: Bus, count: int, *, timeout: float = 180) -> dict[str, ExecutorCapabilities]:
    """Wait until ``count`` executors have advertised themselves; what each offers, by id."""
    kv = await bus.js.key_value(subjects.EXECUTORS_BUCKET)
    watcher = await kv.watchall()
    live: dict[str, ExecutorCapabilities] = {}

    async def watch() -> dict[str, ExecutorCapabilities]:
        async for entry in watcher:
            if entry is None:
                continue
            if entry.value:
                live[entry.key] = ExecutorCapabilities.model_validate_json(entry.value)
            else:
                live.pop(entry.key, None)
            if len(live) >= count:
                return dict(live)
        raise AssertionError("watch ended")

    try:
        return await asyncio.wait_for(watch(), timeout)
    finally:
        await watcher.stop()


async def api_sees_executors(api: httpx.AsyncClient, count: int, *, timeout: float = 60) -> None:
    """Wait until the API's own view of the executors (``/healthz``) counts ``count``.

    The API re-reads the executors bucket every couple of seconds and, knowing none, accepts
    any framework (the run waits for an executor): a check of what it refuses needs its view
    current first. It has no notification to await, so this asks again until it says so.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := (await api.get("/healthz")).json().get("executors", 0)) < count:
        assert loop.time() < deadline, f"the API sees {seen} executors, not {count}"
        await asyncio.sleep(0.2)


async def submit(api: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await api.post("/runs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


async def finished(bus: Bus, run_id: str, *, timeout: float = 90) -> RunRecord:
    """The run's terminal record, after checking it has exactly one terminal event.

    The test's own reads are asked again when JetStream does not answer them in time, as
    happens while a cluster elects a new leader for the stream they read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            record = await bus.wait_record(run_id, timeout=max(1.0, deadline - loop.time()))
            terminal = [e.type for e in await bus.terminal_events(run_id)]
            break
        except _NOT_ANSWERED:
            if loop.time() > deadline:
                raise
    assert terminal == [f"run.{TERMINAL[record.status]}"], (run_id, terminal)
    return record


def sse(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body (comments and keep-alives dropped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events
