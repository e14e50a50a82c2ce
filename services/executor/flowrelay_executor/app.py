"""Wires the :class:`~flowrelay_executor.service.Executor` to NATS with FastStream.

The subscribers declared here are what ``faststream docs gen`` documents (AsyncAPI).
"""

from __future__ import annotations

from faststream import AsyncAPI, FastStream
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsMessage, PullSub

from flowrelay_bus.connection import make_broker
from flowrelay_contracts import CancelRequest, DeadLetter, RunFailed, TraceEvent, subjects
from flowrelay_executor.service import Executor, consumer_config
from flowrelay_executor.settings import ExecutorSettings

#: Version stamped on the AsyncAPI document (the wire schema version is in each message).
SPEC_VERSION = "1"

#: Run requests fetched per pull request.
FETCH_BATCH = 16

#: How long one pull request waits for a run request before asking again.
FETCH_TIMEOUT_S = 5.0


def create_app(settings: ExecutorSettings | None = None) -> tuple[FastStream, Executor]:
    settings = settings or ExecutorSettings()
    executor = Executor(settings)
    broker = make_broker(settings, name=f"flowrelay-executor-{executor.executor_id}")

    run_requests = broker.subscriber(
        subjects.RUN_REQUESTED,
        stream=JStream(subjects.RUNS_STREAM, declare=False),
        durable=subjects.EXECUTORS_CONSUMER,
        config=consumer_config(settings),
        # FastStream hands every message of a batch to ``accept`` at once; each waits for a
        # slot while heartbeating, so a batch saves fetch round trips without risking
        # redelivery of buffered messages (the FIELD_NOTES pitfall of max_workers).
        pull_sub=PullSub(batch_size=FETCH_BATCH, timeout=FETCH_TIMEOUT_S),
        ack_policy=AckPolicy.MANUAL,
        title="run requests",
        description="Competing consumers: each request is run by exactly one executor.",
    )

    @run_requests
    async def on_run_requested(msg: NatsMessage) -> None:
        await executor.accept(msg.raw_message)

    @broker.subscriber(
        subjects.RUN_CANCEL_ALL,
        title="cancel requests",
        description="Broadcast to every executor; the one holding the run cancels it.",
    )
    async def on_cancel(request: CancelRequest) -> None:
        executor.cancel(request.run_id, request.reason)

    # What the executor publishes. service.py sends these through JetStream directly (it
    # needs message-id headers and publish acks); declaring them documents the channels.
    broker.publisher(
        subjects.EVENTS_ALL, schema=TraceEvent, title="trace events",
        description="flowrelay.events.<run_id>: every step of a run, seq 1, 2, 3... without gaps.",
    )
    broker.publisher(
        subjects.RUN_FAILED, schema=RunFailed, title="failure reports",
        description="One per failed run, for the suggester.",
    )
    broker.publisher(
        subjects.DEADLETTER, schema=DeadLetter, title="dead letters",
        description="Run requests that can never be processed, with the reason.",
    )

    async def before_connect() -> None:
        await executor.start_pool()
        await broker.connect()
        await executor.attach(broker.connection.jetstream())

    async def drain() -> None:
        await run_requests.stop()  # fetch nothing more; what is in flight finishes or is handed back
        await executor.drain()

    app = FastStream(
        broker,
        on_startup=[before_connect],
        on_shutdown=[drain],
        specification=AsyncAPI(title="flowrelay executor", version=SPEC_VERSION),
    )
    return app, executor


def asyncapi_app() -> FastStream:
    """The app with default settings, for ``faststream docs gen --factory`` (nothing starts)."""
    return create_app(ExecutorSettings())[0]
