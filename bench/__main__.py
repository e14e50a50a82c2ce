"""``python -m bench [--quick] [--only floor,original,flowrelay,celery] [--n N]``: the whole benchmark.

Starts the scripted model, measures its capacity, then each system in turn (each phase is
bounded in count and time, loopback only), prints the table and writes
``bench/results/latest.json`` and ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench import celery_peer, floor, flowrelay_stack, load, model, original, replicas
from bench.measure import (
    SystemFigures,
    machine_info,
    markdown,
    summary_lines,
    table_rows,
    write_json,
)

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("floor", "original", "flowrelay", "replicas", "celery")

#: What ``--quick`` measures unless ``--only`` says otherwise: the R3 against R1 figure starts
#: two more stacks, which would take a quick run past its minute (``--quick --only replicas``).
QUICK_SYSTEMS = ("floor", "original", "flowrelay", "celery")

#: Where bytecode is cached for every process the benchmark starts (see ``_bytecode_cache``).
PYCACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flowrelay-bench" / "pycache"
)

#: Width of the table when the output is not a terminal (make, CI logs).
CONSOLE_WIDTH = 180

#: A machine busier than this before we start is flagged in the report.
BUSY_CPU_PERCENT = 25.0

#: Seconds over which the machine's idleness is sampled (``--wait-idle``).
IDLE_SAMPLE_S = 2.0

# -- targets (2 cores), from the project brief and issue 17 ----------------------------------
TARGET_OVERHEAD_P50_MS = 10.0
TARGET_CONCURRENT_N = 500
TARGET_CONCURRENT_RSS_MB = 3 * 1024
TARGET_EVENT_P50_MS = 5.0
TARGET_EVENT_P99_MS = 50.0
#: flowrelay / floor, measured in the same run (issue 17).
TARGET_CPU_RATIO = 3.0
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_BURST_RATIO = 1.15
TARGET_P50_RATIO = 3.0
#: Event latency p99 during the concurrent burst (receive - event.at).
TARGET_BURST_EVENT_P99_MS = 50.0
#: The model is "not the bound" when no phase asked for more than this share of its capacity.
MODEL_HEADROOM_SHARE = 0.5


@dataclass(frozen=True)
class Plan:
    floor: floor.FloorSizes
    original: original.OriginalSizes
    flowrelay: flowrelay_stack.FlowrelaySizes
    replicas: replicas.ReplicaSizes
    celery: celery_peer.CelerySizes
    model_probe_s: float


def plan(quick: bool, n: int | None) -> Plan:
    if quick:
        return Plan(
            floor=floor.FloorSizes(sequential=100, batch=100, rounds=1, concurrent=n or 100),
            original=original.OriginalSizes(
                sequential=5, batch=5, rounds=1, concurrent=10, delay_s=1.0
            ),
            flowrelay=flowrelay_stack.FlowrelaySizes(
                sequential=40,
                batch=60,
                rounds=1,
                concurrent=n or 100,
                delay_s=1.0,
                client_processes=1,
            ),
            replicas=replicas.ReplicaSizes(sequential=30, batch=60, rounds=1),
            celery=celery_peer.CelerySizes(sequential=20, batch=40, rounds=1),
            model_probe_s=1.0,
        )
    return Plan(
        floor=floor.FloorSizes(sequential=300, batch=200, rounds=3, concurrent=n or 500),
        original=original.OriginalSizes(
            sequential=30, batch=10, rounds=1, concurrent=40, delay_s=1.0
        ),
        flowrelay=flowrelay_stack.FlowrelaySizes(
            sequential=200,
            batch=200,
            rounds=3,
            concurrent=n or 500,
            delay_s=1.0,
            client_processes=2,
        ),
        replicas=replicas.ReplicaSizes(sequential=100, batch=200, rounds=2),
        celery=celery_peer.CelerySizes(sequential=200, batch=200, rounds=3),
        model_probe_s=3.0,
    )


def _venv_has_bytecode() -> bool:
    """Whether the installed packages come with ``.pyc`` files (``uv pip sync --compile-bytecode``)."""
    import importlib.util

    spec = importlib.util.find_spec("any_agent")
    if spec is None or spec.origin is None:
        return False
    cached = importlib.util.cache_from_source(spec.origin)
    return Path(cached).exists() and sys.pycache_prefix is None


def _bytecode_cache() -> str:
    """Let every process cache bytecode in one place outside the repo and the venv.

    The venv is installed without compiled bytecode and this environment may set
    PYTHONDONTWRITEBYTECODE, so every new process would compile any-agent and openai from
    source (seconds), which would bill the original design's per-request process for a cost a
    normal deployment does not pay. The report says this was done.
    """
    if _venv_has_bytecode():
        return "the venv ships compiled bytecode; environment left as it is"
    PYCACHE.mkdir(parents=True, exist_ok=True)
    note = f"bytecode cached in {PYCACHE} (PYTHONDONTWRITEBYTECODE was {os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')})"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    sys.dont_write_bytecode = False
    sys.pycache_prefix = str(PYCACHE)
    return note


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool, value: str) -> None:
        out.append({"name": name, "ok": bool(ok), "value": value})

    ratios = report.get("ratios") or {}
    if report.get("overhead_p50_ms") is not None:
        add(
            f"flowrelay p50 overhead over floor <= {TARGET_OVERHEAD_P50_MS:g} ms",
            report["overhead_p50_ms"] <= TARGET_OVERHEAD_P50_MS,
            f"{report['overhead_p50_ms']:.2f} ms",
        )
    cpu = report.get("cpu_per_run_ms") or {}
    if ratios.get("cpu") is not None:
        add(
            f"flowrelay CPU per run <= {TARGET_CPU_RATIO:g} x floor",
            ratios["cpu"] <= TARGET_CPU_RATIO,
            f"{cpu['flowrelay']:.1f} / {cpu['floor']:.1f} ms = {ratios['cpu']:.2f}x",
        )
    tp = report["throughput_runs_s"]
    if ratios.get("throughput") is not None:
        add(
            f"flowrelay throughput >= {TARGET_THROUGHPUT_RATIO:g} x floor",
            ratios["throughput"] >= TARGET_THROUGHPUT_RATIO,
            f"{tp['flowrelay']:.1f} / {tp['floor']:.1f} runs/s = {ratios['throughput']:.2f}x",
        )
    if ratios.get("p50") is not None:
        p50 = report["p50_ms"]
        add(
            f"flowrelay p50 <= {TARGET_P50_RATIO:g} x floor",
            ratios["p50"] <= TARGET_P50_RATIO,
            f"{p50['flowrelay']:.2f} / {p50['floor']:.2f} ms = {ratios['p50']:.2f}x",
        )
    conc = report.get("concurrent") or {}
    if conc.get("wall_s") is not None:
        complete = conc["completed"] == conc["n"]
        floor_wall = report.get("floor_concurrent_wall_s")
        if ratios.get("burst") is not None:
            add(
                f"{conc['n']} concurrent {conc['delay_s']:g} s runs all done within {TARGET_BURST_RATIO:g} x the floor's wall time"
                + ("" if conc["n"] >= TARGET_CONCURRENT_N else f" (target is for N={TARGET_CONCURRENT_N})"),
                complete and ratios["burst"] <= TARGET_BURST_RATIO,
                f"{conc['completed']}/{conc['n']} in {conc['wall_s']:.2f} s / {floor_wall:.2f} s = {ratios['burst']:.2f}x",
            )
        add(
            f"peak RSS of the stack under {TARGET_CONCURRENT_RSS_MB} MB",
            conc["rss_mb"] < TARGET_CONCURRENT_RSS_MB,
            f"{conc['rss_mb']:.0f} MB",
        )
    loaded = ((report.get("event_latency_ms") or {}).get("under_load") or {}).get("concurrent") or {}
    if loaded.get("p99") is not None:
        add(
            f"event latency p99 under the concurrent burst <= {TARGET_BURST_EVENT_P99_MS:g} ms",
            loaded["p99"] <= TARGET_BURST_EVENT_P99_MS,
            f"{loaded['p99']:.1f} ms over {loaded.get('n', 0)} events",
        )
    ev = report.get("event_latency_ms") or {}
    if ev.get("p50") is not None:
        add(
            f"event latency p50 < {TARGET_EVENT_P50_MS:g} ms",
            ev["p50"] < TARGET_EVENT_P50_MS,
            f"{ev['p50']:.2f} ms",
        )
        add(
            f"event latency p99 < {TARGET_EVENT_P99_MS:g} ms",
            ev["p99"] < TARGET_EVENT_P99_MS,
            f"{ev['p99']:.2f} ms",
        )
    sm = report.get("scripted_model") or {}
    if sm.get("capacity_req_s"):
        add(
            f"scripted model never above {MODEL_HEADROOM_SHARE:g} x its capacity in any phase",
            sm.get("max_phase_req_s", 0) <= MODEL_HEADROOM_SHARE * sm["capacity_req_s"],
            f"max {sm.get('max_phase_req_s', 0):.0f} of {sm['capacity_req_s']:.0f} req/s",
        )
    return out


def _cpu_budget(systems: dict[str, dict[str, Any] | None], conc: dict[str, Any]) -> dict[str, Any]:
    """What the stack's CPU per run implies on this machine, whatever the scheduling."""
    seq = ((systems.get("flowrelay") or {}).get("extra") or {}).get("sequential") or {}
    per_run = seq.get("server_cpu_per_run_ms")
    if not per_run:
        return {}
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    n = conc.get("n") or TARGET_CONCURRENT_N
    return {
        "flowrelay_cpu_per_run_ms": per_run,
        "by_process": seq.get("server_cpu_per_run_ms_by_process", {}),
        "floor_cpu_per_run_ms": ((systems.get("floor") or {}).get("extra") or {}).get(
            "cpu_per_run_ms"
        ),
        "cores": cores,
        "max_runs_s": round(cores * 1000.0 / per_run, 1),
        "concurrent_n": n,
        "min_concurrent_wall_s": round(n * per_run / 1000.0 / cores, 2),
    }


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value and base else None


