"""Step checkpoints: the durable record of each finished step of a run, to resume from.

What: one KV entry per finished step (:class:`~flowrelay_contracts.Checkpoint`) in
``CHECKPOINTS_BUCKET``, keyed ``<tenant>.<run_id>.<name>``. A later attempt of the same run
(redelivered after its executor died, or retried after a retryable failure) loads them all
and skips the steps they cover: their model calls are not paid twice.

Why a bucket of its own: checkpoints carry full step outputs (events carry clipped ones),
only executors may read or write them (``flowrelay/natsconfig.py``), and a run's entries
go away together, with one filtered purge when the run ends or with the bucket's TTL
(``FLOWRELAY_RUNS_TTL_S``, as long as run records) if that purge never happens.

The API, small on purpose::

    store = await CheckpointStore.open(nc, js, settings)   # declares the bucket
    stored = await store.save(checkpoint)                  # after a step finished
    done = await store.load(tenant, run_id)                # {name: Checkpoint}, one request
    await store.clear(tenant, run_id, linked=[...])        # when the run ended

``save`` overwrites an entry of the same name (a step re-run after a lost checkpoint writes
the same result again). ``load`` is one batched direct get: no consumer is left on the
server. An output larger than fits one KV value (``MAX_INLINE_BYTES``) is kept in the
outputs object store and linked (``output_ref``); ``load`` returns it inline again.

Names: the last key token, ``[A-Za-z0-9_=-]{1,128}``. The engine uses ``step-<n>`` for the
n-th step of a sequential workflow and ``call-<agent digest>-<request digest>-<k>`` for the
k-th identical call of a sub-agent; other kinds of checkpoints (a paused conversation) may
choose their own names and put what they need in ``Checkpoint.data``.
"""

from __future__ import annotations

import json
import logging

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flowrelay_bus import topology
from flowrelay_bus.kvscan import scan
from flowrelay_bus.outputs import OutputMissing, OutputStore
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import Checkpoint, subjects

__all__ = ["MAX_INLINE_BYTES", "CheckpointStore"]

log = logging.getLogger(__name__)

#: Checkpoints whose JSON is larger than this keep their output in the object store
#: (well under the server's default 1 MiB max_payload, with room for the headers).
MAX_INLINE_BYTES = 512 * 1024

_STREAM = f"KV_{subjects.CHECKPOINTS_BUCKET}"


class CheckpointStore:
    """Saves, loads and clears the step checkpoints of runs (see the module docstring)."""

    def __init__(self, nc: Client, js: JetStreamContext, kv: KeyValue) -> None:
        self._nc = nc
        self._js = js
        self._kv = kv
        self._outputs = OutputStore(js)

    @classmethod
    async def open(cls, nc: Client, js: JetStreamContext, settings: BusSettings) -> CheckpointStore:
        """Declare the bucket (idempotent) and return a store on it."""
        await topology.declare_bucket(js, topology.checkpoints_bucket_config(settings))
        return cls(nc, js, await js.key_value(subjects.CHECKPOINTS_BUCKET))

    async def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store ``checkpoint`` durably (returns once JetStream acknowledged it), as stored:
        with ``output_ref`` set instead of ``output`` when the output went to the object store."""
        data = checkpoint.__pydantic_serializer__.to_json(checkpoint)
        if len(data) > MAX_INLINE_BYTES and checkpoint.output is not None:
            output = json.dumps(checkpoint.output, ensure_ascii=False, separators=(",", ":")).encode()
            ref = await self._outputs.put(checkpoint.tenant, checkpoint.run_id, output, part=f"checkpoint.{checkpoint.name}")
            checkpoint = checkpoint.model_copy(update={"output": None, "output_ref": ref})
            data = checkpoint.__pydantic_serializer__.to_json(checkpoint)
        await self._kv.put(subjects.checkpoint_key(checkpoint.tenant, checkpoint.run_id, checkpoint.name), data)
        return checkpoint

    async def load(self, tenant: str, run_id: str) -> dict[str, Checkpoint]:
        """Every checkpoint of the run, by name (empty when it has none).

        Entries that cannot be read back (a newer schema, a linked output that expired) are
        left out: the step they describe simply runs again.
        """
        found: dict[str, Checkpoint] = {}
        for entry in await scan(self._nc, subjects.CHECKPOINTS_BUCKET, subjects.run_checkpoints(tenant, run_id)):
            try:
                checkpoint = Checkpoint.model_validate_json(entry.value)
                if checkpoint.output_ref is not None:
                    output = json.loads(await self._outputs.get(checkpoint.output_ref))
                    checkpoint = checkpoint.model_copy(update={"output": output})
            except (ValueError, OutputMissing) as exc:
                log.warning("run %s: checkpoint %s is unreadable (%s); its step runs again", run_id, entry.key, exc)
                continue
            found[checkpoint.name] = checkpoint
        return found

    async def clear(self, tenant: str, run_id: str, *, linked: list[Checkpoint] | None = None) -> None:
        """Remove every checkpoint of the run (one filtered purge), and the objects of those
        in ``linked`` that keep their output in the object store."""
        for checkpoint in linked or ():
            if checkpoint.output_ref is not None:
                await self._outputs.delete(checkpoint.output_ref)
        filter_subject = f"$KV.{subjects.CHECKPOINTS_BUCKET}.{subjects.run_checkpoints(tenant, run_id)}"
        await self._js.purge_stream(_STREAM, subject=filter_subject)
