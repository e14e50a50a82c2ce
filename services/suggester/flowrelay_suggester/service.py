"""The suggester on the bus: turns failure reports into guidance, and answers suggestion-only runs.

Two durable pull consumers on ``SUGGESTER_STREAM`` (a work queue), shared by every
suggester instance so they compete for messages and a restarted or late instance works
through the backlog:

``SUGGESTER_FAILURES_CONSUMER`` (``RUN_FAILED``, payload ``RunFailed``)
    Rule-based guidance (:mod:`~flowrelay_suggester.rules`) is published as one
    ``suggestion`` event right after the run's terminal event and stored on the run record
    (``suggestions``, ``mode = degraded``; the status is never touched). With a model
    configured, a model-written explanation follows as a second event.

``SUGGESTER_ADVISE_CONSUMER`` (``RUN_ADVISE``, payload ``RunRequested``)
    Suggestion-only mode: ``run.started``, ``suggestion``, ``run.completed``, and the record
    ends ``succeeded`` / ``degraded`` (:mod:`~flowrelay_suggester.advice`).

The consumers are read by :class:`~flowrelay_suggester.consume.PullLoop` (plain nats-py,
quiet when idle); FastStream connects, runs the app and documents the channels (AsyncAPI).

Delivery: acknowledgements are manual. A message is acked only once its events and its
record are written; a bus error naks it with a growing delay; a payload that cannot be
decoded, or has an unknown ``schema_version``, is termed and dead-lettered at once (retrying
cannot fix it), and so is a message that still fails after ``MAX_DELIVER`` deliveries.
Everything is idempotent: events carry ``Nats-Msg-Id: <run_id>:<seq>`` and are only written
if the run's event log does not already end with them, and record updates are
compare-and-set merges.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream import FastStream
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.errors import NotJSMessageError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError
from pydantic import BaseModel, ValidationError

from flowrelay_bus import topology
from flowrelay_bus.connection import make_broker
from flowrelay_bus.events import RunEventLog, last_event, last_event_seq
from flowrelay_bus.lifecycle import stop_broker
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import (
    SCHEMA_VERSION,
    DeadLetter,
    ErrorCode,
    EventType,
    RunError,
    RunFailed,
    RunMode,
    RunRecord,
    RunRequested,
    RunStatus,
    Suggestion,
    subjects,
)
from flowrelay_contracts.messages import utcnow
from flowrelay_suggester import advice, rules
from flowrelay_suggester.analysis import Hints
from flowrelay_suggester.assist import Assistant
from flowrelay_suggester.consume import Delivery, PullLoop
from flowrelay_suggester.metrics import Kind, Outcome, SuggesterMetrics
from flowrelay_suggester.settings import SuggesterSettings

log = logging.getLogger(__name__)

#: Seconds JetStream waits for an ack before redelivering. Handling takes milliseconds; the
#: optional model call is bounded well below this (``MAX_MODEL_TIMEOUT_S``) and reports
#: progress before it starts.
ACK_WAIT_S = 30.0

#: Deliveries of one message before it is given up (termed and dead-lettered). With the
#: backoff below this is about eight minutes of bus trouble, longer than a broker restart.
MAX_DELIVER = 20

#: Nak delay after the first failed delivery; it doubles per delivery up to the maximum.
RETRY_BASE_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0

#: Messages fetched per pull. They are handled concurrently and all finished before the next
#: fetch, so none waits in memory unheartbeated (see FIELD_NOTES on ``max_workers``).
BATCH_SIZE = 4

#: How long one pull waits for messages before asking again.
FETCH_TIMEOUT_S = 5.0

#: Unacked messages per consumer across all instances; bounds work in flight after an outage.
MAX_ACK_PENDING = 64

#: Longest payload copied into a dead letter.
MAX_DEAD_LETTER_PAYLOAD_CHARS = 256 * 1024

#: Name the suggester's NATS connection shows in monitoring.
CLIENT_NAME = "flowrelay-suggester"

_Message = TypeVar("_Message", bound=BaseModel)

#: What reading JetStream metadata raises on a message that did not come from a stream.
_NOT_JETSTREAM = (NotJSMessageError, AttributeError, IndexError, ValueError)


class PoisonMessage(ValueError):
    """A payload no retry can fix: not JSON, wrong shape, or an unknown schema version."""


def decode(raw: bytes, model: type[_Message]) -> _Message:
    """Parse a bus payload into ``model``; raise :class:`PoisonMessage` if it never will."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PoisonMessage(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PoisonMessage(f"payload is a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise PoisonMessage(
            f"unknown schema_version {version!r} (this suggester reads {SCHEMA_VERSION})"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise PoisonMessage(
            f"not a valid {model.__name__}: {where}: {first['msg']} ({exc.error_count()} errors)"
        ) from exc


def consumer_config(*, durable: str, filter_subject: str) -> ConsumerConfig:
    """The durable pull consumer every suggester instance shares for ``filter_subject``."""
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=MAX_DELIVER,
        max_ack_pending=MAX_ACK_PENDING,
    )


