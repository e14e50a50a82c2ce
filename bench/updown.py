"""``python -m bench.updown``: how fast ``flowrelay up`` stops on Ctrl-C and heals a crash.

Each scenario starts ``flowrelay up`` as ``make up`` runs in a terminal (its own session, so
the whole process group gets the signal, as a terminal sends it), on free ports with a
temporary data dir and the scripted model, then measures:

- **stop idle**: SIGINT to the process group until no process of the stack is left;
- **stop with a 3 s run**: the same while a 3 s run is running (it drains to the end);
- **stop with a 120 s run**: the same while a 120 s run is running (the executor gives it
  ``FLOWRELAY_DRAIN_GRACE_S``, then hands it back to the queue);
- **executor SIGKILL**: from the kill to the supervisor's "is back" line, and to the end of
  the run the dead executor held (redelivered after ``FLOWRELAY_ACK_WAIT_S``).

Every scenario also counts tracebacks in the console and the log files. ``--source DIR``
runs another checkout's code (e.g. a ``git archive`` of an older main) with this
environment's packages, to compare before and after (a supervisor that stops the stack when
the executor dies reports ``stack_stopped_s``). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

BIN = Path(sys.executable).parent
PACKAGE_DIRS = ("", "bus", "contracts", "services/api", "services/executor", "services/suggester")
BANNER_END = "Press Ctrl-C to stop"
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 120.0
#: Short ack wait: the SIGKILL scenario's run comes back to the restarted executor soon.
ACK_WAIT_S = "5"
_PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Up:
    """One ``flowrelay up`` in a session of its own; its console lines collected as they come."""

    def __init__(self, data_dir: Path, source: Path | None) -> None:
        self.data_dir = data_dir
        self.api = f"http://127.0.0.1:{_free_port()}"
        env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_KEYS and not k.startswith("FLOWRELAY_")}
        env |= {"FLOWRELAY_FRAMEWORKS": "tinyagent", "FLOWRELAY_ACK_WAIT_S": ACK_WAIT_S, "COLUMNS": "200",
                "PYTHONUNBUFFERED": "1"}
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join(str(source / d) for d in PACKAGE_DIRS)
        argv = [str(BIN / "python"), "-c", "from flowrelay.cli import app; app()", "up", "--data-dir", str(data_dir),
                "--api-port", self.api.rsplit(":", 1)[1], "--nats-port", str(_free_port()), "--scripted-port", "0",
                "--workers", "1"]
        if "--metrics-port" in subprocess.run([*argv[:3], "up", "--help"], env=env, cwd=data_dir.parent,
                                              capture_output=True, text=True).stdout:
            argv += ["--metrics-port", "0"]  # free ports: never another stack's 9101/9102
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True, text=True, errors="replace",
                                        cwd=data_dir.parent)  # not a checkout: --source decides the code
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(BANNER_END, timeout=START_TIMEOUT_S)
        self.headers = {"Authorization": f"Bearer {(data_dir / 'secrets' / 'admin.key').read_text().strip()}"}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float) -> float:
        """Block until a console line matches; the monotonic time it was seen."""
        regex = re.compile(pattern)
        with self._changed:
            ok = self._changed.wait_for(
                lambda: any(regex.search(line) for line in self.lines[after:]) or "" in self.lines, timeout)
            if not ok or not any(regex.search(line) for line in self.lines[after:]):
                raise RuntimeError(f"never saw {pattern!r}:\n{''.join(self.lines[-30:])}")
        return time.monotonic()

    def submit(self, text: str) -> str:
        body = {"workflow": {"nodes": [{"id": "a", "data": {"name": "bench", "instructions": "Answer."}}], "edges": []},
                "input": text}
        response = httpx.post(f"{self.api}/runs", json=body, headers=self.headers, timeout=30)
        response.raise_for_status()
        return str(response.json()["run_id"])

    def wait_event(self, run_id: str, *types: str) -> float:
        """Follow the run's SSE stream (replayed from its start) until an event of ``types``."""
        with httpx.stream("GET", f"{self.api}/runs/{run_id}/events", headers=self.headers,
                          timeout=httpx.Timeout(30, read=STOP_TIMEOUT_S)) as response:
            for line in response.iter_lines():
                if line.startswith("event:") and line.split(":", 1)[1].strip() in types:
                    return time.monotonic()
        raise RuntimeError(f"the events of {run_id} ended without {types}")

    def stop(self) -> tuple[float, int]:
        """Ctrl-C to the process group; seconds until the whole tree is gone, tracebacks seen."""
        tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        begun = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(STOP_TIMEOUT_S)
        gone, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S)
        took = time.monotonic() - begun
        for process in alive:
            process.kill()
        if alive:
            raise RuntimeError(f"left behind: {alive}")
        return took, self.tracebacks()

    def tracebacks(self) -> int:
        logs = [p.read_text(errors="replace") for p in (self.data_dir / "logs").glob("*.log")]
        return sum(text.count("Traceback") + text.count("Task exception was never retrieved")
                   for text in ["".join(self.lines), *logs])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)


