"""``flowrelay up``: the whole pipeline on one machine, no cloud account needed.

Starts an embedded nats-server (JetStream, loopback only, store kept in the data dir)
unless ``FLOWRELAY_NATS_URL`` names one, the scripted stand-in model when no provider key
is configured, then the API, the executor(s) and the suggester as child processes. Ctrl-C
or SIGTERM stops them in reverse order (executors drain first) and leaves nothing behind.

Secure from the first start: it generates an admin API key and one NATS user per service
into ``<data dir>/secrets`` (mode 0600), runs nats-server with those users only, and each
service connects as its own user. The CLI picks the admin key up from there.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL, Role
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve

#: Provider keys whose presence means "a real model is configured".
PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")

#: Model used offline: priced like gpt-4o-mini so the cost column shows real arithmetic.
SCRIPTED_DEFAULT_MODEL = "scripted:gpt-4o-mini"

_COLOURS = {"api": "cyan", "executor": "green", "suggester": "magenta", "scripted-model": "yellow"}


@dataclass
class UpOptions:
    executors: int = 1
    workers: int | None = None
    data_dir: Path = Path(".flowrelay")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    nats_port: int = 4222
    scripted_port: int = 9100


def up(options: UpOptions, console: Console | None = None) -> int:
    console = console or Console()
    started = time.monotonic()
    data_dir = options.data_dir.resolve()
    logs = data_dir / "logs"
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def echo(name: str, line: str) -> None:
        console.print(f"[{_COLOURS.get(name, 'white')}]{name:>14}[/] | {line}", markup=True, highlight=False, soft_wrap=True)

    env = dict(os.environ)
    children: list[ServiceProcess] = []
    server: natsserver.NatsServer | None = None
    secrets = Secrets.ensure(data_dir / "secrets")
    try:
        nats_url = env.get("FLOWRELAY_NATS_URL")
        if not nats_url:
            sync = env.get("FLOWRELAY_NATS_SYNC_INTERVAL", DEFAULT_SYNC_INTERVAL)
            server = natsserver.start_secure(data_dir / "nats", secrets, port=options.nats_port, sync_interval=sync,
                                             log_file=logs / "nats.log")
            nats_url = server.url
        env["FLOWRELAY_NATS_URL"] = nats_url

        scripted_url = None
        if not env.get("FLOWRELAY_DEFAULT_MODEL") and not any(env.get(k) for k in PROVIDER_KEYS):
            model = _start("scripted-model", env, logs, echo, children,
                           extra=["--host", "127.0.0.1", "--port", str(options.scripted_port)])
            scripted_url = model.wait_ready().group(1)
            env |= {
                "FLOWRELAY_DEFAULT_MODEL": SCRIPTED_DEFAULT_MODEL,
                "FLOWRELAY_SCRIPTED_MODEL_URL": scripted_url,
                "FLOWRELAY_DEFAULT_API_BASE": scripted_url,
            }
        env |= {"FLOWRELAY_API_HOST": options.api_host, "FLOWRELAY_API_PORT": str(options.api_port)}
        if options.workers:
            env["FLOWRELAY_WORKERS"] = str(options.workers)

        def service_env(role: Role) -> dict[str, str]:
            if server is not None:
                return env | secrets.service_env(role)
            # an external NATS (FLOWRELAY_NATS_URL) comes with its users in the environment
            return env | ({"FLOWRELAY_BOOTSTRAP_KEY_FILE": str(secrets.admin_key_file)} if role == Role.API else {})

        executors = [_start("executor", service_env(Role.EXECUTOR), logs, echo, children, label=f"executor-{i + 1}")
                     for i in range(options.executors)]
        suggester = _start("suggester", service_env(Role.SUGGESTER), logs, echo, children)
        api = _start("api", service_env(Role.API), logs, echo, children)
        for proc in [*executors, suggester, api]:
            proc.wait_ready(timeout=180)

        _summary(console, options, nats_url, embedded=server is not None, scripted_url=scripted_url,
                 model=env.get("FLOWRELAY_DEFAULT_MODEL", "openai:gpt-4o-mini"), data_dir=data_dir,
                 ready_s=time.monotonic() - started, secrets=secrets)
        while not stop.wait(0.5):
            dead = [c for c in children if c.process is not None and c.process.poll() is not None]
            if dead:
                console.print(f"[red]{dead[0].name} exited with {dead[0].process.returncode}; stopping[/]")  # type: ignore[union-attr]
                return 1
        return 0
    finally:
        console.print("[bold]stopping flowrelay...[/]")
        for child in reversed(children):  # api first, executors drain, the model last
            child.terminate(timeout=30)
        if server is not None:
            server.stop()
        console.print("[bold]stopped[/]")


def _start(name: str, env: dict[str, str], logs: Path, echo, children: list[ServiceProcess], *,
           label: str | None = None, extra: list[str] | None = None) -> ServiceProcess:
    proc = ServiceProcess(
        name, resolve(SERVICE_COMMANDS[name]) + (extra or []), env=env,
        log_path=logs / f"{label or name}.log", echo=lambda _n, line: echo(label or name, line),
    )
    children.append(proc)
    return proc.start()


def _summary(console: Console, options: UpOptions, nats_url: str, *, embedded: bool, scripted_url: str | None,
             model: str, data_dir: Path, ready_s: float, secrets: Secrets) -> None:
    """Where everything is, one fact per line (never wrapped, so URLs stay copyable)."""
    api = f"http://{options.api_host}:{options.api_port}"
    store = (f" (embedded, JetStream store in {data_dir / 'nats'}; users only, passwords in "
             f"{secrets.root / 'nats'})") if embedded else ""
    if scripted_url:
        model = (f"[yellow]{model} -- SCRIPTED stand-in model at {scripted_url} (no provider key set; "
                 "it answers 'echo: <input>', it is not a real LLM)[/]")
    lines = [
        f"[bold green]flowrelay is up[/] (ready in {ready_s:.1f} s)",
        f"  API        {api}   (docs: {api}/docs)",
        f"  console    {api}/ui/   (log in with the API key below)",
        f"  NATS       {nats_url}{store}",
        f"  executors  {options.executors}",
        f"  model      {model}",
        f"  API key    {secrets.admin_key_file}   (admin, tenant 'default'; the CLI reads it from there)",
        f"  logs       {data_dir / 'logs'}",
        f"  try        curl -s {api}/runs -H \"Authorization: Bearer $(cat {secrets.admin_key_file})\" "
        "-H 'content-type: application/json' -d @examples/simple.json",
        "Press Ctrl-C to stop.",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
