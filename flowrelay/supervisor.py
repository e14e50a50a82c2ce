"""The supervisor behind ``flowrelay up``: start, watch, restart and stop the stack's processes.

Each program (nats-server, the scripted model, the API, the executors, the suggester) runs in
a process group of its own, so a Ctrl-C in the terminal reaches only the supervisor, which
then stops them in dependency order: whatever takes requests first (API, suggester), then
the executors (they drain their runs), then what they depend on (the model, NATS). One line
per program says how it ended; nothing else is printed while stopping (the logs keep it all).
A second Ctrl-C kills every group at once.

While running, a program that exits (a crash, a SIGKILL, the OOM killer) is started again
after a backoff that doubles per quick failure (:data:`RESTART_BASE_DELAY_S` up to
:data:`RESTART_MAX_DELAY_S`; it resets once the program stayed up :data:`STABLE_AFTER_S`),
with a log line each time. The stack stops only when asked to (SIGINT, SIGTERM, SIGHUP).

Everything is event-driven: one thread per child waits for its exit and wakes the main loop,
which otherwise sleeps until a signal or the next restart is due.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: First restart delay; it doubles with each restart that follows a short life.
RESTART_BASE_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0

#: A program that ran this long before it exited is restarted after the base delay again.
STABLE_AFTER_S = 30.0

#: Exit status of ``flowrelay up`` after a forced stop (the shell's "killed by SIGINT").
FORCED_EXIT = 130

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Handle(Protocol):
    """What :attr:`Program.start` returns: something with the child's ``Popen``."""

    process: subprocess.Popen[bytes]


class StopRequested(Exception):
    """A stop signal arrived while the stack was still starting."""


