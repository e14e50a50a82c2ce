"""A lean HTTP/1.1 client for the load phases: asyncio streams, keep-alive, chunked SSE.

Why not only httpx: httpx (via httpcore) costs several milliseconds of CPU per request and
its connection pool does work proportional to open connections on every request, so with
hundreds of concurrent streams on a 2-core machine the client would eat the CPU the server
needs, and add its own latency to every figure. This client does the minimum (one
connection per in-flight request, pre-encoded request lines, a chunked-body reader), so what
is measured is the server. ``--client httpx`` runs the same phases through httpx for
comparison, and every phase reports the client's own CPU time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Largest response head accepted (status line + headers).
MAX_HEAD_BYTES = 64 * 1024

#: Idle keep-alive connections are dropped after this long: below uvicorn's default 5 s
#: server-side timeout, so a request never races the server closing its socket.
KEEPALIVE_EXPIRY_S = 3.0


class HttpError(Exception):
    pass


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.idle_since = 0.0

    def close(self) -> None:
        self.reusable = False
        self.writer.close()

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        if len(raw) > MAX_HEAD_BYTES:
            raise HttpError("response head too large")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"bad status line {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return int(parts[1]), headers

    async def chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives: a whole Content-Length body, or each chunk of a chunked one."""
        if "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
            return
        if headers.get("transfer-encoding", "").lower() != "chunked":
            self.reusable = False
            yield await self.reader.read()
            return
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers are sent
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]


class RawClient:
    """Keep-alive connections to one ``http://host:port`` origin (no TLS, no redirects)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        assert parts.scheme == "http" and parts.hostname and parts.port
        self._host, self._port = parts.hostname, parts.port
        # Host plus any fixed headers (the API key), sent with every request.
        self._host_header = f"{parts.hostname}:{parts.port}".encode() + b"".join(
            b"\r\n%s: %s" % (name.encode(), value.encode()) for name, value in (headers or {}).items()
        )
        self._idle: list[_Connection] = []

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if loop.time() - conn.idle_since < KEEPALIVE_EXPIRY_S and not conn.reader.at_eof():
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(self._host, self._port, limit=MAX_HEAD_BYTES)
        return _Connection(reader, writer)

    def _release(self, conn: _Connection) -> None:
        if conn.reusable:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()

    def _request_bytes(self, method: str, path: str, body: bytes | None) -> bytes:
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (
            method.encode(),
            path.encode(),
            self._host_header,
        )
        if body is None:
            return (
                head + b"Accept: text/event-stream\r\n\r\n" if method == "GET" else head + b"\r\n"
            )
        return (
            head
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )

    async def request(self, method: str, path: str, json_body: Any = None) -> Response:
        body = (
            json.dumps(json_body, separators=(",", ":")).encode() if json_body is not None else None
        )
        conn = await self._acquire()
        try:
            conn.writer.write(self._request_bytes(method, path, body))
            status, headers = await conn.head()
            data = b"".join([chunk async for chunk in conn.chunks(headers)])
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return Response(status, headers, data)

    async def post(self, path: str, json: Any = None) -> Response:  # httpx-like spelling
        return await self.request("POST", path, json)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    @asynccontextmanager
    async def stream(self, method: str, path: str) -> AsyncIterator[StreamResponse]:
        conn = await self._acquire()
        response: StreamResponse | None = None
        try:
            conn.writer.write(self._request_bytes(method, path, None))
            status, headers = await conn.head()
            response = StreamResponse(status, headers, conn)
            yield response
        except BaseException:
            conn.close()
            raise
        if response is not None and response.finished:
            self._release(conn)
        else:
            conn.close()  # left mid-stream: the connection cannot be reused


class StreamResponse:
    """A streaming response; iterate ``aiter_bytes()`` for the body as it arrives."""

    def __init__(self, status: int, headers: dict[str, str], conn: _Connection) -> None:
        self.status_code = status
        self.headers = headers
        self._conn = conn
        self.finished = False

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        async for chunk in self._conn.chunks(self.headers):
            yield chunk
        self.finished = True

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])
