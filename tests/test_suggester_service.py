"""The suggester against a real nats-server: events, run records, redelivery, poison, backlog.

Synchronisation is on what the service produces (trace events through an ordered consumer,
run-record changes through a KV watch, dead letters through a subscription). Where the
expected outcome is that nothing is produced, the test waits for the suggester's consumer
to acknowledge the message (its ack floor), then checks nothing was.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest
from flowrelay_testkit import TenantRuns
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from flowrelay import natsserver
from flowrelay_bus import topology
from flowrelay_bus.events import RunEventLog, last_event_seq
from flowrelay_bus.runs import RunStore
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import (
    DeadLetter,
    ErrorCode,
    EventType,
    RunError,
    RunFailed,
    RunMode,
    RunOptions,
    RunRecord,
    RunRequested,
    RunStatus,
    Suggestion,
    TraceEvent,
    Workflow,
    subjects,
)
from flowrelay_contracts.tenants import DEFAULT_TENANT
from flowrelay_suggester.analysis import Hints
from flowrelay_suggester.assist import Assistant
from flowrelay_suggester.service import (
    MAX_DELIVER,
    RETRY_BASE_DELAY_S,
    PoisonMessage,
    Suggester,
    create_app,
    decode,
)
from flowrelay_suggester.settings import SuggesterSettings

#: Upper bound for anything the suggester should do; far above the milliseconds it takes.
WAIT_S = 15.0

WORKFLOW = Workflow.model_validate(
    {
        "pattern": "sequential",
        "agents": [
            {"name": "researcher", "instructions": "Find facts.", "model_id": "openai:gpt-4o-mini"},
            {"name": "writer", "instructions": "Write it up.", "model_id": "openai:gpt-4o-mini"},
        ],
    }
)


@dataclass
class Bus:
    url: str
    nc: Client
    js: JetStreamContext
    runs: RunStore
    store: TenantRuns  # runs of the default tenant, by id


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[natsserver.NatsServer]:
    server = natsserver.start(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def bus(nats_server: natsserver.NatsServer) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await topology.declare(js, BusSettings(nats_url=nats_server.url))
    yield Bus(
        url=nats_server.url,
        nc=nc,
        js=js,
        runs=(runs := await RunStore.open(js)),
        store=TenantRuns(runs, DEFAULT_TENANT),
    )
    await nc.drain()


@asynccontextmanager
async def running(settings: SuggesterSettings) -> AsyncIterator[None]:
    """The suggester running in this process."""
    app = create_app(settings)
    await app.start()
    try:
        yield
    finally:
        await app.stop()


@pytest.fixture
async def service(bus: Bus) -> AsyncIterator[None]:
    async with running(SuggesterSettings(nats_url=bus.url)):
        yield


# -- helpers ----------------------------------------------------------------------------


async def failed_run(
    bus: Bus, *, code: ErrorCode = ErrorCode.MISSING_API_KEY, workflow: Workflow | None = WORKFLOW
) -> RunFailed:
    """What the executor leaves behind for a failed run: record, events, failure report."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    error = RunError(
        code=code,
        message="No OpenAI API key provided. Please provide it in the config or set the "
        "OPENAI_API_KEY environment variable.",
        agent="researcher",
        step=1,
    )
    await bus.store.create(
        RunRecord(run_id=run_id, status=RunStatus.FAILED, error=error, input="hi")
    )
    events = RunEventLog(bus.js, DEFAULT_TENANT, run_id)
    await events.emit(EventType.RUN_STARTED)
    await events.emit(EventType.RUN_FAILED, {"error": error.model_dump(mode="json")})
    return RunFailed(
        run_id=run_id,
        error=error,
        workflow=workflow,
        input="hi",
        options=RunOptions(),
        last_seq=events.last_seq,
    )


async def publish(bus: Bus, subject: str, payload: bytes) -> int:
    """Publish without a message id (so duplicates are stored); return the stream sequence."""
    return (await bus.js.publish(subject, payload)).seq