def _ratios(systems: dict[str, dict[str, Any] | None], conc: dict[str, Any]) -> dict[str, Any]:
    """CPU per run, p50 and their ratios flowrelay / floor (issue 17), from this run."""
    floor_fig, flow = systems.get("floor") or {}, systems.get("flowrelay") or {}
    seq = (flow.get("extra") or {}).get("sequential") or {}
    floor_cpu = (floor_fig.get("extra") or {}).get("cpu_per_run_ms")
    flow_cpu = seq.get("server_cpu_per_run_ms")
    celery_cpu = (((systems.get("celery") or {}).get("extra") or {}).get("sequential") or {}).get(
        "server_cpu_per_run_ms"
    )
    p50 = {k: ((systems.get(k) or {}).get("latency") or {}).get("p50") for k in ("floor", "flowrelay", "celery")}
    floor_wall = (floor_fig.get("concurrent") or {}).get("wall_s")
    same_n = (floor_fig.get("concurrent") or {}).get("n") == conc.get("n")
    return {
        "cpu_per_run_ms": {
            "floor": floor_cpu,
            "flowrelay": flow_cpu,
            "flowrelay_by_process": seq.get("server_cpu_per_run_ms_by_process", {}),
            "celery": celery_cpu,
            "note": "sequential instant runs: the floor process's CPU; flowrelay's and Celery's whole "
            "server tree (nats-server or redis, services, workers), not the client or the model",
        },
        "p50_ms": p50,
        "floor_concurrent_wall_s": floor_wall,
        "ratios": {
            "cpu": _ratio(flow_cpu, floor_cpu),
            "throughput": _ratio(flow.get("throughput_runs_s"), floor_fig.get("throughput_runs_s")),
            "burst": _ratio(conc.get("wall_s"), floor_wall) if same_n else None,
            "p50": _ratio(p50["flowrelay"], p50["floor"]),
        },
    }


