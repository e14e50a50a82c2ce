"""What the API does on NATS, as an AsyncAPI document (``make asyncapi`` -> docs/asyncapi/api.yaml).

The API is an HTTP service; on NATS it queues runs (and the resumption of answered ones),
broadcasts cancels, announces runs cancelled before they started, and applies answers that
NATS clients send to waiting runs (``flowrelay_api.answers``). Nothing here runs: the app
exists for ``faststream docs gen --factory flowrelay_api.asyncapi:asyncapi_app``.
"""

from __future__ import annotations

from faststream import AsyncAPI, FastStream

from flowrelay_api.settings import ApiSettings
from flowrelay_bus.connection import make_broker
from flowrelay_contracts import (
    CancelRequest,
    HumanInput,
    RunIndexEntry,
    RunRequested,
    TraceEvent,
    subjects,
)
from flowrelay_contracts.hitl import AnswerReply

#: Version stamped on the AsyncAPI document (the wire schema version is in each message).
SPEC_VERSION = "1"


def asyncapi_app() -> FastStream:
    broker = make_broker(ApiSettings(nats_user="api"), name="flowrelay-api")

    @broker.subscriber(
        subjects.RUN_INPUT_ALL,
        queue=subjects.INPUT_QUEUE,
        title="answers",
        description="flowrelay.runs.input.<tenant>.<run_id>: the answer to a waiting run's ask_human question "
        "(request-reply). One API process of the queue group checks it like POST /runs/{id}/input, stores it, "
        "queues the run's resumption and replies with an AnswerReply JSON: {accepted, run_id, status, wait_id} "
        "when taken, {accepted: false, code (not_found, not_waiting, stale_wait, wait_expired, invalid_answer, "
        "unavailable), detail, field} when not.",
    )
    async def on_answer(answer: HumanInput) -> AnswerReply:  # pragma: no cover - docs only
        raise NotImplementedError

    broker.publisher(
        subjects.RUN_REQUESTED_ALL, schema=RunRequested, title="run requests",
        description="flowrelay.runs.requested.<tenant>: runs accepted over HTTP (Nats-Msg-Id: the run id), and "
        "the resumption of answered runs ('resume': the wait's id; Nats-Msg-Id: <run_id>:resume:<wait_id>).",
    )
    broker.publisher(
        subjects.RUN_CANCEL_ALL, schema=CancelRequest, title="cancel requests",
        description="flowrelay.runs.cancel.<tenant>.<run_id>: ask the executor holding the run to stop it.",
    )
    broker.publisher(
        subjects.EVENTS_ALL, schema=TraceEvent, title="trace events",
        description="flowrelay.events.<tenant>.<run_id>: run.cancelled for runs cancelled before they started "
        "or while they waited for an answer.",
    )
    broker.publisher(
        subjects.INDEX_ALL, schema=RunIndexEntry, title="run index",
        description="flowrelay.index.<tenant>.<run_id>: one entry per run accepted over HTTP.",
    )
    return FastStream(broker, specification=AsyncAPI(title="flowrelay api", version=SPEC_VERSION))