async def events_of(bus: Bus, run_id: str, count: int) -> list[TraceEvent]:
    """The first ``count`` events of ``run_id``, waiting for them to be published."""
    sub = await bus.js.subscribe(
        subjects.run_events(DEFAULT_TENANT, run_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        async with asyncio.timeout(WAIT_S):
            return [
                TraceEvent.model_validate_json((await sub.next_msg(timeout=WAIT_S)).data)
                for _ in range(count)
            ]
    finally:
        await sub.unsubscribe()


async def record_when(bus: Bus, run_id: str, condition) -> RunRecord:  # type: ignore[no-untyped-def]
    """The run record as soon as ``condition(record)`` holds (KV watch, no polling)."""
    async with asyncio.timeout(WAIT_S):
        async for record in bus.store.watch(run_id):
            if condition(record):
                return record
    raise AssertionError("watch ended")


async def acked(bus: Bus, durable: str, stream_seq: int) -> None:
    """Wait until the suggester's consumer has acknowledged (or termed) ``stream_seq``.

    JetStream emits no event for an ack, so this reads the consumer's ack floor; it is the
    only wait here that is not driven by something the suggester publishes.
    """
    async with asyncio.timeout(WAIT_S):
        while True:
            info = await bus.js.consumer_info(subjects.SUGGESTER_STREAM, durable)
            if info.ack_floor.stream_seq >= stream_seq and not info.num_ack_pending:
                return
            await asyncio.sleep(0.02)


def suggestions_in(event: TraceEvent) -> list[Suggestion]:
    return [Suggestion.model_validate(s) for s in event.data["suggestions"]]


# -- failure reports --------------------------------------------------------------------


async def test_failure_becomes_a_suggestion_event_and_guidance_on_the_record(
    bus: Bus, service: None
) -> None:
    report = await failed_run(bus)
    await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())

    events = await events_of(bus, report.run_id, 3)
    suggestion = events[2]
    assert (suggestion.seq, suggestion.type) == (report.last_seq + 1, EventType.SUGGESTION)
    assert suggestion.data["mode"] == RunMode.DEGRADED.value
    guidance = suggestions_in(suggestion)
    assert guidance[0].code == ErrorCode.MISSING_API_KEY.value
    assert "`OPENAI_API_KEY`" in guidance[0].fix

    record = await record_when(bus, report.run_id, lambda r: r.suggestions)
    assert record.suggestions == guidance
    assert record.mode == RunMode.DEGRADED
    assert record.status == RunStatus.FAILED  # the suggester never changes the status


async def test_a_repeated_failure_report_adds_no_second_event(bus: Bus, service: None) -> None:
    report = await failed_run(bus, code=ErrorCode.RATE_LIMITED)
    payload = report.model_dump_json().encode()
    await publish(bus, subjects.RUN_FAILED, payload)
    await events_of(bus, report.run_id, 3)
    duplicate = await publish(bus, subjects.RUN_FAILED, payload)  # as a redelivery would
    await acked(bus, subjects.SUGGESTER_FAILURES_CONSUMER, duplicate)

    assert await last_event_seq(bus.js, DEFAULT_TENANT, report.run_id) == report.last_seq + 1
    record = await bus.store.get(report.run_id)
    assert record is not None and [s.code for s in record.suggestions] == [
        ErrorCode.RATE_LIMITED.value
    ]


async def test_poison_payloads_are_termed_and_dead_lettered_and_work_goes_on(
    bus: Bus, service: None
) -> None:
    letters = await bus.js.subscribe(
        subjects.DEADLETTER, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    not_json = await publish(bus, subjects.RUN_FAILED, b"\xff not json")
    future = await publish(
        bus, subjects.RUN_FAILED, b'{"schema_version": 99, "run_id": "from-the-future"}'
    )
    report = await failed_run(bus, code=ErrorCode.TIMEOUT)
    await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())

    events = await events_of(bus, report.run_id, 3)
    assert events[2].type == EventType.SUGGESTION
    async with asyncio.timeout(WAIT_S):
        reasons = sorted(
            [
                DeadLetter.model_validate_json((await letters.next_msg(timeout=WAIT_S)).data).reason
                for _ in range(2)
            ]
        )
    await letters.unsubscribe()
    assert reasons[0].startswith("payload is not JSON")
    assert reasons[1].startswith("unknown schema_version 99")

    await acked(bus, subjects.SUGGESTER_FAILURES_CONSUMER, max(not_json, future))
    info = await bus.js.consumer_info(
        subjects.SUGGESTER_STREAM, subjects.SUGGESTER_FAILURES_CONSUMER
    )
    assert info.num_redelivered == 0  # termed at once, not retried


async def test_cancelled_runs_get_no_suggestion(bus: Bus, service: None) -> None:
    report = await failed_run(bus, code=ErrorCode.CANCELLED)
    seq = await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())
    await acked(bus, subjects.SUGGESTER_FAILURES_CONSUMER, seq)
    assert await last_event_seq(bus.js, DEFAULT_TENANT, report.run_id) == report.last_seq
    record = await bus.store.get(report.run_id)
    assert record is not None and record.suggestions == []


