"""What authentication costs a request: the API's key check, measured in process.

Every authenticated request runs ``Authenticator.authenticate``: parse the key, look it up
(a dict hit while the key is cached; a KV direct get once per ``FLOWRELAY_KEY_CACHE_S`` per
key), compare SHA-256 digests in constant time. Timing that call directly against the bench's
own NATS isolates the cost of auth from the rest of a request, which an HTTP A/B of two API
processes on a busy 2-core machine could not resolve.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats

from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role
from flowrelay_api.auth import Authenticator, KeyStore, Scope
from flowrelay_contracts import subjects

#: Calls timed with the key cached, and with every call reading the key from KV.
CACHED_CALLS = 20_000
UNCACHED_CALLS = 500


def measure(nats_url: str, secrets: Secrets) -> dict[str, Any]:
    return asyncio.run(_measure(nats_url, secrets))


async def _measure(nats_url: str, secrets: Secrets) -> dict[str, Any]:
    nc = await nats.connect(nats_url, user=Role.API.value, password=secrets.password(Role.API.value))
    try:
        kv = await nc.jetstream().key_value(subjects.API_KEYS_BUCKET)
        cached, uncached = KeyStore(kv, nc, cache_s=3600.0), KeyStore(kv, nc, cache_s=0.0)
        _, key = await cached.create(tenant="bench", scopes=[Scope.READ], name="bench auth cost")
        results = {}
        for label, store, calls in (("cached", cached, CACHED_CALLS), ("uncached", uncached, UNCACHED_CALLS)):
            auth = Authenticator(keys=store)
            await auth.authenticate(key)  # warm
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(calls):
                await auth.authenticate(key)
            results[label] = {
                "calls": calls,
                "cpu_us_per_request": round((time.process_time() - cpu) / calls * 1e6, 2),
                "wall_us_per_request": round((time.perf_counter() - wall) / calls * 1e6, 2),
            }
        results["note"] = ("authenticate() per request; 'uncached' is the first request of a key in each "
                           "FLOWRELAY_KEY_CACHE_S window (one KV direct get)")
        return results
    finally:
        await nc.close()