#: (durable name, filter subject) of the suggester's consumers.
CONSUMERS: tuple[tuple[str, str], ...] = (
    (subjects.SUGGESTER_FAILURES_CONSUMER, subjects.RUN_FAILED),
    (subjects.SUGGESTER_ADVISE_CONSUMER, subjects.RUN_ADVISE),
)


async def declare_consumers(js: JetStreamContext) -> None:
    """Create the consumers, or update them in place when their settings changed.

    FastStream only binds to an existing durable consumer and keeps its old settings, so
    the suggester applies its own configuration first.
    """
    for durable, filter_subject in CONSUMERS:
        config = consumer_config(durable=durable, filter_subject=filter_subject)
        try:
            await js.add_consumer(subjects.SUGGESTER_STREAM, config=config)
        except BadRequestError as exc:  # a setting the server cannot change in place
            log.warning("consumer %s keeps its old settings: %s", durable, exc)


class Suggester:
    """Handles the suggester's two kinds of messages; bound to the bus at startup."""

    def __init__(
        self, *, hints: Hints, assistant: Assistant | None = None, metrics: SuggesterMetrics | None = None
    ) -> None:
        self._hints = hints
        self._assistant = assistant
        self.metrics = metrics or SuggesterMetrics()
        self._js: JetStreamContext | None = None
        self._store: RunStore | None = None

    def bind(self, *, js: JetStreamContext, store: RunStore) -> None:
        self._js = js
        self._store = store

    # -- failure reports -------------------------------------------------------------------

    async def handle_failure(self, message: Delivery) -> None:
        """Guidance for one ``RunFailed``; acks once it is published and stored."""
        started = time.perf_counter()
        failure = await self._decode_or_term(message, RunFailed)
        if failure is None:
            self.metrics.settled(Kind.FAILURE, Outcome.DEAD_LETTERED, time.perf_counter() - started)
            return
        try:
            guided = await self.guide(failure, heartbeat=message.in_progress)
        except Exception as exc:  # noqa: BLE001 - every failure here is retried, then dead-lettered
            gave_up = await self._retry_later(message, exc, run_id=failure.run_id)
            outcome = Outcome.DEAD_LETTERED if gave_up else Outcome.RETRIED
            self.metrics.settled(Kind.FAILURE, outcome, time.perf_counter() - started)
            return
        await message.ack()
        if guided:
            self.metrics.guidance.labels(failure.error.code.value).inc()
        self.metrics.settled(Kind.FAILURE, Outcome.HANDLED, time.perf_counter() - started)

    async def guide(
        self, failure: RunFailed, *, heartbeat: Callable[[], Awaitable[None]] | None = None
    ) -> bool:
        """Publish and store the guidance for ``failure``; safe to repeat. False: none applies."""
        js, store = self._bound()
        suggestions = rules.suggest(failure, hints=self._hints)
        if not suggestions:
            log.info("run %s: %s gets no guidance", failure.run_id, failure.error.code.value)
            return False
        await _publish_suggestions(js, failure.tenant, failure.run_id, suggestions, after_seq=failure.last_seq)
        record = await store.update(failure.tenant, failure.run_id, _with_suggestions(suggestions))
        if record is None:
            log.warning(
                "run %s has no record (expired?): guidance sent as an event only", failure.run_id
            )
        log.info(
            "run %s: %d suggestion(s) for %s",
            failure.run_id,
            len(suggestions),
            failure.error.code.value,
        )
        if self._assistant is None or _has_explanation(record):
            return True
        if heartbeat is not None:
            await heartbeat()  # the model call may take a while: reset ack_wait first
        explanation = await self._assistant.explain(failure, suggestions)
        self.metrics.explanations.labels("skipped" if explanation is None else "written").inc()
        if explanation is None:
            return True
        await _publish_suggestions(
            js,
            failure.tenant,
            failure.run_id,
            [explanation],
            after_seq=failure.last_seq + 1,
            source=Assistant.SOURCE,
        )
        await store.update(failure.tenant, failure.run_id, _with_suggestions([explanation]))
        return True

    # -- suggestion-only runs -----------------------------------------------------------

    async def handle_advice(self, message: Delivery) -> None:
        """Answer one suggestion-only ``RunRequested``; acks once the run is complete."""
        started = time.perf_counter()
        request = await self._decode_or_term(message, RunRequested)
        if request is None:
            self.metrics.settled(Kind.ADVICE, Outcome.DEAD_LETTERED, time.perf_counter() - started)
            return
        try:
            await self.advise(request)
        except Exception as exc:  # noqa: BLE001 - every failure here is retried, then dead-lettered
            gave_up = await self._retry_later(message, exc, run_id=request.run_id)
            if gave_up:
                await self._abandon(request, exc)
            outcome = Outcome.DEAD_LETTERED if gave_up else Outcome.RETRIED
            self.metrics.settled(Kind.ADVICE, outcome, time.perf_counter() - started)
            return
        await message.ack()
        self.metrics.settled(Kind.ADVICE, Outcome.HANDLED, time.perf_counter() - started)

    async def advise(self, request: RunRequested) -> None:
        """Run ``request`` in suggestion-only mode; safe to repeat (resumes where it stopped)."""
        js, store = self._bound()
        run_id, tenant = request.run_id, request.tenant
        if await store.get(tenant, run_id) is None:  # the API created it; be robust anyway
            await store.create(
                RunRecord(
                    run_id=run_id, tenant=tenant, input=request.input, created_at=request.created_at
                )
            )
        record = await store.update(tenant, run_id, _mark_running)
        if record is None or record.terminal:
            log.info(
                "run %s is already %s: nothing to do",
                run_id,
                record.status.value if record else "gone",
            )
            return
        suggestions = advice.advise(request, hints=self._hints)
        payload = [s.model_dump(mode="json") for s in suggestions]
        steps: list[tuple[EventType, dict[str, Any]]] = [
            (EventType.RUN_STARTED, {"mode": RunMode.DEGRADED.value}),
            (EventType.SUGGESTION, {"suggestions": payload, "mode": RunMode.DEGRADED.value}),
            (
                EventType.RUN_COMPLETED,
                {"output": None, "mode": RunMode.DEGRADED.value, "suggestions": payload},
            ),
        ]
        # > 0 only if an earlier delivery got this far
        written = await last_event_seq(js, tenant, run_id)
        events = RunEventLog(js, tenant, run_id, last_seq=written)
        for event_type, data in steps[written:]:
            await events.emit(event_type, data)
        await store.update(tenant, run_id, _completed_with(suggestions))
        log.info("run %s: advised with %d suggestion(s)", run_id, len(suggestions))

    # -- delivery ------------------------------------------------------------------------

    async def _decode_or_term(
        self, message: Delivery, model: type[_Message]
    ) -> _Message | None:
        try:
            return decode(message.body, model)
        except PoisonMessage as exc:
            log.error("terminating a message on %s: %s", message.raw_message.subject, exc)
            await self._dead_letter(message, reason=str(exc))
            await message.reject()
            return None

    async def _retry_later(self, message: Delivery, exc: Exception, *, run_id: str) -> bool:
        """Nak ``message`` with backoff; on its last delivery term it instead (returns True)."""
        deliveries = _deliveries(message)
        give_up = deliveries >= MAX_DELIVER
        try:
            if give_up:
                log.error("run %s: giving up after %d deliveries: %r", run_id, deliveries, exc)
                await self._dead_letter(
                    message, reason=f"failed {deliveries} times, last: {exc!r}", run_id=run_id
                )
                await message.reject()
            else:
                delay = min(RETRY_BASE_DELAY_S * 2 ** (deliveries - 1), MAX_RETRY_DELAY_S)
                log.warning("run %s: retrying in %.0f s after %r", run_id, delay, exc)
                await message.nack(delay=delay)
        except Exception:  # the bus is away: JetStream redelivers after ack_wait anyway
            log.exception("run %s: could not nak or term the message", run_id)
        return give_up

    async def _abandon(self, request: RunRequested, exc: Exception) -> None:
        """End a suggestion-only run that could not be answered, rather than leave it running."""
        js, store = self._bound()
        error = RunError(
            code=ErrorCode.INTERNAL_ERROR,
            message=f"the suggester could not answer this run ({type(exc).__name__})",
        )
        try:
            _, changed = await store.change(request.tenant, request.run_id, _failed_with(error))
            if changed:  # only the writer that ended the run announces it
                events = await RunEventLog.resume(js, request.tenant, request.run_id)
                await events.emit(
                    EventType.RUN_FAILED,
                    {"error": error.model_dump(mode="json"), "mode": RunMode.DEGRADED.value},
                )
        except Exception:
            log.exception("run %s: could not mark the abandoned run failed", request.run_id)

    async def _dead_letter(
        self, message: Delivery, *, reason: str, run_id: str | None = None
    ) -> None:
        """Keep an unprocessable message for operators; best effort (the term matters more)."""
        js, _ = self._bound()
        letter = DeadLetter(
            subject=message.raw_message.subject,
            reason=reason,
            payload=message.body.decode("utf-8", "replace")[:MAX_DEAD_LETTER_PAYLOAD_CHARS],
            run_id=run_id,
        )
        headers: dict[str, str] = {}
        if (seq := _stream_seq(message)) is not None:
            headers[subjects.MSG_ID_HEADER] = f"{subjects.SUGGESTER_STREAM}:{seq}"
        try:
            await js.publish(
                subjects.DEADLETTER, letter.model_dump_json().encode(), headers=headers
            )
        except Exception:
            log.exception("could not dead-letter a message from %s", letter.subject)

    def _bound(self) -> tuple[JetStreamContext, RunStore]:
        if self._js is None or self._store is None:
            raise RuntimeError("the suggester is not connected yet")
        return self._js, self._store


