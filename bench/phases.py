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
from bench.measure import (
    MB,
    Latency,
    MachineCpu,
    RssSampler,
    cpu_delta,
    median,
    tree_cpu_by_label,
    tree_cpu_seconds,
    tree_rss_bytes,
)

#: Instant runs before any measurement (connections, lazy imports, JIT-less warm caches).
WARMUP_RUNS = 10


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


#: A phase where more runs than this share failed is an error, not a figure.
MAX_FAILED_SHARE = 0.05


def check(phase: str, result: dict[str, Any], n: int) -> dict[str, Any]:
    """Raise if too many runs of a phase failed (its figures would describe failures)."""
    if result.get("failed", 0) > MAX_FAILED_SHARE * n:
        raise RuntimeError(
            f"{phase}: {result['failed']}/{n} runs failed, e.g. {result['first_errors'][:1]}"
        )
    return result


def _failures(runs: Iterable[load.RunResult]) -> dict[str, Any]:
    bad = [r for r in runs if not r.ok]
    return {"failed": len(bad), "first_errors": sorted({r.error or "?" for r in bad})[:3]}


def timeline(runs: Iterable[load.RunResult]) -> dict[str, dict[str, float]]:
    """Where a run's time goes: p50/p99 (ms) of each step to the next, over successful runs.

    Steps are the client's marks (sent, accepted, received) and the run's own events at their
    ``at`` time, in order; a step that happens more than once in a run (several LLM calls)
    is keyed by its occurrence.
    """
    steps: dict[str, list[float]] = {}
    for run in runs:
        if not run.ok or len(run.marks) < 2:
            continue
        seen: dict[str, int] = {}
        previous_name, previous_at = run.marks[0]
        for name, at in run.marks[1:]:
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}#{seen[name]}"
            steps.setdefault(f"{previous_name} -> {label}", []).append((at - previous_at) * 1000.0)
            previous_name, previous_at = label, at
        steps.setdefault("total (sent -> received)", []).append(
            (run.marks[-1][1] - run.marks[0][1]) * 1000.0
        )
    return {
        name: {"p50": round(Latency.of_ms(v).p50, 2), "p99": round(Latency.of_ms(v).p99, 2)}
        for name, v in steps.items()
    }


def start_rate(runs: Iterable[load.RunResult]) -> dict[str, float]:
    """How fast runs got going: run.started times (the executor took them up), spread and rate."""
    starts = sorted(at for run in runs for name, at in run.marks if name == "run.started")
    accepted = sorted(at for run in runs for name, at in run.marks if name == "accepted")
    if len(starts) < 2:
        return {}
    out = {
        "started_span_s": round(starts[-1] - starts[0], 3),
        "started_runs_s": round((len(starts) - 1) / (starts[-1] - starts[0]), 1)
        if starts[-1] > starts[0]
        else 0.0,
    }
    if len(accepted) >= 2 and accepted[-1] > accepted[0]:
        out["accepted_span_s"] = round(accepted[-1] - accepted[0], 3)
        out["accepted_runs_s"] = round((len(accepted) - 1) / (accepted[-1] - accepted[0]), 1)
    return out


def _cpu_share(cpu_s: float, wall_s: float) -> float:
    """CPU used as a share of the whole machine (1.0 = every core busy)."""
    return round(cpu_s / wall_s / _cores(), 3) if wall_s > 0 else 0.0


def sequential(
    base_url: str,
    kind: str,
    n: int,
    workflow: dict[str, Any] | None,
    sm: model.ScriptedModel,
    server_roots: Callable[[], Iterable[int]],
    client: str = "raw",
) -> dict[str, Any]:
    call = load.call(kind, workflow=workflow)
    client_kind = client

    async def go() -> tuple[list[load.RunResult], float, float, float]:
        async with load.make_client(base_url, 8, client_kind) as client:
            await load.sequential(client, call, WARMUP_RUNS, offset=1_000_000)
            machine, by_label = MachineCpu(), tree_cpu_by_label(server_roots())
            cpu0, server0, start = (
                time.process_time(),
                tree_cpu_seconds(server_roots()),
                time.perf_counter(),
            )
            runs = await load.sequential(client, call, n)
            wall = time.perf_counter() - start
            server_cpu = tree_cpu_seconds(server_roots()) - server0
            per_process = cpu_delta(by_label, tree_cpu_by_label(server_roots()))
            return (
                runs,
                wall,
                time.process_time() - cpu0,
                server_cpu,
                machine.busy_share(),
                per_process,
            )

    with asyncio.Runner(loop_factory=load.new_loop) as runner:
        runs, wall, client_cpu, server_cpu, busy, per_process = runner.run(go())
    ok = [r for r in runs if r.ok]
    return {
        "latency": Latency.of_seconds(r.latency_s for r in ok),
        "event_lag_ms": [x for r in ok for x in r.event_lag_ms],
        "replayed_lag_ms": [x for r in ok for x in r.replayed_lag_ms],
        **({"timeline_ms": timeline(ok)} if any(r.marks for r in ok) else {}),
        "client": client_kind,
        "client_cpu_per_run_ms": round(client_cpu / n * 1000, 3),
        "server_cpu_per_run_ms": round(server_cpu / n * 1000, 3),
        "server_cpu_per_run_ms_by_process": {
            k: round(v / n * 1000, 2) for k, v in per_process.items()
        },
        "server_cpu_share": _cpu_share(server_cpu, wall),
        "machine_busy_share": busy,
        **_failures(runs),
    }


