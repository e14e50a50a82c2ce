"""The executor's side of durable runs: step checkpoints on the bus, and retries scheduled.

What: :class:`Durability` is what ``service.Executor`` calls for the two things that make a
run survive a failed attempt:

* checkpoints (``flowrelay_bus.checkpoints``): read back when a later attempt starts
  (:meth:`resumable`), stored as the worker reports finished steps (:meth:`keep`, called by
  the run's event pump, so they are stored in order with its events), and cleared once the
  run has ended (:meth:`forget`);
* retries (``retries.py`` decides): :meth:`retry_later` releases the attempt's claim in the
  record, announces ``run.retrying`` and hands the request back to JetStream with a nak
  delayed by the wait, so nothing in this process (slot, worker, task) waits for it.

Every failure here is survivable: a checkpoint that cannot be stored or read only means a
step runs again. A retry that cannot be scheduled (the claim moved on) is left to the run's
current owner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from flowrelay_bus.checkpoints import CheckpointStore
from flowrelay_bus.events import RunEventLog
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import (
    Checkpoint,
    EventType,
    RetryRecord,
    RunRecord,
    RunRequested,
    RunStatus,
)
from flowrelay_executor.jobs import Outcome
from flowrelay_executor.payloads import fit_event
from flowrelay_executor.retries import Retry

__all__ = ["Attempt", "Durability"]

log = logging.getLogger("flowrelay.executor")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed attempt of a run: its message, request, event log and claim number."""

    msg: Msg
    request: RunRequested
    events: RunEventLog
    number: int


class Durability:
    def __init__(self, *, executor_id: str, runs: RunStore, checkpoints: CheckpointStore) -> None:
        self._executor_id = executor_id
        self._runs = runs
        self._checkpoints = checkpoints

    # -- checkpoints ------------------------------------------------------------------------

    async def resumable(self, tenant: str, run_id: str) -> list[Checkpoint]:
        """The checkpoints earlier attempts left (none if they cannot be read: the steps
        then run again, which costs model calls but loses nothing)."""
        try:
            return list((await self._checkpoints.load(tenant, run_id)).values())
        except Exception as exc:  # noqa: BLE001 - resuming saves calls; it is never a reason to fail
            log.warning("run %s: its checkpoints could not be read (%s); running every step", run_id, _describe(exc))
            return []

    async def keep(self, request: RunRequested, data: dict[str, Any]) -> Checkpoint | None:
        """Store a checkpoint the worker reported; the stored form, or None if it was lost."""
        try:
            # The run's own tenant and id, whatever the worker put there.
            checkpoint = Checkpoint.model_validate(data | {"tenant": request.tenant, "run_id": request.run_id})
            return await self._checkpoints.save(checkpoint)
        except Exception as exc:  # noqa: BLE001 - a lost checkpoint only means its step may run again
            log.warning("run %s: a step checkpoint could not be stored (%s); a later attempt repeats that step",
                        request.run_id, _describe(exc))
            return None

    async def forget(self, request: RunRequested, checkpoints: list[Checkpoint]) -> None:
        """A finished run needs its checkpoints no more (the bucket's TTL removes them if this fails)."""
        if not checkpoints:
            return
        try:
            await self._checkpoints.clear(request.tenant, request.run_id, linked=checkpoints)
        except Exception as exc:  # noqa: BLE001 - they expire with the run record anyway
            log.info("run %s: its checkpoints stay until they expire (%s)", request.run_id, _describe(exc))

    # -- retries ----------------------------------------------------------------------------

    async def retry_later(self, attempt: Attempt, outcome: Outcome, retry: Retry) -> bool:
        """Give the run back for its next attempt after ``retry.wait_s``, holding nothing.

        The record releases the claim (``queued``, no executor, ``retry_at``) under the same
        compare-and-set fence as a terminal write, so only the attempt's owner schedules a
        retry; ``run.retrying`` is stored before the request is handed back (a nak with the
        wait as its delay), so the next attempt's events follow it. False if the claim had
        moved on (nothing was written).
        """
        assert outcome.error is not None
        request = attempt.request
        entry = RetryRecord(
            attempt=retry.failed_attempt, executor_id=self._executor_id, error=outcome.error, wait_s=retry.wait_s,
            retry_at=retry.retry_at, usage=outcome.unsaved, cost_usd=outcome.unsaved_cost_usd,
        )

        def to_waiting(r: RunRecord) -> RunRecord | None:
            if r.terminal or r.executor_id != self._executor_id or r.attempts != attempt.number:
                return None
            return r.model_copy(update={
                "status": RunStatus.QUEUED, "executor_id": None, "retry_at": retry.retry_at,
                "retries": [*r.retries, entry], "usage": outcome.usage, "agents": outcome.agents,
                "cost_usd": outcome.cost_usd, "cost_note": outcome.cost_note,
            })

        stored, changed = await self._runs.change(request.tenant, request.run_id, to_waiting)
        if not changed:
            log.warning("run %s: attempt %d is no longer the run's claim; no retry scheduled", request.run_id,
                        attempt.number)
            if stored is not None and stored.terminal:  # ended meanwhile (a cancel): nothing more to do
                await attempt.msg.ack()
            return False
        await attempt.events.emit(EventType.RUN_RETRYING, fit_event({
            "reason": outcome.error.code.value, "message": outcome.error.message,
            "provider_status": outcome.error.provider_status, "retry_after_s": retry.retry_after_s,
            "wait_s": round(retry.wait_s, 3), "retry_at": retry.retry_at.isoformat(),
            "attempt": retry.failed_attempt + 1, "attempts": retry.attempts,
            "usage": outcome.usage.model_dump(), "cost_usd": outcome.cost_usd,
        }))
        await attempt.msg.nak(delay=retry.wait_s)
        # Logged once JetStream holds the wait: from here on this process may die.
        log.info("run %s: %s; attempt %d of %d in %.1f s", request.run_id, outcome.error.code.value,
                 retry.failed_attempt + 1, retry.attempts, retry.wait_s)
        return True


def _describe(exc: BaseException) -> str:
    description = getattr(exc, "description", None)
    return f"{type(exc).__name__}: {description}" if description else type(exc).__name__
