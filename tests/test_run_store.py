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
from flowrelay_contracts import RunRecord, RunStatus
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
