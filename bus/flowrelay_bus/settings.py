"""Configuration shared by every service, read from ``FLOWRELAY_*`` environment variables."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowrelay_contracts.limits import WorkflowLimits

#: Where a locally started nats-server listens (``flowrelay up`` and the README examples).
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class BusSettings(BaseSettings):
    """How to reach NATS (who to be, over what) and how long the bus keeps things."""

    model_config = SettingsConfigDict(env_prefix="FLOWRELAY_", extra="ignore")

    nats_url: str = Field(
        default=DEFAULT_NATS_URL,
        description="NATS server(s), comma-separated for a cluster.",
    )
    nats_user: str | None = Field(
        default=None, description="NATS user of this service (its own: api, executor or suggester)."
    )
    nats_password: SecretStr | None = Field(default=None, description="Password of FLOWRELAY_NATS_USER.")
    nats_password_file: Path | None = Field(
        default=None, description="File holding the NATS password (instead of FLOWRELAY_NATS_PASSWORD)."
    )
    nats_tls_ca: Path | None = Field(
        default=None, description="CA bundle that signed the NATS servers' certificates (turns TLS on)."
    )
    nats_tls_cert: Path | None = Field(
        default=None, description="Client certificate for NATS servers that require mTLS."
    )
    nats_tls_key: Path | None = Field(default=None, description="Private key of FLOWRELAY_NATS_TLS_CERT.")
    stream_replicas: int = Field(
        default=1, ge=1, le=5, description="JetStream replicas of every stream and bucket (3 in a cluster)."
    )
    events_max_age_s: float = Field(
        default=24 * 3600, gt=0, description="How long trace events stay replayable."
    )
    runs_ttl_s: float = Field(default=7 * 24 * 3600, gt=0, description="How long run records are kept.")
    dedup_window_s: float = Field(
        default=120, gt=0, description="JetStream duplicate window for publishes with a message id."
    )
    log_level: str = Field(default="INFO", description="Python log level of the services.")

    # -- what a run may carry (the API refuses more; the executor checks NATS-direct runs) ----
    max_input_bytes: int = Field(
        default=256 * 1024, ge=1, description="Largest 'input' of a run, in UTF-8 bytes (422 above)."
    )
    max_nodes: int = Field(default=64, ge=1, description="Most nodes a workflow may have (422 above).")
    max_edges: int = Field(default=256, ge=0, description="Most edges a workflow may have (422 above).")
    max_tools_per_agent: int = Field(default=64, ge=0, description="Most tools one agent may list (422 above).")
    max_json_depth: int = Field(
        default=32, ge=2, description="Deepest nesting of model_args, output_schema and MCP args (422 above)."
    )
    max_output_schema_bytes: int = Field(
        default=32 * 1024, ge=64, description="Largest output_schema of one agent, compact JSON bytes (422 above)."
    )

    max_inline_output_bytes: int = Field(
        default=128 * 1024, ge=1024,
        description="Outputs larger than this (JSON bytes) are kept in the object store and linked from the record.",
    )
    max_output_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest output a run may produce (it fails output_too_large above)."
    )

    max_queued_runs: int = Field(
        default=10_000, ge=1, description="Most runs queued or running at once, all tenants (429 above)."
    )
    max_queued_runs_per_tenant: int = Field(
        default=2_000, ge=1, description="Most runs one tenant may have queued or running at once (429 above)."
    )
    # -- durable runs: retries and budgets (the API resolves them; the executor again for
    #    requests published straight to NATS) ----------------------------------------------
    retry_attempts: int = Field(
        default=3, ge=1, description="Attempts of runs that set no options.retry.attempts (1: never retry)."
    )
    max_retry_attempts: int = Field(default=10, ge=1, description="Largest options.retry.attempts accepted (422 above).")
    retry_initial_backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before a run's second attempt, unless options.retry sets one."
    )
    retry_max_backoff_s: float = Field(
        default=30.0, ge=0, description="Longest wait between attempts, unless options.retry sets one."
    )
    max_retry_backoff_s: float = Field(
        default=600.0, ge=0,
        description="Largest options.retry.initial_backoff_s and max_backoff_s accepted (422 above).",
    )
    retry_jitter: float = Field(
        default=0.2, ge=0, le=1, description="Fraction of each retry wait taken off at random, unless options.retry sets one."
    )
    default_max_cost_usd: float | None = Field(
        default=None, gt=0, description="Cost budget of runs that set no options.max_cost_usd (unset: none)."
    )
    max_max_cost_usd: float = Field(default=1000.0, gt=0, description="Largest options.max_cost_usd accepted (422 above).")
    default_max_tokens: int | None = Field(
        default=None, ge=1, description="Token budget of runs that set no options.max_tokens (unset: none)."
    )
    max_max_tokens: int = Field(
        default=100_000_000, ge=1, description="Largest options.max_tokens accepted (422 above)."
    )
    # -- threads (conversations) -------------------------------------------------------
    thread_ttl_s: float = Field(
        default=7 * 24 * 3600, gt=0,
        description="How long threads are kept: a thread record after its last change, each turn after it was written.",
    )
    thread_history_max_bytes: int = Field(
        default=256 * 1024, ge=4096, le=768 * 1024,
        description="Most earlier turns (JSON bytes) a run on a thread is given: the oldest whole turns are left out "
        "above it; a single larger turn is stored shortened.",
    )
    max_thread_message_bytes: int = Field(
        default=64 * 1024, ge=1,
        description="Largest 'input' of a run on a thread, in UTF-8 bytes (422 above); at most "
        "FLOWRELAY_THREAD_HISTORY_MAX_BYTES.",
    )
    max_thread_runs: int = Field(
        default=1000, ge=1, description="Most runs one thread may have (409 above: start a new thread)."
    )

    # -- human in the loop (ask_human) -------------------------------------------------------
    default_wait_timeout_s: float = Field(
        default=3600.0, gt=0, description="How long a question of ask_human waits for its answer when the run sets "
        "no options.wait_timeout_s.",
    )
    max_wait_timeout_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Longest options.wait_timeout_s a run may ask for (422 above).",
    )
    max_answer_bytes: int = Field(
        default=16 * 1024, ge=1, description="Largest answer to an ask_human question, in UTF-8 bytes (422 above).",
    )

    mcp_url_allowlist: str = Field(
        default="",
        description="Comma-separated hosts, host:port or CIDR networks that MCP URLs may reach although they "
        "are loopback, private, link-local or metadata addresses (refused otherwise).",
    )

    def workflow_limits(self) -> WorkflowLimits:
        return WorkflowLimits(
            max_nodes=self.max_nodes, max_edges=self.max_edges, max_tools_per_agent=self.max_tools_per_agent,
            max_json_depth=self.max_json_depth, max_output_schema_bytes=self.max_output_schema_bytes,
        )

    @model_validator(mode="after")
    def _read_password_file(self) -> BusSettings:
        if self.nats_password is None and self.nats_password_file is not None:
            self.nats_password = SecretStr(read_secret_file(self.nats_password_file, "FLOWRELAY_NATS_PASSWORD_FILE"))
        if self.max_thread_message_bytes > self.thread_history_max_bytes:
            raise ValueError("FLOWRELAY_MAX_THREAD_MESSAGE_BYTES must not be above FLOWRELAY_THREAD_HISTORY_MAX_BYTES: "
                             "a message larger than the history budget could never be remembered")
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("FLOWRELAY_NATS_TLS_CERT and FLOWRELAY_NATS_TLS_KEY go together: set both or neither")
        return self

    @property
    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]

    def nats_tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context when TLS is configured (a CA, a URL with ``tls://``, or a cert)."""
        wants_tls = self.nats_tls_ca is not None or self.nats_tls_cert is not None or any(
            s.startswith("tls://") for s in self.nats_servers
        )
        if not wants_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.nats_tls_ca) if self.nats_tls_ca else None)
        if self.nats_tls_cert is not None and self.nats_tls_key is not None:
            context.load_cert_chain(str(self.nats_tls_cert), str(self.nats_tls_key))
        return context

    def nats_connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` that say who this service is and how to talk."""
        options: dict[str, Any] = {}
        if self.nats_user:
            options["user"] = self.nats_user
            options["password"] = self.nats_password.get_secret_value() if self.nats_password else ""
        if (tls := self.nats_tls_context()) is not None:
            options["tls"] = tls
        return options


def read_secret_file(path: Path, setting: str) -> str:
    """The secret in ``path`` without surrounding whitespace; errors name the setting, never the value."""
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{setting}: {path} is empty")
    return value
