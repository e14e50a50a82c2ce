"""The supervisor side of worker processes: a pool of warm workers and the hard deadlines.

Each worker (``worker.py``) runs up to ``slots_per_worker`` runs at once on its own loop.
The pool sends a job to the least-loaded live worker and resolves the job's future when
the worker reports it done. It also enforces what a worker cannot enforce on itself: a
run still going ``kill_grace_s`` after its deadline means the worker's loop is blocked or
spinning, so the worker is killed, the run reported as ``timeout`` and the worker replaced.
Runs that shared the killed (or crashed) worker get :class:`WorkerLost`; the caller decides
whether to queue them again or fail them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from pydantic_core import from_json, to_json

from flowrelay_executor.jobs import Job, Outcome, timed_out
from flowrelay_executor.worker import PRELOAD, WorkerOptions, run_worker

log = logging.getLogger(__name__)

#: Receives a run's step events as the worker reports them: (event type, data, unix time).
EventSink = Callable[[str, dict[str, Any], float], None]

#: Largest protocol line read from a worker.
MAX_LINE_BYTES = 16 * 1024 * 1024

#: How often the pool asks workers for their RSS (to recycle leaky ones).
STATS_INTERVAL_S = 10.0


class WorkerStartError(RuntimeError):
    """Worker processes could not be started (the executor falls back to threads)."""


class WorkerLost(Exception):
    """The worker running this job died or was killed for another run's sake."""

    def __init__(self, reason: str, *, crashed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True if the worker crashed by itself (this run may be the cause).
        self.crashed = crashed


@dataclass
class _Assignment:
    job: Job
    sink: EventSink
    future: asyncio.Future[Outcome]
    deadline: float
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    writer: asyncio.StreamWriter
    reader_stream: asyncio.StreamReader
    runs: dict[str, _Assignment] = field(default_factory=dict)
    ready: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    completed: int = 0
    retiring: bool = False
    killed_for: str | None = None
    exited: bool = False
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(to_json(message) + b"\n")

    def kill(self) -> None:
        if not self.exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class ProcessPool:
    """Keeps ``size`` warm worker processes and runs jobs on them."""

    isolation = "process"

    def __init__(
        self,
        *,
        size: int,
        slots_per_worker: int,
        kill_grace_s: float,
        recycle_after_runs: int,
        recycle_rss_mb: int,
        start_timeout_s: float,
        frameworks: list[str] | None = None,
        env: dict[str, str] | None = None,
        on_worker_replaced: Callable[[str], None] | None = None,
    ) -> None:
        self._size = size
        self._slots_per_worker = slots_per_worker
        self._kill_grace_s = kill_grace_s
        self._recycle_after_runs = recycle_after_runs
        self._recycle_rss_mb = recycle_rss_mb
        self._start_timeout_s = start_timeout_s
        self._env = env
        #: Told why each worker is replaced: ``crashed``, ``deadline`` (killed) or ``recycled``.
        self._on_worker_replaced = on_worker_replaced or (lambda reason: None)
        self._workers: list[_Worker] = []
        self._numbers = itertools.count(1)
        self._closing = False
        self._stats_task: asyncio.Task[None] | None = None
        self._capacity = asyncio.Condition()
        self._context: Any = None
        self._enabled = tuple(frameworks) if frameworks else None
        self.frameworks: list[str] = []
        self.framework_versions: dict[str, str] = {}
        #: Frameworks installed here that failed the start-up self-check, and why.
        self.framework_failures: dict[str, str] = {}
        self.tools: list[str] = []
        self.tool_modules: list[str] = []
        self.unavailable_tools: dict[str, str] = {}
        self.tool_warnings: list[str] = []
        self.crashes = 0

    @property
    def slots(self) -> int:
        return self._size * self._slots_per_worker

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if not w.exited]

    async def start(self) -> None:
        try:
            self._context = multiprocessing.get_context("forkserver")
            self._context.set_forkserver_preload(PRELOAD)
            # The first worker checks every framework; the others offer what passed.
            first = await self._spawn(WorkerOptions(frameworks=self._enabled, self_check=True))
            info = first.ready.result()
            self.frameworks, self.tools = info["frameworks"], info["tools"]
            self.framework_versions = info["framework_versions"]
            self.framework_failures = info["framework_failures"]
            self.tool_modules, self.unavailable_tools = info["tool_modules"], info["unavailable_tools"]
            self.tool_warnings = info["warnings"]
            await asyncio.gather(*(self._spawn(self._options()) for _ in range(self._size - 1)))
        except Exception as exc:
            await self.close(grace_s=0)
            raise WorkerStartError(f"worker processes could not start: {exc}") from exc
        self._stats_task = asyncio.create_task(self._poll_stats())

    async def run(self, job: Job, sink: EventSink) -> Outcome:
        """Run ``job`` on a worker; raises :class:`WorkerLost` if that worker goes away."""
        worker = await self._pick()
        loop = asyncio.get_running_loop()
        assignment = _Assignment(
            job=job, sink=sink, future=loop.create_future(), deadline=loop.time() + job.timeout_s
        )
        assignment.timer = loop.call_at(
            assignment.deadline + self._kill_grace_s, self._overrun, worker, job.run_id
        )
        worker.runs[job.run_id] = assignment
        worker.send({"op": "run", "job": job.model_dump(mode="json") | _secrets(job)})
        try:
            return await assignment.future
        except asyncio.CancelledError:
            # Handed back to the queue (a drain ran out of time): another executor will run
            # it, so stop it here now rather than let it call models and tools until its
            # worker is killed. Its events and outcome are no longer ours to forward.
            if worker.runs.pop(job.run_id, None) is not None and not worker.exited:
                with contextlib.suppress(Exception):
                    worker.send({"op": "cancel", "run_id": job.run_id, "reason": "handed back to the queue"})
            raise
        finally:
            assignment.timer.cancel()

    def cancel(self, run_id: str, reason: str) -> bool:
        for worker in self._workers:
            if run_id in worker.runs:
                worker.send({"op": "cancel", "run_id": run_id, "reason": reason})
                return True
        return False

    async def close(self, *, grace_s: float) -> None:
        """Stop every worker: let them finish for ``grace_s``, then kill."""
        self._closing = True
        if self._stats_task:
            self._stats_task.cancel()
        for worker in self._workers:
            with contextlib.suppress(Exception):
                worker.send({"op": "stop"})
        await asyncio.gather(*(self._reap(w, grace_s) for w in self._workers), return_exceptions=True)

    # -- internals ---------------------------------------------------------------------

    def _options(self) -> WorkerOptions:
        return WorkerOptions(
            frameworks=self._enabled, failures=tuple(self.framework_failures.items())
        )

    async def _spawn(self, options: WorkerOptions) -> _Worker:
        parent_end, child_end = socket.socketpair()
        process = self._context.Process(
            target=run_worker, args=(child_end, options), name="flowrelay-worker", daemon=False
        )
        try:
            # The first start launches the fork server, which imports the engine: seconds,
            # so off the event loop. Later starts are a fork of that warm process.
            await asyncio.to_thread(process.start)
        finally:
            child_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_end, limit=MAX_LINE_BYTES)
        worker = _Worker(number=next(self._numbers), process=process, writer=writer, reader_stream=reader)
        self._workers.append(worker)
        worker.reader = asyncio.create_task(self._read(worker), name=f"worker-{worker.number}-reader")
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self._start_timeout_s)
        except BaseException:
            worker.kill()
            raise
        log.info("worker %d ready (pid %d)", worker.number, worker.pid)
        return worker

    async def _pick(self) -> _Worker:
        async with self._capacity:
            while True:
                live = [
                    w
                    for w in self._workers
                    if not w.retiring and w.killed_for is None and not w.exited and w.ready.done()
                ]
                if live:
                    best = min(live, key=lambda w: len(w.runs))
                    if len(best.runs) < self._slots_per_worker:
                        return best
                await self._capacity.wait()

    async def _read(self, worker: _Worker) -> None:
        try:
            while line := await worker.reader_stream.readline():
                self._dispatch(worker, from_json(line))
        except Exception:  # a broken socket or bad line ends this worker like a crash
            log.exception("worker %d: protocol error", worker.number)
            worker.kill()
        worker.writer.close()
        # EOF: the worker closed its end, which it does only by exiting. Collect its status.
        await asyncio.to_thread(worker.process.join, 10)
        if worker.process.exitcode is None:
            worker.kill()
            await asyncio.to_thread(worker.process.join)
        worker.exited = True
        await self._on_exit(worker)

    def _dispatch(self, worker: _Worker, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "event":
            assignment = worker.runs.get(message["run_id"])
            if assignment is not None:
                assignment.sink(message["type"], message["data"], message["at"])
        elif op == "done":
            assignment = worker.runs.pop(message["run_id"], None)
            worker.completed += 1
            if assignment is not None and not assignment.future.done():
                assignment.future.set_result(Outcome.model_validate(message["outcome"]))
            if worker.completed >= self._recycle_after_runs:
                self._retire(worker, f"served {worker.completed} runs")
            self._notify_capacity()
        elif op == "ready":
            if not worker.ready.done():
                worker.ready.set_result(message)
        elif op == "stats":
            if message["rss_mb"] > self._recycle_rss_mb:
                self._retire(worker, f"RSS {message['rss_mb']:.0f} MB above {self._recycle_rss_mb} MB")

    def _overrun(self, worker: _Worker, run_id: str) -> None:
        """A run outlived deadline + grace: its worker's loop is stuck, so kill the worker."""
        assignment = worker.runs.pop(run_id, None)
        if assignment is None or worker.exited:
            return
        log.warning(
            "run %s ignored its deadline by %.1f s; killing worker %d (pid %d)",
            run_id, self._kill_grace_s, worker.number, worker.pid,
        )
        worker.killed_for = run_id
        if not assignment.future.done():
            assignment.future.set_result(
                timed_out(
                    assignment.job,
                    "and did not stop when cancelled (a blocking or CPU-bound tool?): its worker "
                    "process was killed",
                )
            )
        worker.kill()

    def _retire(self, worker: _Worker, why: str) -> None:
        if worker.retiring or self._closing:
            return
        log.info("recycling worker %d (pid %d): %s", worker.number, worker.pid, why)
        self._on_worker_replaced("recycled")
        worker.retiring = True
        with contextlib.suppress(Exception):
            worker.send({"op": "stop"})  # it finishes its runs, then exits
        asyncio.get_running_loop().create_task(self._replace())

    async def _on_exit(self, worker: _Worker) -> None:
        code = worker.process.exitcode
        orphans = list(worker.runs.values())
        worker.runs.clear()
        if worker in self._workers:
            self._workers.remove(worker)
        if not worker.ready.done():
            worker.ready.set_exception(WorkerStartError(f"worker exited with {code} before it was ready"))
        if orphans or (not worker.retiring and not self._closing):
            if self._closing:  # stopped by close(): its runs were handed back already
                reason, crashed = "the executor stopped its worker", False
            elif worker.killed_for:
                reason = f"its worker was killed because run {worker.killed_for} overran its deadline"
                crashed = False
            else:
                self.crashes += 1
                reason = f"its worker process (pid {worker.pid}) died unexpectedly (exit code {code})"
                crashed = True
                log.error("worker %d (pid %d) died with exit code %s", worker.number, worker.pid, code)
            for assignment in orphans:
                if not assignment.future.done():
                    assignment.future.set_exception(WorkerLost(reason, crashed=crashed))
        if not self._closing and not worker.retiring:
            self._on_worker_replaced("deadline" if worker.killed_for else "crashed")
            await self._replace()
        self._notify_capacity()

    async def _replace(self) -> None:
        if self._closing:
            return
        try:
            await self._spawn(self._options())
        except Exception:
            log.exception("could not start a replacement worker")
        self._notify_capacity()

    def _notify_capacity(self) -> None:
        async def notify() -> None:
            async with self._capacity:
                self._capacity.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _poll_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            for worker in list(self._workers):
                if not worker.exited and not worker.retiring:
                    with contextlib.suppress(Exception):
                        worker.send({"op": "stats"})

    async def _reap(self, worker: _Worker, grace_s: float) -> None:
        """Give ``worker`` ``grace_s`` to exit, then kill it; return once it is collected.

        Its reader ends when the worker exits (EOF) after joining the process. A worker left
        running would keep the executor from exiting: multiprocessing joins non-daemon
        children at interpreter exit, so one busy with a long run held it until that run ended.
        """
        if worker.reader is None:
            worker.kill()
            return
        with contextlib.suppress(Exception):  # a timeout, or a failed reader: kill it then
            await asyncio.wait_for(asyncio.shield(worker.reader), grace_s)
            return
        if grace_s > 0:
            log.warning("worker %d (pid %d) did not stop within %.0f s; killing it", worker.number, worker.pid, grace_s)
        worker.kill()
        with contextlib.suppress(Exception):
            await worker.reader


def _secrets(job: Job) -> dict[str, Any]:
    """Pydantic hides SecretStr when dumping; the worker needs the value itself."""
    key = job.defaults.api_key
    if key is None:
        return {}
    defaults = job.defaults.model_dump(mode="json") | {"api_key": key.get_secret_value()}
    return {"defaults": defaults}

