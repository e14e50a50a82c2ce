"""Scopes and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Scope(StrEnum):
    """What a credential may do. ``admin`` may do everything, for every tenant."""

    SUBMIT = "submit"  # POST /runs, POST /execute
    READ = "read"  # GET /runs, a run, its events
    CANCEL = "cancel"  # POST /runs/{id}/cancel
    METRICS = "metrics"  # GET /metrics (for a Prometheus scraper: nothing else)
    ADMIN = "admin"  # keys, runs of every tenant, operator endpoints


#: Scopes of a key created without ``--scope``.
DEFAULT_KEY_SCOPES = (Scope.SUBMIT, Scope.READ, Scope.CANCEL)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its tenant, its scopes and what vouched for it."""

    tenant: str
    scopes: frozenset[Scope]
    key_id: str | None = None
    name: str = ""
    via: Literal["key", "jwt", "none"] = "key"

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        return self.is_admin or scope in self.scopes

    def sees_tenant(self, tenant: str) -> bool:
        """Whether runs of ``tenant`` exist for this caller."""
        return self.is_admin or tenant == self.tenant
