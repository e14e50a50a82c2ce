"""Measuring the peer (``bench/celery_app.py``): redis-server and a Celery prefork worker
as processes, driven from this process with Celery's own client (``delay`` + ``get``).

Redis runs without persistence (``--save ""``, AOF off: Redis's own default): the peer
fsyncs nothing, where flowrelay fsyncs every write. Its concurrent (N x 1 s) phase is not
run: a prefork pool runs one task per child at a time, so N held runs take N / children
seconds by design (500 runs: over four minutes), which says nothing new.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import model
from bench.measure import Latency, MachineCpu, SystemFigures, cpu_delta, median, tree_cpu_by_label
from flowrelay.stack import ServiceProcess

#: Where the Makefile's apt-get puts it; found on PATH otherwise.
REDIS_BINARY = "redis-server"

#: Runs before measuring (connections, the children's agents, lazy imports).
WARMUP_RUNS = 10

#: Bound on any one task's result.
RESULT_TIMEOUT_S = 60.0

#: Importing any-agent in the worker's children takes a few seconds on a busy machine.
START_TIMEOUT_S = 120.0

LABEL = "Celery peer (prefork x{n}, Redis, agent reused per child)"


@dataclass(frozen=True)
class CelerySizes:
    sequential: int
    batch: int
    rounds: int


def unavailable() -> str | None:
    """Why the peer cannot be measured here, or None."""
    if shutil.which(REDIS_BINARY) is None:
        return f"{REDIS_BINARY} is not installed (make bench installs Debian's redis-server with apt-get)"
    for module in ("celery", "redis"):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {module!r} is not installed (make install)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_redis(root: Path, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    argv = [
        shutil.which(REDIS_BINARY) or REDIS_BINARY, "--bind", "127.0.0.1", "--port", str(port),
        "--save", "", "--appendonly", "no", "--dir", str(root), "--protected-mode", "yes",
    ]  # fmt: skip
    log = open(log_dir / "redis.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)  # redis-server binds within milliseconds; nothing to await on
    proc.kill()
    raise RuntimeError("redis-server did not start")


def measure(sm: model.ScriptedModel, sizes: CelerySizes, log_dir: Path) -> SystemFigures:
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="flowrelay-bench-celery-"))
    children = _cores()
    redis, redis_url = _start_redis(root, log_dir)
    os.environ["BENCH_CELERY_REDIS"] = redis_url
    env = dict(os.environ) | {"BENCH_MODEL_URL": sm.url, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "prefork",
        "--concurrency", str(children), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ]  # fmt: skip
    worker = ServiceProcess("celery", argv, env=env, log_path=log_dir / "celery.log").start()
    try:
        return _measure(redis.pid, worker.pid, sizes, children, sm)
    finally:
        worker.terminate(timeout=15)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def _measure(redis_pid: int, worker_pid: int, sizes: CelerySizes, children: int, sm: model.ScriptedModel) -> SystemFigures:
    celery_app = importlib.import_module("bench.celery_app")
    importlib.reload(celery_app)  # bind the client to this run's redis
    task = celery_app.run_agent

    def roots() -> list[int]:
        return [redis_pid, worker_pid]

    def one(text: str, timeout: float = RESULT_TIMEOUT_S) -> str:
        return task.delay(text).get(timeout=timeout)

    one("ready?", START_TIMEOUT_S)  # answered once the worker and a child's agent are up
    for i in range(max(WARMUP_RUNS, children * 3)):  # every child creates its agent
        one(f"warmup {i}")
    by_label, machine = tree_cpu_by_label(roots()), MachineCpu()
    latencies: list[float] = []
    failed = 0
    for i in range(sizes.sequential):
        text = f"celery {i}"
        start = time.perf_counter()
        output = one(text)
        latencies.append(time.perf_counter() - start)
        failed += output != f"echo: {text}"
    per_process = cpu_delta(by_label, tree_cpu_by_label(roots()))
    seq_busy = machine.busy_share()
    cpu_per_run = {k: round(v / sizes.sequential * 1000, 2) for k, v in per_process.items()}

    before = model.stats(sm)
    by_label, machine, rates = tree_cpu_by_label(roots()), MachineCpu(), []
    start_all = time.perf_counter()
    for r in range(sizes.rounds):
        texts = [f"celery batch {r} {i}" for i in range(sizes.batch)]
        start = time.perf_counter()
        results = [task.delay(text) for text in texts]
        outputs = [result.get(timeout=RESULT_TIMEOUT_S) for result in results]
        rates.append(sizes.batch / (time.perf_counter() - start))
        failed += sum(o != f"echo: {t}" for o, t in zip(outputs, texts, strict=True))
    wall = time.perf_counter() - start_all
    tp_cpu = cpu_delta(by_label, tree_cpu_by_label(roots()))
    if failed:
        raise RuntimeError(f"{failed} Celery runs returned an unexpected output")
    return SystemFigures(
        name="celery",
        latency=Latency.of_seconds(latencies),
        throughput_runs_s=round(median(rates), 1),
        throughput_batch=sizes.batch,
        extra={
            "label": LABEL.format(n=children),
            "children": children,
            "sequential": {
                "server_cpu_per_run_ms": round(sum(cpu_per_run.values()), 3),
                "server_cpu_per_run_ms_by_process": cpu_per_run,
                "machine_busy_share": seq_busy,
            },
            "throughput": {
                "rounds_runs_s": [round(r, 1) for r in rates],
                "server_cpu_s_by_process": tp_cpu,
                "machine_busy_share": machine.busy_share(),
                **model.rate(before, model.stats(sm), wall),
            },
            "redis": "no persistence (--save '', appendonly no): nothing is fsynced",
        },
    )
