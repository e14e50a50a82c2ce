"""Run records in the ``RUNS_BUCKET`` key-value bucket.

Several services write the same record (the API creates it, an executor moves it to
running and terminal, the suggester adds guidance), so every change is a
compare-and-set on the entry's revision, retried on conflict. A record that is already
terminal is never moved to another terminal state: that is what makes a run end exactly
once even when its request is delivered twice.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from flowrelay_contracts import RunRecord

log = logging.getLogger(__name__)

#: Compare-and-set attempts before giving up; conflicts need several writers on one run.
MAX_CAS_ATTEMPTS = 20

Mutation = Callable[[RunRecord], RunRecord | None]


#: Records whose last seen revision is remembered (see :meth:`RunStore.change`).
REVISION_CACHE_SIZE = 4096


class RunStore:
    """Typed access to run records with optimistic concurrency.

    It remembers the revision of records it last read or wrote, so a writer that changes
    the same run again (an executor moving it to running, then to its end) writes without
    reading first; a stale guess just fails the compare-and-set and is retried with a read.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._seen: OrderedDict[str, tuple[RunRecord, int]] = OrderedDict()

    async def get(self, run_id: str) -> RunRecord | None:
        try:
            entry = await self._kv.get(run_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = RunRecord.model_validate_json(entry.value)
        self._remember(run_id, record, entry.revision)
        return record

    async def create(self, record: RunRecord) -> bool:
        """Store a new record; False if one with that id exists already."""
        try:
            revision = await self._kv.create(record.run_id, record.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            return False
        self._remember(record.run_id, record, revision)
        return True

    async def put(self, record: RunRecord) -> None:
        await self._kv.put(record.run_id, record.model_dump_json().encode())

    async def update(self, run_id: str, mutate: Mutation) -> RunRecord | None:
        """Apply ``mutate`` to the stored record and save it atomically.

        ``mutate`` gets a (shallow) copy and returns the new record, or None to leave it
        unchanged; it may rebind fields but must not modify shared lists in place.
        Returns the record as stored afterwards (None if there is no such run).
        """
        record, _ = await self.change(run_id, mutate)
        return record

    async def change(self, run_id: str, mutate: Mutation) -> tuple[RunRecord | None, bool]:
        """Like :meth:`update`, and also says whether this call changed the record.

        "Changed by me" is what lets exactly one writer announce a terminal state.
        """
        known = self._seen.pop(run_id, None)
        for _ in range(MAX_CAS_ATTEMPTS):
            if known is None:
                try:
                    entry = await self._kv.get(run_id)
                except KeyNotFoundError:
                    return None, False
                known = (RunRecord.model_validate_json(entry.value), entry.revision)
            current, revision = known
            changed = mutate(current.model_copy())  # shallow: mutations rebind fields
            if changed is None:
                self._remember(run_id, current, revision)
                return current, False
            try:
                revision = await self._kv.update(run_id, changed.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                known = None  # someone else wrote it: read and try again
                continue
            self._remember(run_id, changed, revision)
            return changed, True
        raise RuntimeError(f"run {run_id}: too many concurrent updates")

    def _remember(self, run_id: str, record: RunRecord, revision: int) -> None:
        self._seen[run_id] = (record, revision)
        if len(self._seen) > REVISION_CACHE_SIZE:
            self._seen.popitem(last=False)

    async def keys(self) -> list[str]:
        try:
            return await self._kv.keys()
        except Exception as exc:  # nats-py raises NoKeysError on an empty bucket
            if type(exc).__name__ == "NoKeysError":
                return []
            raise

    async def watch(self, run_id: str) -> AsyncIterator[RunRecord]:
        """Yield the record now and after every change (for waiting on a result)."""
        watcher = await self._kv.watch(run_id)
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue  # marker for "initial values delivered" or a delete
                yield RunRecord.model_validate_json(entry.value)
        finally:
            await watcher.stop()
