"""API configuration, read from ``FLOWRELAY_*`` environment variables.

Every field is documented so the README table can be generated from this class
(``ApiSettings.model_fields``). The limits named here are also what error messages quote,
so a client that hits one learns which variable raises it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from flowrelay_bus.settings import BusSettings, read_secret_file

#: Addresses ``FLOWRELAY_AUTH=none`` may bind to: nothing but this machine can reach them.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ApiSettings(BusSettings):
    """How the web API listens, what it accepts and how long it waits."""

    model_config = SettingsConfigDict(env_prefix="FLOWRELAY_", extra="ignore")

    # -- listening ------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Interface the API binds to.")
    api_port: int = Field(default=8000, ge=0, le=65535, description="TCP port of the API.")
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="uvicorn worker processes (each has its own NATS connection).",
    )
    api_access_log: bool = Field(
        default=False, description="Log one line per HTTP request (costs latency)."
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers must arrive within this (408 and close otherwise)."
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this (408 and close otherwise)."
    )
    api_tls_cert: Path | None = Field(
        default=None, description="Certificate (PEM chain) to serve HTTPS with."
    )
    api_tls_key: Path | None = Field(default=None, description="Private key of FLOWRELAY_API_TLS_CERT.")

    # -- who may call ---------------------------------------------------------------------
    auth: Literal["keys", "none"] = Field(
        default="keys",
        description="'keys': every route but /healthz and the docs needs a bearer API key (or JWT). "
        "'none': no authentication, for experiments on loopback only (the API refuses other addresses).",
    )
    bootstrap_key_file: Path | None = Field(
        default=None,
        description="File with an API key (as flowrelay up and 'flowrelay secrets init' write) that becomes "
        "an admin key of tenant 'default' at start, unless it exists or was revoked.",
    )
    rate_limit: str = Field(
        default="100/second;3000/minute",
        description="Requests one API key may make, per API process ('limits' notation, ';'-separated; empty: "
        "unlimited); 429 with Retry-After above.",
    )
    key_cache_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a verified API key is trusted before it is read again: revocations reach every "
        "API process within this.",
    )
    jwt_issuer: str | None = Field(
        default=None, description="Also accept JWTs from this issuer ('iss'); unset: API keys only."
    )
    jwt_audience: str | None = Field(default=None, description="Required 'aud' of accepted JWTs.")
    jwt_jwks_url: str | None = Field(default=None, description="JWKS URL of the issuer's signing keys.")
    jwt_public_key_file: Path | None = Field(
        default=None, description="PEM public key of the issuer (instead of FLOWRELAY_JWT_JWKS_URL)."
    )
    jwt_algorithms: str = Field(
        default="RS256,ES256,EdDSA", description="Comma-separated JWT signature algorithms accepted."
    )
    jwt_tenant_claim: str = Field(default="tenant", description="JWT claim holding the tenant id.")
    jwt_scopes_claim: str = Field(
        default="scope", description="JWT claim holding the scopes (space-separated or a list)."
    )

    # -- what a request may ask for -----------------------------------------------------
    execution: Literal["execute", "suggest"] = Field(
        default="execute",
        description="'execute': executors run the agents. 'suggest': nothing runs; the suggester "
        "answers every request with guidance (degraded mode).",
    )
    max_body_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above). The request, and the run's record with "
        "its workflow and inline output, must fit in one NATS message: the API refuses to start "
        "when this plus FLOWRELAY_MAX_INLINE_OUTPUT_BYTES exceeds the server's max_payload.",
    )
    default_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of runs that set no options.timeout_s."
    )
    max_timeout_s: float = Field(
        default=3600.0, gt=0, description="Largest options.timeout_s accepted (422 above)."
    )
    default_max_turns: int = Field(
        default=20, ge=1, description="options.max_turns of runs that set none."
    )
    max_max_turns: int = Field(
        default=200, ge=1, description="Largest options.max_turns accepted (422 above)."
    )

    # -- waiting and streaming ------------------------------------------------------------
    nats_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait for a JetStream answer (publish ack, KV read/write) before a 503.",
    )
    execute_margin_s: float = Field(
        default=15.0,
        ge=0,
        description="POST /execute waits the run's timeout_s plus this for the executor to report the end.",
    )
    sse_ping_s: float = Field(
        default=15.0, ge=0, description="Seconds between SSE keep-alive comments (0: none)."
    )
    sse_suggestion_grace_s: float = Field(
        default=3.0,
        ge=0,
        description="After run.failed, how long SSE streams and POST /execute wait for the suggester's guidance.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.api_tls_cert is None) != (self.api_tls_key is None):
            raise ValueError("FLOWRELAY_API_TLS_CERT and FLOWRELAY_API_TLS_KEY go together: set both or neither")
        return self

    def bootstrap_key(self) -> str | None:
        if self.bootstrap_key_file is None:
            return None
        return read_secret_file(self.bootstrap_key_file, "FLOWRELAY_BOOTSTRAP_KEY_FILE")

    def unsafe_binding(self) -> str | None:
        """Why this configuration must not start, if it must not."""
        if self.auth == "none" and self.api_host not in LOOPBACK_HOSTS:
            return (
                f"FLOWRELAY_AUTH=none serves every run to anyone who can reach {self.api_host}:{self.api_port}; "
                "with auth off the API only binds to loopback (FLOWRELAY_API_HOST=127.0.0.1). "
                "Use API keys (FLOWRELAY_AUTH=keys, the default) to listen on other addresses."
            )
        return None
