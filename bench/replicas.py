"""What replicating every stream and bucket three ways costs: R3 against R1 on one cluster.

The flowrelay stack of the main row (API, one executor with its workers, suggester), run
twice against a local 3-node nats-server cluster (``flowrelay.natscluster``): first with
``FLOWRELAY_STREAM_REPLICAS=1``, then with 3. Only the replica count differs, so the
difference is the price of replication: every publish and KV write of a run is acknowledged
only once a majority of the three nodes stored it. The three nodes share this machine's
cores here; a production cluster spreads them over three machines, so this figure is the
pessimistic side of the cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import flowrelay_stack, model, phases
from bench.measure import SystemFigures

#: The replica counts compared, and the key of each one's row.
REPLICAS = {1: "cluster_r1", 3: "cluster_r3"}


@dataclass(frozen=True)
class ReplicaSizes:
    sequential: int
    batch: int
    rounds: int


def measure(
    sm: model.ScriptedModel, sizes: ReplicaSizes, log_dir: Path, client: str = "raw"
) -> dict[str, SystemFigures]:
    """One row per replica count: sequential latency and batch throughput of ``POST /runs`` + SSE."""
    rows: dict[str, SystemFigures] = {}
    for replicas, key in REPLICAS.items():
        started = time.perf_counter()
        with flowrelay_stack.running(sm.url, log_dir / key, cluster_replicas=replicas) as stack:
            startup_s = round(time.perf_counter() - started, 1)
            url, roots = stack.api_url, stack.pids
            seq = phases.check(
                f"R{replicas} sequential",
                phases.sequential(url, "flowrelay_runs", sizes.sequential, flowrelay_stack.WORKFLOW, sm, roots, client),
                sizes.sequential,
            )
            tp = phases.check(
                f"R{replicas} batch",
                phases.throughput(
                    url, "flowrelay_runs", sizes.batch, sizes.rounds, flowrelay_stack.WORKFLOW, sm, roots, client
                ),
                sizes.batch * sizes.rounds,
            )
        for part in (seq, tp):
            part.pop("event_lag_ms", None)
            part.pop("replayed_lag_ms", None)
        rows[key] = SystemFigures(
            name=key,
            latency=seq.pop("latency"),
            throughput_runs_s=tp["runs_s"],
            throughput_batch=sizes.batch,
            extra={
                "label": f"flowrelay on 3 NATS nodes, R{replicas}",
                "replicas": replicas,
                "startup_s": startup_s,
                "sequential": seq,
                "throughput": tp,
            },
        )
    return rows


def summary(systems: dict[str, Any]) -> str | None:
    """One sentence: R3's throughput, latency and nats-server CPU against R1's."""
    r1, r3 = (systems.get(key) or {} for key in REPLICAS.values())
    if not r1.get("throughput_runs_s") or not r3.get("throughput_runs_s") or r1.get("error") or r3.get("error"):
        return None

    def nats_cpu(fig: dict[str, Any]) -> float:
        by_process = ((fig.get("extra") or {}).get("sequential") or {}).get("server_cpu_per_run_ms_by_process") or {}
        return sum(v for k, v in by_process.items() if "nats" in k)

    tp1, tp3 = r1["throughput_runs_s"], r3["throughput_runs_s"]
    p1, p3 = r1["latency"]["p50"], r3["latency"]["p50"]
    return (
        f"replication on a local 3-node cluster: R3 {tp3:.1f} runs/s against R1 {tp1:.1f} "
        f"({tp3 / tp1:.2f}x, {100 * (1 - tp3 / tp1):.0f}% less); p50 {p3:.2f} ms against {p1:.2f} ms "
        f"(+{p3 - p1:.2f} ms); nats-server CPU per sequential run {nats_cpu(r3):.1f} ms against {nats_cpu(r1):.1f} ms "
        "(all three nodes on this machine's cores)"
    )