def _peer(systems: dict[str, dict[str, Any] | None], skipped: str | None) -> dict[str, Any]:
    """Celery's figures from this run, and flowrelay's against them."""
    fig = systems.get("celery") or {}
    if skipped is not None or not fig or fig.get("error"):
        return {"name": "celery", "skipped": skipped or fig.get("error") or "not measured"}
    flow = systems.get("flowrelay") or {}
    p50 = (fig.get("latency") or {}).get("p50")
    runs_s = fig.get("throughput_runs_s")
    cpu = ((fig.get("extra") or {}).get("sequential") or {}).get("server_cpu_per_run_ms")
    flow_cpu = (((flow.get("extra") or {}).get("sequential")) or {}).get("server_cpu_per_run_ms")
    return {
        "name": "celery",
        "label": fig.get("label"),
        "p50_ms": p50,
        "runs_s": runs_s,
        "cpu_per_run_ms": cpu,
        "flowrelay_vs_peer": {
            "p50": _ratio((flow.get("latency") or {}).get("p50"), p50),
            "throughput": _ratio(flow.get("throughput_runs_s"), runs_s),
            "cpu": _ratio(flow_cpu, cpu),
        },
    }


def _code_revision() -> dict[str, Any]:
    """Which code was measured: the commit, and a digest of the (possibly uncommitted) sources."""
    repo = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {}
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
        out["uncommitted_files"] = len(status)
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for folder in ("contracts", "bus", "services", "flowrelay"):
        for path in sorted((repo / folder).rglob("*.py")):
            digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    out["sources_sha256"] = digest.hexdigest()[:16]
    return out


