"""The scripted model for the benchmark: start it, read its ``/stats``, measure its capacity.

Why: every figure here goes through this stand-in LLM, so the report must show it is never
what bounds a figure. Its capacity is measured with a deliberately lean client (raw HTTP/1.1
keep-alive over asyncio streams, pre-built request bytes) so the number is the server's, not
a Python HTTP client's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve

#: Keep-alive connections the capacity probe keeps busy at once.
PROBE_CONNECTIONS = 32

#: How long to wait for the model to announce its URL.
START_TIMEOUT_S = 30.0


@dataclass
class ScriptedModel:
    """A running scripted-model process."""

    process: ServiceProcess
    url: str  # http://127.0.0.1:PORT/v1

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate(timeout=10)


def start(log_dir: Path) -> ScriptedModel:
    proc = ServiceProcess(
        "scripted-model",
        resolve(SERVICE_COMMANDS["scripted-model"]) + ["--host", "127.0.0.1", "--port", "0"],
        env=dict(os.environ),
        log_path=log_dir / "scripted-model.log",
    ).start()
    url = proc.wait_ready(timeout=START_TIMEOUT_S).group(1)
    return ScriptedModel(proc, url)


def stats(model: ScriptedModel) -> dict[str, Any]:
    """The model's own counters (``GET /stats`` on its root)."""
    return httpx.get(f"{model.root}/stats", timeout=10).json()


def _request_bytes(url: str, text: str) -> bytes:
    parts = urlsplit(url)
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer scripted\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _probe(url: str, duration_s: float, connections: int) -> int:
    parts = urlsplit(url)
    request = _request_bytes(url, "capacity probe")
    deadline = time.perf_counter() + duration_s
    done = 0

    async def one_connection() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"scripted model answered {head[:40]!r}")
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return done


def capacity(model: ScriptedModel, duration_s: float) -> dict[str, float]:
    """Requests/s the model answers when kept busy (its own /stats counts them too)."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    before = stats(model)["requests_total"]
    start = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        done = runner.run(_probe(model.url, duration_s, PROBE_CONNECTIONS))
    wall = time.perf_counter() - start
    counted = stats(model)["requests_total"] - before
    return {
        "capacity_req_s": round(counted / wall, 1),
        "probe_client_req_s": round(done / wall, 1),
        "probe_connections": PROBE_CONNECTIONS,
        "probe_s": round(wall, 2),
    }


def rate(before: dict[str, Any], after: dict[str, Any], wall_s: float) -> dict[str, float]:
    """What the model saw during a window: requests/s and the most requests it held at once."""
    requests = after["requests_total"] - before["requests_total"]
    return {
        "model_requests": requests,
        "model_req_s": round(requests / wall_s, 1) if wall_s > 0 else 0.0,
        "model_in_flight_peak_since_start": after.get("in_flight_peak", 0),
    }
