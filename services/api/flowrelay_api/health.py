"""What recent NATS answers said about the bus, for ``/healthz``.

Connected is not the same as usable: with the JetStream store full every write fails at
once while the connection is fine. The API remembers when it last saw that, and
``/healthz`` answers ``degraded`` with the reason for :data:`REMEMBER_S` afterwards.
"""

from __future__ import annotations

import time

from flowrelay_api.errors import JS_INSUFFICIENT_RESOURCES

#: How long a storage-full answer keeps /healthz degraded after the last one.
REMEMBER_S = 30.0


class BusHealth:
    def __init__(self) -> None:
        self._storage_full_at: float | None = None

    def saw(self, exc: BaseException) -> None:
        if getattr(exc, "err_code", None) == JS_INSUFFICIENT_RESOURCES:
            self._storage_full_at = time.monotonic()

    def problems(self) -> list[str]:
        found = []
        if self._storage_full_at is not None and time.monotonic() - self._storage_full_at < REMEMBER_S:
            found.append("JetStream storage is full: runs cannot be stored or queued")
        return found
