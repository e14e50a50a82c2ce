"""Bearer JWTs from a configured issuer (optional): for teams whose identity provider already
issues tokens. The token's signature is checked against the issuer's JWKS (fetched and
cached by PyJWT) or a configured public key; ``iss``, ``aud`` (when configured) and ``exp``
are required; the tenant comes from a named claim and the scopes from another (a
space-separated string, as OAuth's ``scope``, or a list).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import jwt

from flowrelay_api.auth.principal import Principal, Scope
from flowrelay_contracts.tenants import is_valid_tenant


class JwtRejected(Exception):
    """The token is not acceptable; the message says why (never echoing the token)."""


class JwtVerifier:
    """Checks tokens of one issuer."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | None,
        algorithms: Iterable[str],
        jwks_url: str | None = None,
        public_key: str | None = None,
        tenant_claim: str = "tenant",
        scopes_claim: str = "scope",
    ) -> None:
        if (jwks_url is None) == (public_key is None):
            raise ValueError("JWT auth needs exactly one of FLOWRELAY_JWT_JWKS_URL or FLOWRELAY_JWT_PUBLIC_KEY_FILE")
        self._issuer = issuer
        self._audience = audience
        self._algorithms = list(algorithms)
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300) if jwks_url else None
        self._public_key = public_key
        self._tenant_claim = tenant_claim
        self._scopes_claim = scopes_claim

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2 and token.startswith("eyJ")

    async def verify(self, token: str) -> Principal:
        key: Any = self._public_key
        try:
            if self._jwks is not None:  # may fetch the JWKS: keep the event loop free
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            claims = jwt.decode(
                token, key, algorithms=self._algorithms, issuer=self._issuer, audience=self._audience,
                options={"require": ["exp", "iss"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise JwtRejected(f"the token was refused: {type(exc).__name__}") from None
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not is_valid_tenant(tenant):
            raise JwtRejected(f"the token has no valid '{self._tenant_claim}' claim (FLOWRELAY_JWT_TENANT_CLAIM)")
        return Principal(
            tenant=tenant, scopes=_scopes(claims.get(self._scopes_claim)), key_id=None,
            name=str(claims.get("sub", "")), via="jwt",
        )


def _scopes(value: Any) -> frozenset[Scope]:
    names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
    known = {s.value for s in Scope}
    return frozenset(Scope(n) for n in names if isinstance(n, str) and n in known)
