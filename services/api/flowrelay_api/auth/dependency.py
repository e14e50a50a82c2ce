"""The FastAPI side: read ``Authorization: Bearer``, answer 401/403, hand routes a Principal."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flowrelay_api.auth.jwt import JwtRejected, JwtVerifier
from flowrelay_api.auth.keys import KeyStore
from flowrelay_api.auth.principal import Principal, Scope
from flowrelay_api.errors import Forbidden, Unauthenticated
from flowrelay_contracts.tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)

#: The caller when ``FLOWRELAY_AUTH=none`` (loopback only): the default tenant, every scope.
ANONYMOUS_ADMIN = Principal(tenant=DEFAULT_TENANT, scopes=frozenset(Scope), name="anonymous", via="none")

_HOW = "send 'Authorization: Bearer <api key>' (flowrelay up writes an admin key to .flowrelay/secrets/admin.key; " \
       "'flowrelay keys create --tenant T' makes more)"

_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="flowrelay API key (frk_...) or JWT",
    description="An API key, or a JWT from the configured issuer.",
)


class Authenticator:
    """Turns a bearer token into a Principal: API keys, then JWTs if an issuer is set."""

    def __init__(self, *, keys: KeyStore | None, jwt: JwtVerifier | None = None, enabled: bool = True) -> None:
        self._keys = keys
        self._jwt = jwt
        self._enabled = enabled

    async def authenticate(self, token: str | None) -> Principal:
        if not self._enabled:
            return ANONYMOUS_ADMIN
        if not token:
            raise Unauthenticated(f"no credentials: {_HOW}")
        if self._jwt is not None and JwtVerifier.looks_like_jwt(token):
            try:
                return await self._jwt.verify(token)
            except JwtRejected as exc:
                raise Unauthenticated(f"{exc}; {_HOW}, or a valid token of the configured issuer") from None
        record = await self._keys.verify(token) if self._keys is not None else None
        if record is None:
            raise Unauthenticated(f"unknown, revoked or malformed API key: {_HOW}")
        return record.principal()


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: the authenticated caller (401 otherwise), within its rate (429)."""
    context = request.app.state.context
    caller = await context.auth.authenticate(credentials.credentials if credentials else None)
    context.rate.hit(caller.key_id or f"{caller.via}:{caller.tenant}:{caller.name}")
    return caller


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and checks ``scope`` (403 naming it when missing)."""

    async def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if not caller.allows(scope):
            held = ", ".join(sorted(s.value for s in caller.scopes)) or "none"
            raise Forbidden(
                f"this key lacks the '{scope.value}' scope (it has: {held}); use a key with it "
                f"(flowrelay keys create --tenant {caller.tenant} --scope {scope.value})"
            )
        return caller

    check.__name__ = f"require_{scope.value}"
    return check
