"""Driving HTTP load: one client call per run, sequential series, concurrent batches, and
batches spread over several client processes.

Why: the client must never be what is measured. One ``httpx.AsyncClient`` (with enough
connections for the batch) serves a process; when a batch is large, it is split over
several spawned client processes that start together behind a barrier. Every client reports
its own CPU time, so the report shows how much of the machine the client took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from bench.measure import MachineCpu
from bench.rawhttp import RawClient

#: Either client: both offer ``post(path, json=)`` and ``stream(method, path)``.
Client = Any

#: Time allowed for one run, end to end, before the client gives up on it.
RUN_TIMEOUT_S = 60.0

#: After the terminal event, how long to read on for the server to end the SSE response
#: (so the connection can be reused); not counted in any figure.
SSE_DRAIN_S = 0.5

#: Whole-batch bound (a batch that has not finished by then is reported as failed).
BATCH_TIMEOUT_S = 180.0

#: Spawned client processes get this long to import and reach the start barrier.
CLIENT_START_TIMEOUT_S = 60.0

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})


@dataclass
class RunResult:
    """One run as the client saw it."""

    ok: bool
    latency_s: float
    finished_wall: float  # time.time() when the answer (or terminal event) arrived
    error: str | None = None
    #: (receive wall time - event.at) in ms for events created after the stream was open.
    event_lag_ms: list[float] = field(default_factory=list)
    #: same, for events replayed because they happened before the stream was open.
    replayed_lag_ms: list[float] = field(default_factory=list)
    #: (step, wall time) in order: "sent", "accepted" (202), each event type at its ``at``,
    #: "received" (terminal event at the client). Consecutive differences show where time goes.
    marks: list[tuple[str, float]] = field(default_factory=list)


#: A client call: (client, run index) -> result.
Call = Callable[[Client, int], Awaitable[RunResult]]


#: Idle keep-alive connections are dropped by the client after this long: below uvicorn's
#: default 5 s server-side timeout, so a request never races the server closing its socket.
KEEPALIVE_EXPIRY_S = 3.0


#: Which HTTP client drives the load: "raw" (bench.rawhttp, lean) or "httpx".
CLIENTS = ("raw", "httpx")


def auth_headers() -> dict[str, str]:
    """The API key the stack under test accepts (``FLOWRELAY_API_KEY``, as for the CLI)."""
    key = os.environ.get("FLOWRELAY_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def make_client(base_url: str, connections: int, kind: str = "raw") -> Client:
    """One client per process; ``connections`` bounds httpx's pool (raw opens what it needs)."""
    if kind == "raw":
        return RawClient(base_url, headers=auth_headers())
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=RUN_TIMEOUT_S, headers=auth_headers()
    )


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# -- the calls -----------------------------------------------------------------------------


def prompt(i: int, delay_s: float = 0.0) -> str:
    return f"#delay={delay_s:g} bench run {i}" if delay_s else f"bench run {i}"


def expected_output(text: str) -> str:
    return f"echo: {text}"


async def post_execute(client: Client, body: dict[str, Any], text: str) -> RunResult:
    """A synchronous submit-and-wait endpoint: one POST returns the answer."""
    start = time.perf_counter()
    try:
        response = await client.post("/execute", json=body)
        latency = time.perf_counter() - start
        if response.status_code != 200:
            return RunResult(
                False, latency, time.time(), f"HTTP {response.status_code}: {response.text[:200]}"
            )
        output = response.json().get("output")
        if output != expected_output(text):
            return RunResult(
                False, latency, time.time(), f"unexpected output {str(output)[:100]!r}"
            )
        return RunResult(True, latency, time.time())
    except Exception as exc:  # a failed run is a figure, not a crash of the benchmark
        return RunResult(
            False, time.perf_counter() - start, time.time(), f"{type(exc).__name__}: {exc}"
        )


def _parse_sse(block: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.decode().split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
    return fields


async def submit_and_follow(client: Client, body: dict[str, Any], text: str) -> RunResult:
    """``POST /runs``, then follow ``GET /runs/{id}/events`` until the terminal event."""
    start = time.perf_counter()
    sent = time.time()
    try:
        response = await client.post("/runs", json=body)
        accepted = time.time()
        if response.status_code != 202:
            return RunResult(
                False,
                time.perf_counter() - start,
                time.time(),
                f"POST /runs {response.status_code}: {response.text[:200]}",
            )
        run_id = response.json()["run_id"]
        result = RunResult(False, 0.0, 0.0, "stream ended before a terminal event")
        result.marks = [("sent", sent), ("accepted", accepted)]
        async with client.stream("GET", f"/runs/{run_id}/events") as stream:
            opened = time.time()
            if stream.status_code != 200:
                return RunResult(
                    False,
                    time.perf_counter() - start,
                    time.time(),
                    f"GET events {stream.status_code}",
                )
            buffer = b""
            terminal_at: float | None = None
            chunks = stream.aiter_bytes()
            async for chunk in chunks:
                received = time.time()
                buffer = (buffer + chunk).replace(b"\r\n", b"\n")  # CRLF may straddle chunks
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    fields = _parse_sse(block)
                    if "data" not in fields:
                        continue
                    event = json.loads(fields["data"])
                    at = datetime.fromisoformat(event["at"]).timestamp()
                    lag = (received - at) * 1000.0
                    (result.event_lag_ms if at >= opened else result.replayed_lag_ms).append(lag)
                    result.marks.append((event["type"], at))
                    if (
                        fields.get("event", event.get("type")) in TERMINAL_EVENTS
                        and terminal_at is None
                    ):
                        terminal_at = received
                        result.marks.append(("received", received))
                        result.latency_s = time.perf_counter() - start
                        result.finished_wall = received
                        output = (event.get("data") or {}).get("output")
                        if event["type"] != "run.completed":
                            result.error = f"{event['type']}: {json.dumps(event.get('data'))[:200]}"
                        elif output != expected_output(text):
                            result.error = f"unexpected output {str(output)[:100]!r}"
                        else:
                            result.ok, result.error = True, None
                if terminal_at is not None:
                    break  # the figure is the run's, not the stream's teardown
            if terminal_at is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SSE_DRAIN_S):  # let the server end the response
                        async for _ in chunks:
                            pass
        if terminal_at is None:
            result.latency_s, result.finished_wall = time.perf_counter() - start, time.time()
        return result
    except Exception as exc:
        return RunResult(
            False, time.perf_counter() - start, time.time(), f"{type(exc).__name__}: {exc}"
        )


