"""Listing runs (GET /runs) costs the server nothing that outlives the request.

nats-py's ``kv.keys()`` creates an ephemeral consumer per call, which the server keeps for its
inactivity threshold (5 minutes) and caps per stream (1,000 by default, then error 10026 for
every new consumer on the bucket, KV watches included). The console polls GET /runs every
few seconds, so listing must not create consumers.
"""

from __future__ import annotations

import httpx
from flowrelay_testkit import Bus, one_agent, run_body

LISTINGS = 30


async def _consumers(bus: Bus) -> int:
    """Consumers on every stream (listing may read the run records or an index of them)."""
    return sum(info.state.consumer_count for info in await bus.js.streams_info())


async def test_listing_runs_again_and_again_leaves_no_consumers_behind(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(), "listed"))).json()["run_id"]
    await bus.wait_record(run_id)
    before = await _consumers(bus)
    for _ in range(LISTINGS):
        page = (await api.get("/runs", params={"limit": 5})).json()
        assert run_id in [r["run_id"] for r in page["runs"]] or page["next_cursor"]
    assert await _consumers(bus) <= before

