"""Prometheus metrics of the API, and the ASGI middleware that times every request.

Each app gets its own registry (several apps can live in one test process). Requests are
labelled by route *template* (``/runs/{run_id}``), never by raw path, so a scan of run
ids cannot explode the number of series.
"""

from __future__ import annotations

import time
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets (seconds): fine-grained below 25 ms, where the submit path lives.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    120,
)

#: Label of requests that matched no route.
UNMATCHED_ROUTE = "<unmatched>"


class SubmitOutcome(StrEnum):
    """How a ``POST /runs`` or ``POST /execute`` submission ended."""

    ACCEPTED = "accepted"
    REPLAYED = "replayed"  # same Idempotency-Key: the existing run was returned
    INVALID = "invalid"  # malformed body or a workflow that cannot run (422)
    UNSUPPORTED = "unsupported"  # no live executor has a framework or tool it needs (422)
    CONFLICT = "conflict"  # Idempotency-Key reused with another body (409)
    TOO_LARGE = "too_large"  # 413
    UNAVAILABLE = "unavailable"  # NATS did not take it (503)


class Metrics:
    """The API's collectors, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_submitted = Counter(
            "flowrelay_api_runs_submitted",
            "Run submissions by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "flowrelay_api_request_seconds",
            "Time to answer HTTP requests (for SSE: how long the stream stayed open).",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sse_streams = Gauge(
            "flowrelay_api_sse_streams", "Event streams open right now.", registry=self.registry
        )
        for outcome in SubmitOutcome:  # export zeros so rates work from the first scrape
            self.runs_submitted.labels(outcome.value)

    def submitted(self, outcome: SubmitOutcome) -> None:
        self.runs_submitted.labels(outcome.value).inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body buffering) timing each request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            self.metrics.request_seconds.labels(
                scope["method"], getattr(route, "path", UNMATCHED_ROUTE), str(status)
            ).observe(time.perf_counter() - started)
