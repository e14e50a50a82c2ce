"""The run index: one entry per run in creation order, paged newest first without a consumer.

``GET /runs`` must list a tenant's runs newest first, page by page, for every client, as
often as it likes. Listing KV keys costs an ephemeral consumer per call that lingers on the
server for minutes (about a thousand calls exhaust a stream's consumer limit). Instead,
whoever creates a run record also appends a small :class:`RunIndexEntry` to
``INDEX_STREAM`` on ``flowrelay.index.<tenant>.<run_id>``; stream order is creation order.

A page is read with direct gets only: find the newest entry of the filter, then walk
windows of stream sequence numbers backwards (each window read forward with
``next_by_subj``, which the server answers from its subject index), widening the window
until the page is full or the stream's oldest matching entry is reached. The cursor is the
stream sequence of the last entry returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from flowrelay_contracts import RunIndexEntry, subjects

#: First backwards window, in stream sequence numbers; it grows by :data:`WINDOW_GROWTH`.
FIRST_WINDOW = 64
WINDOW_GROWTH = 4


@dataclass(frozen=True)
class IndexedRun:
    """One index entry and where it sits in the stream (the cursor for the next page)."""

    seq: int
    entry: RunIndexEntry


class RunIndex:
    """Append to and page through ``INDEX_STREAM``."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def add(self, entry: RunIndexEntry) -> None:
        """Record a new run; repeats for the same run are dropped by JetStream's dedup window
        (and are harmless outside it: the stream keeps one entry per subject)."""
        await self._js.publish(
            subjects.run_index(entry.tenant, entry.run_id),
            entry.__pydantic_serializer__.to_json(entry),
            headers={subjects.MSG_ID_HEADER: f"index:{entry.tenant}.{entry.run_id}"},
        )

    async def newest(self, tenant: str | None, *, before_seq: int | None, limit: int) -> list[IndexedRun]:
        """Up to ``limit`` runs of ``tenant`` (every tenant for ``None``), newest first,
        created before the entry at stream sequence ``before_seq`` (exclusive)."""
        if limit <= 0:
            return []
        subject = subjects.tenant_index(tenant)
        if before_seq is None:
            newest = await self._last(subject)
            if newest is None:
                return []
            before_seq = newest.seq + 1
        oldest = await self._next(subject, 1)
        if oldest is None or oldest.seq >= before_seq:
            return []
        found: list[IndexedRun] = []
        high, window = before_seq, FIRST_WINDOW
        while len(found) < limit and high > oldest.seq:
            low = max(oldest.seq, high - window)
            chunk: list[IndexedRun] = []
            seq = low
            while (item := await self._next(subject, seq)) is not None and item.seq < high:
                chunk.append(item)
                seq = item.seq + 1
            found.extend(reversed(chunk))
            high, window = low, window * WINDOW_GROWTH
        return found[:limit]

    async def _next(self, subject: str, seq: int) -> IndexedRun | None:
        try:
            raw = await self._js.get_msg(subjects.INDEX_STREAM, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return None
        return IndexedRun(seq=raw.seq, entry=RunIndexEntry.model_validate_json(raw.data))

    async def _last(self, subject: str) -> IndexedRun | None:
        try:
            raw = await self._js.get_last_msg(subjects.INDEX_STREAM, subject)
        except NotFoundError:
            return None
        return IndexedRun(seq=raw.seq, entry=RunIndexEntry.model_validate_json(raw.data))
