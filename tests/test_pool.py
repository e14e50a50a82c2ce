"""The worker pool in-process: real worker processes (forked from the fork server) running
real any-agent against the scripted model; the supervisor side is driven directly.

What is checked here is the pool's own promise when it stops: workers get ``grace_s`` to
finish, and a worker that does not stop by then is killed, not left behind.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from flowrelay_contracts import Workflow
from flowrelay_executor.jobs import Job, ModelDefaults
from flowrelay_executor.pool import ProcessPool, WorkerLost

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def pool(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ProcessPool]:
    # Workers read their tools from the environment they are forked with.
    monkeypatch.setenv("FLOWRELAY_TOOL_MODULES", "flowrelay_test_tools")
    pool = ProcessPool(
        size=1, slots_per_worker=4, kill_grace_s=60, recycle_after_runs=1000, recycle_rss_mb=100_000,
        start_timeout_s=120, frameworks=["tinyagent"],
    )
    await pool.start()
    yield pool
    await pool.close(grace_s=0)


def _job(scripted_model: str, text: str) -> Job:
    workflow = Workflow.model_validate({"agents": [{"name": "a", "tools": ["block", "add"]}]})
    return Job(
        run_id=f"pool-{os.urandom(4).hex()}", workflow=workflow, input=text, timeout_s=300, max_turns=5,
        defaults=ModelDefaults(model_id="scripted:gpt-4o-mini", scripted_url=scripted_model),
    )


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_close_kills_a_worker_that_does_not_stop_within_the_grace_period(
    pool: ProcessPool, scripted_model: str
) -> None:
    (pid,) = pool.pids
    blocked = asyncio.Event()

    def sink(type_: str, data: dict[str, Any], at: float) -> None:
        if type_ == "tool.started":
            blocked.set()

    run = asyncio.create_task(pool.run(_job(scripted_model, '#call=block {"seconds": 600}'), sink))
    await asyncio.wait_for(blocked.wait(), 60)  # the worker's loop is now stuck in the tool

    await asyncio.wait_for(pool.close(grace_s=0.5), 60)
    assert _gone(pid), "close() returned while the stuck worker was still alive"
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(run, 10)


async def test_close_lets_an_idle_worker_exit_by_itself(pool: ProcessPool, scripted_model: str) -> None:
    outcome = await pool.run(_job(scripted_model, '#call=add {"a": 2, "b": 3}'), lambda *_: None)
    assert outcome.status == "succeeded" and outcome.output == "5"
    workers = list(pool._workers)
    await asyncio.wait_for(pool.close(grace_s=30), 60)
    assert [w.process.exitcode for w in workers] == [0], "an idle worker stops cleanly, it is not killed"
