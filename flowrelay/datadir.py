"""What ``flowrelay up`` keeps in its data dir besides the store: a lock and its state.

``up.lock`` is held (``flock``, exclusive) for as long as a supervisor runs on the data dir,
so a second ``flowrelay up`` on the same directory refuses at once, before it would start
a nats-server on a store another server has open. The kernel drops the lock when its
holder dies, however it dies: there is never a stale lock to clean up. The file names the
holder (pid, API URL) for the refusal message.

``up.json`` describes the running stack (its services, their pids, restarts and metrics
ports) for ``flowrelay status``; it is replaced atomically on every change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_FILE = "up.lock"
STATE_FILE = "up.json"


class AlreadyRunning(Exception):
    """Another ``flowrelay up`` holds the data dir."""

    def __init__(self, data_dir: Path, holder: dict[str, Any]) -> None:
        self.holder = holder
        pid = holder.get("pid", "?")
        api = holder.get("api", "?")
        super().__init__(
            f"flowrelay is already running on {data_dir} (pid {pid}, API on {api}); "
            "stop it first (Ctrl-C in its terminal, or kill -TERM "
            f"{pid}), or pass another --data-dir"
        )


@dataclass
class DataDirLock:
    """The exclusive lock of one data dir, held through an open file descriptor."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, data_dir: Path, *, api: str) -> DataDirLock:
        """Lock ``data_dir`` for this process, or raise :class:`AlreadyRunning` at once."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(data_dir, read_holder(data_dir)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "api": api}) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def read_holder(data_dir: Path) -> dict[str, Any]:
    """Who holds the lock, as it wrote itself into the file ({} if unreadable)."""
    try:
        holder = json.loads((data_dir / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def is_locked(data_dir: Path) -> bool:
    """Whether a ``flowrelay up`` runs on ``data_dir`` now."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``up.json`` in one step (readers never see half a file)."""
    tmp = data_dir / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The running stack's state, or None when no ``flowrelay up`` holds ``data_dir``."""
    if not is_locked(data_dir):
        return None
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
