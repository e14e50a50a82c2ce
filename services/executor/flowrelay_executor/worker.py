"""A warm worker process: any-agent imported once, many runs at once on its own loop.

Workers are forked from a fork server that imported the engine (and so any-agent) once
(``multiprocessing`` "forkserver" with a preload): a new or replacement worker is ready in
milliseconds instead of paying the multi-second import, and workers share those pages.

The executor talks to a worker over a socket pair, one JSON document per line:

* executor -> worker: ``{"op": "run", "job": {...}}``, ``{"op": "cancel", "run_id", "reason"}``,
  ``{"op": "stats"}``, ``{"op": "stop"}`` (finish what runs, then exit).
* worker -> executor: ``{"op": "ready", "pid", "frameworks", "framework_versions",
  "framework_failures", "tools", "tool_modules", "unavailable_tools", "warnings"}`` once warm
  (and, for the worker told to, self-checked),
  ``{"op": "event", "run_id", "type", "data", "at"}`` as steps happen,
  ``{"op": "done", "run_id", "outcome"}``, ``{"op": "stats", "rss_mb", "completed", "active"}``.

Nothing is shared with the executor or the web server but this socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json, to_json

from flowrelay_executor.jobs import Job

log = logging.getLogger("flowrelay.worker")

#: Largest protocol line accepted from the executor (a job carries its workflow).
MAX_LINE_BYTES = 16 * 1024 * 1024

#: Libraries that log every HTTP request at INFO.
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")

#: What the fork server imports once, before forking any worker: the engine, any-agent and
#: the frameworks this executor may offer.
PRELOAD = ["flowrelay_executor.engine.preload"]

#: Time one framework's start-up self-check may take (the first run imports and builds).
SELF_CHECK_TIMEOUT_S = 60.0


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


class Outbox:
    """The worker's lines to the executor, safe to send from any thread.

    Lines sent in one loop tick (a run's steps come in bursts) go out in one write: one
    syscall instead of one per event, in order. Some frameworks run their agent in a thread
    of their own (smolagents, see ``engine.frameworks.smolagents``) and report its steps from
    there; the transport and the buffer belong to the loop, so such a line is encoded in its
    thread and handed to the loop (``call_soon_threadsafe`` keeps each thread's order). A
    plain append from the other thread raced the flush: lines were lost (a run's
    ``llm.started`` went missing) or left unsent until the loop woke for something else.
    """

    def __init__(self, writer: asyncio.StreamWriter, *, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._pending: list[bytes] = []

    def send(self, message: dict[str, Any]) -> None:
        line = to_json(message, fallback=str) + b"\n"
        if threading.get_ident() == self._loop_thread:
            self._queue(line)
        else:
            self._loop.call_soon_threadsafe(self._queue, line)

    def flush(self) -> None:
        if self._pending and not self._writer.is_closing():
            self._writer.write(b"".join(self._pending))
        self._pending.clear()

    def _queue(self, line: bytes) -> None:
        if self._writer.is_closing():  # the executor is gone: nobody to report to
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(line)


async def _serve(channel: socket.socket, options: WorkerOptions) -> None:
    from flowrelay_executor.engine import Engine, ToolRegistry
    from flowrelay_executor.runner import JobRunner

    reader, writer = await asyncio.open_unix_connection(sock=channel, limit=MAX_LINE_BYTES)
    outbox = Outbox(writer, loop=asyncio.get_running_loop())
    completed = 0

    def send(message: dict[str, Any]) -> None:
        nonlocal completed
        if message["op"] == "done":
            completed += 1
        outbox.send(message)

    tools = ToolRegistry.from_environment()
    engine = Engine(tools=tools, frameworks=options.frameworks)
    engine.refuse(dict(options.failures))
    failures = await engine.self_check(timeout_s=SELF_CHECK_TIMEOUT_S) if options.self_check else {}
    runner = JobRunner(engine, send)
    send({
        "op": "ready", "pid": os.getpid(), "frameworks": engine.frameworks,
        "framework_versions": engine.framework_versions, "framework_failures": failures,
        "tools": tools.names(),
        "tool_modules": tools.modules, "unavailable_tools": tools.unavailable(), "warnings": tools.warnings,
    })

    while line := await reader.readline():  # EOF: the executor is gone, nobody to report to
        message = from_json(line)
        op = message["op"]
        if op == "run":
            runner.start(Job.model_validate(message["job"]))
        elif op == "cancel":
            runner.cancel(message["run_id"], message.get("reason", "cancelled"))
        elif op == "stats":
            send({"op": "stats", "rss_mb": _rss_mb(), "completed": completed, "active": runner.active})
        elif op == "stop":
            await runner.wait_idle()
            break
    else:
        # EOF: the executor died (SIGKILL, OOM). Its runs are redelivered elsewhere; end them
        # here rather than leave them to asyncio's shutdown, with nowhere to report to.
        writer.close()
        runner.cancel_all("the executor is gone")
        await runner.wait_idle()
        return
    outbox.flush()
    await writer.drain()
    writer.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent (the fork server) dies."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:  # not Linux: the closed socket still ends the worker
        pass


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What the supervisor tells a new worker (pickled to the fork server).

    ``frameworks``: the ones to offer (None: every installed one). ``self_check``: run the
    start-up self-check before reporting ready (the pool's first worker does; the others
    are told the frameworks that passed).
    """

    frameworks: tuple[str, ...] | None = None
    self_check: bool = False
    #: Frameworks that failed the first worker's self-check, and why.
    failures: tuple[tuple[str, str], ...] = ()


def run_worker(channel: socket.socket, options: WorkerOptions | None = None) -> None:
    """Entry point of a forked worker process."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the executor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout = sys.stderr  # a tool that prints must not end up anywhere surprising
    logging.basicConfig(
        level=os.environ.get("FLOWRELAY_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for chatty in NOISY_LOGGERS:  # one INFO line per model call costs CPU on the hot path
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # plain asyncio is fine, only slower
        loop_factory = None
    from flowrelay_executor import tracing

    tracing.configure_export()  # here, after the fork: exporter threads do not survive one
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(channel, options or WorkerOptions()))
    finally:
        tracing.flush()
