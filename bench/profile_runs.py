"""Profile flowrelay's processes over sequential runs only: ``python -m bench.profile_runs``.

Starts the scripted model and the stack as ``make bench`` does (auth on, a tenant key),
warms it up, then attaches py-spy (``--gil``: samples of the thread holding the GIL, so
waits drop out) to the API, the executor and its workers while ``--runs`` runs go one at a
time through ``POST /runs`` + SSE. Prints, per process, the top frames and the CPU and
JetStream counts per run, and leaves the raw profiles in ``bench/results/logs/profiles/``
(``python -m bench.profiles FILE`` summarises them again). The findings in
``bench/README.md`` come from this.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench import flowrelay_stack, load, model, natsops, profiles
from bench.measure import cpu_delta, tree_cpu_by_label

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or ".venv/bin/py-spy")
    parser.add_argument("--no-spy", action="store_true",
                        help="measure CPU and bus counts per run only (py-spy's sampling pauses its targets)")
    args = parser.parse_args()
    log_dir = RESULTS / "logs"
    out = log_dir / "profiles"
    shutil.rmtree(log_dir, ignore_errors=True)
    out.mkdir(parents=True)
    sm = model.start(log_dir)
    try:
        with flowrelay_stack.running(sm.url, log_dir) as stack:
            call = load.call("flowrelay_runs", workflow=flowrelay_stack.WORKFLOW)

            async def series(n: int, offset: int) -> None:
                async with load.make_client(stack.api_url, 8) as client:
                    runs = await load.sequential(client, call, n, offset=offset)
                bad = [r.error for r in runs if not r.ok]
                if bad:
                    raise RuntimeError(f"{len(bad)} runs failed, e.g. {bad[0]}")

            with asyncio.Runner(loop_factory=load.new_loop) as runner:
                runner.run(series(20, 1_000_000))
                spies = [
                    subprocess.Popen(
                        [args.py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--gil",
                         "--format", "raw", "--output", str(out / f"{name}.txt"),
                         *(["--subprocesses"] if name == "executor" else [])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    for name, pid in stack.services().items()
                    if name in ("api", "executor") and not args.no_spy
                ]  # fmt: skip
                time.sleep(1.0)  # py-spy attaches
                bus0, cpu0 = natsops.BusCounters.read(stack.monitor_url), tree_cpu_by_label(stack.pids())
                runner.run(series(args.runs, 0))
                cpu = cpu_delta(cpu0, tree_cpu_by_label(stack.pids()))
                bus = natsops.per_run(bus0, natsops.BusCounters.read(stack.monitor_url), args.runs)
                for spy in spies:
                    spy.send_signal(signal.SIGINT)
                for spy in spies:
                    spy.wait(30)
    finally:
        sm.stop()
    print("CPU ms per run (under py-spy):", {k: round(v / args.runs * 1000, 2) for k, v in cpu.items()})
    print("bus per run:", {k: v for k, v in bus.items() if k != "note"})
    for path in sorted(out.glob("*.txt")):
        print(profiles.report(path, args.top, []))


if __name__ == "__main__":
    main()
