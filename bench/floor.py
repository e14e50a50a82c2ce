"""The floor: the best one process can do with no bus, no HTTP front and no isolation.

One tinyagent agent is created once and reused; runs are awaited on one event loop (uvloop,
as the services use). Besides latency and throughput it also runs the concurrent phase
(N runs at once, each held in the model), as a reference for what one process can do with
flowrelay's N on this machine; its RSS is sampled from outside. This is the cost of any-agent itself plus one HTTP round trip to the
scripted model, so every other system is read as "floor + its own overhead".

It runs in its own process (``python -m bench.floor``) so that importing any-agent (about
2 s, 100 MB) and its event loop never share a process with the benchmark client, and prints
one JSON object with its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.measure import Latency, MachineCpu, RssSampler, SystemFigures, median

#: Instant runs before measuring (first runs pay connection setup and lazy imports).
WARMUP_RUNS = 20

#: Bound on the whole floor process, however many runs were asked for.
FLOOR_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class FloorSizes:
    sequential: int
    batch: int
    rounds: int
    concurrent: int = 0  # N runs at once with a model delay: a reference for flowrelay's N
    delay_s: float = 1.0


async def _measure(url: str, sizes: FloorSizes) -> dict[str, Any]:
    from any_agent import AgentConfig, AnyAgent  # in the measuring process only

    agent = await AnyAgent.create_async(
        "tinyagent",
        AgentConfig(model_id="openai:gpt-4o-mini", api_base=url, api_key="scripted", callbacks=[]),
    )
    for i in range(WARMUP_RUNS):
        await agent.run_async(f"warmup {i}")

    machine = MachineCpu()
    cpu0 = time.process_time()
    latencies: list[float] = []
    for i in range(sizes.sequential):
        start = time.perf_counter()
        trace = await agent.run_async(f"floor {i}")
        latencies.append(time.perf_counter() - start)
        if trace.final_output != f"echo: floor {i}":
            raise RuntimeError(f"unexpected output {trace.final_output!r}")

    cpu_per_run_ms = (time.process_time() - cpu0) / max(sizes.sequential, 1) * 1000
    root = url.removesuffix("/v1")
    async with httpx.AsyncClient() as client:
        before = (await client.get(f"{root}/stats")).json()
        rates: list[float] = []
        start_all = time.perf_counter()
        for r in range(sizes.rounds):
            start = time.perf_counter()
            await asyncio.gather(*(agent.run_async(f"batch {r} {i}") for i in range(sizes.batch)))
            rates.append(sizes.batch / (time.perf_counter() - start))
        wall = time.perf_counter() - start_all
        after = (await client.get(f"{root}/stats")).json()
    requests = after["requests_total"] - before["requests_total"]
    concurrent: dict[str, Any] = {}
    if sizes.concurrent:
        cpu0, start = time.process_time(), time.perf_counter()
        texts = [f"#delay={sizes.delay_s:g} floor concurrent {i}" for i in range(sizes.concurrent)]
        traces = await asyncio.gather(*(agent.run_async(text) for text in texts))
        concurrent = {
            "n": sizes.concurrent,
            "delay_s": sizes.delay_s,
            "wall_s": round(time.perf_counter() - start, 3),
            "completed": sum(
                t.final_output == f"echo: {x}" for t, x in zip(traces, texts, strict=True)
            ),
            "cpu_per_run_ms": round((time.process_time() - cpu0) / sizes.concurrent * 1000, 2),
        }
    return {
        "concurrent": concurrent,
        "latency_s": latencies,
        "rounds_runs_s": rates,
        "model_req_s": round(requests / wall, 1),
        "model_in_flight_peak": after["in_flight_peak"],
        "machine_busy_share": machine.busy_share(),
        "cpu_per_run_ms": round(cpu_per_run_ms, 3),
    }


def measure(url: str, sizes: FloorSizes) -> SystemFigures:
    """Run the floor in a fresh process and summarise what it printed."""
    args = [
        sys.executable, "-m", "bench.floor", "--url", url,
        "--sequential", str(sizes.sequential), "--batch", str(sizes.batch), "--rounds", str(sizes.rounds),
        "--concurrent", str(sizes.concurrent), "--delay", str(sizes.delay_s),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RssSampler(lambda: [proc.pid]) as sampler:  # its peak is during the concurrent phase
        try:
            stdout, stderr = proc.communicate(timeout=FLOOR_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"floor process failed: {stderr.strip()[-2000:]}")
    raw = json.loads(stdout.strip().splitlines()[-1])
    concurrent = (
        raw["concurrent"] | {"rss_mb": sampler.peak_mb, "reference": True}
        if raw["concurrent"]
        else None
    )
    return SystemFigures(
        name="floor",
        latency=Latency.of_seconds(raw["latency_s"]),
        throughput_runs_s=round(median(raw["rounds_runs_s"]), 1),
        throughput_batch=sizes.batch,
        concurrent=concurrent,
        extra={
            "label": "floor (1 process, agent reused)",
            "rounds_runs_s": [round(r, 1) for r in raw["rounds_runs_s"]],
            "model_req_s_during_batches": raw["model_req_s"],
            "model_in_flight_peak": raw["model_in_flight_peak"],
            "machine_busy_share": raw["machine_busy_share"],
            "cpu_per_run_ms": raw["cpu_per_run_ms"],
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="scripted model base URL (.../v1)")
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=0)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    sizes = FloorSizes(args.sequential, args.batch, args.rounds, args.concurrent, args.delay)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(asyncio.wait_for(_measure(args.url, sizes), FLOOR_TIMEOUT_S))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
