"""Prometheus metrics of the suggester, served on ``FLOWRELAY_METRICS_PORT``.

Messages handled by kind (failure reports, suggestion-only requests) and outcome, guidance
given by error code, handling time, and the optional model's explanations.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from flowrelay_bus.metrics_server import MetricsServer

#: Handling takes milliseconds; the optional model call up to its timeout.
HANDLE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


class Kind(StrEnum):
    FAILURE = "failure"  # a RunFailed report
    ADVICE = "advice"  # a suggestion-only RunRequested


class Outcome(StrEnum):
    HANDLED = "handled"  # guidance published and stored; acked
    RETRIED = "retried"  # a bus error: nak'ed with backoff
    DEAD_LETTERED = "dead_lettered"  # poison, or out of deliveries


class SuggesterMetrics:
    """The suggester's collectors, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "flowrelay_suggester_messages", "Messages the suggester settled, by kind and outcome.",
            ["kind", "outcome"], registry=self.registry,
        )
        self.guidance = Counter(
            "flowrelay_suggester_guidance", "Failed runs given guidance, by error code.",
            ["error_code"], registry=self.registry,
        )
        self.handle_seconds = Histogram(
            "flowrelay_suggester_handle_seconds", "Time to handle one message, by kind.",
            ["kind"], buckets=HANDLE_BUCKETS, registry=self.registry,
        )
        self.explanations = Counter(
            "flowrelay_suggester_explanations",
            "Model-written explanations (FLOWRELAY_SUGGESTER_MODEL), by outcome (written, skipped).",
            ["outcome"], registry=self.registry,
        )
        for kind in Kind:  # zeros from the first scrape
            for outcome in Outcome:
                self.messages.labels(kind.value, outcome.value)
        self.server = MetricsServer(self.registry)

    def settled(self, kind: Kind, outcome: Outcome, seconds: float) -> None:
        self.messages.labels(kind.value, outcome.value).inc()
        self.handle_seconds.labels(kind.value).observe(seconds)