# -- series and batches --------------------------------------------------------------------


async def sequential(client: Client, call: Call, n: int, offset: int = 0) -> list[RunResult]:
    return [await call(client, offset + i) for i in range(n)]


async def batch(
    client: Client, call: Call, n: int, offset: int = 0
) -> tuple[float, list[RunResult]]:
    """Fire ``n`` calls at once; returns (wall seconds until the last finished, results)."""
    start = time.time()
    async with asyncio.timeout(BATCH_TIMEOUT_S):
        results = await asyncio.gather(*(call(client, offset + i) for i in range(n)))
    return max(r.finished_wall for r in results) - start, list(results)


@dataclass(frozen=True)
class ClientJob:
    """What one spawned client process does: its share of a batch."""

    base_url: str
    kind: str  # name in CALLS
    indices: tuple[int, ...]
    delay_s: float
    workflow: dict[str, Any] | None
    client: str


def _call_for(job: ClientJob) -> Call:
    factory = CALLS[job.kind]
    return factory(job.delay_s, job.workflow)


def _client_process(job: ClientJob, barrier: Any, results: Any) -> None:
    async def go() -> dict[str, Any]:
        call = _call_for(job)
        async with make_client(job.base_url, 2 * len(job.indices) + 4, job.client) as client:
            barrier.wait(CLIENT_START_TIMEOUT_S)
            cpu0 = time.process_time()
            async with asyncio.timeout(BATCH_TIMEOUT_S):
                runs = await asyncio.gather(*(call(client, i) for i in job.indices))
            return {"runs": [r.__dict__ for r in runs], "cpu_s": time.process_time() - cpu0}

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            results.put(runner.run(go()))
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})


@dataclass
class SpreadResult:
    wall_s: float
    runs: list[RunResult]
    client_cpu_s: float
    errors: list[str]
    machine_busy_share: float


def spread_batch(
    base_url: str,
    kind: str,
    n: int,
    processes: int,
    *,
    delay_s: float = 0.0,
    workflow: dict[str, Any] | None = None,
    offset: int = 0,
    client: str = "raw",
) -> SpreadResult:
    """Fire ``n`` runs at once from ``processes`` client processes (spawned, one client each).

    The wall time runs from the moment every client is connected-ready at the barrier to the
    last answer any of them received.
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [tuple(range(offset + p, offset + n, processes)) for p in range(processes)]
    procs = [
        ctx.Process(
            target=_client_process,
            args=(ClientJob(base_url, kind, share, delay_s, workflow, client), barrier, results),
            daemon=True,
        )
        for share in shares
        if share
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(CLIENT_START_TIMEOUT_S)
        start_wall = time.time()
        machine = MachineCpu()
        outputs = [results.get(timeout=BATCH_TIMEOUT_S + 30) for _ in procs]
        busy = machine.busy_share()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    runs: list[RunResult] = []
    errors: list[str] = []
    cpu = 0.0
    for out in outputs:
        if "error" in out:
            errors.append(out["error"])
            continue
        cpu += out["cpu_s"]
        runs += [RunResult(**r) for r in out["runs"]]
    for run in runs:  # tuples became lists on the way through the queue
        run.marks = [tuple(mark) for mark in run.marks]
    end_wall = max((r.finished_wall for r in runs), default=time.time())
    return SpreadResult(end_wall - start_wall, runs, cpu, errors, busy)


# -- the registry of calls (by name, so spawned processes can rebuild them) -----------------


def _original_call(delay_s: float, workflow: dict[str, Any] | None) -> Call:
    async def call(client: Client, i: int) -> RunResult:
        text = prompt(i, delay_s)
        return await post_execute(client, {"input": text}, text)

    return call


def _flowrelay_runs_call(delay_s: float, workflow: dict[str, Any] | None) -> Call:
    async def call(client: Client, i: int) -> RunResult:
        text = prompt(i, delay_s)
        return await submit_and_follow(client, {"workflow": workflow, "input": text}, text)

    return call


def _flowrelay_execute_call(delay_s: float, workflow: dict[str, Any] | None) -> Call:
    async def call(client: Client, i: int) -> RunResult:
        text = prompt(i, delay_s)
        return await post_execute(client, {"workflow": workflow, "input": text}, text)

    return call


CALLS: dict[str, Callable[[float, dict[str, Any] | None], Call]] = {
    "original": _original_call,
    "flowrelay_runs": _flowrelay_runs_call,
    "flowrelay_execute": _flowrelay_execute_call,
}


def call(kind: str, delay_s: float = 0.0, workflow: dict[str, Any] | None = None) -> Call:
    return CALLS[kind](delay_s, workflow)
