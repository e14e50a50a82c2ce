"""Read every current value of a KV bucket (or of a key filter) without a consumer.

``kv.keys()`` and ``kv.watchall()`` each create an ephemeral consumer that the server keeps
for minutes after use; read periodically or per request they pile up until the stream's
consumer limit refuses new ones. A batched direct get (``multi_last``, nats-server 2.11+)
answers the latest message of every matching subject in one request and leaves nothing
behind.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from nats.aio.client import Client

#: Most entries one scan returns (the buckets scanned this way hold tens, not millions).
MAX_ENTRIES = 10_000

#: Status header values that end a batch: 204 end of batch, 404 nothing matched.
_END_STATUSES = frozenset({"204", "404"})
_REMOVED = frozenset({"DEL", "PURGE"})


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int


async def scan(nc: Client, bucket: str, key_filter: str = ">", *, timeout: float = 5.0) -> list[KvEntry]:
    """Every live entry of ``bucket`` whose key matches ``key_filter`` (NATS wildcards)."""
    prefix = f"$KV.{bucket}."
    inbox = nc.new_inbox()
    messages: asyncio.Queue = asyncio.Queue()

    async def on_message(msg) -> None:  # noqa: ANN001 - nats-py's Msg
        messages.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        request = {"multi_last": [prefix + key_filter], "batch": MAX_ENTRIES}
        await nc.publish(f"$JS.API.DIRECT.GET.KV_{bucket}", json.dumps(request).encode(), reply=inbox)
        entries: list[KvEntry] = []
        async with asyncio.timeout(timeout):
            while True:
                msg = await messages.get()
                headers = msg.headers or {}
                if headers.get("Status") in _END_STATUSES:
                    return entries
                if headers.get("Status"):
                    raise RuntimeError(f"scan of {bucket} failed: {headers.get('Status')} {headers.get('Description', '')}")
                if headers.get("KV-Operation") in _REMOVED or not msg.data:
                    continue
                entries.append(KvEntry(
                    key=headers["Nats-Subject"][len(prefix):], value=msg.data,
                    revision=int(headers.get("Nats-Sequence", 0)),
                ))
    finally:
        await sub.unsubscribe()
