"""What conversations cost: token streaming's events and latency, a thread's history load.

``python -m bench.conversations`` starts the benchmark's stack (``bench.flowrelay_stack``)
and the scripted model, then measures

* streaming: runs answering 1,000 tokens (``#tokens=1000``), whole and with
  ``options.stream_tokens``, the model sending one token per chunk instantly or paced
  (``#pace``: 5 ms = 200 tokens/s, 20 ms = 50 tokens/s): ``llm.delta`` events and their bytes
  per 1,000 tokens, and the run's end-to-end time (``POST /runs`` to its terminal SSE
  event) for the instant case, whole against streamed;
* history: threads of 10, 100 and 400 turns (about 1 kB each), the time to load what a run
  is given (``ThreadStore.history``: read the record, one batched direct get) and
  ``GET /threads/{id}`` (the newest 100 turns, and every run's status).

It prints one JSON document. Figures from one machine; the README quotes a run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats

from bench import model
from bench.flowrelay_stack import WORKFLOW, running
from flowrelay.natsconfig import Role
from flowrelay_bus.runs import RunStore
from flowrelay_bus.threads import ThreadStore

RUNS_PER_CASE = 10
TOKENS = 1000
TURNS = (10, 100, 400)
TURN_TEXT_CHARS = 450  # user message + echoed answer: about 1 kB of JSON per turn


async def _run(http: httpx.AsyncClient, text: str, *, stream: bool, path: str = "/runs") -> dict[str, Any]:
    body = {"workflow": WORKFLOW, "input": text, "options": {"stream_tokens": stream, "timeout_s": 120}}
    started = time.perf_counter()
    response = await http.post(path, json=body)
    response.raise_for_status()
    run_id = response.json()["run_id"]
    deltas = delta_bytes = events = 0
    async with http.stream("GET", f"/runs/{run_id}/events") as sse:
        async for line in sse.aiter_lines():
            if line.startswith("event: "):
                events += 1
                deltas += line == "event: llm.delta"
            elif line.startswith("data: ") and '"type":"llm.delta"' in line:
                delta_bytes += len(line) - 6
    return {"run_id": run_id, "wall_ms": (time.perf_counter() - started) * 1000, "events": events,
            "deltas": deltas, "delta_bytes": delta_bytes}


async def streaming(http: httpx.AsyncClient) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, text, stream in (("whole", f"#tokens={TOKENS}", False), ("streamed_instant", f"#tokens={TOKENS}", True),
                                ("streamed_200_tps", f"#tokens={TOKENS} #pace=5", True),
                                ("streamed_50_tps", f"#tokens={TOKENS} #pace=20", True)):
        count = RUNS_PER_CASE if "instant" in label or label == "whole" else 2
        runs = [await _run(http, text, stream=stream) for _ in range(count)]
        out[label] = {
            "runs": count,
            "wall_ms_p50": round(statistics.median(r["wall_ms"] for r in runs), 1),
            "events_per_run": statistics.median(r["events"] for r in runs),
            "llm_delta_per_1000_tokens": statistics.median(r["deltas"] for r in runs) * 1000 / TOKENS,
            "llm_delta_kb_per_1000_tokens": round(statistics.median(r["delta_bytes"] for r in runs) / 1024 * 1000 / TOKENS, 1),
        }
    return out


async def history(http: httpx.AsyncClient, nats_url: str, secrets: Any) -> dict[str, Any]:
    nc = await nats.connect(nats_url, user=Role.OPERATOR.value, password=secrets.password(Role.OPERATOR.value))
    threads = await ThreadStore.open(nc, await RunStore.open(nc.jetstream()))
    out: dict[str, Any] = {}
    try:
        for turns in TURNS:
            thread_id = (await http.post("/threads", json={})).json()["thread_id"]
            for number in range(turns):
                await _run(http, f"turn {number} " + "x" * TURN_TEXT_CHARS, stream=False, path=f"/threads/{thread_id}/runs")
            record = await threads.get("default", thread_id)
            assert record is not None
            loads = []
            for _ in range(20):
                started = time.perf_counter()
                loaded = await threads.history(record, budget=256 * 1024)
                loads.append((time.perf_counter() - started) * 1000)
            gets = []
            for _ in range(10):
                started = time.perf_counter()
                (await http.get(f"/threads/{thread_id}")).raise_for_status()
                gets.append((time.perf_counter() - started) * 1000)
            out[f"{turns}_turns"] = {
                "turns_given": len(loaded.turns), "turns_left_out": loaded.dropped,
                "history_kb": round(sum(len(json.dumps(t.messages)) for t in loaded.turns) / 1024, 1),
                "load_ms_p50": round(statistics.median(loads), 2),
                "get_thread_ms_p50": round(statistics.median(gets), 2),
            }
    finally:
        await nc.close()
    return out


async def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="flowrelay-bench-conversations-"))
    scripted = model.start(logs)
    try:
        with running(scripted.url, logs) as stack:
            headers = {"Authorization": f"Bearer {stack.secrets.admin_key()}"}
            async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=300) as http:
                figures = {"streaming": await streaming(http),
                           "history": await history(http, stack.nats.url, stack.secrets)}
    finally:
        scripted.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