def create_app(settings: SuggesterSettings | None = None, *, document_only: bool = False) -> FastStream:
    """The suggester as a FastStream application (``python -m flowrelay_suggester`` runs it).

    ``document_only``: declare the subscribers for ``faststream docs gen`` (see
    :func:`asyncapi_app`); the running service reads its consumers with :class:`PullLoop`.
    """
    settings = settings or SuggesterSettings()
    # FastStream's default loggers write ANSI colour codes into log files: use ours.
    broker = make_broker(settings, name=CLIENT_NAME, logger=logging.getLogger("flowrelay.suggester.broker"))
    assistant = Assistant.from_settings(settings)
    suggester = Suggester(
        hints=Hints(
            default_model=settings.default_model,
            default_timeout_s=settings.default_timeout_s,
            max_timeout_s=settings.max_timeout_s,
        ),
        assistant=assistant,
    )
    if document_only:
        _document(broker)
    app = FastStream(broker, logger=logging.getLogger("flowrelay.suggester.app"))
    loops: list[PullLoop] = []

    @app.on_startup
    async def _connect() -> None:
        connection = await broker.connect()
        js = connection.jetstream()
        await topology.declare(js, settings)
        await declare_consumers(js)
        suggester.bind(js=js, store=await RunStore.open(js))
        if assistant is not None:
            assistant.start()
        if settings.metrics_port >= 0:
            suggester.metrics.server.serve(settings.metrics_host, settings.metrics_port)
        for durable, handler in (
            (subjects.SUGGESTER_FAILURES_CONSUMER, suggester.handle_failure),
            (subjects.SUGGESTER_ADVISE_CONSUMER, suggester.handle_advice),
        ):
            loop = PullLoop(js, stream=subjects.SUGGESTER_STREAM, durable=durable, handler=handler,
                            batch=BATCH_SIZE, fetch_timeout_s=FETCH_TIMEOUT_S)
            loop.start()
            loops.append(loop)

    @app.on_shutdown
    async def _stop() -> None:
        await asyncio.gather(*(loop.stop() for loop in loops))
        if assistant is not None:
            await assistant.stop()
        await stop_broker(broker)
        suggester.metrics.server.close()

    return app


