"""Tenants: who a run belongs to.

A tenant id is a single NATS subject token and a KV key segment, so permissions can confine
a NATS user to ``flowrelay.events.<tenant>.>`` and run records can be read per tenant.
"""

from __future__ import annotations

import re

#: The tenant of the key ``flowrelay up`` generates, and of runs when auth is off.
DEFAULT_TENANT = "default"

#: Lower-case letters, digits, ``-`` and ``_``; starts with a letter or digit; 1-63 long.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: Said wherever a tenant id is refused, so the fix is in the message.
TENANT_RULE = "1-63 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit"


def is_valid_tenant(tenant: str) -> bool:
    return TENANT_PATTERN.fullmatch(tenant) is not None


def check_tenant(tenant: str) -> str:
    """``tenant`` if valid, else ``ValueError`` saying what a tenant id looks like."""
    if not is_valid_tenant(tenant):
        raise ValueError(f"invalid tenant {tenant!r}: {TENANT_RULE}")
    return tenant