def throughput(
    base_url: str,
    kind: str,
    size: int,
    rounds: int,
    workflow: dict[str, Any] | None,
    sm: model.ScriptedModel,
    server_roots: Callable[[], Iterable[int]],
    client: str = "raw",
) -> dict[str, Any]:
    """``rounds`` batches of ``size`` concurrent instant runs from one client; median runs/s."""
    call = load.call(kind, workflow=workflow)
    client_kind = client

    async def go() -> tuple[list[float], list[load.RunResult], float, float, float, dict[str, Any]]:
        async with load.make_client(base_url, 2 * size + 4, client_kind) as client:
            await load.batch(client, call, min(size, 20), offset=2_000_000)  # open connections
            before = model.stats(sm)
            rates: list[float] = []
            everything: list[load.RunResult] = []
            by_label = tree_cpu_by_label(server_roots())
            model_cpu0 = tree_cpu_seconds([sm.pid])
            machine = MachineCpu()
            cpu0, server0, start = (
                time.process_time(),
                tree_cpu_seconds(server_roots()),
                time.perf_counter(),
            )
            for r in range(rounds):
                wall, runs = await load.batch(client, call, size, offset=r * size)
                rates.append(size / wall)
                everything += runs
            total = time.perf_counter() - start
            server_cpu = tree_cpu_seconds(server_roots()) - server0
            before["cpu_by_process"] = cpu_delta(by_label, tree_cpu_by_label(server_roots()))
            before["machine_busy_share"] = machine.busy_share()
            before["model_cpu_share"] = _cpu_share(tree_cpu_seconds([sm.pid]) - model_cpu0, total)
            return rates, everything, total, time.process_time() - cpu0, server_cpu, before

    with asyncio.Runner(loop_factory=load.new_loop) as runner:
        rates, runs, wall, client_cpu, server_cpu, before = runner.run(go())
    return {
        "runs_s": round(median(rates), 1),
        "client": client_kind,
        "rounds_runs_s": [round(r, 1) for r in rates],
        "batch": size,
        "client_cpu_share": _cpu_share(client_cpu, wall),
        "server_cpu_share": _cpu_share(server_cpu, wall),
        "server_cpu_s_by_process": before.pop("cpu_by_process"),
        "machine_busy_share": before.pop("machine_busy_share"),
        "model_cpu_share": before.pop("model_cpu_share"),
        "event_lag_ms": [x for r in runs if r.ok for x in r.event_lag_ms],
        **(
            {"timeline_ms": timeline(r for r in runs if r.ok)} if any(r.marks for r in runs) else {}
        ),
        **model.rate(before, model.stats(sm), wall),
        **_failures(runs),
    }


def concurrent(
    base_url: str,
    kind: str,
    n: int,
    delay_s: float,
    client_processes: int,
    workflow: dict[str, Any] | None,
    sm: model.ScriptedModel,
    server_roots: Callable[[], Iterable[int]],
    client: str = "raw",
) -> dict[str, Any]:
    """N runs at once, each waiting ``delay_s`` in the model; wall time and peak tree RSS."""
    idle_rss, idle_count = tree_rss_bytes(server_roots())
    before = model.stats(sm)
    server0, by_label = tree_cpu_seconds(server_roots()), tree_cpu_by_label(server_roots())
    model_cpu0 = tree_cpu_seconds([sm.pid])
    with RssSampler(server_roots) as sampler:
        spread = load.spread_batch(
            base_url, kind, n, client_processes, delay_s=delay_s, workflow=workflow, client=client
        )
    server_cpu = tree_cpu_seconds(server_roots()) - server0
    by_process = cpu_delta(by_label, tree_cpu_by_label(server_roots()))
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
        "client": client,
        "client_cpu_s": round(spread.client_cpu_s, 2),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_s_by_process": by_process,
        "server_cpu_share": _cpu_share(server_cpu, spread.wall_s),
        "client_cpu_share": _cpu_share(spread.client_cpu_s, spread.wall_s),
        "machine_busy_share": spread.machine_busy_share,
        "model_cpu_share": _cpu_share(tree_cpu_seconds([sm.pid]) - model_cpu0, spread.wall_s),
        "model_rss_mb": round(model_rss / MB, 1),
        "event_lag_ms": [x for r in ok for x in r.event_lag_ms],
        **({"timeline_ms": timeline(ok), **start_rate(ok)} if any(r.marks for r in ok) else {}),
        "client_errors": spread.errors,
        **model.rate(before, model.stats(sm), spread.wall_s),
        **_failures(spread.runs),
    }