async def test_failure_without_workflow_or_record_still_gets_an_event(
    bus: Bus, service: None
) -> None:
    report = await failed_run(bus, code=ErrorCode.WORKER_CRASHED, workflow=None)
    await bus.runs._kv.delete(subjects.run_key(DEFAULT_TENANT, report.run_id))  # e.g. the record expired
    await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())
    events = await events_of(bus, report.run_id, 3)
    assert suggestions_in(events[2])[0].code == ErrorCode.WORKER_CRASHED.value


# -- suggestion-only runs ---------------------------------------------------------------


async def test_suggestion_only_run_gets_three_events_and_succeeds_degraded(
    bus: Bus, service: None
) -> None:
    run_id = f"advise-{uuid.uuid4().hex[:12]}"
    request = RunRequested(run_id=run_id, workflow=WORKFLOW, input="What is NATS?")
    await bus.store.create(RunRecord(run_id=run_id, input=request.input))
    await publish(bus, subjects.RUN_ADVISE, request.model_dump_json().encode())

    events = await events_of(bus, run_id, 3)
    assert [(e.seq, e.type) for e in events] == [
        (1, EventType.RUN_STARTED),
        (2, EventType.SUGGESTION),
        (3, EventType.RUN_COMPLETED),
    ]
    guidance = suggestions_in(events[1])
    assert guidance[0].code == "pattern_sequential" and guidance[-1].code == "suggestion_only_mode"
    assert events[2].data == {
        "output": None,
        "mode": "degraded",
        "suggestions": events[1].data["suggestions"],
    }

    record = await record_when(bus, run_id, lambda r: r.terminal)
    assert record.status == RunStatus.SUCCEEDED and record.mode == RunMode.DEGRADED
    assert record.suggestions == guidance and record.output is None
    assert record.started_at is not None and record.finished_at is not None

    again = await publish(bus, subjects.RUN_ADVISE, request.model_dump_json().encode())
    await acked(bus, subjects.SUGGESTER_ADVISE_CONSUMER, again)
    assert await last_event_seq(bus.js, DEFAULT_TENANT, run_id) == 3
    assert await bus.store.get(run_id) == record


async def test_suggestion_only_run_already_terminal_is_only_acked(bus: Bus, service: None) -> None:
    run_id = f"advise-{uuid.uuid4().hex[:12]}"
    await bus.store.create(RunRecord(run_id=run_id, status=RunStatus.CANCELLED))
    request = RunRequested(run_id=run_id, workflow=WORKFLOW, input="x")
    seq = await publish(bus, subjects.RUN_ADVISE, request.model_dump_json().encode())
    await acked(bus, subjects.SUGGESTER_ADVISE_CONSUMER, seq)
    assert await last_event_seq(bus.js, DEFAULT_TENANT, run_id) == 0


# -- backlog ----------------------------------------------------------------------------


