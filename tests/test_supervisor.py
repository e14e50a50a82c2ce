"""The supervisor behind ``flowrelay up``, with real (tiny) processes: restarts with backoff,
stop order, kill after the stop timeout, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flowrelay.supervisor import FORCED_EXIT, Program, Supervisor

pytestmark = pytest.mark.timeout(60)


@dataclass
class Child:
    process: subprocess.Popen[bytes]


def python(code: str) -> Child:
    return Child(subprocess.Popen([sys.executable, "-c", code], start_new_session=True))


def ready_python(code: str) -> Child:
    """A child that prints a line once its signal handlers are in place; returns after that line."""
    process = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\ntime.sleep(60)"],
                               start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return Child(process)


class Lines:
    """What the supervisor says, with a way to wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait(self, predicate, timeout: float = 30) -> None:  # noqa: ANN001
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self.lines), timeout), self.lines


def test_a_crashing_program_is_restarted_with_doubling_delays() -> None:
    said = Lines()
    sup = Supervisor(say=said, base_delay_s=0.05, max_delay_s=0.2, stable_after_s=60)
    sup.start(Program("crasher", lambda: python("import sys; sys.exit(3)"), stop_rank=0))
    runner = threading.Thread(target=sup.run)
    runner.start()
    said.wait(lambda lines: sum("exited with 3" in line for line in lines) >= 5)
    sup.request_stop()
    runner.join(10)
    assert sup.stop() == 0
    delays = [line.split("restarting it in ")[1] for line in said.lines if "restarting it in" in line][:5]
    assert delays == ["0.05 s", "0.1 s", "0.2 s", "0.2 s", "0.2 s"]
    assert sup.programs[0].restarts >= 4


def test_programs_stop_in_rank_order_one_line_each(tmp_path: Path) -> None:
    said = Lines()
    sup = Supervisor(say=said)
    report = tmp_path / "front-alive-when-backend-got-sigterm"
    # the front takes 0.3 s to stop; the backend notes whether the front was still alive when it was asked to stop
    front = sup.start(Program("front", lambda: ready_python(
        "import signal, time, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.3), sys.exit(0)))"), stop_rank=0))
    sup.start(Program("backend", lambda: ready_python(
        "import os, signal, sys, time\n"
        f"def stop(*_):\n    open({str(report)!r}, 'w').write(str(os.path.exists('/proc/{front.pid}')))\n    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)"), stop_rank=1))
    assert sup.stop() == 0
    assert report.read_text() == "False", "the backend was asked to stop only after the front had stopped"
    ended = [line.split()[0] for line in said.lines if "stopped after" in line]
    assert ended == ["front", "backend"]


def test_a_program_that_ignores_sigterm_is_killed_and_leaves_nothing(tmp_path: Path) -> None:
    said = Lines()
    sup = Supervisor(say=said)
    pid_file = tmp_path / "grandchild.pid"
    program = sup.start(Program("stubborn", lambda: ready_python(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))"), stop_rank=0, stop_timeout_s=0.5))
    grandchild = psutil.Process(int(pid_file.read_text()))
    assert sup.stop() == 0
    assert any("did not stop within 0.5 s: killing it" in line for line in said.lines)
    assert any(line.split()[:2] == ["stubborn", "killed"] for line in said.lines), said.lines
    assert program.exit_code() == -9
    gone, alive = psutil.wait_procs([grandchild], timeout=10)
    assert alive == [], "its process group went with it"


def test_a_forced_stop_names_every_program_also_those_of_later_ranks() -> None:
    # The second Ctrl-C came while the first rank was still stopping: the executors' rank,
    # killed with everything else before it was reached, still gets its line.
    said = Lines()
    sup = Supervisor(say=said)
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)"
    sup.start(Program("front", lambda: ready_python(stubborn), stop_rank=0, stop_timeout_s=30))
    sup.start(Program("backend", lambda: ready_python(stubborn), stop_rank=1, stop_timeout_s=30))

    def second_ctrl_c() -> None:
        said.wait(lambda lines: any("stopping flowrelay" in line for line in lines))
        os.kill(os.getpid(), signal.SIGINT)  # handled by the supervisor, in this (main) thread

    sup.install_signals()
    try:
        threading.Thread(target=second_ctrl_c).start()
        assert sup.stop() == FORCED_EXIT
    finally:
        sup.restore_signals()
    ended = {line.split()[0]: line.split()[1] for line in said.lines if " after " in line}
    assert ended == {"front": "killed", "backend": "killed"}, said.lines
    assert all(program.exit_code() == -9 for program in sup.programs)
