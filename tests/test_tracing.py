"""A caller's W3C trace continues through the API, NATS and the worker to any-agent's spans.

The test starts its own OTLP/HTTP receiver (protobuf, decoded with opentelemetry-proto) and
points a real executor at it with ``OTEL_EXPORTER_OTLP_ENDPOINT``; a request carrying a
``traceparent`` must produce spans under that trace id, the run's span a child of the
caller's span, any-agent's spans below it.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from flowrelay_testkit import TEST_SECRET, Stack, isolated_stack, one_agent, run_body
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from test_api_unit import Api, running_api, submission

from flowrelay import natsserver
from flowrelay_contracts import subjects
from flowrelay_contracts.tenants import DEFAULT_TENANT
from flowrelay_contracts.tracing import trace_context

#: Upper bound for spans to arrive (the test sets a 100 ms export delay).
WAIT_S = 30.0


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The API in this process against a nats-server of its own (as in test_api_unit)."""
    server = natsserver.start(tmp_path / "nats")
    try:
        async with running_api(server.url, sse_ping_s=0) as app:
            yield app
    finally:
        server.stop()


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    attributes: dict[str, str]


class OtlpReceiver:
    """The smallest OTLP/HTTP trace receiver: POST /v1/traces with a protobuf body."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                receiver._add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), name=span.name,
                        service=resource.get("service.name", ""),
                        attributes={a.key: str(a.value.string_value or a.value.int_value) for a in span.attributes},
                    ))
        with self._changed:
            self.spans.extend(found)
            self._changed.notify_all()

    def wait_for(self, trace_id: str, names: set[str], *, runs: int = 1) -> list[ReceivedSpan]:
        """Block until the trace holds ``runs`` run spans and a span of each name in ``names``."""

        def complete() -> bool:
            spans = [s for s in self.spans if s.trace_id == trace_id]
            have = {s.name.split(" ")[0] for s in spans}
            return names <= have and sum(s.name == "flowrelay.run" for s in spans) >= runs

        with self._changed:
            if not self._changed.wait_for(complete, WAIT_S):
                raise TimeoutError(f"trace {trace_id}: got {[s.name for s in self.spans if s.trace_id == trace_id]}")
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, scripted_model: str) -> Iterator[tuple[Stack, OtlpReceiver]]:
    receiver = OtlpReceiver()
    root = tmp_path_factory.mktemp("traced")
    with isolated_stack(root, scripted_model) as (stack, _):
        stack.start_executor(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
        yield stack, receiver
    receiver.close()


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


AGENT_SPANS = {"flowrelay.run", "invoke_agent", "call_llm", "execute_tool"}


async def test_spans_continue_the_callers_trace(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    header, trace_id, caller_span = traceparent()
    body = run_body(one_agent(tools=["calculator"]), '#call=calculator {"expression": "6*7"}')
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as client:
        result = (await client.post("/execute", json=body, headers={"traceparent": header})).json()
    assert result["status"] == "succeeded" and result["output"] == "42"

    spans = await asyncio.to_thread(receiver.wait_for, trace_id, AGENT_SPANS)
    (run,) = [s for s in spans if s.name == "flowrelay.run"]
    assert run.parent_span_id == caller_span, "the run's span is a child of the caller's span"
    assert run.attributes["flowrelay.run_id"] == result["run_id"] and run.service == "flowrelay-executor"
    invoke = [s for s in spans if s.name.startswith("invoke_agent")]
    assert [s.parent_span_id for s in invoke] == [run.span_id]
    by_id = {s.span_id: s for s in spans}
    for span in spans:  # every span leads up to the caller's span
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
        assert span.parent_span_id == caller_span


async def test_runs_of_one_trace_at_once_each_keep_their_own_agent_state(traced: tuple[Stack, OtlpReceiver]) -> None:
    """any-agent keys its callback state by trace id: two concurrent runs of one trace on a
    shared agent instance would mix it up (a KeyError, or one run's events in the other)."""
    stack, receiver = traced
    header, trace_id, _ = traceparent(sampled=False)  # not sampled by the caller: still recorded
    bodies = [run_body(one_agent(), f"#delay=0.5 run {i}") for i in range(3)]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as client:
        results = await asyncio.gather(
            *(client.post("/execute", json=b, headers={"traceparent": header}) for b in bodies)
        )
    answers = [r.json() for r in results]
    assert [a["status"] for a in answers] == ["succeeded"] * 3, [a.get("error") for a in answers]
    assert sorted(a["output"] for a in answers) == [f"echo: #delay=0.5 run {i}" for i in range(3)]
    assert all(a["usage"]["input_tokens"] > 0 for a in answers), "token counts come from spans"
    await asyncio.to_thread(receiver.wait_for, trace_id, {"flowrelay.run", "invoke_agent"}, runs=3)


async def test_a_run_without_trace_context_starts_its_own_trace(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as client:
        first = (await client.post("/execute", json=run_body(one_agent(), "alone"))).json()
        second = (await client.post("/execute", json=run_body(one_agent(), "alone too"))).json()

    def run_span(run_id: str) -> ReceivedSpan:
        def found() -> ReceivedSpan | None:
            return next((s for s in receiver.spans if s.attributes.get("flowrelay.run_id") == run_id), None)

        with receiver._changed:
            if not receiver._changed.wait_for(lambda: found() is not None, WAIT_S):
                raise TimeoutError(f"no flowrelay.run span for run {run_id} arrived")
            span = found()
            assert span is not None
            return span

    a, b = [await asyncio.to_thread(run_span, r["run_id"]) for r in (first, second)]
    assert a.parent_span_id == "" and b.parent_span_id == "" and a.trace_id != b.trace_id


async def test_secrets_are_redacted_from_exported_spans(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    header, trace_id, _ = traceparent()
    body = run_body(one_agent(tools=["lookup_secret_echo"]), f'#call=lookup_secret_echo {{"text": "{TEST_SECRET}"}}')
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as client:
        result = (await client.post("/execute", json=body, headers={"traceparent": header})).json()
    assert result["status"] == "succeeded"
    spans = await asyncio.to_thread(receiver.wait_for, trace_id, {"flowrelay.run", "execute_tool"})
    assert any("[REDACTED]" in v for s in spans for v in s.attributes.values())
    assert not any(TEST_SECRET in v for s in spans for v in s.attributes.values())


# -- the API passes valid trace context on, and only that ---------------------------------------


async def test_the_api_puts_the_callers_trace_context_in_the_request_headers(api: Api) -> None:
    header, _, _ = traceparent()
    sent = {"traceparent": header, "tracestate": "vendor=abc"}
    assert (await api.client.post("/runs", json=submission(), headers=sent)).status_code == 202
    raw = await api.ctx.js.get_last_msg(subjects.RUNS_STREAM, subjects.run_requested(DEFAULT_TENANT))
    assert raw.headers is not None and trace_context(raw.headers) == sent

    bogus = {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "tracestate": "x=1"}
    assert (await api.client.post("/runs", json=submission(), headers=bogus)).status_code == 202
    raw = await api.ctx.js.get_last_msg(subjects.RUNS_STREAM, subjects.run_requested(DEFAULT_TENANT))
    assert raw.headers is not None and "traceparent" not in raw.headers and "tracestate" not in raw.headers


@pytest.mark.parametrize(
    "value",
    ["", "garbage", "01-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "A" * 32 + "-" + "b" * 16 + "-01",
     "00-" + "a" * 32 + "-" + "0" * 16 + "-01", "00-" + "a" * 32 + "-" + "b" * 16 + "-01\r\nx: y"],
)
def test_malformed_traceparents_are_dropped(value: str) -> None:
    assert trace_context({"traceparent": value}) == {}


def test_tracestate_goes_only_with_a_valid_traceparent() -> None:
    header, _, _ = traceparent()
    assert trace_context({"TraceParent": header, "tracestate": "a=1"}) == {"traceparent": header, "tracestate": "a=1"}
    assert trace_context({"traceparent": header, "tracestate": "a=1\x00"}) == {"traceparent": header}
    assert trace_context({"tracestate": "a=1"}) == {}