@dataclass
class Program:
    """One supervised program: how to start it, wait for it, and when to stop it.

    ``start`` launches it and returns its handle (it may block until the process runs);
    ``ready`` blocks until it serves and raises if it never will. ``stop_rank``: programs
    are stopped in increasing rank, those of one rank together. ``info`` is free-form
    detail for the state file (e.g. its metrics URL).
    """

    name: str
    start: Callable[[], Handle]
    stop_rank: int
    stop_timeout_s: float = 15.0
    ready: Callable[[Handle], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    handle: Handle | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    delay_s: float = 0.0  # the next restart's delay (set by the supervisor)
    state: str = "new"

    @property
    def pid(self) -> int | None:
        return self.handle.process.pid if self.handle is not None else None

    def exit_code(self) -> int | None:
        return self.handle.process.poll() if self.handle is not None else None


Say = Callable[[str], None]


class Supervisor:
    """Runs :class:`Program` objects until asked to stop; see the module docstring."""

    def __init__(
        self,
        *,
        say: Say,
        on_change: Callable[[list[Program]], None] | None = None,
        base_delay_s: float = RESTART_BASE_DELAY_S,
        max_delay_s: float = RESTART_MAX_DELAY_S,
        stable_after_s: float = STABLE_AFTER_S,
    ) -> None:
        self.programs: list[Program] = []
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._stable_after_s = stable_after_s
        self._say = say
        self._on_change = on_change or (lambda _programs: None)
        self._wake = threading.Event()
        self._stop_requested = False
        self._starting = True
        self._forced = False
        #: True once stopping began: the console then shows only the supervisor's lines.
        self.quiet = False
        self._previous: dict[int, Any] = {}

    # -- signals ------------------------------------------------------------------------

    def install_signals(self) -> None:
        for signum in _STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore_signals(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stop_requested:
            self._force()
            return
        self.request_stop()
        if self._starting:
            raise StopRequested(signal.Signals(signum).name)

    def request_stop(self) -> None:
        """Make :meth:`run` return (what the first stop signal does); thread-safe."""
        self._stop_requested = True
        self._wake.set()

    def _force(self) -> None:
        if self._forced:
            return
        self._forced = True
        self._say("[red]second stop signal: killing everything now[/]")
        for program in self.programs:
            _kill_group(program)

    # -- starting -----------------------------------------------------------------------

    def start(self, program: Program) -> Program:
        """Start ``program`` (not waiting for it to be ready); it is supervised from now on."""
        if program not in self.programs:
            program.delay_s = self._base_delay_s
            self.programs.append(program)
        self._launch(program)
        return program

    def wait_ready(self, program: Program) -> None:
        """Block until ``program`` is ready; raises (``RuntimeError``, ``TimeoutError``) if not."""
        if program.ready is not None and program.handle is not None:
            program.ready(program.handle)
        program.state = "running"
        self._changed()

    def started(self) -> None:
        """The stack is up: from now on a stop signal stops it (no exception in start-up code)."""
        self._starting = False
        if self._stop_requested:  # arrived between the last start-up step and this one
            raise StopRequested("signal")

    def _launch(self, program: Program) -> None:
        program.state = "starting"
        program.restart_at = None
        program.handle = program.start()
        program.started_at = time.monotonic()
        process = program.handle.process
        threading.Thread(target=self._watch, args=(process,), name=f"watch-{program.name}", daemon=True).start()
        self._changed()

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(Exception):
            process.wait()
        self._wake.set()

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Watch the programs, restarting those that exit, until a stop signal."""
        while not self._stop_requested:
            due = [p.restart_at for p in self.programs if p.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop_requested:
                return
            now = time.monotonic()
            for program in self.programs:
                if program.restart_at is None and program.state != "stopped" and program.exit_code() is not None:
                    self._schedule_restart(program, now)
                elif program.restart_at is not None and program.restart_at <= now:
                    self._restart(program)

    def _schedule_restart(self, program: Program, now: float) -> None:
        code = program.exit_code()
        _kill_group(program)  # what it left behind (worker processes) goes with it
        if now - program.started_at >= self._stable_after_s:
            program.delay_s = self._base_delay_s
        delay = program.delay_s
        program.delay_s = min(delay * 2, self._max_delay_s)
        program.restart_at = now + delay
        program.state = "restarting"
        self._say(f"[red]{program.name} exited with {_describe(code)}[/]; restarting it in {delay:.3g} s")
        self._changed()

    def _restart(self, program: Program) -> None:
        program.restarts += 1
        try:
            self._launch(program)
        except Exception as exc:  # noqa: BLE001 - e.g. its port is still taken: try again later
            program.restart_at = time.monotonic() + program.delay_s
            program.delay_s = min(program.delay_s * 2, self._max_delay_s)
            self._say(f"[red]{program.name} did not start again ({exc})[/]; next try in {program.restart_at - time.monotonic():.0f} s")
            return
        threading.Thread(target=self._announce, args=(program, program.handle), daemon=True).start()

    def _announce(self, program: Program, handle: Handle) -> None:
        try:
            if program.ready is not None:
                program.ready(handle)
        except Exception as exc:  # noqa: BLE001 - its exit (if it exits) is handled by run()
            if not self.quiet:
                self._say(f"[red]{program.name} restarted but is not ready: {exc}[/]")
            return
        if program.handle is handle and not self.quiet:
            program.state = "running"
            self._say(f"[green]{program.name} is back[/] (pid {handle.process.pid}, restart {program.restarts})")
            self._changed()

    # -- stopping -----------------------------------------------------------------------

    def stop(self) -> int:
        """Stop every program in rank order, one line each; 0, or :data:`FORCED_EXIT`."""
        self.quiet = True
        self._stop_requested = True  # a signal from now on forces
        self._starting = False
        alive = [p for p in self.programs if p.handle is not None and p.exit_code() is None]
        if alive:
            self._say("[bold]stopping flowrelay[/] (Ctrl-C again to kill everything at once)")
        for rank in sorted({p.stop_rank for p in self.programs}):
            self._stop_together([p for p in self.programs if p.stop_rank == rank])
        self._changed()
        self._say("[bold]stopped[/]" if not self._forced else "[bold red]killed[/]")
        return FORCED_EXIT if self._forced else 0

    def _stop_together(self, programs: list[Program]) -> None:
        begun = time.monotonic()
        pending: dict[str, Program] = {}
        for program in programs:
            program.restart_at = None
            if program.handle is None:
                program.state = "stopped"
                continue
            code = program.exit_code()
            if code is not None:  # killed by a forced stop, or died and not restarted yet
                _kill_group(program)
                if program.state == "restarting":
                    self._say(f"  {program.name:<14} was not running (it had exited with {_describe(code)})")
                else:
                    self._say(f"  {program.name:<14} {_ending(code)} after {time.monotonic() - begun:.1f} s")
                program.state = "stopped"
                continue
            with contextlib.suppress(ProcessLookupError):
                program.handle.process.send_signal(signal.SIGTERM)
            pending[program.name] = program
        killed: set[str] = set()  # those past their stop timeout, SIGKILLed
        while pending:
            now = time.monotonic()
            for name, program in list(pending.items()):
                code = program.exit_code()
                if code is not None:
                    _kill_group(program)  # anything it left behind
                    program.state = "stopped"
                    del pending[name]
                    self._say(f"  {name:<14} {_ending(code)} after {now - begun:.1f} s")
                elif now - begun >= program.stop_timeout_s and name not in killed:
                    killed.add(name)
                    self._say(f"  {name:<14} did not stop within {program.stop_timeout_s:.3g} s: killing it")
                    _kill_group(program)
            deadlines = [begun + p.stop_timeout_s for n, p in pending.items() if n not in killed]
            if pending:
                self._wake.wait(max(0.01, min(deadlines, default=now + 1.0) - now))
                self._wake.clear()

    def _changed(self) -> None:
        with contextlib.suppress(Exception):
            self._on_change(self.programs)


def _kill_group(program: Program) -> None:
    """SIGKILL the program's process group (its own session, so only its processes)."""
    if program.handle is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(program.handle.process.pid, signal.SIGKILL)


def _ending(code: int) -> str:
    if code == -signal.SIGKILL:
        return "killed"
    # uvicorn shuts down cleanly on SIGTERM and then re-raises it, so it ends "killed by SIGTERM"
    clean = code in (0, -signal.SIGTERM)
    return "stopped" if clean else f"stopped with exit status {_describe(code)} (see its log)"


def _describe(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)