def _phase_rates(systems: dict[str, dict[str, Any] | None]) -> list[float]:
    rates: list[float] = []
    for fig in systems.values():
        if not fig:
            continue
        extra = fig.get("extra") or {}
        for part in (extra.get("throughput") or {}, fig.get("concurrent") or {}):
            if part.get("model_req_s"):
                rates.append(part["model_req_s"])
        if extra.get("model_req_s_during_batches"):
            rates.append(extra["model_req_s_during_batches"])
    return rates


def wait_idle(console: Console, timeout_s: float) -> float:
    """Wait up to ``timeout_s`` for the machine to be idle; returns the last busy percentage.

    Other work on the box (a test suite, another benchmark) takes the CPU the measured
    system needs; on a shared machine it is better to wait than to publish its noise.
    """
    deadline = time.monotonic() + timeout_s
    busy = psutil.cpu_percent(interval=IDLE_SAMPLE_S)
    while busy > BUSY_CPU_PERCENT and time.monotonic() < deadline:
        console.print(f"  waiting for the machine to be idle ({busy:.0f}% busy)")
        busy = psutil.cpu_percent(interval=IDLE_SAMPLE_S)
    return busy


def _timed(walls: dict[str, float], name: str, fn: Any) -> Any:
    start = time.perf_counter()
    try:
        return fn()
    finally:
        walls[name] = round(time.perf_counter() - start, 1)


