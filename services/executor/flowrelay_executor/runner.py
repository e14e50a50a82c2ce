"""Runs jobs on one event loop with deadlines and cancellation: the inside of a worker.

The same runner serves a worker process (``worker.py``) and the thread fallback
(``threads.py``). It owns the *cooperative* part of deadlines: at ``timeout_s`` the run's
task is cancelled and reported as ``timeout``. What a cancelled task cannot stop (a tool
that blocks the loop or spins the CPU) is the supervisor's job: it kills the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from flowrelay_contracts import ErrorCode, EventType, RunError
from flowrelay_executor.jobs import Job, Outcome, timed_out

log = logging.getLogger(__name__)

#: Sends one protocol message to the supervisor; must not block.
Send = Callable[[dict[str, Any]], None]


class JobRunner:
    """Starts jobs as tasks on the current loop and reports their events and outcomes."""

    def __init__(self, engine: Any, send: Send) -> None:
        self._engine = engine
        self._send = send
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[str, str] = {}

    @property
    def active(self) -> int:
        return len(self._tasks)

    def start(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"run-{job.run_id}")
        self._tasks[job.run_id] = task

    def cancel(self, run_id: str, reason: str) -> None:
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            self._cancel_reasons[run_id] = reason
            task.cancel()

    def cancel_all(self, reason: str) -> None:
        for run_id in list(self._tasks):
            self.cancel(run_id, reason)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job: Job) -> None:
        run_id = job.run_id
        send = self._send

        def emit(type: EventType, data: dict[str, Any]) -> None:
            # The callback's own wall-clock time becomes the event's ``at``: it is what
            # event latency (worker callback -> subscriber) is measured from.
            send({"op": "event", "run_id": run_id, "type": str(type), "data": data, "at": time.time()})

        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(job.timeout_s):
                    outcome = await self._engine.run(job, emit)
            except TimeoutError:
                outcome = timed_out(job, f"(stopped after {time.monotonic() - started:.1f} s)")
            except asyncio.CancelledError:
                reason = self._cancel_reasons.pop(run_id, "cancelled")
                outcome = Outcome(
                    status="cancelled", error=RunError(code=ErrorCode.CANCELLED, message=reason)
                )
            except Exception as exc:  # the engine classifies what it knows; this is the rest
                log.exception("run %s: engine error", run_id)
                outcome = Outcome(
                    status="failed",
                    error=RunError(
                        code=ErrorCode.INTERNAL_ERROR,
                        message=f"executor error: {type(exc).__name__}",
                        exception_type=type(exc).__name__,
                    ),
                )
            send({"op": "done", "run_id": run_id, "outcome": outcome.model_dump(mode="json")})
        finally:
            self._tasks.pop(run_id, None)
            self._cancel_reasons.pop(run_id, None)
