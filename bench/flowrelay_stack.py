"""flowrelay as it runs for real, for the benchmark: an embedded nats-server on a free port
with a temporary store, then the API, one executor (default pool: 2 workers) and the
suggester as processes, started with the same commands and environment the tests use
(``flowrelay.stack.SERVICE_COMMANDS``; see ``tests/support/flowrelay_testkit.py``).

Measured over HTTP: ``POST /runs`` followed by the run's SSE stream until its terminal event,
and ``POST /execute``. The RSS of the whole stack is nats-server + API + executor (with its
workers) + suggester; the scripted model is reported separately.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import auth, fsync, model, natsops, phases
from bench.measure import Latency, SystemFigures
from flowrelay import natscluster, natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL, Role
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve

#: Provider keys that must not leak from the developer's shell into the services.
_PROVIDER_KEYS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "MISTRAL_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
)

#: Services start by importing their stack (workers import any-agent): generous on a busy box.
SERVICE_START_TIMEOUT_S = 120.0

#: How long the API may take to see the executor's advertised capabilities.
EXECUTOR_VISIBLE_TIMEOUT_S = 30.0

#: The benchmark's workflow: one agent on the default (scripted) model.
WORKFLOW: dict[str, Any] = {
    "nodes": [
        {
            "id": "n1",
            "type": "agent",
            "position": {"x": 0, "y": 0},
            "data": {"name": "assistant", "instructions": "Answer the user."},
        }
    ],
    "edges": [],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningStack:
    nats: list[subprocess.Popen[bytes]]  # one nats-server, or each node of a cluster
    nats_url: str  # comma-separated for a cluster
    api: ServiceProcess
    executor: ServiceProcess
    suggester: ServiceProcess
    api_url: str
    root: Path
    secrets: Secrets
    monitor_url: str
    profilers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        """Roots of the stack's process trees (the executor's workers are its children)."""
        return [*(p.pid for p in self.nats), self.api.pid, self.executor.pid, self.suggester.pid]

    def services(self) -> dict[str, int]:
        return {
            "nats-server": self.nats[0].pid,
            "api": self.api.pid,
            "executor": self.executor.pid,
            "suggester": self.suggester.pid,
        }


def _env(nats_url: str, model_url: str, api_port: int) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in _PROVIDER_KEYS and not k.startswith("FLOWRELAY_")
    }
    return base | {
        "FLOWRELAY_NATS_URL": nats_url,
        "FLOWRELAY_DEFAULT_MODEL": "scripted:gpt-4o-mini",
        "FLOWRELAY_SCRIPTED_MODEL_URL": model_url,
        "FLOWRELAY_API_HOST": "127.0.0.1",
        "FLOWRELAY_API_PORT": str(api_port),
        "FLOWRELAY_LOG_LEVEL": "INFO",  # the readiness lines are INFO; no per-run lines expected
        # one key drives the whole load: its request rate is what is measured, not capped
        "FLOWRELAY_RATE_LIMIT": "",
        # never the default ports (other stacks on this machine may hold them): free ones
        "FLOWRELAY_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }


def _wait_executor_visible(api_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + EXECUTOR_VISIBLE_TIMEOUT_S
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{api_url}/healthz", timeout=5).json()
            if health.get("executors", 0) >= 1:
                return health
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)  # the API learns executors from a KV watch; nothing to await from here
    raise TimeoutError(
        f"the API does not see an executor after {EXECUTOR_VISIBLE_TIMEOUT_S} s: {health}"
    )


#: Stored writes a sequential run waits for one after another: the record and its index entry
#: (written together), the request, the executor's claim, the last step events (pipelined),
#: the terminal record, the terminal event.
SERIAL_WRITES_PER_RUN = 6

#: The tenant the benchmark's runs belong to.
BENCH_TENANT = "bench"


def _tenant_key(api_url: str, admin_key: str) -> str:
    response = httpx.post(
        f"{api_url}/keys",
        json={"tenant": BENCH_TENANT, "name": "benchmark load"},
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=10,
    )
    response.raise_for_status()
    key = response.json()["key"]
    # On a cluster the API may read the key from a replica that has not got it yet.
    deadline = time.monotonic() + EXECUTOR_VISIBLE_TIMEOUT_S
    while httpx.get(f"{api_url}/auth/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the API does not accept the benchmark's tenant key")
        time.sleep(0.2)  # replication: nothing to await from here
    return key


@contextmanager
def running(
    model_url: str, log_dir: Path, py_spy: str | None = None, *, cluster_replicas: int | None = None
) -> Iterator[RunningStack]:
    """Start the stack (in order: NATS, API, executor, suggester); stop it all afterwards.

    With ``cluster_replicas``, NATS is a local 3-node cluster (``flowrelay.natscluster``) and
    every stream and bucket has that many replicas; otherwise one nats-server (replicas 1).
    """
    root = Path(tempfile.mkdtemp(prefix="flowrelay-bench-"))
    # As deployed: each service its own NATS user, the API behind keys (auth on).
    secrets = Secrets.ensure(root / "secrets")
    # The fsync policy flowrelay deploys with, unless the run asks for another to compare.
    sync = os.environ.get("FLOWRELAY_NATS_SYNC_INTERVAL", DEFAULT_SYNC_INTERVAL)
    if cluster_replicas is None:
        monitor_port = _free_port()
        server = natsserver.start_secure(
            root / "nats", secrets, log_file=log_dir / "nats.log", sync_interval=sync, monitor_port=monitor_port
        )
        nats_url, stop_nats, nats = server.url, server.stop, [server.process]
        monitor_url = f"http://127.0.0.1:{monitor_port}"
    else:
        cluster = natscluster.start(root / "nats", secrets, log_dir=log_dir, sync_interval=sync)
        nats_url, stop_nats = cluster.url, cluster.stop
        nats = [node.server.process for node in cluster.nodes if node.server is not None]
        monitor_url = cluster.nodes[0].monitor_url  # counts of one node (streams are replicated)
    port = _free_port()
    env = _env(nats_url, model_url, port)
    if cluster_replicas is not None:
        env["FLOWRELAY_STREAM_REPLICAS"] = str(cluster_replicas)
    started: list[ServiceProcess] = []

    def service(name: str) -> ServiceProcess:
        role_env = secrets.service_env(Role(name))
        proc = ServiceProcess(
            name, resolve(SERVICE_COMMANDS[name]), env=env | role_env, log_path=log_dir / f"{name}.log"
        ).start()
        started.append(proc)
        return proc

    stack: RunningStack | None = None
    try:
        api = service("api")
        executor = service("executor")
        suggester = service("suggester")
        for proc in (api, executor, suggester):
            proc.wait_ready(timeout=SERVICE_START_TIMEOUT_S)
        api_url = f"http://127.0.0.1:{port}"
        _wait_executor_visible(api_url)
        # The load clients send what a user of the service holds: a key of one tenant with
        # the default scopes (submit, read, cancel), made with the operator's admin key.
        os.environ["FLOWRELAY_API_KEY"] = _tenant_key(api_url, secrets.admin_key())
        stack = RunningStack(nats, nats_url, api, executor, suggester, api_url, root, secrets, monitor_url)
        if py_spy:
            stack.profilers = _start_profilers(py_spy, stack, log_dir / "profiles")
        yield stack
    finally:
        if stack is not None:
            _stop_profilers(stack.profilers)
        for proc in reversed(started):
            proc.terminate(timeout=15)
        stop_nats()
        shutil.rmtree(root, ignore_errors=True)


def _start_profilers(py_spy: str, stack: RunningStack, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on each Python service (the executor with its workers), for the owners' use."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in stack.services().items():
        if name == "nats-server":
            continue
        argv = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--gil",  # only the thread holding the GIL: idle threads and waits drop out
            "--output",
            str(out / f"{name}.txt"),
        ]
        if name == "executor":
            argv.append("--subprocesses")
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # let py-spy attach before the load starts
    return procs


def _stop_profilers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class FlowrelaySizes:
    sequential: int
    batch: int
    rounds: int
    concurrent: int
    delay_s: float
    client_processes: int


def _summarise(seq: dict[str, Any], tp: dict[str, Any]) -> dict[str, Any]:
    for part in (seq, tp):
        part.pop("event_lag_ms", None)
        part.pop("replayed_lag_ms", None)
    return {"sequential": seq, "throughput": tp}


def measure(
    sm: model.ScriptedModel,
    sizes: FlowrelaySizes,
    log_dir: Path,
    py_spy: str | None = None,
    client: str = "raw",
) -> tuple[SystemFigures, SystemFigures, dict[str, Any]]:
    """Figures for ``POST /runs`` + SSE, for ``POST /execute``, and the event latency."""
    started = time.perf_counter()
    with running(sm.url, log_dir, py_spy) as stack:
        startup_s = round(time.perf_counter() - started, 1)
        roots = stack.pids
        url = stack.api_url
        n, batch = sizes.sequential, sizes.batch * sizes.rounds
        bus0 = natsops.BusCounters.read(stack.monitor_url)
        seq_runs = phases.check(
            "POST /runs sequential",
            phases.sequential(url, "flowrelay_runs", n, WORKFLOW, sm, roots, client),
            n,
        )
        # the phase's warm-up runs went through the bus too
        bus_per_run = natsops.per_run(
            bus0, natsops.BusCounters.read(stack.monitor_url), n + phases.WARMUP_RUNS
        )
        seq_exec = phases.check(
            "POST /execute sequential",
            phases.sequential(url, "flowrelay_execute", n, WORKFLOW, sm, roots, client),
            n,
        )
        tp_runs = phases.check(
            "POST /runs batch",
            phases.throughput(
                url, "flowrelay_runs", sizes.batch, sizes.rounds, WORKFLOW, sm, roots, client
            ),
            batch,
        )
        tp_exec = phases.check(
            "POST /execute batch",
            phases.throughput(
                url, "flowrelay_execute", sizes.batch, sizes.rounds, WORKFLOW, sm, roots, client
            ),
            batch,
        )
        conc = phases.concurrent(
            url,
            "flowrelay_runs",
            sizes.concurrent,
            sizes.delay_s,
            sizes.client_processes,
            WORKFLOW,
            sm,
            roots,
            client,
        )
        auth_cost = auth.measure(stack.nats_url, stack.secrets)
    fsync_cost = fsync.measure(bus_per_run["stored_messages"], SERIAL_WRITES_PER_RUN)
    events = {
        "sequential": Latency.of_ms(seq_runs["event_lag_ms"]).__dict__,
        "sequential_replayed": Latency.of_ms(seq_runs["replayed_lag_ms"]).__dict__,
        "throughput_batch": Latency.of_ms(tp_runs["event_lag_ms"]).__dict__,
        "concurrent": Latency.of_ms(conc.pop("event_lag_ms")).__dict__,
    }
    conc["latency"] = conc["latency"].__dict__
    runs_latency: Latency = seq_runs.pop("latency")
    exec_latency: Latency = seq_exec.pop("latency")
    runs = SystemFigures(
        name="flowrelay",
        latency=runs_latency,
        throughput_runs_s=tp_runs["runs_s"],
        throughput_batch=sizes.batch,
        concurrent=conc,
        extra={
            "label": "flowrelay POST /runs + SSE",
            "startup_s": startup_s,
            "auth": auth_cost,
            "bus_per_run": bus_per_run,
            "fsync": fsync_cost,
            **_summarise(seq_runs, tp_runs),
        },
    )
    execute = SystemFigures(
        name="flowrelay_execute",
        latency=exec_latency,
        throughput_runs_s=tp_exec["runs_s"],
        throughput_batch=sizes.batch,
        extra={"label": "flowrelay POST /execute", **_summarise(seq_exec, tp_exec)},
    )
    return runs, execute, events
