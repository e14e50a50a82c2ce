"""A client for backends that talk to flowrelay over NATS alone (no HTTP API in between).

    async with await FlowrelayClient.connect("nats://127.0.0.1:4222") as client:
        run_id = await client.submit(workflow, "ping")
        async for event in client.events(run_id):
            print(event.seq, event.type, event.data)
        record = await client.result(run_id)

It speaks the same contract as the API: it stores the queued run record, publishes a
``RunRequested`` (de-duplicated by run id), and reads events and records from JetStream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client

from flowrelay_bus.events import follow
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import (
    CancelRequest,
    RunOptions,
    RunRecord,
    RunRequested,
    TraceEvent,
    Workflow,
    plan,
    subjects,
)
from flowrelay_contracts.ids import new_run_id


class FlowrelayClient:
    """Submit runs, follow their events and read their results over NATS."""

    def __init__(self, nc: Client, store: RunStore, *, owns_connection: bool = False) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self._owns_connection = owns_connection

    @classmethod
    async def connect(cls, servers: str | list[str] = "nats://127.0.0.1:4222", **options: Any) -> FlowrelayClient:
        options.setdefault("max_reconnect_attempts", -1)
        nc = await nats.connect(servers, **options)
        return await cls.from_connection(nc, owns_connection=True)

    @classmethod
    async def from_connection(cls, nc: Client, *, owns_connection: bool = False) -> FlowrelayClient:
        """Use a connection the backend already has."""
        store = RunStore(await nc.jetstream().key_value(subjects.RUNS_BUCKET))
        return cls(nc, store, owns_connection=owns_connection)

    async def submit(
        self,
        workflow: Workflow | Mapping[str, Any],
        input: str,
        *,
        options: RunOptions | Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Queue a run and return its id. Raises ``WorkflowError`` for an invalid graph."""
        graph = workflow if isinstance(workflow, Workflow) else Workflow.model_validate(workflow)
        plan(graph)
        run_options = options if isinstance(options, RunOptions) else RunOptions.model_validate(options or {})
        run_id = run_id or new_run_id()
        request = RunRequested(run_id=run_id, workflow=graph, input=input, options=run_options)
        await self._store.create(RunRecord(run_id=run_id, input=input, created_at=request.created_at))
        await self._js.publish(
            subjects.RUN_REQUESTED,
            request.model_dump_json().encode(),
            headers={subjects.MSG_ID_HEADER: run_id},
        )
        return run_id

    async def events(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[TraceEvent]:
        """The run's events from ``after_seq`` on, live, ending with the terminal event."""
        async for event in follow(self._nc, run_id, after_seq=after_seq):
            if event is not None:
                yield event

    async def get(self, run_id: str) -> RunRecord | None:
        return await self._store.get(run_id)

    async def result(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        """Wait until the run has ended and return its record."""

        async def wait() -> RunRecord:
            async for record in self._store.watch(run_id):
                if record.terminal:
                    return record
            raise LookupError(f"run {run_id} not found")

        return await asyncio.wait_for(wait(), timeout)

    async def cancel(self, run_id: str, reason: str = "cancelled by client") -> None:
        """Stop the run: a queued run never starts, a running one is stopped by its executor."""

        def flag(record: RunRecord) -> RunRecord | None:
            return None if record.terminal else record.model_copy(update={"cancel_requested": True})

        await self._store.update(run_id, flag)
        await self._nc.publish(
            subjects.run_cancel(run_id), CancelRequest(run_id=run_id, reason=reason).model_dump_json().encode()
        )

    async def close(self) -> None:
        if self._owns_connection:
            await self._nc.close()

    async def __aenter__(self) -> FlowrelayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
