"""Counting what one run costs the message bus: JetStream writes per stream, API calls,
messages and bytes, from nats-server's own monitoring endpoints (``/varz``, ``/jsz``).

Why counts: on a shared 2-core machine CPU seconds are noisy, counts are not. With
``sync_interval: always`` every stored message (a KV write, an event, a queued request, an
index entry) is one fsync before its acknowledgement, so ``stored`` is also the number of
fsyncs a run puts on the server's critical path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

#: Monitoring reads are local and small.
MONITOR_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BusCounters:
    """A snapshot of the server's counters."""

    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    api_calls: int
    #: Stream name -> last sequence (every stored message, deleted or not, took one).
    last_seq: dict[str, int]

    @classmethod
    def read(cls, monitor_url: str) -> BusCounters:
        varz = httpx.get(f"{monitor_url}/varz", timeout=MONITOR_TIMEOUT_S).json()
        jsz = httpx.get(
            f"{monitor_url}/jsz", params={"accounts": "true", "streams": "true"}, timeout=MONITOR_TIMEOUT_S
        ).json()
        last_seq: dict[str, int] = {}
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                last_seq[stream["name"]] = int((stream.get("state") or {}).get("last_seq", 0))
        return cls(
            in_msgs=int(varz.get("in_msgs", 0)),
            out_msgs=int(varz.get("out_msgs", 0)),
            in_bytes=int(varz.get("in_bytes", 0)),
            out_bytes=int(varz.get("out_bytes", 0)),
            api_calls=int((jsz.get("api") or {}).get("total", 0)),
            last_seq=last_seq,
        )


def per_run(before: BusCounters, after: BusCounters, runs: int) -> dict[str, Any]:
    """What ``runs`` runs cost between two snapshots, per run."""
    runs = max(runs, 1)

    def each(a: int, b: int) -> float:
        return round((b - a) / runs, 2)

    stored = {
        name: each(before.last_seq.get(name, 0), seq)
        for name, seq in sorted(after.last_seq.items())
        if seq != before.last_seq.get(name, 0)
    }
    return {
        "stored_messages": round(sum(stored.values()), 2),
        "stored_by_stream": stored,
        "jetstream_api_calls": each(before.api_calls, after.api_calls),
        "client_messages_in": each(before.in_msgs, after.in_msgs),
        "client_messages_out": each(before.out_msgs, after.out_msgs),
        "bytes_in": each(before.in_bytes, after.in_bytes),
        "bytes_out": each(before.out_bytes, after.out_bytes),
        "note": "stored_messages: JetStream writes (KV puts, events, requests, index entries); with "
        "sync_interval 'always' each is one fsync before its acknowledgement",
    }
