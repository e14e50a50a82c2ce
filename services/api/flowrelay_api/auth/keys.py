"""API keys: random, shown once, stored only as a hash in the ``API_KEYS_BUCKET``.

A key reads ``frk_<key id>_<secret>``: the id (12 characters of base32) finds the record,
the secret (32 random bytes, base64url) is checked against its SHA-256 with a constant-time
compare. 256 random bits need no slow hash or pepper: nothing can be guessed from a stored
digest, and a fast check keeps authentication off the latency budget.

Revocation keeps the record (``revoked_at``) so a bootstrap key, once revoked, is never
recreated by a restart. Verified keys are cached for ``key_cache_s`` seconds, which is how
long a revocation takes to reach every API process (a direct get per key and period: no
consumer, no watcher).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from datetime import datetime

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from flowrelay_api.auth.principal import Principal, Scope
from flowrelay_bus.kvscan import scan
from flowrelay_contracts import subjects
from flowrelay_contracts.messages import TenantId, utcnow

#: Every key starts with this, so secret scanners and people recognise one.
KEY_PREFIX = "frk"

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_ID_LENGTH = 12
_SECRET_BYTES = 32
KEY_PATTERN = re.compile(rf"{KEY_PREFIX}_([a-z2-7]{{{_ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})")

#: Verified (or unknown) key ids remembered per API process.
CACHE_SIZE = 10_000


class ApiKey(BaseModel):
    """A key's stored record. ``hash`` is the SHA-256 of the key; the key itself is never stored."""

    key_id: str
    tenant: TenantId
    scopes: list[Scope]
    name: str = ""
    hash: str = Field(repr=False)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self) -> Principal:
        return Principal(tenant=self.tenant, scopes=frozenset(self.scopes), key_id=self.key_id, name=self.name)


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, key)``."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key, else None."""
    match = KEY_PATTERN.fullmatch(key)
    return match.group(1) if match else None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Create, verify, list and revoke keys."""

    def __init__(self, kv: KeyValue, nc: Client, *, cache_s: float) -> None:
        self._kv = kv
        self._nc = nc
        self._cache_s = cache_s
        self._cache: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()

    async def create(self, *, tenant: str, scopes: list[Scope], name: str = "", by: str | None = None) -> tuple[ApiKey, str]:
        """A new key (returned once, never stored) and its record."""
        key_id, key = new_key()
        record = ApiKey(key_id=key_id, tenant=tenant, scopes=scopes, name=name, hash=digest(key), created_by=by)
        await self._kv.create(key_id, record.__pydantic_serializer__.to_json(record))
        return record, key

    async def bootstrap(self, key: str, *, tenant: str, scopes: list[Scope], name: str) -> bool:
        """Store ``key`` (given by the operator, e.g. from ``flowrelay up``) unless it exists.

        A key that exists (revoked or not) is left alone; True if it was created now.
        """
        key_id = key_id_of(key)
        if key_id is None:
            raise ValueError("the bootstrap key is not a flowrelay key (frk_<id>_<secret>); generate one with "
                             "'flowrelay secrets init'")
        record = ApiKey(key_id=key_id, tenant=tenant, scopes=scopes, name=name, hash=digest(key), created_by="bootstrap")
        try:
            await self._kv.create(key_id, record.__pydantic_serializer__.to_json(record))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def verify(self, key: str) -> ApiKey | None:
        """The active record of ``key``, or None (malformed, unknown, revoked or wrong secret)."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        record = await self._lookup(key_id)
        if record is None or not record.active:
            return None
        if not hmac.compare_digest(record.hash, digest(key)):
            return None
        return record

    async def get(self, key_id: str) -> ApiKey | None:
        try:
            entry = await self._kv.get(key_id)
        except KeyNotFoundError:
            return None
        return ApiKey.model_validate_json(entry.value) if entry.value else None

    async def list(self) -> list[ApiKey]:
        keys = [ApiKey.model_validate_json(e.value) for e in await scan(self._nc, subjects.API_KEYS_BUCKET)]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Mark the key revoked (kept for audit and so it is never recreated); None if unknown."""
        for _ in range(5):
            try:
                entry = await self._kv.get(key_id)
            except KeyNotFoundError:
                return None
            record = ApiKey.model_validate_json(entry.value)
            if not record.active:
                return record
            record.revoked_at = utcnow()
            try:
                await self._kv.update(key_id, record.__pydantic_serializer__.to_json(record), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self._cache.pop(key_id, None)
            return record
        raise RuntimeError(f"key {key_id}: too many concurrent updates")

    async def _lookup(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self._cache_s:
            return cached[0]
        record = await self.get(key_id)
        self._cache[key_id] = (record, now)
        self._cache.move_to_end(key_id)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return record
