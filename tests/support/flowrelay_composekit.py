"""Driving ``compose.yaml`` from the host: the engine check, one compose project, its events.

The deploy tests run the real file with the real images (built by ``deploy/build-images.sh``
when no container registry is reachable) through whichever compose the machine has: v2
(``docker compose``) or Debian's v1 (``docker-compose`` 1.29). A test override
(``tests/deploy/compose.test.yaml``) only makes executors small, so that a handful of runs
spreads over every replica, and redelivery after a crash quick.

Waits are on events, never on sleeps: container health from ``docker events``, readiness of
executors from their entries in the executors bucket, runs from their records and events.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowrelay_testkit import REPO, free_port

from flowrelay.stack import ServiceProcess

#: The test override of compose.yaml (small executors, quick redelivery).
TEST_OVERRIDE = REPO / "tests" / "deploy" / "compose.test.yaml"

#: Set by ``make test-deploy``: an engine must be there, so its absence fails instead of skipping.
REQUIRE_ENV = "FLOWRELAY_REQUIRE_DOCKER"

#: Images the tests run; deploy/build-images.sh makes them (and prints these names).
IMAGE = os.environ.get("FLOWRELAY_IMAGE", "flowrelay:local")
NATS_IMAGE = os.environ.get("FLOWRELAY_NATS_IMAGE", "flowrelay-nats:local")

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
        for name in (IMAGE, NATS_IMAGE)
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
    """One compose project of ``compose.yaml`` on free loopback ports, with its own name."""

    def __init__(self, *, log_dir: Path) -> None:
        command = compose_command()
        assert command is not None
        self.name = f"flowrelaytest{uuid.uuid4().hex[:8]}"
        self.log_dir = log_dir
        self.api_port = free_port()
        self.nats_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self._base = [*command, "-p", self.name, "-f", str(REPO / "compose.yaml"), "-f", str(TEST_OVERRIDE)]
        # Nothing from the developer's shell (provider keys, FLOWRELAY_* settings) reaches compose.
        keep = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_") and not k.endswith("_API_KEY")}
        self.env = keep | {
            "FLOWRELAY_IMAGE": IMAGE,
            "FLOWRELAY_NATS_IMAGE": NATS_IMAGE,
            "FLOWRELAY_API_BIND": f"127.0.0.1:{self.api_port}",
            "FLOWRELAY_NATS_BIND": f"127.0.0.1:{self.nats_port}",
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
        path = self.log_dir / "compose.log"
        path.write_text(self.compose("logs", "--no-color", check=False, timeout=120).stdout)
        return path

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        if self.events is not None:
            self.events.terminate(timeout=5)


def docker(*args: str, timeout: float = 120) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=timeout).stdout


def run_ids(responses: Sequence[dict]) -> list[str]:
    return [r["run_id"] for r in responses]