def _stop_idle(up: Up) -> dict[str, Any]:
    took, tracebacks = up.stop()
    return {"stop_s": took, "tracebacks": tracebacks}


def _stop_in_flight(text: str) -> Callable[[Up], dict[str, Any]]:
    def scenario(up: Up) -> dict[str, Any]:
        run_id = up.submit(text)
        up.wait_event(run_id, "run.started")
        took, tracebacks = up.stop()
        return {"stop_s": took, "tracebacks": tracebacks}

    return scenario


def _executor_sigkill(up: Up) -> dict[str, Any]:
    (executor,) = [p for p in psutil.Process(up.process.pid).children()
                   if any("flowrelay-executor" in part for part in p.cmdline())]
    run_id = up.submit("#delay=2 survive")
    up.wait_event(run_id, "run.started")
    mark = len(up.lines)
    killed = time.monotonic()
    executor.kill()
    try:
        back = up.wait_for(r"executor-1 is back", after=mark, timeout=START_TIMEOUT_S)
    except RuntimeError:
        if up.process.wait(STOP_TIMEOUT_S) is not None:
            return {"stack_stopped_s": time.monotonic() - killed, "tracebacks": up.tracebacks()}
        raise
    finished = up.wait_event(run_id, "run.completed", "run.failed", "run.cancelled")
    took, tracebacks = up.stop()
    return {"back_s": back - killed, "run_done_s": finished - killed, "stop_s": took, "tracebacks": tracebacks}


SCENARIOS: dict[str, Callable[[Up], dict[str, Any]]] = {
    "stop idle": _stop_idle,
    "stop with a 3 s run": _stop_in_flight("#delay=3 in flight"),
    "stop with a 120 s run": _stop_in_flight("#delay=120 in flight"),
    "executor SIGKILL": _executor_sigkill,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", type=Path, help="another checkout to run (its packages first on PYTHONPATH)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--keep", action="store_true", help="keep each data dir (logs) and print where")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s in args.only.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    for name in chosen:
        for _ in range(args.rounds):
            tmp = tempfile.mkdtemp(prefix="flowrelay-updown-")
            up: Up | None = None
            try:
                up = Up(Path(tmp) / "data", args.source)
                results.setdefault(name, []).append(SCENARIOS[name](up))
            except Exception as exc:  # noqa: BLE001 - a scenario's failure is a result too
                results.setdefault(name, []).append({"error": str(exc)[-400:]})
            finally:
                if up is not None:
                    up.kill()
                    if args.keep:
                        (Path(tmp) / "console.log").write_text("".join(up.lines))
                if not args.keep:
                    shutil.rmtree(tmp, ignore_errors=True)
            print(name, results[name][-1], *([tmp] if args.keep else []), flush=True)
    print()
    for name, rounds in results.items():
        figures = {key: [r[key] for r in rounds if key in r] for key in rounds[0] if key not in ("skipped", "error")}
        summary = ", ".join(f"{key} median {statistics.median(v):.1f} (min {min(v):.1f}, max {max(v):.1f})"
                            for key, v in figures.items() if v)
        notes = {r.get("skipped") or r.get("error") for r in rounds} - {None}
        print(f"{name}: {summary or ''} {'; '.join(notes)}".rstrip())


if __name__ == "__main__":
    main()