def asyncapi_app() -> FastStream:
    """The app with its channels declared, for ``faststream docs gen --factory``, naming the
    suggester's NATS user so the document shows how it authenticates (nothing starts)."""
    return create_app(SuggesterSettings(nats_user="suggester"), document_only=True)


def _document(broker: NatsBroker) -> None:
    """The consumers as FastStream subscribers, for the AsyncAPI document only."""
    stream = JStream(subjects.SUGGESTER_STREAM, declare=False)  # topology.declare owns streams

    def pull(durable: str, filter_subject: str, description: str) -> Any:
        return broker.subscriber(
            filter_subject,
            stream=stream,
            durable=durable,
            config=consumer_config(durable=durable, filter_subject=filter_subject),
            pull_sub=PullSub(batch_size=BATCH_SIZE, timeout=FETCH_TIMEOUT_S),
            ack_policy=AckPolicy.MANUAL,  # the default (REJECT_ON_ERROR) would drop work on any error
            description=description,
        )

    @pull(
        subjects.SUGGESTER_FAILURES_CONSUMER,
        subjects.RUN_FAILED,
        "Failure reports (RunFailed) -> a suggestion event and guidance on the run record.",
    )
    async def on_run_failed(message: NatsMessage) -> None:  # pragma: no cover - docs only
        raise NotImplementedError

    @pull(
        subjects.SUGGESTER_ADVISE_CONSUMER,
        subjects.RUN_ADVISE,
        "Suggestion-only runs (RunRequested) -> started, suggestion, completed; record succeeded.",
    )
    async def on_run_advise(message: NatsMessage) -> None:  # pragma: no cover - docs only
        raise NotImplementedError


