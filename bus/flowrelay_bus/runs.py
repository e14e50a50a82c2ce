"""Run records in the ``RUNS_BUCKET`` key-value bucket, keyed ``<tenant>.<run_id>``.

Several services write the same record (the API creates it, an executor moves it to
running and terminal, the suggester adds guidance), so every change is a
compare-and-set on the entry's revision, retried on conflict. A record that is already
terminal is never moved to another terminal state: that is what makes a run end exactly
once even when its request is delivered twice.

The tenant is part of the key so NATS permissions can confine a tenant's user to its own
records (``$KV.flowrelay_runs.<tenant>.>``), and so a run id of another tenant is simply
not found.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from flowrelay_contracts import RunRecord, subjects

log = logging.getLogger(__name__)

#: Compare-and-set attempts before giving up; conflicts need several writers on one run.
MAX_CAS_ATTEMPTS = 20

Mutation = Callable[[RunRecord], RunRecord | None]

#: Records whose last seen revision is remembered (see :meth:`RunStore.change`).
REVISION_CACHE_SIZE = 4096

#: KV operations that mean "no value" (the header JetStream puts on delete/purge markers).
_KV_OPERATION_HEADER = "KV-Operation"
_REMOVED = frozenset({"DEL", "PURGE"})


class RunStore:
    """Typed access to run records with optimistic concurrency.

    It remembers the revision of records it last read or wrote, so a writer that changes
    the same run again (an executor moving it to running, then to its end) writes without
    reading first; a stale guess just fails the compare-and-set and is retried with a read,
    and a mutation that finds nothing to do on a remembered copy is asked again on a fresh
    read (the stored record may have moved on: a no-op is never decided on stale state).
    """

    def __init__(self, kv: KeyValue, js: JetStreamContext | None = None) -> None:
        self._kv = kv
        self._js = js
        self._seen: OrderedDict[str, tuple[RunRecord, int]] = OrderedDict()

    @classmethod
    async def open(cls, js: JetStreamContext) -> RunStore:
        return cls(await js.key_value(subjects.RUNS_BUCKET), js)

    async def get(self, tenant: str, run_id: str) -> RunRecord | None:
        key = subjects.run_key(tenant, run_id)
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = RunRecord.model_validate_json(entry.value)
        self._remember(key, record, entry.revision)
        return record

    def stamp(self, tenant: str, run_id: str) -> str | None:
        """``<revision> <digest>`` of the record as this process last wrote it (None if it
        did not): sent along with the run's request so the executor can :meth:`presume` it."""
        seen = self._seen.get(subjects.run_key(tenant, run_id))
        if seen is None:
            return None
        record, revision = seen
        return f"{revision} {_digest(record)}"

    def presume(self, tenant: str, run_id: str, record: RunRecord, stamp: str) -> RunRecord | None:
        """Take ``record`` as the stored one at the revision ``stamp`` names, if it is the
        record the stamp was made of (same digest); None otherwise.

        The next :meth:`change` then writes without reading first. Only the compare-and-set
        decides: if the record was changed since, it fails, and the change is applied to
        the record as read then. So a presumed record costs no read, and a wrong one only
        the read it tried to save.
        """
        revision, _, digest = stamp.partition(" ")
        if not revision.isdigit() or digest != _digest(record):
            return None
        self._remember(subjects.run_key(tenant, run_id), record, int(revision))
        return record

    def known(self, tenant: str, run_id: str) -> RunRecord | None:
        """The record as this process last read or wrote it, if it did: no bus traffic, and
        possibly stale (another service may have changed it since). For callers that only
        need to know the run exists and whose it is."""
        seen = self._seen.get(subjects.run_key(tenant, run_id))
        return seen[0] if seen is not None else None

    async def find(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id`` whatever its tenant (operators and admin keys only).

        One stream read with a wildcard over the tenant token; no consumer.
        """
        if self._js is None:
            raise RuntimeError("RunStore.find needs the JetStream context")
        try:
            raw = await self._js.get_last_msg(f"KV_{subjects.RUNS_BUCKET}", subjects.run_record_subject("*", run_id))
        except NotFoundError:
            return None
        if not raw.data or (raw.headers or {}).get(_KV_OPERATION_HEADER) in _REMOVED:
            return None
        return RunRecord.model_validate_json(raw.data)

    async def create(self, record: RunRecord) -> bool:
        """Store a new record; False if one with that id exists already."""
        key = subjects.run_key(record.tenant, record.run_id)
        try:
            revision = await self._kv.create(key, record.__pydantic_serializer__.to_json(record))
        except KeyWrongLastSequenceError:
            return False
        self._remember(key, record, revision)
        return True

    async def update(self, tenant: str, run_id: str, mutate: Mutation) -> RunRecord | None:
        """Apply ``mutate`` to the stored record and save it atomically.

        ``mutate`` gets a (shallow) copy and returns the new record, or None to leave it
        unchanged; it may rebind fields but must not modify shared lists in place.
        Returns the record as stored afterwards (None if there is no such run).
        """
        record, _ = await self.change(tenant, run_id, mutate)
        return record

    async def change(self, tenant: str, run_id: str, mutate: Mutation) -> tuple[RunRecord | None, bool]:
        """Like :meth:`update`, and also says whether this call changed the record.

        "Changed by me" is what lets exactly one writer announce a terminal state.
        """
        key = subjects.run_key(tenant, run_id)
        known = self._seen.pop(key, None)
        remembered = known is not None
        for _ in range(MAX_CAS_ATTEMPTS):
            if known is None:
                try:
                    entry = await self._kv.get(key)
                except KeyNotFoundError:
                    return None, False
                if not entry.value:
                    return None, False
                known = (RunRecord.model_validate_json(entry.value), entry.revision)
            current, revision = known
            changed = mutate(current.model_copy())  # shallow: mutations rebind fields
            if changed is None:
                if remembered:  # "nothing to do" on a remembered copy: another writer may have
                    known, remembered = None, False  # moved it since; decide on the stored one
                    continue
                self._remember(key, current, revision)
                return current, False
            try:
                revision = await self._kv.update(key, changed.__pydantic_serializer__.to_json(changed), last=revision)
            except KeyWrongLastSequenceError:
                known, remembered = None, False  # someone else wrote it: read and try again
                continue
            self._remember(key, changed, revision)
            return changed, True
        raise RuntimeError(f"run {run_id}: too many concurrent updates")

    def _remember(self, key: str, record: RunRecord, revision: int) -> None:
        self._seen[key] = (record, revision)
        if len(self._seen) > REVISION_CACHE_SIZE:
            self._seen.popitem(last=False)

    async def watch(self, tenant: str, run_id: str) -> AsyncIterator[RunRecord]:
        """Yield the record now and after every change (for waiting on a result)."""
        watcher = await self._kv.watch(subjects.run_key(tenant, run_id))
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue  # marker for "initial values delivered" or a delete
                yield RunRecord.model_validate_json(entry.value)
        finally:
            await watcher.stop()


def _digest(record: RunRecord) -> str:
    """A short fingerprint of the record's stored form (not a secret: a consistency check)."""
    return hashlib.blake2b(record.__pydantic_serializer__.to_json(record), digest_size=12).hexdigest()
