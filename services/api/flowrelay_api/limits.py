"""Refusing oversized and slow request bodies before anything reads them.

The check sits in front of routing as pure ASGI middleware. A body announced larger than
``max_body_bytes`` (``Content-Length``) is answered 413 (read and dropped first when it is
not much larger, so a client still sending it gets the answer instead of a reset). Any
other body is read here, up to the limit and within ``body_timeout_s`` (408 for a client
that trickles it), then replayed to the app. FastAPI turns errors raised while it reads a
body into 400s, so neither limit could be enforced from inside a route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Methods whose bodies are checked (the others carry none here).
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

#: An announced body up to this many times the limit is read (and dropped) before the 413;
#: a larger one is answered at once and the connection closed.
DRAIN_FACTOR = 4


class BodyLimitMiddleware:
    """Answer 413, naming the limit, to bodies over ``max_bytes``; 408 to slow ones."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        body_timeout_s: float = 30.0,
        on_refused: Callable[[Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            if length <= DRAIN_FACTOR * self.max_bytes:
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        await _drain(receive)
                except TimeoutError:
                    pass
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # client went away
                    size += len(message.get("body", b""))
                    if size > self.max_bytes:
                        await self._refuse(scope, send)
                        return
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _answer(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                          "(FLOWRELAY_HTTP_BODY_TIMEOUT_S)")
            return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.on_refused is not None:
            self.on_refused(scope)
        await _answer(send, 413, f"request body is larger than the limit of {self.max_bytes} bytes "
                      "(FLOWRELAY_MAX_BODY_BYTES)")


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then disconnects, as the server reports them

    return replay
