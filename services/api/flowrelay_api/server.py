"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn closes idle kept-alive connections, but a client that sends its request headers a
byte at a time holds a connection (and a file descriptor) for as long as it likes: with a
few hundred of those the API stops accepting anyone. Here every request's headers must be
complete within ``header_timeout_s`` of its first byte (or of the connection's opening); a
late one gets ``408`` and the connection is closed. Slow bodies are the body limit
middleware's business (:mod:`flowrelay_api.limits`).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flowrelay_api import eventstream
from flowrelay_api.settings import ApiSettings

log = logging.getLogger("flowrelay.api")

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nrequest headers took too long.\r\n\r\n"
)


@functools.cache
def _header_timeout_s() -> float:
    # Read once per process from the environment: uvicorn's worker processes import this
    # class by name (``http="flowrelay_api.server:GuardedHttpToolsProtocol"``).
    return ApiSettings().http_header_timeout_s


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    @property
    def header_timeout_s(self) -> float:
        return _header_timeout_s()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # uvicorn waits for every response to end before it stops; event streams follow
        # runs that may never end, so they end now (their clients reconnect elsewhere).
        eventstream.close_all()
        super().shutdown()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its headers did arrive
        log.info("closing a connection whose request headers took over %.0f s", self.header_timeout_s)
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


#: For uvicorn's ``http`` option (an import path works in every worker process).
PROTOCOL = "flowrelay_api.server:GuardedHttpToolsProtocol"