# -- events and records -----------------------------------------------------------------


async def _publish_suggestions(
    js: JetStreamContext,
    tenant: str,
    run_id: str,
    suggestions: list[Suggestion],
    *,
    after_seq: int,
    source: str | None = None,
) -> None:
    """Append one ``suggestion`` event after ``after_seq``, unless it is already there.

    The log already holds it when its last event is a suggestion past ``after_seq`` (an
    earlier delivery wrote it). Otherwise the event goes after whatever the log holds, so
    sequence numbers stay gapless and unique even if the report's ``last_seq`` is stale.
    """
    last = await last_event(js, tenant, run_id)
    if last is not None and last.type == EventType.SUGGESTION and last.seq > after_seq:
        return
    data: dict[str, Any] = {
        "suggestions": [s.model_dump(mode="json") for s in suggestions],
        "mode": RunMode.DEGRADED.value,
    }
    if source is not None:
        data["source"] = source
    events = RunEventLog(js, tenant, run_id, last_seq=max(after_seq, last.seq if last else 0))
    await events.emit(EventType.SUGGESTION, data)


def _with_suggestions(new: list[Suggestion]) -> Callable[[RunRecord], RunRecord | None]:
    """Record mutation: append ``new`` suggestions not stored yet, mark the run degraded."""

    def mutate(record: RunRecord) -> RunRecord | None:
        added = [s for s in new if s not in record.suggestions]
        if not added and record.mode == RunMode.DEGRADED:
            return None
        record.suggestions = [*record.suggestions, *added]
        record.mode = RunMode.DEGRADED
        return record

    return mutate


def _mark_running(record: RunRecord) -> RunRecord | None:
    if record.terminal or (record.status == RunStatus.RUNNING and record.mode == RunMode.DEGRADED):
        return None
    record.status = RunStatus.RUNNING
    record.mode = RunMode.DEGRADED
    record.started_at = record.started_at or utcnow()
    record.attempts += 1
    return record


def _completed_with(suggestions: list[Suggestion]) -> Callable[[RunRecord], RunRecord | None]:
    def mutate(record: RunRecord) -> RunRecord | None:
        if record.terminal:
            return None
        now = utcnow()
        record.status = RunStatus.SUCCEEDED
        record.mode = RunMode.DEGRADED
        record.output = None
        record.suggestions = suggestions
        record.started_at = record.started_at or now
        record.finished_at = now
        return record

    return mutate


def _failed_with(error: RunError) -> Callable[[RunRecord], RunRecord | None]:
    def mutate(record: RunRecord) -> RunRecord | None:
        if record.terminal:
            return None
        record.status = RunStatus.FAILED
        record.mode = RunMode.DEGRADED
        record.error = error
        record.finished_at = utcnow()
        return record

    return mutate


def _has_explanation(record: RunRecord | None) -> bool:
    return record is not None and any(s.code == Assistant.CODE for s in record.suggestions)


def _deliveries(message: Delivery) -> int:
    try:
        return int(message.raw_message.metadata.num_delivered)
    except _NOT_JETSTREAM:  # a core NATS message (tests): treat as the first delivery
        return 1


def _stream_seq(message: Delivery) -> int | None:
    try:
        return int(message.raw_message.metadata.sequence.stream)
    except _NOT_JETSTREAM:
        return None
