"""The executor's part of threads: a run's history in, its turn out.

Before a run on a thread starts, :meth:`Conversations.history` claims the thread for it
(a no-op for runs the API accepted, which claimed it already; the concurrency check for runs
published straight to NATS) and loads the earlier turns within
``FLOWRELAY_THREAD_HISTORY_MAX_BYTES``. When the run ends, :meth:`Conversations.record`
stores its turn (succeeded runs only) and notes its status and usage in the thread's
record, before the run's own record turns terminal: the next run of the thread can only be
accepted after that, so it always sees this turn.
"""

from __future__ import annotations

from flowrelay_bus.threads import ThreadBusy, ThreadFull, ThreadMissing, ThreadStore
from flowrelay_contracts import ErrorCode, RunError, RunRequested, RunStatus
from flowrelay_contracts.threads import ThreadTurn
from flowrelay_executor.jobs import CannotStart, JobHistory, Outcome
from flowrelay_executor.settings import ExecutorSettings

__all__ = ["Conversations", "ThreadRefused"]


class ThreadRefused(CannotStart):
    """The run cannot go on its thread (missing, busy with another run, full): it fails
    ``invalid_request`` with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(RunError(code=ErrorCode.INVALID_REQUEST, message=message))


class Conversations:
    """Loads a thread's history for a run and records the run's turn (see the module)."""

    def __init__(self, threads: ThreadStore, settings: ExecutorSettings) -> None:
        self._threads = threads
        self._settings = settings

    async def history(self, request: RunRequested) -> JobHistory:
        """Claim the run's thread and load its earlier turns; raises :class:`ThreadRefused`."""
        assert request.thread_id is not None
        try:
            record = await self._threads.claim(request.tenant, request.thread_id, request.run_id,
                                               max_runs=self._settings.max_thread_runs)
        except ThreadMissing:
            raise ThreadRefused(f"thread {request.thread_id} not found (it may have expired: "
                                "FLOWRELAY_THREAD_TTL_S)") from None
        except (ThreadBusy, ThreadFull) as exc:
            raise ThreadRefused(str(exc)) from None
        history = await self._threads.history(record, budget=self._settings.thread_history_max_bytes,
                                              exclude_run=request.run_id)
        return JobHistory(messages=history.messages, turns=len(history.turns), dropped=history.dropped)

    async def record(self, request: RunRequested, attempt: int, outcome: Outcome) -> None:
        """Store a succeeded run's turn, and how any run ended, in its thread."""
        assert request.thread_id is not None
        turn = None
        if outcome.status == "succeeded" and outcome.turn:
            turn = await self._threads.append_turn(ThreadTurn(
                thread_id=request.thread_id, tenant=request.tenant, run_id=request.run_id, attempt=attempt,
                messages=outcome.turn, form=outcome.turn_form, usage=outcome.usage,
            ), budget=self._settings.thread_history_max_bytes)
        await self._threads.record_end(
            request.tenant, request.thread_id, request.run_id, status=RunStatus(outcome.status),
            usage=outcome.usage, cost_usd=outcome.cost_usd, turn=turn,
        )
