"""Back-pressure: per-key request rates, and caps on the runs queued (and running).

* Rate: each API key (or JWT subject) may make ``FLOWRELAY_RATE_LIMIT`` requests (the
  ``limits`` library's moving windows, e.g. ``"100/second;3000/minute"``), counted per API
  process; above it, 429 with ``Retry-After``.
* Queue: the run work queue holds every run not yet finished (queued and running), so its
  JetStream stream state is the exact count. The stream itself refuses more than
  ``FLOWRELAY_MAX_QUEUED_RUNS`` messages, and more than ``FLOWRELAY_MAX_QUEUED_RUNS_PER_TENANT``
  per tenant subject (discard-new), which no client can get around; the API reads the counts
  (cached for :data:`QUEUE_COUNT_TTL_S`) to answer 429 before storing anything.
"""

from __future__ import annotations

import math
import time

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from flowrelay_api.errors import ApiError
from flowrelay_contracts import subjects

#: How long queue counts read from JetStream are reused (a submit burst reads them once).
QUEUE_COUNT_TTL_S = 0.25

#: Retry-After of a 429 for a full queue: about how long it takes to drain a little.
QUEUE_FULL_RETRY_AFTER_S = 5


class TooManyRequests(ApiError):
    status_code = 429

    def __init__(self, detail: str, *, code: str, retry_after_s: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})
        self.code = code


class RateLimiter:
    """Moving-window request limits per caller, in this process's memory."""

    def __init__(self, spec: str) -> None:
        self._spec = spec
        self._limits = parse_many(spec) if spec.strip() else []
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, caller: str) -> None:
        for limit in self._limits:
            if not self._limiter.hit(limit, caller):
                reset, _ = self._limiter.get_window_stats(limit, caller)
                raise TooManyRequests(
                    f"rate limit of {limit} reached for this key (FLOWRELAY_RATE_LIMIT={self._spec}); retry after "
                    "the Retry-After seconds", code="rate_limited", retry_after_s=reset - time.time())


class QueueGauge:
    """How many runs are unfinished, overall and per tenant, from the work queue's state."""

    def __init__(self, js: JetStreamContext, *, max_runs: int, max_per_tenant: int) -> None:
        self._js = js
        self.max_runs = max_runs
        self.max_per_tenant = max_per_tenant
        self._total: tuple[float, int] | None = None
        self._tenants: dict[str, tuple[float, int]] = {}

    async def check(self, tenant: str) -> None:
        """429 if the queue, or the tenant's share of it, is full. Advisory: the stream's
        limits decide; if its state cannot be read the publish that follows will tell."""
        try:
            await self._check(tenant)
        except NotFoundError:  # the stream is being re-declared: let the publish decide
            return

    async def _check(self, tenant: str) -> None:
        tenant_count = await self._tenant_count(tenant)  # first: one read gives both counts
        if await self._total_count() >= self.max_runs:
            raise TooManyRequests(
                f"{self.max_runs} runs are queued or running, the limit (FLOWRELAY_MAX_QUEUED_RUNS); retry later",
                code="queue_full", retry_after_s=QUEUE_FULL_RETRY_AFTER_S)
        if tenant_count >= self.max_per_tenant:
            raise TooManyRequests(
                f"tenant {tenant} has {self.max_per_tenant} runs queued or running, the limit "
                "(FLOWRELAY_MAX_QUEUED_RUNS_PER_TENANT); retry once some have finished",
                code="queue_full", retry_after_s=QUEUE_FULL_RETRY_AFTER_S)

    def accepted(self, tenant: str) -> None:
        """Count a run this process just queued, so cached counts stay right within their TTL
        (other API processes' runs show up at the next read; the stream's limits are exact)."""
        if self._total is not None:
            self._total = (self._total[0], self._total[1] + 1)
        if (cached := self._tenants.get(tenant)) is not None:
            self._tenants[tenant] = (cached[0], cached[1] + 1)

    async def _total_count(self) -> int:
        now = time.monotonic()
        if self._total is None or now - self._total[0] > QUEUE_COUNT_TTL_S:
            info = await self._js.stream_info(subjects.RUNS_STREAM)
            self._total = (now, info.state.messages)
        return self._total[1]

    async def _tenant_count(self, tenant: str) -> int:
        now = time.monotonic()
        cached = self._tenants.get(tenant)
        if cached is None or now - cached[0] > QUEUE_COUNT_TTL_S:
            subject = subjects.run_requested(tenant)
            info = await self._js.stream_info(subjects.RUNS_STREAM, subjects_filter=subject)
            count = (info.state.subjects or {}).get(subject, 0)
            if len(self._tenants) > 10_000:
                self._tenants.clear()
            cached = self._tenants[tenant] = (now, count)
            self._total = (now, info.state.messages)  # the filtered read has the total too
        return cached[1]
