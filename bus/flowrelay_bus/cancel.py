"""Cancelling a run: the record change and the broadcast, shared by the API and the executors.

A cancel is two things. The record is flagged (``cancel_requested``) or, for a run that has
not started, ended as ``cancelled`` with a ``run.cancelled`` event; and a ``CancelRequest``
is broadcast on ``flowrelay.runs.cancel.<tenant>.<run_id>`` so whichever executor holds the
run stops it. The API does both itself (it answers with the outcome). A client that only
publishes the broadcast (over NATS, with a tenant's user) gets the record part done by one
executor of the ``CANCEL_QUEUE`` queue group.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from nats.aio.client import Client
from nats.js import JetStreamContext

from flowrelay_bus.events import RunEventLog, terminal_msg_id
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import (
    CancelRequest,
    ErrorCode,
    EventType,
    RunError,
    RunRecord,
    RunStatus,
    subjects,
)
from flowrelay_contracts.messages import utcnow

log = logging.getLogger(__name__)


class CancelOutcome(StrEnum):
    NOT_FOUND = "not_found"
    CANCELLED = "cancelled"  # was queued or waiting for an answer: now cancelled, never runs again
    REQUESTED = "requested"  # was running: its executor is asked to stop it
    ALREADY_REQUESTED = "already_requested"
    FINISHED = "finished"  # already terminal


async def record_cancel(
    store: RunStore, js: JetStreamContext, tenant: str, run_id: str, reason: str, *, by: str
) -> tuple[RunRecord | None, CancelOutcome]:
    """Flag or end the run's record; announce ``run.cancelled`` for a run that never started."""
    outcome = CancelOutcome.NOT_FOUND

    def mutate(record: RunRecord) -> RunRecord | None:
        nonlocal outcome
        if record.terminal:
            outcome = CancelOutcome.FINISHED
            return None
        if record.status in (RunStatus.QUEUED, RunStatus.WAITING):  # no executor holds it
            outcome = CancelOutcome.CANCELLED
            if record.status == RunStatus.WAITING or (record.waiting is not None and record.retry_at is None):
                when = "while it waited for an answer"
            elif record.retry_at is not None:
                when = "while it waited for its next attempt"
            else:
                when = "before it started"
            return record.model_copy(update={
                "status": RunStatus.CANCELLED, "finished_at": utcnow(), "cancel_requested": True, "retry_at": None,
                "error": RunError(code=ErrorCode.CANCELLED, message=f"{reason} {when}"),
            })
        if record.cancel_requested:
            outcome = CancelOutcome.ALREADY_REQUESTED
            return None
        outcome = CancelOutcome.REQUESTED
        return record.model_copy(update={"cancel_requested": True})

    record = await store.update(tenant, run_id, mutate)
    if record is None:
        return None, CancelOutcome.NOT_FOUND
    if outcome == CancelOutcome.CANCELLED:
        await _announce_cancelled(js, record, reason, by=by)
    return record, outcome


async def broadcast_cancel(nc: Client, tenant: str, run_id: str, reason: str, *, recorded: bool) -> None:
    """Ask whichever executor holds the run to stop it (core NATS: every executor hears it)."""
    message = CancelRequest(run_id=run_id, tenant=tenant, reason=reason)
    await nc.publish(
        subjects.run_cancel(tenant, run_id),
        message.__pydantic_serializer__.to_json(message),
        headers={subjects.CANCEL_RECORDED_HEADER: "1"} if recorded else None,
    )


async def _announce_cancelled(js: JetStreamContext, record: RunRecord, reason: str, *, by: str) -> None:
    """Append ``run.cancelled`` so event streams end. The record is already terminal, so a
    failure here loses nothing: an executor that later receives the request republishes
    the terminal event from the record, and SSE streams close on a terminal record."""
    try:
        events = await RunEventLog.resume(js, record.tenant, record.run_id)
        await events.emit(
            EventType.RUN_CANCELLED,
            {
                "status": RunStatus.CANCELLED.value,
                "reason": reason,
                "error": record.error.model_dump(mode="json") if record.error else None,
                "by": by,
            },
            msg_id=terminal_msg_id(record.run_id),
        )
    except Exception as exc:  # noqa: BLE001 - see the docstring: nothing is lost
        log.warning("run %s: cancelled, but its run.cancelled event failed (%s)", record.run_id, type(exc).__name__)
