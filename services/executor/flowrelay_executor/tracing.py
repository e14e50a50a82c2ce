"""OpenTelemetry for runs: each run is a span in the caller's trace, exported over OTLP.

What:

* :func:`start_run` opens a ``flowrelay.run`` span whose parent is the caller's span (from
  the W3C ``traceparent`` the run request carried), or a new trace when it carried none.
  The engine makes it the current span, so any-agent's ``invoke_agent``, ``call_llm`` and
  ``execute_tool`` spans hang below it.
* :func:`configure_export` adds an OTLP/HTTP exporter (``opentelemetry-exporter-otlp-proto-
  http``) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set; the standard ``OTEL_*`` variables configure it (headers, timeout, batch delay,
  ``OTEL_SERVICE_NAME``). Nothing is exported otherwise.

Why a redacting exporter: any-agent puts prompts, tool arguments and results into span
attributes verbatim. flowrelay redacts secrets (the executor's secret variables, key
shapes) from events and records; spans leaving the process get the same treatment.

Called in each worker process after it is forked (the fork server's import of any-agent
installed the SDK's TracerProvider; exporter threads do not survive a fork), and in the
executor itself under thread isolation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flowrelay_executor.errors import Redactor
from flowrelay_executor.jobs import Job

log = logging.getLogger(__name__)

#: Either enables export (the standard variables of the OTLP exporter).
ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

#: ``service.name`` of the spans unless ``OTEL_SERVICE_NAME`` says otherwise (the executor
#: sets it before any TracerProvider exists: the SDK reads it when one is created).
SERVICE_NAME: Final = "flowrelay-executor"

#: How long a stopping worker waits for its last spans to be exported.
FLUSH_TIMEOUT_MS: Final = 5000

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACER = trace.get_tracer("flowrelay")


def export_configured() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def configure_export() -> None:
    """Export this process's spans over OTLP/HTTP if an endpoint is configured."""
    if not export_configured():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # nothing installed one (any-agent does)
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(BatchSpanProcessor(_RedactingExporter(OTLPSpanExporter())))


def flush() -> None:
    """Export what is still buffered (a worker about to exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(FLUSH_TIMEOUT_MS)


def start_run(job: Job) -> tuple[Context, Span]:
    """The context a run executes in, and its span (end it with :func:`end_run`).

    The span is always recorded, even when the caller's ``traceparent`` says its trace is
    not sampled: the engine reads token counts from the attributes any-agent sets on its
    spans, and a span that is not recorded has none.
    """
    parent = _PROPAGATOR.extract(job.trace_context) if job.trace_context else Context()
    caller = trace.get_current_span(parent).get_span_context()
    if caller.is_valid and not caller.trace_flags.sampled:
        sampled = SpanContext(
            caller.trace_id, caller.span_id, is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=caller.trace_state,
        )
        parent = trace.set_span_in_context(NonRecordingSpan(sampled), parent)
    span = _TRACER.start_span(
        "flowrelay.run",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"flowrelay.run_id": job.run_id, "flowrelay.attempt": job.attempt},
    )
    return trace.set_span_in_context(span, parent), span


def end_run(span: Span, status: str, error_code: str | None = None) -> None:
    span.set_attribute("flowrelay.status", status)
    if error_code:
        span.set_attribute("flowrelay.error_code", error_code)
        span.set_status(Status(StatusCode.ERROR, error_code))
    span.end()


class _RedactingExporter(SpanExporter):
    """Passes spans on with secrets removed from every string attribute (span and events)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._redactor = Redactor.from_environment()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([self._redacted(s) for s in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def _redacted(self, span: ReadableSpan) -> ReadableSpan:
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=self._attributes(span.attributes),
            events=[Event(e.name, self._attributes(e.attributes), e.timestamp) for e in span.events],
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _attributes(self, attributes):  # noqa: ANN001, ANN202 - OpenTelemetry's Attributes
        if not attributes:
            return attributes
        return {key: self._scrub(value) for key, value in attributes.items()}

    def _scrub(self, value):  # noqa: ANN001, ANN202 - an attribute value
        if isinstance(value, str):
            return self._redactor.redact(value)
        if isinstance(value, (tuple, list)):
            return tuple(self._redactor.redact(v) if isinstance(v, str) else v for v in value)
        return value
