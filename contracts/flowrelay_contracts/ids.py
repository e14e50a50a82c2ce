"""Run ids that sort by creation time (ULIDs).

A ULID is 128 bits: a 48-bit Unix time in milliseconds followed by 80 random bits, written
as 26 characters of Crockford base32 (``0-9A-Z`` without ``I L O U``). Because the time
comes first and the alphabet is in ASCII order, sorting ids as strings sorts runs by
creation, which is what makes ``GET /runs`` pagination a plain key comparison.

Ids made by one process in the same millisecond are kept increasing by incrementing the
random part (the "monotonic" ULID variant). The alphabet also keeps ids safe as NATS
subject tokens and KV keys.
"""

from __future__ import annotations

import os
import re
import time

#: Crockford's base32 alphabet, in ASCII order so encoded ids sort like their numbers.
CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

#: Characters in an encoded id (128 bits / 5 bits per character, rounded up).
ULID_LENGTH = 26

_RANDOM_BITS = 80
_RANDOM_LIMIT = 1 << _RANDOM_BITS

#: What a run id may look like in a URL. Ids the API makes are ULIDs, but records created
#: by other producers (tests, scripts publishing to NATS directly) may use other ids; this
#: only guarantees the id is a valid KV key and a single NATS subject token.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


class RunIdGenerator:
    """Makes ULIDs that strictly increase within this process."""

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0

    def new(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            ms = self._last_ms
            random = self._last_random + 1
            if random >= _RANDOM_LIMIT:  # 2**80 ids in one ms: move to the next ms
                ms += 1
                random = int.from_bytes(os.urandom(10), "big")
        else:
            random = int.from_bytes(os.urandom(10), "big")
        self._last_ms, self._last_random = ms, random
        return _encode((ms << _RANDOM_BITS) | random)


def is_valid_run_id(run_id: str) -> bool:
    """Whether ``run_id`` can name a run (it is used as a KV key and a subject token)."""
    return RUN_ID_PATTERN.fullmatch(run_id) is not None


def _encode(value: int) -> str:
    chars = []
    for _ in range(ULID_LENGTH):
        chars.append(CROCKFORD_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_generator = RunIdGenerator()


def new_run_id() -> str:
    """A new run id from this process's generator."""
    return _generator.new()