def start_suggester_process(*, nats_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m flowrelay_suggester`` as a deployment runs it, logging to ``log_path``."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "flowrelay_suggester"],
            env={**os.environ, "FLOWRELAY_NATS_URL": nats_url},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def test_backlog_is_processed_when_the_suggester_starts(bus: Bus, tmp_path: Path) -> None:
    reports = [
        await failed_run(bus, code=code)
        for code in (ErrorCode.TIMEOUT, ErrorCode.UNKNOWN_MODEL, ErrorCode.TOOL_FAILED)
    ]
    for report in reports:  # nobody is consuming yet
        await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())

    log_path = tmp_path / "suggester.log"
    process = start_suggester_process(nats_url=bus.url, log_path=log_path)
    try:
        for report in reports:
            events = await events_of(bus, report.run_id, 3)
            assert suggestions_in(events[2])[0].code == report.error.code.value
            record = await record_when(bus, report.run_id, lambda r: r.suggestions)
            assert record.mode == RunMode.DEGRADED
    except BaseException:
        print(log_path.read_text(errors="replace"))
        raise
    finally:
        process.terminate()
        assert process.wait(timeout=WAIT_S) is not None


# -- model-written explanation ------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted_model_url() -> Iterator[str]:
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowrelay.scripted_model", "--port", "0"],
            stdout=subprocess.PIPE,
        )
    except OSError as exc:  # pragma: no cover
        pytest.skip(f"scripted model unavailable: {exc}")
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("SCRIPTED_MODEL_URL="):
        process.kill()
        pytest.skip(f"scripted model did not start: {line!r}")
    yield line.split("=", 1)[1]
    process.terminate()
    process.wait(timeout=WAIT_S)


def assisted(bus: Bus, model_url: str, *, timeout_s: float) -> SuggesterSettings:
    """Settings of a suggester whose explanations come from the scripted model."""
    return SuggesterSettings(
        nats_url=bus.url,
        suggester_model="openai:scripted",
        suggester_api_base=model_url,
        suggester_api_key="test-key",
        suggester_model_timeout_s=timeout_s,
    )


async def test_model_explanation_follows_the_rule_guidance(
    bus: Bus, scripted_model_url: str
) -> None:
    report = await failed_run(bus)
    await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())

    # generous deadline: the first explanation also waits for any-llm's import (seconds)
    async with running(assisted(bus, scripted_model_url, timeout_s=20.0)):
        events = await events_of(bus, report.run_id, 4)
    rules_event, model_event = events[2], events[3]
    assert rules_event.type == model_event.type == EventType.SUGGESTION
    assert "source" not in rules_event.data and model_event.data["source"] == Assistant.SOURCE
    explanation = suggestions_in(model_event)
    assert [s.code for s in explanation] == [Assistant.CODE]
    assert explanation[0].detail.startswith("echo:")  # the scripted model echoes its prompt

    record = await record_when(
        bus, report.run_id, lambda r: any(s.code == Assistant.CODE for s in r.suggestions)
    )
    assert record.suggestions[: len(suggestions_in(rules_event))] == suggestions_in(rules_event)


async def test_a_slow_model_leaves_the_rule_guidance_alone(
    bus: Bus, scripted_model_url: str
) -> None:
    slow = Workflow.model_validate(
        {
            "agents": [
                {
                    "name": "researcher",
                    "instructions": "take your time #delay=5 please",
                    "model_id": "openai:x",
                }
            ]
        }
    )
    report = await failed_run(bus, workflow=slow)
    seq = await publish(bus, subjects.RUN_FAILED, report.model_dump_json().encode())
    async with running(assisted(bus, scripted_model_url, timeout_s=1.0)):
        events = await events_of(bus, report.run_id, 3)
        assert events[2].type == EventType.SUGGESTION
        await acked(bus, subjects.SUGGESTER_FAILURES_CONSUMER, seq)
    assert await last_event_seq(bus.js, DEFAULT_TENANT, report.run_id) == report.last_seq + 1


