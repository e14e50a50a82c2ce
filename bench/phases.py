"""The three measurements every served system gets, done the same way for each:

- ``sequential``: one run at a time (after a warm-up), latency percentiles;
- ``throughput``: a batch of concurrent instant runs, runs/s (median of rounds);
- ``concurrent``: N runs at once with a model delay, wall time and peak RSS of the server's
  whole process tree.

Each also records what the scripted model saw (its request rate) and how much CPU the server
tree and the client used, so a reader can tell who was busy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench import load, model
from bench.measure import Latency, RssSampler, median, tree_cpu_seconds, tree_rss_bytes, MB

#: Instant runs before any measurement (connections, lazy imports, JIT-less warm caches).
WARMUP_RUNS = 10


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _failures(runs: Iterable[load.RunResult]) -> dict[str, Any]:
    bad = [r for r in runs if not r.ok]
    return {"failed": len(bad), "first_errors": sorted({r.error or "?" for r in bad})[:3]}


def _cpu_share(cpu_s: float, wall_s: float) -> float:
    """CPU used as a share of the whole machine (1.0 = every core busy)."""
    return round(cpu_s / wall_s / _cores(), 3) if wall_s > 0 else 0.0


def sequential(base_url: str, kind: str, n: int, workflow: dict[str, Any] | None, sm: model.ScriptedModel,
               server_roots: Callable[[], Iterable[int]]) -> dict[str, Any]:
    call = load.call(kind, workflow=workflow)

    async def go() -> tuple[list[load.RunResult], float, float, float]:
        async with load.make_client(base_url, 8) as client:
            await load.sequential(client, call, WARMUP_RUNS, offset=1_000_000)
            cpu0, server0, start = time.process_time(), tree_cpu_seconds(server_roots()), time.perf_counter()
            runs = await load.sequential(client, call, n)
            wall = time.perf_counter() - start
            return runs, wall, time.process_time() - cpu0, tree_cpu_seconds(server_roots()) - server0

    with asyncio.Runner(loop_factory=load.new_loop) as runner:
        runs, wall, client_cpu, server_cpu = runner.run(go())
    ok = [r for r in runs if r.ok]
    return {
        "latency": Latency.of_seconds(r.latency_s for r in ok),
        "event_lag_ms": [x for r in ok for x in r.event_lag_ms],
        "replayed_lag_ms": [x for r in ok for x in r.replayed_lag_ms],
        "client_cpu_per_run_ms": round(client_cpu / n * 1000, 3),
        "server_cpu_per_run_ms": round(server_cpu / n * 1000, 3),
        **_failures(runs),
    }


def throughput(base_url: str, kind: str, size: int, rounds: int, workflow: dict[str, Any] | None,
               sm: model.ScriptedModel, server_roots: Callable[[], Iterable[int]]) -> dict[str, Any]:
    """``rounds`` batches of ``size`` concurrent instant runs from one client; median runs/s."""
    call = load.call(kind, workflow=workflow)

    async def go() -> tuple[list[float], list[load.RunResult], float, float, float]:
        async with load.make_client(base_url, 2 * size + 4) as client:
            await load.batch(client, call, min(size, 20), offset=2_000_000)  # open connections
            rates: list[float] = []
            everything: list[load.RunResult] = []
            cpu0, server0, start = time.process_time(), tree_cpu_seconds(server_roots()), time.perf_counter()
            for r in range(rounds):
                wall, runs = await load.batch(client, call, size, offset=r * size)
                rates.append(size / wall)
                everything += runs
            total = time.perf_counter() - start
            return rates, everything, total, time.process_time() - cpu0, tree_cpu_seconds(server_roots()) - server0

    before = model.stats(sm)
    with asyncio.Runner(loop_factory=load.new_loop) as runner:
        rates, runs, wall, client_cpu, server_cpu = runner.run(go())
    return {
        "runs_s": round(median(rates), 1),
        "rounds_runs_s": [round(r, 1) for r in rates],
        "batch": size,
        "client_cpu_share": _cpu_share(client_cpu, wall),
        "server_cpu_share": _cpu_share(server_cpu, wall),
        "event_lag_ms": [x for r in runs if r.ok for x in r.event_lag_ms],
        **model.rate(before, model.stats(sm), wall),
        **_failures(runs),
    }


def concurrent(base_url: str, kind: str, n: int, delay_s: float, client_processes: int,
               workflow: dict[str, Any] | None, sm: model.ScriptedModel,
               server_roots: Callable[[], Iterable[int]]) -> dict[str, Any]:
    """N runs at once, each waiting ``delay_s`` in the model; wall time and peak tree RSS."""
    idle_rss, idle_count = tree_rss_bytes(server_roots())
    before = model.stats(sm)
    server0 = tree_cpu_seconds(server_roots())
    with RssSampler(server_roots) as sampler:
        spread = load.spread_batch(base_url, kind, n, client_processes, delay_s=delay_s, workflow=workflow)
    server_cpu = tree_cpu_seconds(server_roots()) - server0
    model_rss, _ = tree_rss_bytes([sm.pid])
    ok = [r for r in spread.runs if r.ok]
    return {
        "n": n,
        "delay_s": delay_s,
        "wall_s": round(spread.wall_s, 3),
        "completed": len(ok),
        "rss_mb": sampler.peak_mb,
        "rss_idle_mb": round(idle_rss / MB, 1),
        "processes_at_peak": sampler.peak_processes,
        "processes_idle": idle_count,
        "max_processes": sampler.max_processes,
        "rss_samples": sampler.samples,
        "latency": Latency.of_seconds(r.latency_s for r in ok),
        "client_processes": client_processes,
        "client_cpu_s": round(spread.client_cpu_s, 2),
        "server_cpu_s": round(server_cpu, 2),
        "model_rss_mb": round(model_rss / MB, 1),
        "event_lag_ms": [x for r in ok for x in r.event_lag_ms],
        "client_errors": spread.errors,
        **model.rate(before, model.stats(sm), spread.wall_s),
        **_failures(spread.runs),
    }
