"""Run records in the ``RUNS_BUCKET`` key-value bucket.

Several services write the same record (the API creates it, an executor moves it to
running and terminal, the suggester adds guidance), so every change is a
compare-and-set on the entry's revision, retried on conflict. A record that is already
terminal is never moved to another terminal state: that is what makes a run end exactly
once even when its request is delivered twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from flowrelay_contracts import RunRecord

log = logging.getLogger(__name__)

#: Compare-and-set attempts before giving up; conflicts need several writers on one run.
MAX_CAS_ATTEMPTS = 20

Mutation = Callable[[RunRecord], RunRecord | None]


class RunStore:
    """Typed access to run records with optimistic concurrency."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, run_id: str) -> RunRecord | None:
        try:
            entry = await self._kv.get(run_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return RunRecord.model_validate_json(entry.value)

    async def create(self, record: RunRecord) -> bool:
        """Store a new record; False if one with that id exists already."""
        try:
            await self._kv.create(record.run_id, record.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def put(self, record: RunRecord) -> None:
        await self._kv.put(record.run_id, record.model_dump_json().encode())

    async def update(self, run_id: str, mutate: Mutation) -> RunRecord | None:
        """Apply ``mutate`` to the stored record and save it atomically.

        ``mutate`` gets a copy and returns the new record, or None to leave it unchanged.
        Returns the record as stored afterwards (None if there is no such run).
        """
        record, _ = await self.change(run_id, mutate)
        return record

    async def change(self, run_id: str, mutate: Mutation) -> tuple[RunRecord | None, bool]:
        """Like :meth:`update`, and also says whether this call changed the record.

        "Changed by me" is what lets exactly one writer announce a terminal state.
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(run_id)
            except KeyNotFoundError:
                return None, False
            current = RunRecord.model_validate_json(entry.value)
            changed = mutate(current.model_copy(deep=True))
            if changed is None:
                return current, False
            try:
                await self._kv.update(run_id, changed.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return changed, True
        raise RuntimeError(f"run {run_id}: too many concurrent updates")

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
