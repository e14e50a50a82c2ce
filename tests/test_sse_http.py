"""Server-Sent Events through a real uvicorn (an API process of its own, on the session's
NATS and executor): keep-alive comments at ``FLOWRELAY_SSE_PING_S``, and a client that goes
away frees its stream on the server. (Resuming with ``Last-Event-ID`` through the real
server is in test_trace_e2e.py.) httpx's ASGI transport, which the unit tests use, buffers
whole responses, so none of this can be seen there.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from flowrelay_testkit import Stack, free_port, one_agent, run_body

from flowrelay.natsconfig import Role
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve

PING_S = 0.3


@pytest.fixture(scope="module")
def pinging_api(stack: Stack) -> Iterator[str]:
    port = free_port()
    process = ServiceProcess(
        "api", resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API)
        | {"FLOWRELAY_API_PORT": str(port), "FLOWRELAY_SSE_PING_S": str(PING_S)},
        log_path=stack.root / "logs" / "api-sse.log",
    ).start()
    try:
        process.wait_ready()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()


@pytest.fixture
async def http(pinging_api: str, stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pinging_api, timeout=60, headers=stack.auth_headers) as client:
        yield client


async def _submit(http: httpx.AsyncClient, text: str) -> str:
    response = await http.post("/runs", json=run_body(one_agent(), text))
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


async def _open_streams(http: httpx.AsyncClient) -> float:
    metrics = (await http.get("/metrics")).text
    return float(re.search(r"^flowrelay_api_sse_streams (\S+)$", metrics, re.M).group(1))


async def test_a_quiet_stream_gets_keep_alive_comments_at_the_ping_interval(http: httpx.AsyncClient) -> None:
    run_id = await _submit(http, "#delay=3 quiet for a while")
    lines: list[str] = []
    async with http.stream("GET", f"/runs/{run_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)
    # while the model is silent for 3 s, nothing but comments can keep the connection busy
    events = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")]
    assert events[0] == "run.started" and events[-1] == "run.completed"
    started, llm = lines.index("event: run.started"), lines.index("event: llm.started")
    finished = lines.index("event: llm.finished")
    pings = [line for line in lines[llm:finished] if line.startswith(":")]
    assert len(pings) >= 2, lines[started:finished]


async def test_a_client_that_disconnects_frees_its_stream_on_the_server(http: httpx.AsyncClient) -> None:
    run_id = await _submit(http, "#delay=120 long enough to leave")
    assert await _open_streams(http) == 0
    async with http.stream("GET", f"/runs/{run_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("event: run.started"):
                assert await _open_streams(http) == 1
                break
    # the connection is closed now; the server notices and ends the stream
    async with asyncio.timeout(30):
        while await _open_streams(http) != 0:
            await asyncio.sleep(0.05)  # the server has no event to await for this; its gauge is read
    assert (await http.post(f"/runs/{run_id}/cancel")).status_code == 202