# -- decoding (no server needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"schema_version": 2, "run_id": "x"}', "unknown schema_version 2"),
        (b'{"run_id": "x"}', "not a valid RunFailed: error"),
    ],
)
def test_undecodable_payloads_are_poison(raw: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        decode(raw, RunFailed)


# -- retries and giving up (the handlers driven directly, with a store that fails) ---------


class FlakyStore(RunStore):
    """A run store whose next ``failures`` updates fail as if the bus were away."""

    def __init__(self, inner: RunStore, *, failures: int) -> None:
        super().__init__(inner._kv, inner._js)
        self.failures = failures

    async def update(self, tenant, run_id, mutate):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise nats.errors.TimeoutError
        return await super().update(tenant, run_id, mutate)


class FakeDelivery:
    """The parts of a FastStream ``NatsMessage`` the handlers use, recording the outcome."""

    def __init__(self, payload: bytes, *, subject: str, delivered: int, stream_seq: int) -> None:
        self.body = payload
        metadata = SimpleNamespace(
            num_delivered=delivered, sequence=SimpleNamespace(stream=stream_seq)
        )
        self.raw_message = SimpleNamespace(subject=subject, metadata=metadata)
        self.outcome: tuple[str, float | None] | None = None

    async def ack(self) -> None:
        self.outcome = ("ack", None)

    async def nack(self, delay: float | None = None) -> None:
        self.outcome = ("nak", delay)

    async def reject(self) -> None:
        self.outcome = ("term", None)

    async def in_progress(self) -> None:
        pass


def direct_suggester(bus: Bus, *, failures: int) -> Suggester:
    suggester = Suggester(hints=Hints())
    suggester.bind(js=bus.js, store=FlakyStore(bus.runs, failures=failures))
    return suggester


async def test_a_bus_error_naks_with_backoff_and_the_redelivery_completes_once(bus: Bus) -> None:
    report = await failed_run(bus, code=ErrorCode.PROVIDER_ERROR)
    payload = report.model_dump_json().encode()
    suggester = direct_suggester(bus, failures=1)

    first = FakeDelivery(payload, subject=subjects.RUN_FAILED, delivered=1, stream_seq=1)
    await suggester.handle_failure(first)  # type: ignore[arg-type]
    assert first.outcome == ("nak", RETRY_BASE_DELAY_S)

    second = FakeDelivery(payload, subject=subjects.RUN_FAILED, delivered=2, stream_seq=1)
    await suggester.handle_failure(second)  # type: ignore[arg-type]
    assert second.outcome == ("ack", None)
    assert (
        await last_event_seq(bus.js, DEFAULT_TENANT, report.run_id) == report.last_seq + 1
    )  # one suggestion event
    record = await bus.store.get(report.run_id)
    assert record is not None and record.suggestions[0].code == ErrorCode.PROVIDER_ERROR.value


async def test_the_last_delivery_is_termed_and_dead_lettered(bus: Bus) -> None:
    report = await failed_run(bus)
    letters = await bus.js.subscribe(
        subjects.DEADLETTER, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    last = FakeDelivery(
        report.model_dump_json().encode(),
        subject=subjects.RUN_FAILED,
        delivered=MAX_DELIVER,
        stream_seq=10**9,
    )
    await direct_suggester(bus, failures=1).handle_failure(last)  # type: ignore[arg-type]
    assert last.outcome == ("term", None)
    letter = DeadLetter.model_validate_json((await letters.next_msg(timeout=WAIT_S)).data)
    await letters.unsubscribe()
    assert letter.run_id == report.run_id and letter.reason.startswith(
        f"failed {MAX_DELIVER} times"
    )


async def test_an_abandoned_suggestion_only_run_ends_failed_not_running(bus: Bus) -> None:
    run_id = f"advise-{uuid.uuid4().hex[:12]}"
    request = RunRequested(run_id=run_id, workflow=WORKFLOW, input="x")
    await bus.store.create(RunRecord(run_id=run_id, status=RunStatus.RUNNING))
    last = FakeDelivery(
        request.model_dump_json().encode(),
        subject=subjects.RUN_ADVISE,
        delivered=MAX_DELIVER,
        stream_seq=10**9 + 1,
    )
    await direct_suggester(bus, failures=1).handle_advice(last)  # type: ignore[arg-type]
    assert last.outcome == ("term", None)
    record = await bus.store.get(run_id)
    assert record is not None and record.status == RunStatus.FAILED
    assert record.error is not None and record.error.code == ErrorCode.INTERNAL_ERROR
    events = await events_of(bus, run_id, 1)
    assert events[0].type == EventType.RUN_FAILED
