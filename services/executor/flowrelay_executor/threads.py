"""The thread fallback: agents on one dedicated thread with its own event loop.

This is the original design's second layer, for hosts where worker processes cannot be
started. The web server's loop is still never touched, but isolation is weaker than with
processes: a thread cannot be killed, so a tool that blocks past its deadline gets its run
failed as ``timeout`` while the thread stays busy until the tool returns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from flowrelay_executor.jobs import Job, Outcome, timed_out
from flowrelay_executor.pool import EventSink

log = logging.getLogger(__name__)


class ThreadPool:
    """Runs jobs on a private event loop in one thread; same interface as ``ProcessPool``."""

    isolation = "thread"

    def __init__(self, *, slots: int, kill_grace_s: float, frameworks: list[str] | None = None) -> None:
        self.slots = slots
        self._enabled = frameworks or None
        self._kill_grace_s = kill_grace_s
        self._sinks: dict[str, tuple[EventSink, asyncio.Future[Outcome]]] = {}
        self._capacity = asyncio.Semaphore(slots)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._main: asyncio.AbstractEventLoop | None = None
        self.frameworks: list[str] = []
        self.framework_versions: dict[str, str] = {}
        self.framework_failures: dict[str, str] = {}
        self.tools: list[str] = []
        self.tool_modules: list[str] = []
        self.unavailable_tools: dict[str, str] = {}
        self.tool_warnings: list[str] = []
        self.pids: list[int] = []
        self.crashes = 0

    async def start(self) -> None:
        self._main = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._main.create_future()
        thread = threading.Thread(target=self._thread_main, args=(ready,), name="flowrelay-agents", daemon=True)
        thread.start()
        await ready

    async def run(self, job: Job, sink: EventSink) -> Outcome:
        assert self._main is not None and self._loop is not None
        async with self._capacity:
            future: asyncio.Future[Outcome] = self._main.create_future()
            self._sinks[job.run_id] = (sink, future)
            self._loop.call_soon_threadsafe(self._runner.start, job)
            timer = self._main.call_later(job.timeout_s + self._kill_grace_s, self._overrun, job)
            try:
                return await future
            except asyncio.CancelledError:  # handed back to the queue: stop it here (see pool.py)
                self._loop.call_soon_threadsafe(self._runner.cancel, job.run_id, "handed back to the queue")
                raise
            finally:
                timer.cancel()
                self._sinks.pop(job.run_id, None)

    def cancel(self, run_id: str, reason: str) -> bool:
        if run_id not in self._sinks or self._loop is None:
            return False
        self._loop.call_soon_threadsafe(self._runner.cancel, run_id, reason)
        return True

    async def close(self, *, grace_s: float) -> None:
        if self._loop is None:
            return
        done = asyncio.run_coroutine_threadsafe(self._runner.wait_idle(), self._loop)
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), grace_s)
        except TimeoutError:
            log.warning("thread runs still busy after %.0f s; leaving them", grace_s)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- internals ---------------------------------------------------------------------

    def _thread_main(self, ready: asyncio.Future[None]) -> None:
        from flowrelay_executor import tracing
        from flowrelay_executor.engine import Engine, ToolRegistry
        from flowrelay_executor.runner import JobRunner
        from flowrelay_executor.worker import SELF_CHECK_TIMEOUT_S

        assert self._main is not None
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            tracing.configure_export()
            tools = ToolRegistry.from_environment()
            engine = Engine(tools=tools, frameworks=self._enabled)
            self.framework_failures = loop.run_until_complete(engine.self_check(timeout_s=SELF_CHECK_TIMEOUT_S))
            self._runner = JobRunner(engine, self._send)
            self.frameworks, self.tools = engine.frameworks, tools.names()
            self.framework_versions = engine.framework_versions
            self.tool_modules, self.unavailable_tools = tools.modules, tools.unavailable()
            self.tool_warnings = tools.warnings
        except Exception as exc:
            self._main.call_soon_threadsafe(ready.set_exception, exc)
            return
        self._loop = loop
        self._main.call_soon_threadsafe(ready.set_result, None)
        loop.run_forever()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._main is not None
        self._main.call_soon_threadsafe(self._dispatch, message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        entry = self._sinks.get(message["run_id"])
        if entry is None:
            return
        sink, future = entry
        if message["op"] == "event":
            sink(message["type"], message["data"], message["at"])
        elif message["op"] == "done" and not future.done():
            future.set_result(Outcome.model_validate(message["outcome"]))

    def _overrun(self, job: Job) -> None:
        entry = self._sinks.get(job.run_id)
        if entry is None or entry[1].done():
            return
        log.warning("run %s ignored its deadline; the agent thread may stay busy (thread isolation)", job.run_id)
        entry[1].set_result(
            timed_out(
                job, "and did not stop when cancelled; with thread isolation its thread could not be killed"
            )
        )