def _guarded(name: str, console: Console, fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        console.print(f"[red]{name} failed:[/red] {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return SystemFigures(name=name, error=f"{type(exc).__name__}: {exc}")


def run(
    quick: bool,
    only: set[str],
    n: int | None,
    py_spy: str | None,
    client: str = "raw",
    idle_wait_s: float = 0.0,
) -> dict[str, Any]:
    console = Console(width=None if sys.stdout.isatty() else CONSOLE_WIDTH)
    started = time.perf_counter()
    note = _bytecode_cache()
    sizes = plan(quick, n)
    log_dir = RESULTS / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    busy = psutil.cpu_percent(interval=1.0)
    machine = machine_info() | {"busy_cpu_percent_before": busy, "loadavg_before": os.getloadavg()}
    if busy > BUSY_CPU_PERCENT:
        console.print(
            f"[yellow]warning: the machine is {busy:.0f}% busy before we start: figures will be pessimistic[/yellow]"
        )

    sm = model.start(log_dir)
    systems: dict[str, dict[str, Any] | None] = {}
    events: dict[str, Any] = {}
    peer_skipped: str | None = None if "celery" in only else "not asked for (--only)"
    walls: dict[str, float] = {}
    try:
        console.print(f"scripted model at {sm.url}; measuring its capacity ...")
        capacity = _timed(walls, "model_probe", lambda: model.capacity(sm, sizes.model_probe_s))
        console.print(f"  {capacity['capacity_req_s']:.0f} requests/s")
        busy_at_start: dict[str, float] = {}

        def settle(name: str) -> None:
            if idle_wait_s > 0:
                busy_at_start[name] = wait_idle(console, idle_wait_s)

        if "floor" in only:
            settle("floor")
            console.print("floor: one process, agent reused ...")
            systems["floor"] = _timed(
                walls,
                "floor",
                lambda: _guarded("floor", console, lambda: floor.measure(sm.url, sizes.floor)),
            ).to_json()
        if "original" in only:
            settle("original")
            console.print(
                f"original design: new process pool per request (concurrent phase capped at {sizes.original.concurrent}) ..."
            )
            systems["original"] = _timed(
                walls,
                "original",
                lambda: _guarded(
                    "original",
                    console,
                    lambda: original.measure(sm, sizes.original, log_dir, client),
                ),
            ).to_json()
        if "flowrelay" in only:
            settle("flowrelay")
            console.print(
                f"flowrelay: nats-server + API + executor + suggester (N={sizes.flowrelay.concurrent}) ..."
            )
            try:
                runs, execute, events = _timed(
                    walls,
                    "flowrelay",
                    lambda: flowrelay_stack.measure(sm, sizes.flowrelay, log_dir, py_spy, client),
                )
                systems["flowrelay"], systems["flowrelay_execute"] = (
                    runs.to_json(),
                    execute.to_json(),
                )
            except Exception as exc:
                console.print(
                    f"[red]flowrelay failed:[/red] {type(exc).__name__}: {exc} (logs in {log_dir})"
                )
                traceback.print_exc()
                systems["flowrelay"] = SystemFigures(
                    name="flowrelay", error=f"{type(exc).__name__}: {exc}"
                ).to_json()
        if "replicas" in only:
            settle("replicas")
            console.print("flowrelay on a local 3-node NATS cluster: replicas 1, then 3 ...")
            try:
                rows = _timed(
                    walls,
                    "replicas",
                    lambda: replicas.measure(sm, sizes.replicas, log_dir, client),
                )
                systems.update({key: fig.to_json() for key, fig in rows.items()})
            except Exception as exc:
                console.print(f"[red]replicas failed:[/red] {type(exc).__name__}: {exc} (logs in {log_dir})")
                traceback.print_exc()
                systems["cluster_r3"] = SystemFigures(
                    name="cluster_r3", error=f"{type(exc).__name__}: {exc}"
                ).to_json()
        if "celery" in only:
            settle("celery")
            reason = celery_peer.unavailable()
            if reason is not None:
                console.print(f"[yellow]Celery peer skipped: {reason}[/yellow]")
                peer_skipped = reason
            else:
                console.print("Celery peer: redis-server + prefork worker ...")
                systems["celery"] = _timed(
                    walls,
                    "celery",
                    lambda: _guarded(
                        "celery", console, lambda: celery_peer.measure(sm, sizes.celery, log_dir)
                    ),
                ).to_json()
        final_stats = model.stats(sm)
    finally:
        sm_rss = (
            psutil.Process(sm.pid).memory_info().rss / 1024 / 1024
            if psutil.pid_exists(sm.pid)
            else 0.0
        )
        sm.stop()

    for fig in systems.values():  # labels live in extra; lift them for the table
        if fig is not None:
            fig["label"] = (fig.get("extra") or {}).get("label", fig["name"])

    def p50(key: str) -> float | None:
        fig = systems.get(key) or {}
        return (fig.get("latency") or {}).get("p50")

    def tp(key: str) -> float | None:
        return (systems.get(key) or {}).get("throughput_runs_s")

    flow_conc = (systems.get("flowrelay") or {}).get("concurrent") or {}
    report: dict[str, Any] = {
        "quick": quick,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "overhead_p50_ms": round(p50("flowrelay") - p50("floor"), 3)
        if p50("flowrelay") and p50("floor")
        else None,
        "overhead_p50_ms_execute": round(p50("flowrelay_execute") - p50("floor"), 3)
        if p50("flowrelay_execute") and p50("floor")
        else None,
        "throughput_runs_s": {
            "floor": tp("floor"),
            "original": tp("original"),
            "flowrelay": tp("flowrelay"),
            "flowrelay_execute": tp("flowrelay_execute"),
        },
        "concurrent": {
            k: flow_conc.get(k)
            for k in ("n", "delay_s", "wall_s", "rss_mb", "completed", "rss_idle_mb")
        }
        if flow_conc
        else {},
        "event_latency_ms": {**(events.get("sequential") or {}), "under_load": events}
        if events
        else {},
        "scripted_model": {
            **capacity,
            "url": sm.url,
            "requests_total": final_stats["requests_total"],
            "requests_per_second_since_start": final_stats["requests_per_second"],
            "in_flight_peak": final_stats["in_flight_peak"],
            "max_phase_req_s": max(_phase_rates(systems), default=0.0),
            "rss_mb": round(sm_rss, 1),
        },
        "machine": machine
        | {"loadavg_after": os.getloadavg(), "busy_cpu_percent_at_system_start": busy_at_start},
        "environment": {
            "bytecode": note,
            "client": client,
            "sizes": {k: v.__dict__ for k, v in sizes.__dict__.items() if hasattr(v, "__dict__")},
        },
        "systems": systems,
    }
    report["replication_summary"] = replicas.summary(systems)
    report["cpu_budget"] = _cpu_budget(systems, flow_conc)
    report |= _ratios(systems, flow_conc)
    report["peer"] = _peer(systems, peer_skipped)
    report["code"] = _code_revision()
    report["targets"] = _targets(report)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["phase_wall_s"] = walls

    header, rows = table_rows(report)
    table = Table(
        title=f"flowrelay benchmark ({'quick' if quick else 'full'}, {machine['cpu_count']} cores)"
    )
    for column in header:
        table.add_column(column, justify="left" if column == "system" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in summary_lines(report):
        style = "green" if line.startswith("PASS") else "red" if line.startswith("MISS") else ""
        console.print(f"[{style}]{line}[/{style}]" if style else line)
    console.print(f"wall time {report['wall_s']:.0f} s; logs in {log_dir}")
    write_json(report, RESULTS / "latest.json")
    (RESULTS / "latest.md").write_text(markdown(report))
    console.print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts; finishes in under a minute"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all; with --quick: {','.join(QUICK_SYSTEMS)})",
    )
    parser.add_argument(
        "--n", type=int, default=None, help="flowrelay's concurrent runs (default 500, quick 100)"
    )
    parser.add_argument(
        "--py-spy",
        default=None,
        metavar="PATH",
        help="py-spy binary: profile the flowrelay services into bench/results/logs/profiles/",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each system, wait up to S seconds for the machine to be idle (shared boxes)",
    )
    parser.add_argument(
        "--client",
        choices=load.CLIENTS,
        default="raw",
        help="HTTP client of the load phases: raw (lean, default) or httpx (for comparison)",
    )
    args = parser.parse_args()
    chosen = args.only or ",".join(QUICK_SYSTEMS if args.quick else SYSTEMS)
    only = {s.strip() for s in chosen.split(",") if s.strip()}
    unknown = only - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    run(args.quick, only, args.n, args.py_spy, args.client, args.wait_idle)


if __name__ == "__main__":
    main()
