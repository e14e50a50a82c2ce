"""Tools for tests: each one exercises one way a tool can behave or misbehave.

Executors load them with ``FLOWRELAY_TOOL_MODULES=flowrelay_test_tools`` and ``tests/support``
on ``PYTHONPATH``. The scripted model calls them with ``#call=<tool> <json args>``.
"""

from __future__ import annotations

import os
import time

__all__ = [
    "add",
    "block",
    "crash_worker",
    "crash_worker_once",
    "explode",
    "lookup_secret_echo",
    "needs_key",
    "sleep_async",
    "spin",
    "worker_pid",
]

#: Variable ``needs_key`` reads; tests leave it unset.
TEST_TOOL_KEY_ENV = "FLOWRELAY_TEST_TOOL_KEY"

#: Exit status of a worker killed by ``crash_worker``, so tests can recognise it.
CRASH_EXIT_STATUS = 13


def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


def lookup_secret_echo(text: str) -> str:
    """Return ``text`` unchanged (tests pass a secret through it to check redaction)."""
    return text


def block(seconds: float) -> str:
    """Block the calling thread (and so the worker's event loop) for ``seconds``.

    Deliberately ``time.sleep``: a deadline cannot cancel it cooperatively, so the
    supervisor has to kill the worker.
    """
    time.sleep(float(seconds))
    return f"blocked {seconds} s"


def spin(seconds: float) -> str:
    """Keep a CPU busy for ``seconds`` without ever yielding to the event loop."""
    deadline = time.monotonic() + float(seconds)
    count = 0
    while time.monotonic() < deadline:
        count += 1
    return f"spun {count} times"


async def sleep_async(seconds: float) -> str:
    """Wait ``seconds`` cooperatively (a slow tool that a cancellation can stop)."""
    import asyncio

    await asyncio.sleep(float(seconds))
    return f"slept {seconds} s"


def explode(reason: str) -> str:
    """Always raise ``RuntimeError(reason)``."""
    raise RuntimeError(f"exploded: {reason}")


def crash_worker() -> str:
    """Kill the whole process at once, as a segfaulting native extension would."""
    os._exit(CRASH_EXIT_STATUS)


def crash_worker_once(marker: str) -> str:
    """Crash the worker the first time (leaving the file ``marker``), succeed afterwards:
    a run that a fresh worker can finish."""
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return "survived"
    os._exit(CRASH_EXIT_STATUS)


def worker_pid() -> str:
    """The process id of the worker running the call (which worker ran a run)."""
    return str(os.getpid())


def needs_key() -> str:
    """Fail the way a tool without its API key does: read an unset variable."""
    key = os.environ[TEST_TOOL_KEY_ENV]
    return f"key has {len(key)} characters"
