"""Wires the :class:`~flowrelay_executor.service.Executor` to NATS with FastStream.

The subscribers declared here are what ``faststream docs gen`` documents (AsyncAPI).
"""

from __future__ import annotations

import logging

from faststream import AsyncAPI, FastStream
from faststream.nats import JStream, PullSub
from faststream.nats.annotations import NatsMessage

from flowrelay_bus.connection import make_broker
from flowrelay_bus.lifecycle import stop_broker
from flowrelay_contracts import (
    CancelRequest,
    DeadLetter,
    RunFailed,
    RunRequested,
    TraceEvent,
    subjects,
)
from flowrelay_contracts.threads import ThreadTurn
from flowrelay_executor.service import FETCH_BATCH, Executor
from flowrelay_executor.settings import ExecutorSettings

#: Version stamped on the AsyncAPI document (the wire schema version is in each message).
SPEC_VERSION = "1"



def create_app(
    settings: ExecutorSettings | None = None, *, document_only: bool = False
) -> tuple[FastStream, Executor]:
    settings = settings or ExecutorSettings()
    executor = Executor(settings)
    # FastStream's default loggers write ANSI colour codes into log files: use ours.
    broker = make_broker(
        settings,
        name=f"flowrelay-executor-{executor.executor_id}",
        reconnected_cb=executor.on_reconnected,
        logger=logging.getLogger("flowrelay.executor.broker"),
    )

    if document_only:
        # The run-request loop is Executor.consume (plain nats-py): it fetches exactly as
        # many requests as there are free slots, which FastStream's pull loop cannot, and it
        # skips a per-message dependency-injection layer on the hot path. Declared here so the
        # AsyncAPI document shows the channel.
        @broker.subscriber(
            subjects.RUN_REQUESTED_ALL,
            stream=JStream(subjects.RUNS_STREAM, declare=False),
            durable=subjects.EXECUTORS_CONSUMER,
            pull_sub=PullSub(batch_size=FETCH_BATCH),
            title="run requests",
            description="Competing consumers: each request is run by exactly one executor.",
        )
        async def on_run_requested(request: RunRequested) -> None:  # pragma: no cover - docs only
            raise NotImplementedError

    @broker.subscriber(
        subjects.RUN_CANCEL_ALL,
        title="cancel requests",
        description="flowrelay.runs.cancel.<tenant>.<run_id>: broadcast to every executor; the one "
        "holding the run stops it.",
    )
    async def on_cancel(request: CancelRequest, message: NatsMessage) -> None:
        tenant, run_id = _cancel_target(message.raw_message.subject)
        executor.cancel(tenant, run_id, request.reason)

    @broker.subscriber(
        subjects.RUN_CANCEL_ALL,
        queue=subjects.CANCEL_QUEUE,
        title="cancel requests (record)",
        description="One executor of the queue group applies a cancel a NATS client only broadcast "
        "to the run's record (queued runs end at once); the API records its own cancels.",
    )
    async def on_cancel_record(request: CancelRequest, message: NatsMessage) -> None:
        if message.headers.get(subjects.CANCEL_RECORDED_HEADER):
            return
        tenant, run_id = _cancel_target(message.raw_message.subject)
        await executor.record_cancel(tenant, run_id, request.reason)

    # What the executor publishes. service.py sends these through JetStream directly (it
    # needs message-id headers and publish acks); declaring them documents the channels.
    broker.publisher(
        subjects.EVENTS_ALL, schema=TraceEvent, title="trace events",
        description="flowrelay.events.<tenant>.<run_id>: every step of a run, seq 1, 2, 3... without gaps.",
    )
    broker.publisher(
        subjects.RUN_FAILED, schema=RunFailed, title="failure reports",
        description="One per failed run, for the suggester.",
    )
    broker.publisher(
        subjects.THREADS_ALL, schema=ThreadTurn, title="thread turns",
        description="flowrelay.threads.<tenant>.<thread_id>: what each succeeded run on a thread added to the "
        "conversation (the user's message and the answering agent's messages), in order.",
    )
    broker.publisher(
        subjects.DEADLETTER, schema=DeadLetter, title="dead letters",
        description="Run requests that can never be processed, with the reason.",
    )

    async def before_connect() -> None:
        await executor.start_pool()
        await broker.connect()
        await executor.attach(broker.connection)


    async def after_drain() -> None:
        await stop_broker(broker)

    app = FastStream(
        broker,
        logger=logging.getLogger("flowrelay.executor.app"),
        on_startup=[before_connect],
        on_shutdown=[executor.drain, after_drain],
        specification=AsyncAPI(title="flowrelay executor", version=SPEC_VERSION),
    )
    return app, executor


def _cancel_target(subject: str) -> tuple[str, str]:
    """``(tenant, run_id)`` of a cancel subject: the subject, which NATS permissions vouch
    for, decides which run is meant, not the payload."""
    tenant, _, run_id = subject[len(subjects.RUN_CANCEL_PREFIX) + 1 :].partition(".")
    return tenant, run_id


def asyncapi_app() -> FastStream:
    """The app with default settings, for ``faststream docs gen --factory`` (nothing starts).

    It names the executor's NATS user so the document shows how the service authenticates.
    """
    return create_app(ExecutorSettings(nats_user="executor"), document_only=True)[0]
