"""Threads: conversations whose runs remember the earlier turns.

A thread is a :class:`ThreadRecord` in ``THREADS_BUCKET`` (who it belongs to, its runs, the
run in progress) and one :class:`ThreadTurn` per succeeded run on
``flowrelay.threads.<tenant>.<thread_id>`` in ``THREADS_STREAM``: the user's message and
what the answering agent said, as OpenAI chat messages (tool calls next to their results,
provider fields such as reasoning kept as the provider sent them).

Concurrency on one thread is **reject**: while a run of the thread is queued, running or
waiting for a human, another run on it is refused (HTTP 409 ``thread_busy``; an executor
fails a NATS-submitted one with ``invalid_request``). Turns therefore never interleave, and
every run sees every turn that ended before it was accepted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from flowrelay_contracts.messages import RunStatus, TenantId, Usage, _Message, utcnow
from flowrelay_contracts.tenants import DEFAULT_TENANT

#: What a thread id looks like (a NATS subject token and a KV key token).
THREAD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"

#: How the answering agent received the earlier turns.
HistoryForm = Literal["messages", "text"]


class TurnRef(BaseModel):
    """Where a run's turn is stored: its ``THREADS_STREAM`` sequence and its size."""

    seq: int
    bytes: int
    attempt: int = 1


class ThreadRun(BaseModel):
    """One run of a thread, in the order they were accepted.

    The executor fills in ``status``, ``usage``, ``cost_usd`` and ``turn`` when the run ends
    (before the run's record turns terminal); a run ended elsewhere (cancelled while queued)
    has them unset here and its record says how it ended.
    """

    run_id: str
    created_at: datetime = Field(default_factory=utcnow)
    status: RunStatus | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    turn: TurnRef | None = None


class ThreadRecord(_Message):
    """A thread, stored in ``THREADS_BUCKET`` under ``<tenant>.<thread_id>``.

    ``active_run`` is the run that last claimed the thread; it blocks new runs only while
    that run's own record says it has not ended, so a claim left behind by a crash never
    locks a thread.
    """

    thread_id: str = Field(pattern=THREAD_ID_PATTERN)
    tenant: TenantId = DEFAULT_TENANT
    title: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)
    runs: list[ThreadRun] = Field(default_factory=list)
    active_run: str | None = None
    active_since: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ThreadTurn(_Message):
    """What one succeeded run added to its thread (``THREADS_STREAM``).

    ``messages`` start with the user's message. With ``form == "messages"`` they are the
    answering agent's real conversation (tool calls and results included); otherwise the
    user's message and the run's answer as text. ``compacted`` says the turn was too large
    for ``FLOWRELAY_THREAD_HISTORY_MAX_BYTES`` and only its user message and a shortened
    answer were kept. A redelivered run may write its turn again (a later ``attempt``);
    readers keep the latest attempt of each run.
    """

    thread_id: str
    tenant: TenantId = DEFAULT_TENANT
    run_id: str
    attempt: int = 1
    messages: list[dict[str, Any]]
    form: HistoryForm = "messages"
    compacted: bool = False
    usage: Usage = Field(default_factory=Usage)
    at: datetime = Field(default_factory=utcnow)
