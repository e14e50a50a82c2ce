"""``flowrelay up``: the whole pipeline on one machine, no cloud account needed.

Starts an embedded nats-server (JetStream, loopback only, store kept in the data dir)
unless ``FLOWRELAY_NATS_URL`` names one (with ``--nats-cluster N``, a local N-node cluster
from :mod:`flowrelay.natscluster`, each node a program of its own, every stream and bucket at
N replicas: the clustered topology on one machine), the scripted stand-in model when no provider key
is configured, then the executor(s), the suggester and the API, each in a process group of
its own under :class:`~flowrelay.supervisor.Supervisor`: a crashed service is restarted
with backoff, and Ctrl-C (or SIGTERM) stops everything in dependency order, leaving nothing
behind. The data dir is locked while it runs: a second ``up`` on it refuses at once.

Secure from the first start: it generates an admin API key and one NATS user per service
into ``<data dir>/secrets`` (mode 0600), runs nats-server with those users only, and each
service connects as its own user. The CLI picks the admin key up from there.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape

from flowrelay import natscluster, natsserver
from flowrelay.credentials import Secrets
from flowrelay.datadir import AlreadyRunning, DataDirLock, write_state
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL, Role
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve
from flowrelay.supervisor import Handle, Program, StopRequested, Supervisor

#: Provider keys whose presence means "a real model is configured".
PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")

#: Model used offline: priced like gpt-4o-mini so the cost column shows real arithmetic.
SCRIPTED_DEFAULT_MODEL = "scripted:gpt-4o-mini"

#: Seconds a service gets to become ready at the first start (an executor imports any-agent).
READY_TIMEOUT_S = 180.0

#: Longest wait for the API to see the executors once all are ready.
EXECUTORS_KNOWN_TIMEOUT_S = 15.0

#: Stop order: what takes requests first, then the executors (they drain), then what they use.
RANK_FRONT, RANK_EXECUTORS, RANK_MODEL, RANK_NATS = 0, 1, 2, 3

#: Seconds an executor gets to stop beyond its own drain grace (handing back, closing workers).
EXECUTOR_STOP_MARGIN_S = 15.0
DEFAULT_DRAIN_GRACE_S = 20.0

_COLOURS = {"api": "cyan", "executor": "green", "suggester": "magenta", "scripted-model": "yellow", "nats": "blue"}
_METRICS_LINE = r"metrics on (http://\S+:(\d+)/metrics)"


@dataclass
class UpOptions:
    executors: int = 1
    workers: int | None = None
    data_dir: Path = Path(".flowrelay")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    nats_port: int = 4222
    scripted_port: int = 9100
    #: First Prometheus port: executors get it and the next ones, the suggester the one after
    #: them (9101, 9102 with one executor). 0: free ports (shown in the banner); -1: off.
    metrics_port: int = 9101
    #: Nodes of the embedded NATS: 1, one server; more, a local cluster on client ports
    #: nats_port, nats_port + 1, ... with every stream and bucket at that many replicas.
    nats_cluster: int = 1


def up(options: UpOptions, console: Console | None = None) -> int:
    """Run the stack until asked to stop; the exit status of ``flowrelay up``."""
    console = console or Console()
    data_dir = options.data_dir.resolve()
    try:
        lock = DataDirLock.acquire(data_dir, api=f"http://{options.api_host}:{options.api_port}")
    except AlreadyRunning as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    try:
        return _LocalStack(options, data_dir, console).run()
    finally:
        lock.release()


class _LocalStack:
    """The programs of one ``flowrelay up`` and how each is started."""

    def __init__(self, options: UpOptions, data_dir: Path, console: Console) -> None:
        self.options = options
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.console = console
        self.env = dict(os.environ)
        self.secrets = Secrets.ensure(data_dir / "secrets")
        self.supervisor = Supervisor(say=self._say, on_change=self._write_state)
        self.nats_url = self.env.get("FLOWRELAY_NATS_URL", "")
        self.embedded = not self.nats_url
        self.cluster: natscluster.NatsCluster | None = None
        self.scripted_url: str | None = None
        self._ports: dict[str, int] = {}  # pinned at the first start, so restarts keep them

    # -- the run ------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        sup = self.supervisor
        sup.install_signals()
        code = 0
        try:
            self._start_all()
            sup.started()
            self._banner(time.monotonic() - started)
            sup.run()
        except StopRequested:
            pass
        except (RuntimeError, TimeoutError, OSError) as exc:
            self.console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            code = 1
        finally:
            stopped = sup.stop()
            sup.restore_signals()
        return code or stopped

    def _start_all(self) -> None:
        sup = self.supervisor
        if self.embedded and self.options.nats_cluster > 1:
            self._start_cluster()
        elif self.embedded:
            nats = sup.start(Program("nats", self._start_nats, RANK_NATS, stop_timeout_s=10))
            sup.wait_ready(nats)
        self.env["FLOWRELAY_NATS_URL"] = self.nats_url
        if not self.env.get("FLOWRELAY_DEFAULT_MODEL") and not any(self.env.get(k) for k in PROVIDER_KEYS):
            model = sup.start(Program("scripted-model", self._service("scripted-model", "scripted-model"),
                                      RANK_MODEL, stop_timeout_s=5, ready=self._ready))
            sup.wait_ready(model)
            assert isinstance(model.handle, ServiceProcess)
            self.scripted_url = model.handle.wait_ready().group(1)
            self._ports["scripted-model"] = int(self.scripted_url.rsplit(":", 1)[1].split("/")[0])
            self.env |= {
                "FLOWRELAY_DEFAULT_MODEL": SCRIPTED_DEFAULT_MODEL,
                "FLOWRELAY_SCRIPTED_MODEL_URL": self.scripted_url,
                "FLOWRELAY_DEFAULT_API_BASE": self.scripted_url,
            }
        self.env |= {"FLOWRELAY_API_HOST": self.options.api_host, "FLOWRELAY_API_PORT": str(self.options.api_port)}
        if self.options.workers:
            self.env["FLOWRELAY_WORKERS"] = str(self.options.workers)
        drain = float(self.env.get("FLOWRELAY_DRAIN_GRACE_S") or DEFAULT_DRAIN_GRACE_S)
        services = [
            Program(f"executor-{i + 1}", self._service("executor", f"executor-{i + 1}"), RANK_EXECUTORS,
                    stop_timeout_s=drain + EXECUTOR_STOP_MARGIN_S, ready=self._ready)
            for i in range(self.options.executors)
        ]
        services.append(Program("suggester", self._service("suggester", "suggester"), RANK_FRONT, ready=self._ready))
        api = f"http://{self.options.api_host}:{self.options.api_port}"
        services.append(Program("api", self._service("api", "api"), RANK_FRONT, ready=self._ready,
                                info={"metrics": f"{api}/metrics"}))
        for program in services:
            sup.start(program)
        for program in services:
            sup.wait_ready(program)
        self._await_executors_known(api)

    def _await_executors_known(self, api: str) -> None:
        """Wait until the API has seen the executors (it reads their entries every 2 s), so
        that "up" means runs and ``flowrelay status`` work at once."""
        if self.env.get("FLOWRELAY_API_TLS_CERT"):
            return  # https on a certificate of the user's: nothing to check here
        deadline = time.monotonic() + EXECUTORS_KNOWN_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if httpx.get(f"{api}/healthz", timeout=5).json().get("executors", 0) >= self.options.executors:
                    return
            time.sleep(0.1)

    # -- starting each program ----------------------------------------------------------

    def _start_nats(self) -> Handle:
        try:
            sync = self.env.get("FLOWRELAY_NATS_SYNC_INTERVAL", DEFAULT_SYNC_INTERVAL)
            server = natsserver.start_secure(self.data_dir / "nats", self.secrets,
                                             port=self._ports.get("nats", self.options.nats_port),
                                             sync_interval=sync, log_file=self.logs / "nats.log")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {_last_line(self.logs / 'nats.log')}") from None
        self._ports["nats"] = server.port
        self.nats_url = server.url
        return server

    def _start_cluster(self) -> None:
        """Every node a program (a crashed node is restarted on its ports and store like any
        service); all are launched before any is waited for, as a node is ready only once a
        majority runs."""
        size, first = self.options.nats_cluster, self.options.nats_port
        sync = self.env.get("FLOWRELAY_NATS_SYNC_INTERVAL", DEFAULT_SYNC_INTERVAL)
        cluster = self.cluster = natscluster.NatsCluster(
            self.data_dir / "nats-cluster", self.secrets, size=size, ports=[first + i for i in range(size)],
            log_dir=self.logs, sync_interval=sync)
        nodes = [
            self.supervisor.start(Program(
                f"nats-{i + 1}", lambda node=node: cluster.launch(node), RANK_NATS, stop_timeout_s=10,
                ready=lambda _handle, node=node: cluster.wait_node_ready(node)))
            for i, node in enumerate(cluster.nodes)
        ]
        for program in nodes:
            self.supervisor.wait_ready(program)
        self.nats_url = cluster.url  # every node: the client picks one and fails over to the rest
        self.env["FLOWRELAY_STREAM_REPLICAS"] = str(size)

    def _service(self, service: str, label: str) -> Callable[[], Handle]:
        """A start function for ``service``: a fresh process with the environment as of now."""

        def start() -> Handle:
            env = self.env | self._credentials(service) | self._metrics_env(label)
            extra = []
            if service == "scripted-model":
                extra = ["--host", "127.0.0.1", "--port", str(self._ports.get(label, self.options.scripted_port))]
            return ServiceProcess(
                service, resolve(SERVICE_COMMANDS[service]) + extra, env=env, log_path=self.logs / f"{label}.log",
                echo=lambda _name, line: self._echo(label, line),
            ).start()

        return start

    def _ready(self, handle: Handle) -> None:
        assert isinstance(handle, ServiceProcess)
        try:
            handle.wait_ready(timeout=READY_TIMEOUT_S)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {_last_line(handle.log_path)}") from None
        for program in self.supervisor.programs:
            if program.handle is handle and (found := handle.find(_METRICS_LINE)):
                program.info["metrics"] = found.group(1)
                self._ports.setdefault(f"metrics:{program.name}", int(found.group(2)))

    def _credentials(self, service: str) -> dict[str, str]:
        role = {"api": Role.API, "executor": Role.EXECUTOR, "suggester": Role.SUGGESTER}.get(service)
        if role is None:
            return {}
        if self.embedded:
            return self.secrets.service_env(role)
        # an external NATS (FLOWRELAY_NATS_URL) comes with its users in the environment
        return {"FLOWRELAY_BOOTSTRAP_KEY_FILE": str(self.secrets.admin_key_file)} if role == Role.API else {}

    def _metrics_env(self, label: str) -> dict[str, str]:
        base = self.options.metrics_port
        if label.startswith("executor-"):
            offset = int(label.split("-")[1]) - 1
        elif label == "suggester":
            offset = self.options.executors
        else:
            return {}
        port = self._ports.get(f"metrics:{label}", base if base <= 0 else base + offset)
        return {"FLOWRELAY_METRICS_PORT": str(port)}

    # -- output -------------------------------------------------------------------------

    def _echo(self, name: str, line: str) -> None:
        if not self.supervisor.quiet:
            self.console.print(f"[{_COLOURS.get(name.split('-')[0], 'white')}]{name:>14}[/] | {escape(line)}",
                               highlight=False, soft_wrap=True)

    def _say(self, line: str) -> None:
        self.console.print(f"[bold]{'flowrelay':>14}[/] | {line}", highlight=False, soft_wrap=True)

    def _write_state(self, programs: list[Program]) -> None:
        write_state(self.data_dir, {
            "pid": os.getpid(),
            "api": f"http://{self.options.api_host}:{self.options.api_port}",
            "nats": self.nats_url,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "services": [
                {"name": p.name, "pid": p.pid, "state": p.state, "restarts": p.restarts, **p.info}
                for p in programs
            ],
        })

    def _banner(self, ready_s: float) -> None:
        """Where everything is, one fact per line (never wrapped, so URLs stay copyable)."""
        o, secrets = self.options, self.secrets
        api = f"http://{o.api_host}:{o.api_port}"
        where = self.data_dir / ("nats-cluster" if self.cluster else "nats")
        topology = (f"{len(self.cluster.nodes)}-node cluster, every stream and bucket at "
                    f"{len(self.cluster.nodes)} replicas, ") if self.cluster else ""
        store = (f" (embedded, {topology}JetStream store in {where}; users only, passwords in "
                 f"{secrets.root / 'nats'})") if self.embedded else ""
        model = self.env.get("FLOWRELAY_DEFAULT_MODEL", "openai:gpt-4o-mini")
        if self.scripted_url:
            model = (f"[yellow]{model} -- SCRIPTED stand-in model at {self.scripted_url} (no provider key set; "
                     "it answers 'echo: <input>', it is not a real LLM)[/]")
        workers = self.env.get("FLOWRELAY_WORKERS", "2")
        metrics = [f"{p.info['metrics']} ({p.name}{'; a key with the metrics scope' if p.name == 'api' else ''})"
                   for p in self.supervisor.programs if "metrics" in p.info]
        metrics.sort(key=lambda line: not line.startswith(api))  # the API's first
        otlp = self.env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or self.env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        lines = [
            f"[bold green]flowrelay is up[/] (ready in {ready_s:.1f} s)",
            f"  API        {api}   (docs: {api}/docs)",
            f"  console    {api}/ui/   (log in with the API key below)",
            f"  NATS       {self.nats_url}{store}",
            f"  executors  {o.executors} ({workers} worker process{'' if workers == '1' else 'es'} each)",
            f"  model      {model}",
            f"  API key    {secrets.admin_key_file}   (admin, tenant 'default'; the CLI reads it from there)",
            f"  metrics    {metrics[0]}",
            *(f"             {line}" for line in metrics[1:]),
            f"  traces     {'OTLP to ' + otlp if otlp else 'not exported (set OTEL_EXPORTER_OTLP_ENDPOINT)'}",
            f"  logs       {self.logs}   (flowrelay logs [SERVICE] -f)",
            f"  status     flowrelay status   (supervisor pid {os.getpid()}; crashed services are restarted)",
            f"  try        curl -s {api}/runs -H \"Authorization: Bearer $(cat {secrets.admin_key_file})\" "
            "-H 'content-type: application/json' -d @examples/simple.json",
            "Press Ctrl-C to stop.",
        ]
        for line in lines:
            self.console.print(line, soft_wrap=True, highlight=False)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (why a program would not start), or a pointer to it."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return re.sub(r"\s+", " ", lines[-1])[:300] + f" (see {path})" if lines else f"see {path}"
