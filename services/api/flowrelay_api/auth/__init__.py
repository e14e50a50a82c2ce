"""Who is calling: API keys, optional JWTs from a configured issuer, scopes and tenants.

Every route but ``/healthz`` and the docs depends on :func:`require` with the scope it needs;
the :class:`Principal` it returns carries the caller's tenant, which every run operation
filters on (another tenant's run answers 404, exactly like a missing one).
"""

from flowrelay_api.auth.dependency import Authenticator, principal, require
from flowrelay_api.auth.keys import ApiKey, KeyStore
from flowrelay_api.auth.principal import DEFAULT_KEY_SCOPES, Principal, Scope

__all__ = ["DEFAULT_KEY_SCOPES", "ApiKey", "Authenticator", "KeyStore", "Principal", "Scope", "principal", "require"]
