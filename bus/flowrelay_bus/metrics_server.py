"""The Prometheus endpoint of a service that has no HTTP server of its own.

The executor and the suggester serve ``/metrics`` with prometheus-client's own threaded HTTP
server on ``FLOWRELAY_METRICS_HOST:FLOWRELAY_METRICS_PORT`` (the API serves it on its routes).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class MetricsServer:
    """``/metrics`` for one registry, in a daemon thread; :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: Any = None

    def serve(self, host: str, port: int) -> int | None:
        """Serve on ``host:port`` (0: a free port); the bound port, or None if it cannot.

        A busy port is logged, not raised: metrics must not stop a service from working.
        """
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self._registry)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d (%s); running without them", host, port, exc)
            return None
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
