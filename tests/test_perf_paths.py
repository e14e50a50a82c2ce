"""The hot-path rewrites of issue 17 keep their promises: the lean SSE writer (frames, pings,
a gone client or a shutdown ends the stream and closes its generator), a run's history read
in batches (all of it, in order, only its own), the worker's cached environment secrets
(a variable set later is still redacted), and a local nats-server's few Go threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flowrelay import natsserver
from flowrelay_api import eventstream
from flowrelay_api.eventstream import EventStreamResponse, frame
from flowrelay_bus import events as bus_events
from flowrelay_bus.events import RunEventLog, follow
from flowrelay_contracts import EventType
from flowrelay_contracts.ids import new_run_id
from flowrelay_executor.errors import Redactor

# -- the SSE writer ------------------------------------------------------------------------


class _Client:
    """An ASGI client: records what is sent; ``leave()`` makes ``receive`` report a disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self._gone = asyncio.Event()
        self._requested = False

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self.changed.set()

    def leave(self) -> None:
        self._gone.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def test_sse_writer_sends_frames_then_ends_the_response() -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield frame(data=b'{"seq":1}', id=1, event="run.started")
        yield frame(data='{"seq":2}', id=2, event="run.completed")

    client = _Client()
    await asyncio.wait_for(EventStreamResponse(frames(), ping_s=0)(_SCOPE, client.receive, client.send), 10)
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-store" and headers[b"x-accel-buffering"] == b"no"
    assert client.body == (
        b'id: 1\r\nevent: run.started\r\ndata: {"seq":1}\r\n\r\n'
        b'id: 2\r\nevent: run.completed\r\ndata: {"seq":2}\r\n\r\n'
    )
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def _never_ending(closed: asyncio.Event) -> AsyncIterator[bytes]:
    try:
        yield frame(data=b"{}", id=1, event="run.started")
        await asyncio.Event().wait()  # a run that goes on and on
        yield b""  # pragma: no cover
    finally:
        closed.set()


async def test_a_client_that_goes_away_ends_the_stream_and_closes_its_generator() -> None:
    closed, client = asyncio.Event(), _Client()
    serving = asyncio.create_task(EventStreamResponse(_never_ending(closed), ping_s=0)(_SCOPE, client.receive, client.send))
    await client.wait_for(lambda: b"run.started" in client.body)
    client.leave()
    await asyncio.wait_for(serving, 10)  # returns normally: the stream is over, not failed
    assert closed.is_set(), "the generator's finally did not run (its NATS subscription would leak)"


async def test_shutdown_ends_every_open_stream() -> None:
    closed, client = asyncio.Event(), _Client()
    serving = asyncio.create_task(EventStreamResponse(_never_ending(closed), ping_s=0)(_SCOPE, client.receive, client.send))
    await client.wait_for(lambda: b"run.started" in client.body)
    eventstream.close_all()
    await asyncio.wait_for(serving, 10)
    assert closed.is_set()
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_an_idle_stream_gets_keep_alive_comments() -> None:
    closed, client = asyncio.Event(), _Client()
    serving = asyncio.create_task(EventStreamResponse(_never_ending(closed), ping_s=0.05)(_SCOPE, client.receive, client.send))
    try:
        await client.wait_for(lambda: eventstream.PING_FRAME in client.body)
    finally:
        client.leave()
        await asyncio.wait_for(serving, 10)


async def test_cancelling_the_request_task_from_outside_still_cancels_it() -> None:
    """Only the writer's own stop is swallowed; a cancel from the server propagates."""
    closed, client = asyncio.Event(), _Client()
    serving = asyncio.create_task(EventStreamResponse(_never_ending(closed), ping_s=0)(_SCOPE, client.receive, client.send))
    await client.wait_for(lambda: b"run.started" in client.body)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert closed.is_set()


# -- a run's history, read in batches ------------------------------------------------------


async def test_history_longer_than_a_batch_is_replayed_whole_in_order(
    stack: Any, bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stack``: the services have declared the streams."""
    monkeypatch.setattr(bus_events, "DIRECT_BATCH", 3)  # 8 events: three batches
    run_id, other = new_run_id(), new_run_id()
    log, noise = RunEventLog(bus.js, bus.tenant, run_id), RunEventLog(bus.js, bus.tenant, other)
    for step in range(7):
        await log.emit(EventType.LLM_STARTED, {"turn": step})
        await noise.emit(EventType.LLM_STARTED, {"turn": step})  # interleaved in the stream
    await log.emit(EventType.RUN_COMPLETED, {"status": "succeeded"})

    async def replay(after_seq: int) -> list[Any]:
        out = []
        async with contextlib.aclosing(follow(bus.nc, bus.tenant, run_id, after_seq=after_seq)) as events:
            async for event in events:
                out.append(event)
        return out

    everything = await asyncio.wait_for(replay(0), 30)
    assert [e.seq for e in everything] == list(range(1, 9))
    assert {e.run_id for e in everything} == {run_id}
    assert everything[-1].type == EventType.RUN_COMPLETED
    assert [e.seq for e in await asyncio.wait_for(replay(5), 30)] == [6, 7, 8]


# -- environment secrets ---------------------------------------------------------------------


def test_a_secret_set_after_the_first_run_is_still_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERF_TEST_API_KEY", "first-secret-value-123")
    assert Redactor.from_environment().redact("x first-secret-value-123") == "x [REDACTED]"
    monkeypatch.setenv("LATER_TEST_TOKEN", "later-secret-value-456")
    assert "later-secret-value-456" not in Redactor.from_environment().redact("y later-secret-value-456")
    monkeypatch.delenv("PERF_TEST_API_KEY")
    assert "first-secret-value-123" in Redactor.from_environment().redact("first-secret-value-123")
    assert os.environ.get("PERF_TEST_API_KEY") is None


async def test_a_follower_that_missed_the_last_event_live_and_in_history_still_gets_it(
    stack: Any, bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a loaded box exposed: the terminal event is published just before the
    follower subscribes and stored just after its history read, so neither carries it and
    no later event reveals the hole. The follower must read the stream again by itself."""
    run_id = new_run_id()
    log = RunEventLog(bus.js, bus.tenant, run_id)
    await log.emit(EventType.RUN_STARTED, {})
    await log.emit(EventType.AGENT_STARTED, {"agent": "a"})
    await log.emit(EventType.RUN_COMPLETED, {"status": "succeeded"})
    real, calls = bus_events._stored_direct, []

    async def first_read_misses_the_last(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        calls.append(args)
        async for event in real(*args, **kwargs):
            if len(calls) > 1 or not event.type.terminal:
                yield event

    monkeypatch.setattr(bus_events, "_stored_direct", first_read_misses_the_last)

    async def replay() -> list[Any]:
        async with contextlib.aclosing(follow(bus.nc, bus.tenant, run_id, idle_timeout_s=30)) as events:
            return [event async for event in events if event is not None]

    events = await asyncio.wait_for(replay(), 20)  # far below the 30 s idle period
    assert [e.seq for e in events] == [1, 2, 3] and events[-1].type == EventType.RUN_COMPLETED


# -- the local nats-server's Go scheduler ------------------------------------------------------


def test_a_local_nats_server_gets_a_quarter_of_the_cores_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    server = natsserver.start(tmp_path / "nats")
    try:
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    finally:
        server.stop()
    assert f"GOMAXPROCS={max(1, len(os.sched_getaffinity(0)) // 4)}".encode() in environ
    assert natsserver.server_environment({"GOMAXPROCS": "8"})["GOMAXPROCS"] == "8"  # the operator's choice stays
