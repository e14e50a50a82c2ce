"""The peer a user would pick instead of flowrelay: Celery (prefork pool, Redis broker and
result backend) with one any-agent call per task, against the same scripted model.

Each prefork child creates its tinyagent agent once, on its own event loop (uvloop), and
reuses it for every task, as a careful Celery user would (an agent per task costs 20-25 ms
more: the peer is measured at its best). Configured from the environment by
``bench/celery_peer.py``: ``BENCH_CELERY_REDIS`` (redis URL) and ``BENCH_MODEL_URL``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

_REDIS = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379")

app = Celery("flowrelay_bench_peer", broker=f"{_REDIS}/0", backend=f"{_REDIS}/1")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

if os.environ.get("BENCH_MODEL_URL"):  # the worker: import once, before the children are forked
    import any_agent  # noqa: F401

_loop: asyncio.AbstractEventLoop | None = None
_agent: Any = None


@worker_process_init.connect
def _make_agent(**_: Any) -> None:
    """One agent per prefork child, created after the fork on the child's own loop."""
    global _loop, _agent
    from any_agent import AgentConfig, AnyAgent

    try:
        import uvloop

        _loop = uvloop.new_event_loop()
    except ImportError:
        _loop = asyncio.new_event_loop()
    config = AgentConfig(
        model_id="openai:gpt-4o-mini",
        api_base=os.environ["BENCH_MODEL_URL"],
        api_key="scripted",
        callbacks=[],
    )
    _agent = _loop.run_until_complete(AnyAgent.create_async("tinyagent", config))


@app.task(name="bench.run_agent")
def run_agent(text: str) -> str:
    """One agent run; its final output is the task's result."""
    assert _loop is not None and _agent is not None, "worker_process_init did not run"
    trace = _loop.run_until_complete(_agent.run_async(text))
    return str(trace.final_output)
