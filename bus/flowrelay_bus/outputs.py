"""Run outputs too large for the run record, kept in the JetStream object store.

A record is one KV value and travels in one NATS message, so an output above
``max_inline_output_bytes`` is stored as object ``<tenant>.<run_id>`` of ``OUTPUTS_BUCKET``
and the record links it (:class:`~flowrelay_contracts.OutputRef`); nothing is truncated and
nothing is lost. Writing uses nats-py's object store; reading walks the chunks with direct
gets, so serving an output leaves no consumer behind on the server.
"""

from __future__ import annotations

import base64
import hashlib
import json

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from flowrelay_contracts import OutputRef, subjects

_STREAM = f"OBJ_{subjects.OUTPUTS_BUCKET}"


class OutputMissing(LookupError):
    """The linked object is gone (expired with the bucket's TTL, or never written whole)."""


class OutputStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def put(self, tenant: str, run_id: str, data: bytes, *, part: str | None = None) -> OutputRef:
        """Store ``data`` as the run's output, or as another ``part`` of the run (e.g. the
        output of one step checkpoint), named ``<tenant>.<run_id>[.<part>]``."""
        store = await self._js.object_store(subjects.OUTPUTS_BUCKET)
        name = subjects.run_key(tenant, run_id) + (f".{part}" if part else "")
        await store.put(name, data)
        return OutputRef(bucket=subjects.OUTPUTS_BUCKET, name=name, bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest())

    async def get(self, ref: OutputRef) -> bytes:
        """The object's bytes, checked against the digest the record holds."""
        meta_subject = f"$O.{subjects.OUTPUTS_BUCKET}.M.{base64.urlsafe_b64encode(ref.name.encode()).decode()}"
        try:
            meta = json.loads((await self._js.get_last_msg(_STREAM, meta_subject, direct=True)).data)
        except NotFoundError:
            raise OutputMissing(ref.name) from None
        chunk_subject = f"$O.{subjects.OUTPUTS_BUCKET}.C.{meta['nuid']}"
        parts: list[bytes] = []
        seq = 1
        for _ in range(int(meta.get("chunks") or 0)):
            try:
                raw = await self._js.get_msg(_STREAM, seq=seq, subject=chunk_subject, next=True, direct=True)
            except NotFoundError:
                raise OutputMissing(ref.name) from None
            parts.append(raw.data or b"")
            seq = raw.seq + 1
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise OutputMissing(f"{ref.name} (its content does not match the record's digest)")
        return data

    async def delete(self, ref: OutputRef) -> None:
        """Remove a stored object (gone already is fine)."""
        store = await self._js.object_store(subjects.OUTPUTS_BUCKET)
        try:
            await store.delete(ref.name)
        except NotFoundError:
            pass
        except Exception as exc:  # nats-py raises its own ObjectNotFoundError here
            if type(exc).__name__ not in ("ObjectNotFoundError", "ObjectDeletedError"):
                raise
