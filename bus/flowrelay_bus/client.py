"""A client for backends that talk to flowrelay over NATS alone (no HTTP API in between).

    async with await FlowrelayClient.connect(
        "nats://127.0.0.1:4222", tenant="acme", user="tenant-acme", password="...",
    ) as client:
        run_id = await client.submit(workflow, "ping")
        async for event in client.events(run_id):
            print(event.seq, event.type, event.data)
        record = await client.result(run_id)

It acts for one tenant, with that tenant's NATS user (``flowrelay nats-user --tenant T
--submit`` prints one): it publishes ``RunRequested`` on ``flowrelay.runs.requested.<tenant>``
(de-duplicated by run id; the executor that takes it creates the run record), replays and
follows events through consumers confined to the tenant's subjects, and reads records with
direct gets of the tenant's own keys. Nothing here needs more than those permissions.

Conversations, token streaming and questions (the same as over HTTP)::

    thread_id = await client.create_thread(title="support")
    run_id = await client.submit(workflow, "hi", thread_id=thread_id, options={"stream_tokens": True})
    async for text in client.text(run_id):             # llm.delta fragments as they are written
        print(text, end="", flush=True)
    turns = await client.turns(thread_id)               # the thread's stored turns, oldest first
    reply = await client.answer(run_id, "yes")          # a run waiting on ask_human continues
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from flowrelay_bus.cancel import broadcast_cancel
from flowrelay_bus.events import follow, replay
from flowrelay_contracts import (
    EventType,
    HumanInput,
    RunOptions,
    RunRecord,
    RunRequested,
    TraceEvent,
    Workflow,
    plan,
    subjects,
)
from flowrelay_contracts.ids import new_run_id
from flowrelay_contracts.tenants import DEFAULT_TENANT, check_tenant
from flowrelay_contracts.threads import ThreadRecord, ThreadTurn


class FlowrelayClient:
    """Submit runs, follow their events and read their results over NATS, for one tenant."""

    def __init__(self, nc: Client, *, tenant: str = DEFAULT_TENANT, owns_connection: bool = False) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.tenant = check_tenant(tenant)
        self._owns_connection = owns_connection

    @classmethod
    async def connect(
        cls, servers: str | list[str] = "nats://127.0.0.1:4222", *, tenant: str = DEFAULT_TENANT, **options: Any
    ) -> FlowrelayClient:
        """Connect as the tenant's NATS user (``user=``/``password=``, ``tls=`` ...)."""
        options.setdefault("max_reconnect_attempts", -1)
        # A tenant's user may read replies only under its own inbox prefix.
        options.setdefault("inbox_prefix", subjects.tenant_inbox_prefix(check_tenant(tenant)).encode())
        nc = await nats.connect(servers, **options)
        return cls(nc, tenant=tenant, owns_connection=True)

    async def submit(
        self,
        workflow: Workflow | Mapping[str, Any],
        input: str,
        *,
        options: RunOptions | Mapping[str, Any] | None = None,
        run_id: str | None = None,
        thread_id: str | None = None,
    ) -> str:
        """Queue a run and return its id. Raises ``WorkflowError`` for an invalid graph.

        ``thread_id``: continue that thread (the executor refuses the run, ``invalid_request``,
        while another run of the thread has not ended).
        """
        graph = workflow if isinstance(workflow, Workflow) else Workflow.model_validate(workflow)
        plan(graph)
        run_options = options if isinstance(options, RunOptions) else RunOptions.model_validate(options or {})
        run_id = run_id or new_run_id()
        request = RunRequested(run_id=run_id, tenant=self.tenant, workflow=graph, input=input, options=run_options,
                               thread_id=thread_id)
        await self._js.publish(
            subjects.run_requested(self.tenant),
            request.__pydantic_serializer__.to_json(request),
            headers={subjects.MSG_ID_HEADER: run_id},
        )
        return run_id

    async def events(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[TraceEvent]:
        """The run's events from ``after_seq`` on, live, ending with the terminal event."""
        async for event in follow(self._nc, self.tenant, run_id, after_seq=after_seq, history="consumer"):
            if event is not None:
                yield event

    async def get(self, run_id: str) -> RunRecord | None:
        """The run's record now (None until an executor has taken a NATS-submitted run)."""
        try:
            raw = await self._js.get_last_msg(
                f"KV_{subjects.RUNS_BUCKET}", subjects.run_record_subject(self.tenant, run_id), direct=True
            )
        except NotFoundError:
            return None
        return RunRecord.model_validate_json(raw.data) if raw.data else None

    async def result(self, run_id: str) -> RunRecord:
        """Wait until the run has ended and return its record.

        The record turns terminal before the terminal event is published, so once that
        event is seen the record has the outcome.
        """
        async for event in self.events(run_id):
            if event.type.terminal:
                break
        record = await self.get(run_id)
        if record is None:
            raise LookupError(f"run {run_id} not found")
        return record

    async def text(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[str]:
        """The run's streamed text (``llm.delta`` of runs with ``options.stream_tokens``), as it
        is written, ending with the run."""
        async for event in self.events(run_id, after_seq=after_seq):
            if event.type == EventType.LLM_DELTA:
                yield event.data["text"]

    # -- threads ----------------------------------------------------------------------------

    async def create_thread(self, *, title: str = "", metadata: Mapping[str, str] | None = None) -> str:
        """Start a thread (like ``POST /threads``) and return its id."""
        record = ThreadRecord(thread_id=new_run_id(), tenant=self.tenant, title=title, metadata=dict(metadata or {}))
        # A KV create: a publish that JetStream refuses if the key already has a value.
        await self._js.publish(
            subjects.thread_record_subject(self.tenant, record.thread_id), record.__pydantic_serializer__.to_json(record),
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )
        return record.thread_id

    async def thread(self, thread_id: str) -> ThreadRecord | None:
        """The thread's record: its runs (with how they ended), the run in progress."""
        try:
            raw = await self._js.get_last_msg(
                f"KV_{subjects.THREADS_BUCKET}", subjects.thread_record_subject(self.tenant, thread_id), direct=True
            )
        except NotFoundError:
            return None
        return ThreadRecord.model_validate_json(raw.data) if raw.data else None

    async def turns(self, thread_id: str) -> list[ThreadTurn]:
        """The thread's stored turns, oldest first (the latest attempt of each run)."""
        record = await self.thread(thread_id)
        if record is None:
            raise LookupError(f"thread {thread_id} not found")
        wanted = {run.turn.seq for run in record.runs if run.turn is not None}
        stored = await replay(self._nc, subjects.THREADS_STREAM, subjects.thread_turns(self.tenant, thread_id))
        return [ThreadTurn.model_validate_json(data) for seq, data in stored if seq in wanted]

    # -- questions (ask_human) ----------------------------------------------------------------

    async def answer(self, run_id: str, answer: str, *, wait_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Answer the question the run waits on; returns the reply: ``{"accepted": true,
        "status": "queued", "wait_id"}`` or ``{"accepted": false, "code", "detail", "field"}``."""
        given = HumanInput(answer=answer, wait_id=wait_id)
        reply = await self._nc.request(subjects.run_input(self.tenant, run_id),
                                       given.__pydantic_serializer__.to_json(given), timeout=timeout)
        return json.loads(reply.data)

    async def cancel(self, run_id: str, reason: str = "cancelled by client") -> None:
        """Stop the run: a queued run never starts, a running one is stopped by its executor."""
        await broadcast_cancel(self._nc, self.tenant, run_id, reason, recorded=False)

    async def close(self) -> None:
        if self._owns_connection:
            await self._nc.close()

    async def __aenter__(self) -> FlowrelayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
