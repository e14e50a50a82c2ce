"""What ``sync_interval: always`` costs here: one acknowledged JetStream publish timed with
fsync on every write (what flowrelay deploys) and with nats-server's default (fsync every
2 minutes), on the same disk, then turned into a cost per run with the run's count of
stored messages (``bench/natsops.py``).

Why apart from the stack: the durability setting is not up for tuning (a SIGKILLed server
lost acknowledged messages without it, docs/FIELD_NOTES.md), so the benchmark states its
price instead of measuring the stack twice.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StreamConfig

from flowrelay import natsserver

#: Acknowledged publishes timed per setting, one at a time (as a run's writes wait).
PUBLISHES = 300

#: A payload about the size of a trace event.
PAYLOAD = b"x" * 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _time_publishes(url: str) -> tuple[float, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="FSYNC_PROBE", subjects=["probe.>"]))
        for i in range(20):  # warm
            await js.publish(f"probe.w{i}", PAYLOAD)
        latencies = []
        for i in range(PUBLISHES):
            start = time.perf_counter()
            await js.publish(f"probe.{i}", PAYLOAD)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        return latencies[len(latencies) // 2] * 1000, sum(latencies) / len(latencies) * 1000
    finally:
        await nc.close()


def _probe(sync_interval: str | None) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="flowrelay-bench-fsync-"))
    try:
        config = {"host": "127.0.0.1", "port": _free_port(), "jetstream": {"store_dir": str(root)}}
        if sync_interval is not None:
            config["jetstream"]["sync_interval"] = sync_interval
        (root / "nats.conf").write_text(json.dumps(config))
        server = natsserver.start(root, config=root / "nats.conf")
        try:
            p50, mean = asyncio.run(_time_publishes(server.url))
        finally:
            server.stop()
        return {"p50_ms": round(p50, 3), "mean_ms": round(mean, 3)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(stored_per_run: float | None, serial_per_run: int) -> dict[str, Any]:
    """Acked publish latency with and without fsync, and what that makes per run.

    ``serial_per_run``: stored writes a sequential run waits for one after another (the
    rest are pipelined behind them).
    """
    always, default = _probe("always"), _probe(None)
    extra = max(0.0, always["p50_ms"] - default["p50_ms"])  # medians: a busy box's outliers skew means
    return {
        "acked_publish_always": always,
        "acked_publish_default": default,
        "fsync_ms_per_write": round(extra, 3),
        "stored_messages_per_run": stored_per_run,
        "serial_writes_per_run": serial_per_run,
        "latency_ms_per_run": round(extra * serial_per_run, 2),
        "note": "sync_interval 'always' (kept: durability); latency_ms_per_run = fsync cost per write x "
        "writes a sequential run waits for in turn (record and index together, request, claim, "
        "the last step events, terminal record, terminal event)",
    }
