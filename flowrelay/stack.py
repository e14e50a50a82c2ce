"""Starting flowrelay's services as local processes: for ``flowrelay up`` and the tests.

The command of each service is defined once, here; ``compose.yaml`` runs the same
commands (a test checks the two agree), so the local stack, the tests and a compose
deployment cannot drift apart.

A :class:`ServiceProcess` captures its output line by line into a log file (and, for
``flowrelay up``, the console), and lets callers wait for a line that marks readiness:
an event the service itself reports, rather than a guess with sleeps or polling.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Console script of each service; compose.yaml's ``command:`` must match these.
SERVICE_COMMANDS: dict[str, list[str]] = {
    "api": ["flowrelay-api"],
    "executor": ["flowrelay-executor"],
    "suggester": ["flowrelay-suggester"],
    "scripted-model": ["flowrelay-scripted-model"],
}

#: A line each service prints once it serves (uvicorn's and FastStream's own messages).
READY_MARKERS: dict[str, str] = {
    "api": r"Uvicorn running on",  # after the socket is bound ("startup complete" comes before)
    "executor": r"FastStream app started successfully",
    "suggester": r"FastStream app started successfully",
    "scripted-model": r"SCRIPTED_MODEL_URL=(\S+)",
}


#: The executors' own environment (``make install FRAMEWORKS=...``), beside this one's.
EXECUTOR_VENV_ENV = "FLOWRELAY_EXECUTOR_VENV"
EXECUTOR_VENV_NAME = ".venv-executor"


def executor_bin() -> Path:
    """Where executors are started from: the executor environment when it exists.

    The frameworks' dependencies live only there (its own lock), so they never change what
    the API and the suggester run on. ``FLOWRELAY_EXECUTOR_VENV`` names another one; without
    any, executors run from this interpreter's environment (tinyagent only).
    """
    configured = os.environ.get(EXECUTOR_VENV_ENV)
    venv = Path(configured) if configured else Path(sys.prefix).parent / EXECUTOR_VENV_NAME
    scripts = venv / "bin"
    return scripts if (scripts / SERVICE_COMMANDS["executor"][0]).exists() else Path(sys.executable).parent


def resolve(command: Sequence[str]) -> list[str]:
    """Find a console script next to this interpreter (the venv need not be on PATH);
    the executor's in the executor environment (see :func:`executor_bin`)."""
    folder = executor_bin() if list(command[:1]) == SERVICE_COMMANDS["executor"][:1] else Path(sys.executable).parent
    script = folder / command[0]
    return [str(script) if script.exists() else command[0], *command[1:]]


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``process``, wait up to ``timeout`` seconds, then SIGKILL; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (no orphans after a crash)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServiceProcess:
    """One service running as a child process, with its output captured."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self._echo = echo
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the supervisor, which stops us in order
            preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()
        return self

    def wait_for(self, pattern: str, *, timeout: float = 60.0, after: int = 0) -> re.Match[str]:
        """Block until a line matching ``pattern`` appears (lines from index ``after`` on)."""
        regex = re.compile(pattern)
        seen = after
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self._lines)
                if self.process is not None and self.process.poll() is not None and self._reader_done():
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
                if not self._changed.wait(timeout):
                    raise TimeoutError(f"{self.name}: no line matching {pattern!r} in {timeout} s; see {self.log_path}")

    def find(self, pattern: str) -> re.Match[str] | None:
        """The last line so far matching ``pattern``, without waiting."""
        regex = re.compile(pattern)
        with self._changed:
            for line in reversed(self._lines):
                if match := regex.search(line):
                    return match
        return None

    def wait_ready(self, *, timeout: float = 60.0) -> re.Match[str]:
        return self.wait_for(READY_MARKERS[self.name], timeout=timeout)

    @property
    def line_count(self) -> int:
        with self._changed:
            return len(self._lines)

    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        code = terminate(self.process, timeout)
        self._join()
        return code

    def kill(self) -> None:
        """SIGKILL the whole session (the service and its worker processes)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._join()

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(5)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace")
                if self._echo is not None:
                    self._echo(self.name, line.rstrip("\n"))
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()
