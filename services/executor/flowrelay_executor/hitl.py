"""The executor's part of ``ask_human``: parking a paused run and resuming it anywhere.

Parking (:meth:`Waits.park`), when a worker reports a run paused: its saved state goes to
the run's checkpoints (``CHECKPOINTS_BUCKET``), its record turns ``waiting`` with the
question and a deadline, ``run.waiting`` is published, and its request is handed back to
JetStream with a delay that ends at the deadline (``nak(delay=...)``). Nothing of the run
stays in this executor: its worker slot is free at once.

Resuming: an answer (the API's, over HTTP or NATS) turns the record ``queued`` and queues a resume request
(``RunRequested.resume``: the wait's id). Whichever executor takes it loads the checkpoint
(:meth:`Waits.resume_point`) and the run continues with the answer; the parked request is
deleted from the queue. The run's record keeps the last question and its answer
(``waiting``) until it pauses again or ends, so a resume request redelivered after a crash
resumes from the same checkpoint.

The parked request is the wait's timer: delivered again at the deadline with the run still
``waiting``, it fails the run ``timeout`` (:meth:`Waits.on_delivery`); delivered after the
run was answered, it is superseded and acked. A cancel while waiting ends the run at once
(``flowrelay_bus.cancel``).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from flowrelay_bus.checkpoints import CheckpointStore
from flowrelay_bus.events import RunEventLog
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import (
    Checkpoint,
    ErrorCode,
    EventType,
    HumanWait,
    RunError,
    RunRecord,
    RunRequested,
    RunStatus,
    subjects,
)
from flowrelay_contracts.messages import CheckpointKind, utcnow
from flowrelay_executor.jobs import CannotStart, Outcome, PauseState, ResumePoint
from flowrelay_executor.settings import ExecutorSettings

__all__ = ["Delivery", "Waits"]

log = logging.getLogger("flowrelay.executor")

#: A parked request comes back this long after its deadline at the latest (JetStream's
#: redelivery timer is not exact; an early one is parked again).
PARK_MARGIN_S = 0.5

#: What :meth:`Waits.on_delivery` decided about a request of a run that waited.
Delivery = Literal["run", "parked", "superseded", "expired"]


@dataclass(frozen=True)
class Parked:
    """How parking went: ``parked``, or why not (the run was cancelled meanwhile, or its
    claim moved to another executor)."""

    outcome: Literal["parked", "cancel_requested", "claim_lost"]


class Waits:
    """Parks paused runs and resumes answered ones (see the module)."""

    def __init__(self, *, js: JetStreamContext, store: RunStore, checkpoints: CheckpointStore,
                 settings: ExecutorSettings, executor_id: str) -> None:
        self._js = js
        self._store = store
        self._checkpoints = checkpoints
        self._settings = settings
        self._executor_id = executor_id

    def wait_timeout_s(self, request: RunRequested) -> float:
        s = self._settings
        return min(request.options.wait_timeout_s or s.default_wait_timeout_s, s.max_wait_timeout_s)

    # -- a delivery of a run that waited ---------------------------------------------------

    async def on_delivery(self, msg: Msg, request: RunRequested, record: RunRecord) -> Delivery:
        """For a request of a run with a question (``record.waiting``): run it (a resume
        request for the current answer), park it again (its deadline is ahead), fail the run
        (the deadline passed without an answer) or drop it (superseded)."""
        waiting = record.waiting
        if waiting is None or record.terminal:
            return "run"
        if request.resume is not None:
            current = request.resume == waiting.wait_id and waiting.answer is not None
            if current:
                return "run"
            await msg.ack()  # a resume for an earlier question, or one never answered
            return "superseded"
        if record.status != RunStatus.WAITING:  # answered: the resume request carries the run now
            await msg.ack()
            return "superseded"
        left = (waiting.deadline - utcnow()).total_seconds()
        if left > 0:
            await msg.nak(delay=left + PARK_MARGIN_S)
            return "parked"
        return "expired"

    def expired(self, record: RunRecord) -> Outcome:
        assert record.waiting is not None
        timeout = (record.waiting.deadline - record.waiting.asked_at).total_seconds()
        return Outcome(status="failed", usage=record.usage, agents=record.agents, cost_usd=record.cost_usd,
                       cost_note=record.cost_note, error=RunError(
                           code=ErrorCode.TIMEOUT, agent=record.waiting.agent,
                           message=f"nobody answered the question of ask_human within {timeout:g} s "
                           "(options.wait_timeout_s, default FLOWRELAY_DEFAULT_WAIT_TIMEOUT_S)"))

    # -- pausing --------------------------------------------------------------------------

    async def park(self, msg: Msg, request: RunRequested, events: RunEventLog, attempt: int,
                   outcome: Outcome) -> Parked:
        """Save the paused run, mark it ``waiting``, announce the question, park the request."""
        pause = outcome.pause
        assert pause is not None
        wait_id = uuid.uuid4().hex[:16]
        await self._checkpoints.save(Checkpoint(
            run_id=request.run_id, tenant=request.tenant, name=_checkpoint_name(wait_id), kind=CheckpointKind.HUMAN_WAIT,
            step=pause.steps, agent=pause.agent, input_sha256=hashlib.sha256(pause.question.encode()).hexdigest(),
            output=pause.model_dump(mode="json"), usage=outcome.usage, cost_usd=outcome.cost_usd, attempt=attempt,
        ))
        now = utcnow()
        wait = HumanWait(
            wait_id=wait_id, agent=pause.agent, question=pause.question, choices=pause.choices, asked_at=now,
            deadline=now + timedelta(seconds=self.wait_timeout_s(request)), options=request.options,
            parked_seq=_stream_seq(msg),
        )
        why: Literal["cancel_requested", "claim_lost"] = "claim_lost"

        def to_waiting(r: RunRecord) -> RunRecord | None:
            nonlocal why
            if r.terminal or r.executor_id != self._executor_id or r.attempts != attempt:
                why = "claim_lost"
                return None
            if r.cancel_requested:
                why = "cancel_requested"
                return None
            return r.model_copy(update={"status": RunStatus.WAITING, "waiting": wait, "usage": outcome.usage,
                                        "agents": outcome.agents, "cost_usd": outcome.cost_usd,
                                        "cost_note": outcome.cost_note})

        _, changed = await self._store.change(request.tenant, request.run_id, to_waiting)
        if not changed:
            return Parked(why)
        await events.emit(EventType.RUN_WAITING, {
            "wait_id": wait_id, "agent": wait.agent, "question": wait.question, "choices": wait.choices,
            "deadline": wait.deadline.isoformat(), "usage": outcome.usage.model_dump(),
        })
        await msg.nak(delay=(wait.deadline - utcnow()).total_seconds() + PARK_MARGIN_S)
        log.info("run %s waits for an answer (question %s) until %s", request.run_id, wait_id, wait.deadline)
        return Parked("parked")

    # -- resuming -------------------------------------------------------------------------

    async def resume_point(self, record: RunRecord) -> ResumePoint:
        """The saved state and the answer a resumed run continues with; the parked request
        is removed from the queue (best effort: if it stays, it is dropped on delivery)."""
        waiting = record.waiting
        assert waiting is not None and waiting.answer is not None
        saved = (await self._checkpoints.load(record.tenant, record.run_id)).get(_checkpoint_name(waiting.wait_id))
        if saved is None or saved.output is None:
            raise CannotStart(RunError(code=ErrorCode.INTERNAL_ERROR, message=(
                f"the saved state of run {record.run_id} (question {waiting.wait_id}) is gone: it expired "
                "(FLOWRELAY_RUNS_TTL_S) or was removed; the run cannot resume")))
        if waiting.parked_seq is not None:
            try:
                await self._js.delete_msg(subjects.RUNS_STREAM, waiting.parked_seq)
            except Exception:  # noqa: BLE001 - already gone, or it comes back and is dropped
                pass
        return ResumePoint(wait_id=waiting.wait_id, state=PauseState.model_validate(saved.output),
                           answer=waiting.answer)

    async def forget(self, record: RunRecord) -> None:
        """A run that waited has ended: remove its saved states (best effort; the bucket's
        TTL removes what this misses)."""
        try:
            await self._checkpoints.clear(record.tenant, record.run_id)
        except Exception as exc:  # noqa: BLE001
            log.info("run %s: its checkpoints stay until they expire (%s)", record.run_id, type(exc).__name__)


def _checkpoint_name(wait_id: str) -> str:
    return f"wait-{wait_id}"


def _stream_seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - not a JetStream message (tests)
        return None
