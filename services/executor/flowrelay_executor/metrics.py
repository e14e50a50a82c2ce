"""Prometheus metrics of one executor, served by prometheus-client's own HTTP server.

What: run outcomes by status and error code, run and queue-wait durations, the shared run
queue's depth, runs in flight, worker restarts, and model tokens and cost by model and
tenant. Each
executor serves its own (``FLOWRELAY_METRICS_PORT``); Prometheus sums across them.

Why these shapes: counters and histograms are updated where the event happens (one
increment on the hot path); gauges that describe state (in flight, slots, workers) are
read at scrape time from the executor, so nothing keeps them in step by hand. Label
values that come from requests (model ids from workflows, tenants from keys or JWTs) are
bounded: past :data:`MAX_MODEL_LABELS` distinct models (:data:`MAX_TENANT_LABELS` tenants)
the rest are counted as ``other``, so hostile input cannot grow the series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flowrelay_bus.metrics_server import MetricsServer

#: Run and queue-wait buckets (seconds): runs last from milliseconds to an hour.
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

#: Distinct model label values kept; further models are counted as :data:`OTHER`.
MAX_MODEL_LABELS: Final = 64
#: Distinct tenant label values kept; further tenants are counted as :data:`OTHER`.
MAX_TENANT_LABELS: Final = 256
OTHER: Final = "other"

#: Error code label of runs that did not fail.
NO_ERROR: Final = "none"


class ExecutorMetrics:
    """The executor's collectors, in their own registry (several can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "flowrelay_executor_runs", "Runs this executor ended, by status and error code.",
            ["status", "error_code"], registry=r,
        )
        self.run_seconds = Histogram(
            "flowrelay_executor_run_seconds", "Time from a run's start on this executor to its stored outcome.",
            ["status"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "flowrelay_executor_queue_wait_seconds", "Time from submission to the start of a run's first attempt.",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.handed_back = Counter(
            "flowrelay_executor_runs_handed_back",
            "Run requests given back to the queue (a retry, worker lost, drain, infrastructure error).", registry=r,
        )
        self.worker_restarts = Counter(
            "flowrelay_executor_worker_restarts",
            "Worker processes replaced, by reason (crashed, deadline: killed for an overrun, recycled).",
            ["reason"], registry=r,
        )
        self.tokens = Counter(
            "flowrelay_executor_tokens", "Model tokens of the runs' model calls, by model, tenant and direction.",
            ["model", "tenant", "direction"], registry=r,
        )
        self.cost_usd = Counter(
            "flowrelay_executor_cost_usd", "Cost in USD of model calls with a known price, by model and tenant.",
            ["model", "tenant"], registry=r,
        )
        self.queue_waiting = Gauge(
            "flowrelay_queue_waiting", "Run requests queued that no executor has taken yet (all executors).",
            registry=r,
        )
        self.queue_held = Gauge(
            "flowrelay_queue_held", "Run requests executors hold and have not acked yet (all executors).",
            registry=r,
        )
        self.in_flight = Gauge("flowrelay_executor_runs_in_flight", "Runs this executor holds now.", registry=r)
        self.slots = Gauge("flowrelay_executor_slots", "Runs this executor can hold at once.", registry=r)
        self.workers = Gauge("flowrelay_executor_workers", "Live worker processes (0 with thread isolation).", registry=r)
        for reason in ("crashed", "deadline", "recycled"):  # zeros from the first scrape
            self.worker_restarts.labels(reason)
        self._models = _BoundedLabels(MAX_MODEL_LABELS)
        self._tenants = _BoundedLabels(MAX_TENANT_LABELS)
        self.server = MetricsServer(self.registry)

    def observe_state(self, *, in_flight: Callable[[], float], slots: Callable[[], float],
                      workers: Callable[[], float]) -> None:
        """Read these at scrape time (the scrape runs in the server's thread: keep them cheap)."""
        self.in_flight.set_function(in_flight)
        self.slots.set_function(slots)
        self.workers.set_function(workers)

    def run_ended(self, status: str, error_code: str | None, seconds: float | None) -> None:
        self.runs.labels(status, error_code or NO_ERROR).inc()
        if seconds is not None:
            self.run_seconds.labels(status).observe(seconds)

    def model_call(self, data: dict[str, Any], *, tenant: str) -> None:
        """Count one ``llm.finished`` event's tokens and cost for ``tenant``'s run."""
        model = self._models.label(str(data.get("model") or "unknown"))
        who = self._tenants.label(tenant)
        self.tokens.labels(model, who, "input").inc(data.get("input_tokens") or 0)
        self.tokens.labels(model, who, "output").inc(data.get("output_tokens") or 0)
        if data.get("cost_usd"):
            self.cost_usd.labels(model, who).inc(data["cost_usd"])


class _BoundedLabels:
    """The first ``limit`` distinct values pass as themselves, later ones as :data:`OTHER`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER
