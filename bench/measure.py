"""Measuring primitives shared by every phase: percentiles, the process-tree RSS sampler,
CPU accounting, machine facts, and the table/JSON/Markdown output.

Why here: the three systems (floor, original design, flowrelay) must be measured with the
same code, or their ratios mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

#: Seconds between two RSS samples of a process tree (the brief: about 50 ms).
RSS_SAMPLE_INTERVAL_S = 0.05

MB = 1024 * 1024


# -- statistics ----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    """Latency summary of one series, in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of_seconds(cls, samples: Iterable[float]) -> Latency:
        return cls.of_ms([s * 1000.0 for s in samples])

    @classmethod
    def of_ms(cls, samples: Iterable[float]) -> Latency:
        values = sorted(samples)
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            n=len(values),
            p50=round(percentile(values, 50), 3),
            p95=round(percentile(values, 95), 3),
            p99=round(percentile(values, 99), 3),
            mean=round(sum(values) / len(values), 3),
            max=round(values[-1], 3),
        )


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


# -- process trees -------------------------------------------------------------------------


def tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes ``pids`` and all their descendants (each once; gone ones skipped)."""
    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in members:
            seen.setdefault(proc.pid, proc)
    return list(seen.values())


def tree_rss_bytes(pids: Iterable[int]) -> tuple[int, int]:
    """Summed RSS of the trees under ``pids``, and how many processes that is."""
    total = count = 0
    for proc in tree(pids):
        try:
            total += proc.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            pass
    return total, count


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """User+system CPU seconds used so far by the trees under ``pids`` (living members)."""
    total = 0.0
    for proc in tree(pids):
        try:
            times = proc.cpu_times()
            # children_*: processes that already exited and were reaped (per-request pools)
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def process_label(proc: psutil.Process) -> str:
    """A short name for a process: its console script or ``-m`` module (workers included)."""
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if not argv:
        return proc.name()
    args = argv[1:] if Path(argv[0]).name.startswith("python") else argv
    if args is not argv:  # skip interpreter options (-B, -u, -X opt, ...) before -m/-c/script
        while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
            args = args[2:] if args[0] in ("-X", "-W") else args[1:]
    if args[:1] == ["-c"]:  # a multiprocessing forkserver and the workers forked from it
        return "workers (forkserver)" if "forkserver" in " ".join(args[1:2]) else "python -c"
    if args[:1] == ["-m"] and len(args) > 1:
        return args[1]
    return Path(args[0]).name if args else Path(argv[0]).name


def tree_cpu_by_label(pids: Iterable[int]) -> dict[str, float]:
    """CPU seconds so far of the trees under ``pids``, summed per :func:`process_label`."""
    out: dict[str, float] = {}
    for proc in tree(pids):
        try:
            times = proc.cpu_times()
            label = process_label(proc)
        except psutil.NoSuchProcess:
            continue
        out[label] = (
            out.get(label, 0.0)
            + times.user
            + times.system
            + times.children_user
            + times.children_system
        )
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-label CPU seconds used between two :func:`tree_cpu_by_label` readings."""
    return {
        k: round(after.get(k, 0.0) - before.get(k, 0.0), 2)
        for k in sorted(set(before) | set(after))
    }


class MachineCpu:
    """System-wide CPU use over a window, so a reader can see contention from outside.

    ``busy_share`` is the share of all cores that were busy (1.0 = saturated), whoever used
    them; compare it with the server's and the client's own shares.
    """

    def __init__(self) -> None:
        self._start = psutil.cpu_times()

    def busy_share(self) -> float:
        end = psutil.cpu_times()
        total = sum(end) - sum(self._start)
        idle = (end.idle + getattr(end, "iowait", 0.0)) - (
            self._start.idle + getattr(self._start, "iowait", 0.0)
        )
        return round(1.0 - idle / total, 3) if total > 0 else 0.0


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class RssSampler:
    """Samples the summed RSS of process trees every ``interval`` s on a thread; keeps the peak.

    ``roots`` is called at every tick, so processes that appear later (forked workers, a
    per-request process pool) are counted while they live. RSS counts pages shared between
    forked processes once per process, as the brief asks; the README says what that means.
    """

    def __init__(
        self, roots: Callable[[], Iterable[int]], interval: float = RSS_SAMPLE_INTERVAL_S
    ) -> None:
        self._roots = roots
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_bytes = 0
        self.peak_processes = 0
        self.max_processes = 0
        self.samples = 0
        self.first_bytes = 0

    def __enter__(self) -> RssSampler:
        self._sample()
        self.first_bytes = self.peak_bytes
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        rss, count = tree_rss_bytes(self._roots())
        self.samples += 1
        self.max_processes = max(self.max_processes, count)
        if rss > self.peak_bytes:
            self.peak_bytes, self.peak_processes = rss, count

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / MB, 1)

    @property
    def first_mb(self) -> float:
        return round(self.first_bytes / MB, 1)


# -- machine -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (they only compare within one machine)."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# -- results -------------------------------------------------------------------------------


