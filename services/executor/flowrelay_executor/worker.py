"""A warm worker process: any-agent imported once, many runs at once on its own loop.

The executor starts ``python -m flowrelay_executor.worker`` and talks to it over its
stdin/stdout with one JSON document per line:

* executor -> worker: ``{"op": "run", "job": {...}}``, ``{"op": "cancel", "run_id", "reason"}``,
  ``{"op": "stop"}`` (finish what runs, then exit).
* worker -> executor: ``{"op": "ready", "pid", "frameworks", "tools"}`` once warm,
  ``{"op": "event", "run_id", "type", "data"}`` as steps happen,
  ``{"op": "done", "run_id", "outcome"}``, ``{"op": "stats", "rss_mb", "completed"}``.

Nothing is shared with the executor or the web server but this pipe. The protocol channel
is a private copy of stdout; fd 1 is pointed at stderr so a tool that prints cannot corrupt it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, BinaryIO

from flowrelay_executor.jobs import Job

log = logging.getLogger("flowrelay.worker")

#: Largest protocol line accepted from the executor (a job carries its workflow).
MAX_LINE_BYTES = 16 * 1024 * 1024


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


async def _serve(channel: BinaryIO) -> None:
    from flowrelay_executor.engine import Engine, ToolRegistry, available_frameworks
    from flowrelay_executor.runner import JobRunner

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)

    completed = 0

    def send(message: dict[str, Any]) -> None:
        nonlocal completed
        if message["op"] == "done":
            completed += 1
        # One write per message: the pipe is local, lines are small, and ordering is kept.
        channel.write(json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n")

    tools = ToolRegistry.from_environment()
    runner = JobRunner(Engine(tools=tools), send)
    send({"op": "ready", "pid": os.getpid(), "frameworks": available_frameworks(), "tools": tools.names()})

    while True:
        line = await reader.readline()
        if not line:  # the executor is gone: nobody to report to
            break
        message = json.loads(line)
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


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its executor dies, however it dies."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:  # not Linux: the closed stdin still ends the worker
        pass


def main() -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the executor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("FLOWRELAY_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # plain asyncio is fine, only slower
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(channel))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
