"""Run records shared by several writers (API processes, executors, the suggester): each
``RunStore`` remembers the revisions it saw, and a decision must never rest on a stale one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from flowrelay import natsserver
from flowrelay_bus import topology
from flowrelay_bus.runs import RunStore
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import RunRecord, RunRequested, RunStatus, Workflow
from flowrelay_contracts.messages import utcnow

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def two_stores(tmp_path: Path) -> AsyncIterator[tuple[RunStore, RunStore]]:
    """Two writers of one bucket, each on its own connection (as two processes are)."""
    server = natsserver.start(tmp_path / "nats")
    first, second = await nats.connect(server.url), await nats.connect(server.url)
    try:
        await topology.declare(first.jetstream(), BusSettings(nats_url=server.url))
        yield await RunStore.open(first.jetstream()), await RunStore.open(second.jetstream())
    finally:
        await first.close()
        await second.close()
        server.stop()


async def test_a_no_op_decided_on_a_remembered_record_is_checked_against_the_stored_one(
    two_stores: tuple[RunStore, RunStore],
) -> None:
    api, executor = two_stores
    await executor.create(RunRecord(run_id="r1", tenant="t", status=RunStatus.RUNNING, cancel_requested=True))
    assert (await api.get("t", "r1")).cancel_requested  # type: ignore[union-attr]  # api remembers this revision
    await executor.update("t", "r1", lambda r: r.model_copy(update={"status": RunStatus.CANCELLED,
                                                                   "finished_at": utcnow()}))

    seen: list[RunStatus] = []

    def cancel_again(record: RunRecord) -> RunRecord | None:  # what a repeated POST /cancel does
        seen.append(record.status)
        return None  # running and already asked, or ended: nothing to write

    record, changed = await api.change("t", "r1", cancel_again)
    assert record is not None and record.status == RunStatus.CANCELLED and not changed
    assert seen[-1] == RunStatus.CANCELLED, "the no-op was decided on the stored record, not a stale copy"


def _request(run_id: str, input: str = "hello") -> RunRequested:
    workflow = Workflow.model_validate({
        "nodes": [{"id": "a", "type": "agent", "data": {"name": "a", "framework": "tinyagent",
                                                       "model_id": "scripted:gpt-4o-mini", "instructions": "Be brief."}}],
        "edges": [],
    })
    return RunRequested(run_id=run_id, tenant="t", workflow=workflow, input=input, thread_id="th-1")


class _CountingReads:
    """Counts a store's KV reads (the claim is meant to need none)."""

    def __init__(self, store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        real = store._kv.get

        async def get(*args: object, **kwargs: object) -> object:
            self.reads += 1
            return await real(*args, **kwargs)

        monkeypatch.setattr(store._kv, "get", get)


def _to_running(record: RunRecord) -> RunRecord | None:
    if record.terminal or record.cancel_requested:
        return None
    return record.model_copy(update={"status": RunStatus.RUNNING, "attempts": record.attempts + 1})


async def test_the_record_the_api_stored_is_presumed_from_the_request_and_claimed_without_a_read(
    two_stores: tuple[RunStore, RunStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, executor = two_stores
    sent = _request("r2")
    assert await api.create(RunRecord.queued_for(sent))
    stamp = api.stamp("t", "r2")
    assert stamp is not None
    received = RunRequested.model_validate_json(sent.model_dump_json())  # as the executor decodes it
    presumed = executor.presume("t", "r2", RunRecord.queued_for(received), stamp)
    assert presumed is not None, "the record rebuilt from the request must match the stored one's digest"
    counting = _CountingReads(executor, monkeypatch)
    record, claimed = await executor.change("t", "r2", _to_running)
    assert claimed and record is not None and record.status == RunStatus.RUNNING
    assert counting.reads == 0
    stored = await api.get("t", "r2")
    assert stored is not None and stored.status == RunStatus.RUNNING and stored.attempts == 1
    assert stored.input == "hello" and stored.thread_id == "th-1" and stored.created_at == sent.created_at


async def test_a_presumed_record_changed_since_is_decided_on_the_stored_one(
    two_stores: tuple[RunStore, RunStore],
) -> None:
    api, executor = two_stores
    sent = _request("r3")
    assert await api.create(RunRecord.queued_for(sent))
    stamp = api.stamp("t", "r3")
    assert stamp is not None
    await api.update("t", "r3", lambda r: r.model_copy(update={"cancel_requested": True}))  # cancelled while queued
    assert executor.presume("t", "r3", RunRecord.queued_for(sent), stamp) is not None  # the stamp is stale now
    record, claimed = await executor.change("t", "r3", _to_running)
    assert not claimed and record is not None and record.cancel_requested and record.status == RunStatus.QUEUED


async def test_a_record_that_does_not_match_the_stamp_is_not_presumed(
    two_stores: tuple[RunStore, RunStore],
) -> None:
    api, executor = two_stores
    assert await api.create(RunRecord.queued_for(_request("r4")))
    stamp = api.stamp("t", "r4")
    assert stamp is not None
    assert executor.presume("t", "r4", RunRecord.queued_for(_request("r4", input="forged")), stamp) is None
    assert executor.presume("t", "r4", RunRecord.queued_for(_request("r4")), "x " + stamp.split()[1]) is None
    assert executor.known("t", "r4") is None  # nothing was remembered: the claim reads the record