@dataclass
class SystemFigures:
    """The figures of one system (floor, original design or flowrelay)."""

    name: str
    latency: Latency | None = None
    throughput_runs_s: float | None = None
    throughput_batch: int | None = None
    concurrent: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return data


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or math.isnan(value) or math.isnan(base):
        return "-"
    return f"{value / base:.2f}x"


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table (header, rows) shared by the console and the Markdown file."""
    systems: dict[str, dict[str, Any]] = report["systems"]
    floor = systems.get("floor") or {}
    original = systems.get("original") or {}
    floor_lat = (floor.get("latency") or {}).get("p50")
    orig_lat = (original.get("latency") or {}).get("p50")
    floor_tp = floor.get("throughput_runs_s")
    orig_tp = original.get("throughput_runs_s")
    header = [
        "system",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p50 vs floor",
        "p50 vs original",
        "runs/s",
        "runs/s vs floor",
        "runs/s vs original",
        "N x 1 s runs: wall s",
        "peak RSS MB",
    ]
    rows: list[list[str]] = []
    for key, fig in systems.items():
        if fig is None:
            continue
        label = fig.get("label") or key
        if fig.get("error"):
            rows.append([label, "failed: " + fig["error"][:60], *["-"] * (len(header) - 2)])
            continue
        lat = fig.get("latency") or {}
        tp = fig.get("throughput_runs_s")
        conc = fig.get("concurrent") or {}
        capped = (
            " (capped)" if conc.get("capped") else " (reference)" if conc.get("reference") else ""
        )
        conc_text = f"N={conc['n']}{capped}: {_fmt(conc.get('wall_s'), 2)}" if conc else "-"
        rows.append(
            [
                label,
                _fmt(lat.get("p50"), 2),
                _fmt(lat.get("p95"), 2),
                _fmt(lat.get("p99"), 2),
                _ratio(lat.get("p50"), floor_lat),
                _ratio(lat.get("p50"), orig_lat),
                _fmt(tp, 1),
                _ratio(tp, floor_tp),
                _ratio(tp, orig_tp),
                conc_text,
                _fmt(conc.get("rss_mb"), 0) if conc else "-",
            ]
        )
    return header, rows


def _plain(value: Any) -> Any:
    """JSON-safe copy: dataclasses as dicts, NaN as null (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _plain(asdict(value))
    return value


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(report), indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


def markdown(report: dict[str, Any]) -> str:
    """The human-readable results page (embedded by the README)."""
    header, rows = table_rows(report)
    lines = [
        "<!-- generated by `make bench`; do not edit by hand -->",
        f"Measured {report['finished_at']} ({'quick' if report['quick'] else 'full'} run, "
        f"{report['wall_s']:.0f} s) on {report['machine']['cpu_count']} x {report['machine']['cpu_model']}, "
        f"Python {report['machine']['python']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    lines += [f"- {line}" for line in summary_lines(report)]
    lines.append("")
    lines += _timeline_markdown(report)
    return "\n".join(lines)


def _timeline_markdown(report: dict[str, Any]) -> list[str]:
    """Where one flowrelay run's time goes (sequential, and under the concurrent load)."""
    fig = (report.get("systems") or {}).get("flowrelay") or {}
    seq = ((fig.get("extra") or {}).get("sequential") or {}).get("timeline_ms") or {}
    conc = (fig.get("concurrent") or {}).get("timeline_ms") or {}
    if not seq:
        return []
    n = (fig.get("concurrent") or {}).get("n")
    lines = [
        f"Where a flowrelay run's time goes (`POST /runs` + SSE; ms, p50 / p99; concurrent = N={n} runs of 1 s):",
        "",
        "| step | sequential | concurrent |",
        "|---|---|---|",
    ]
    for step, value in seq.items():
        other = conc.get(step)
        other_text = f"{other['p50']:,.1f} / {other['p99']:,.1f}" if other else "-"
        lines.append(f"| {step} | {value['p50']:,.2f} / {value['p99']:,.2f} | {other_text} |")
    lines.append("")
    return lines


def busy_shares(report: dict[str, Any]) -> dict[str, float]:
    """How busy the whole machine was during each system's main phases (contention check)."""
    out: dict[str, float] = {}
    for key, fig in (report.get("systems") or {}).items():
        if not fig or fig.get("error"):
            continue
        extra = fig.get("extra") or {}
        shares = [
            part.get("machine_busy_share")
            for part in (
                extra,
                extra.get("sequential") or {},
                extra.get("throughput") or {},
                fig.get("concurrent") or {},
            )
        ]
        shares = [s for s in shares if s is not None]
        if shares:
            out[key] = max(shares)
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The headline figures and targets, one sentence each."""
    out: list[str] = []
    auth = ((report.get("systems") or {}).get("flowrelay") or {}).get("extra", {}).get("auth")
    if auth:
        out.append(
            f"authentication (API keys, on in every flowrelay figure): {auth['cached']['cpu_us_per_request']:.1f} us "
            f"CPU per request with the key cached, {auth['uncached']['wall_us_per_request']:.0f} us for the first "
            "request of a key in each FLOWRELAY_KEY_CACHE_S window (one KV read)"
        )
    if report.get("overhead_p50_ms") is not None:
        out.append(
            f"flowrelay overhead over the floor at p50: {report['overhead_p50_ms']:.2f} ms (target <= 10 ms)"
        )
    ev = report.get("event_latency_ms") or {}
    if ev.get("p50") is not None:
        out.append(
            f"event latency (SSE receive - event.at): p50 {ev['p50']:.2f} ms, p99 {ev['p99']:.2f} ms "
            f"over {ev.get('n', 0)} events (target p50 < 5 ms, p99 < 50 ms)"
        )
        loaded = (ev.get("under_load") or {}).get("concurrent") or {}
        if loaded.get("p50") is not None:
            out.append(
                f"event latency under the concurrent load: p50 {loaded['p50']:.1f} ms, "
                f"p99 {loaded['p99']:.1f} ms over {loaded.get('n', 0)} events"
            )
    conc = report.get("concurrent") or {}
    if conc.get("wall_s") is not None:
        out.append(
            f"flowrelay {conc['n']} concurrent {conc['delay_s']:g} s runs: all done in {conc['wall_s']:.2f} s, "
            f"peak RSS {conc['rss_mb']:.0f} MB (target <= 1.15 x the floor's wall time, < 3 GB)"
        )
    ratios = report.get("ratios") or {}
    if any(v is not None for v in ratios.values()):
        shown = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None)
        out.append(f"flowrelay / floor in this run: {shown} (targets: cpu <= 3, throughput >= 0.8, burst <= 1.15, p50 <= 3)")
    peer = report.get("peer") or {}
    if peer.get("skipped"):
        out.append(f"peer (Celery): skipped: {peer['skipped']}")
    elif peer.get("p50_ms") is not None:
        vs = {k: v for k, v in (peer.get("flowrelay_vs_peer") or {}).items() if v is not None}
        versus = ", ".join(f"{k} {v:.2f}x" for k, v in vs.items())
        out.append(
            f"peer {peer.get('label')}: p50 {peer['p50_ms']:.2f} ms, {peer['runs_s']:.1f} runs/s, "
            f"CPU {peer.get('cpu_per_run_ms') or 0:.1f} ms per run" + (f"; flowrelay / Celery: {versus}" if versus else "")
        )
    model = report.get("scripted_model") or {}
    if model.get("capacity_req_s"):
        out.append(
            f"scripted model capacity on this machine: {model['capacity_req_s']:.0f} requests/s "
            f"(peak rate it saw during a phase: {model.get('max_phase_req_s', 0):.0f} requests/s; its /stats: "
            f"{model.get('requests_total', 0)} requests, {model.get('requests_per_second_since_start', 0):.0f}/s "
            f"averaged since start); its RSS {model.get('rss_mb', 0):.0f} MB is not counted above"
        )
    extra = ((report.get("systems") or {}).get("flowrelay") or {}).get("extra") or {}
    bus, fs = extra.get("bus_per_run") or {}, extra.get("fsync") or {}
    if bus.get("stored_messages") is not None:
        out.append(
            f"bus per run: {bus['stored_messages']:.1f} stored JetStream messages ({', '.join(f'{k} {v:g}' for k, v in bus['stored_by_stream'].items() if v >= 0.5)}), "
            f"{bus['client_messages_in']:.1f} messages in, {bus['client_messages_out']:.1f} out, "
            f"{bus['bytes_in'] / 1024:.1f} kB in, {bus['bytes_out'] / 1024:.1f} kB out"
        )
    if fs.get("fsync_ms_per_write") is not None:
        out.append(
            f"fsync (sync_interval: always, kept): an acked publish {fs['acked_publish_always']['p50_ms']:.2f} ms vs "
            f"{fs['acked_publish_default']['p50_ms']:.2f} ms without it (p50); {fs['serial_writes_per_run']} writes a run waits for in turn "
            f"= {fs['latency_ms_per_run']:.1f} ms of its latency"
        )
    budget = report.get("cpu_budget") or {}
    if budget.get("flowrelay_cpu_per_run_ms"):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in budget["by_process"].items() if v >= 0.5)
        floor_part = (
            f" (floor: {budget['floor_cpu_per_run_ms']:.1f} ms)"
            if budget.get("floor_cpu_per_run_ms")
            else ""
        )
        out.append(
            f"CPU per sequential run, whole stack: {budget['flowrelay_cpu_per_run_ms']:.1f} ms ({parts}){floor_part}; "
            f"on {budget['cores']} cores that alone caps flowrelay at about {budget['max_runs_s']:.0f} runs/s, and "
            f"{budget['concurrent_n']} runs need at least {budget['min_concurrent_wall_s']:.1f} s of wall time for their CPU"
        )
    if report.get("replication_summary"):
        out.append(report["replication_summary"])
    busy = busy_shares(report)
    if busy:
        shown = ", ".join(f"{name} {share:.0%}" for name, share in busy.items())
        out.append(
            f"machine CPU busy during the measurements (all processes, 100% = every core): {shown}"
        )
    for target in report.get("targets", []):
        out.append(f"{'PASS' if target['ok'] else 'MISS'}: {target['name']} ({target['value']})")
    return out
