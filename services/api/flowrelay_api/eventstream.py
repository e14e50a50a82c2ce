"""A lean Server-Sent Events response: one task per stream, frames written as they come.

Why not sse-starlette: per stream it runs an anyio task group with a ping task, a
disconnect listener and a shutdown watcher, and wraps every send in a cancel scope with a
timeout. Profiled under load that was about a sixth of the API's CPU, more than the run's
own JetStream traffic (``bench/README.md``). Here a stream costs the request's own task,
one task waiting for the client's disconnect and, when pings are on, one timer; a frame is
one ``send``.

What it keeps from sse-starlette: the headers (no caching, no proxy buffering), keep-alive
comments every ``ping_s`` while nothing else was sent, the generator closed (its ``finally``
run) when the client goes away, and every open stream ended when the server shuts down
(:func:`close_all`, called from the HTTP protocol's ``shutdown``), so uvicorn does not wait
for followers that would never end by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: Frame separator: CRLF, as sse-starlette wrote it (every SSE parser accepts CR, LF, CRLF).
SEP = b"\r\n"

#: The keep-alive comment (a line starting with ':' is ignored by SSE parsers).
PING_FRAME = b": ping" + SEP + SEP

_HEADERS = {
    "Cache-Control": "no-store",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx: do not hold events back
}

#: Streams being served in this process (ended by :func:`close_all` at shutdown).
_OPEN: weakref.WeakSet[EventStreamResponse] = weakref.WeakSet()


class _Encodable(Protocol):
    def encode(self) -> bytes: ...


def frame(*, data: str | bytes, event: str | None = None, id: str | int | None = None) -> bytes:
    """One SSE event. ``data`` must hold no line breaks (compact JSON has none)."""
    parts = []
    if id is not None:
        parts.append(b"id: %s" % str(id).encode())
    if event is not None:
        parts.append(b"event: %s" % event.encode())
    parts.append(b"data: %s" % (data if isinstance(data, bytes) else data.encode()))
    return SEP.join(parts) + SEP + SEP


def close_all() -> None:
    """End every open stream (the server is shutting down)."""
    for stream in list(_OPEN):
        stream.close()


class EventStreamResponse(Response):
    """Streams ``frames`` (bytes, or objects with ``encode()`` such as sse-starlette's
    ``ServerSentEvent``) as ``text/event-stream`` until the iterator ends, the client goes
    away, or :meth:`close` is called."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterable[bytes | _Encodable],
        *,
        ping_s: float = 15.0,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self._frames = frames
        self._ping_s = ping_s
        self.status_code = status_code
        self.background = background
        self.init_headers(_HEADERS | (headers or {}))
        self._task: asyncio.Task[Any] | None = None
        self._stopping = False

    def close(self) -> None:
        """Stop streaming at the next opportunity (the response then ends normally)."""
        if not self._stopping and self._task is not None:
            self._stopping = True
            self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        _OPEN.add(self)
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(_until_disconnect(receive))
        watcher.add_done_callback(lambda _: self.close())
        sent_at = loop.time()
        ping: asyncio.TimerHandle | None = None
        pinging: asyncio.Task[None] | None = None

        def ping_due() -> None:
            nonlocal ping, pinging
            if loop.time() - sent_at >= self._ping_s * 0.9 and (pinging is None or pinging.done()):
                pinging = loop.create_task(send({"type": "http.response.body", "body": PING_FRAME, "more_body": True}))
            ping = loop.call_later(self._ping_s, ping_due)

        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if self._ping_s > 0:
                ping = loop.call_later(self._ping_s, ping_due)
            async with contextlib.aclosing(_iterate(self._frames)) as frames:
                async for item in frames:
                    body = item if isinstance(item, bytes) else item.encode()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    sent_at = loop.time()
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # cancelled from outside: not ours to swallow
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            _OPEN.discard(self)
            self._stopping = True  # a late disconnect must not cancel what follows
            if ping is not None:
                ping.cancel()
            watcher.cancel()
            if pinging is not None and not pinging.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pinging
        with contextlib.suppress(OSError):  # the client may be gone: nothing left to tell it
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


async def _iterate(frames: AsyncIterable[bytes | _Encodable]) -> AsyncIterator[bytes | _Encodable]:
    """Own the caller's iterator, so closing this closes it (its ``finally`` runs)."""
    iterator = frames.__aiter__()
    try:
        async for item in iterator:
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
