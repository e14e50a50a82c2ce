"""Measuring the original design (``bench/original_app.py``) served by uvicorn.

It is measured over HTTP exactly like flowrelay. Its concurrent phase is capped (it forks a
fresh process per request, each holding a copy of any-agent): the cap is reported with it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import model, phases
from bench.measure import Latency, SystemFigures
from flowrelay.stack import ServiceProcess

#: uvicorn's line once the app serves.
READY_PATTERN = r"Application startup complete"

#: Importing any-agent without cached bytecode takes a few seconds on a busy machine.
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class OriginalSizes:
    sequential: int
    batch: int
    rounds: int
    concurrent: int
    delay_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_url: str, log_dir: Path) -> tuple[ServiceProcess, str]:
    port = _free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "bench.original_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "info",
    ]  # fmt: skip
    env = dict(os.environ) | {"ORIGINAL_MODEL_URL": model_url, "PYTHONUNBUFFERED": "1"}
    proc = ServiceProcess("original", argv, env=env, log_path=log_dir / "original.log").start()
    proc.wait_for(READY_PATTERN, timeout=START_TIMEOUT_S)
    return proc, f"http://127.0.0.1:{port}"


def measure(
    sm: model.ScriptedModel, sizes: OriginalSizes, log_dir: Path, client: str = "raw"
) -> SystemFigures:
    started = time.perf_counter()
    server, url = start(sm.url, log_dir)
    startup_s = round(time.perf_counter() - started, 1)

    def roots() -> list[int]:  # the uvicorn process; its per-request pools are its children
        return [server.pid]

    try:
        seq = phases.check(
            "sequential",
            phases.sequential(url, "original", sizes.sequential, None, sm, roots, client),
            sizes.sequential,
        )
        tp = phases.check(
            "batch",
            phases.throughput(url, "original", sizes.batch, sizes.rounds, None, sm, roots, client),
            sizes.batch * sizes.rounds,
        )
        conc = phases.concurrent(
            url, "original", sizes.concurrent, sizes.delay_s, 1, None, sm, roots, client
        )
    finally:
        server.terminate(timeout=15)
    latency: Latency = seq.pop("latency")
    for part in (seq, tp, conc):
        part.pop("event_lag_ms", None)
        part.pop("replayed_lag_ms", None)
    conc["latency"] = conc["latency"].__dict__
    return SystemFigures(
        name="original",
        latency=latency,
        throughput_runs_s=tp["runs_s"],
        throughput_batch=sizes.batch,
        concurrent={**conc, "capped": True},
        extra={
            "label": "original (new process pool per request)",
            "startup_s": startup_s,
            "sequential": seq,
            "throughput": tp,
        },
    )
