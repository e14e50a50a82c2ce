"""Suggester configuration, from ``FLOWRELAY_*`` environment variables.

Besides the bus settings it reads two kinds of values:

* its own (``FLOWRELAY_SUGGESTER_*``): the optional model that writes an extra explanation;
* a few variables the executor and the API also read (``FLOWRELAY_DEFAULT_MODEL``,
  ``FLOWRELAY_DEFAULT_TIMEOUT_S``, ``FLOWRELAY_MAX_TIMEOUT_S``). They only make the guidance
  more concrete (which model an agent without ``model_id`` used, how far a timeout can be
  raised). Unset, the guidance names the variable without guessing its value.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from flowrelay_bus.settings import BusSettings

#: Upper bound of the model call; rule-based guidance is already stored by then, so this
#: only bounds how long a failure report stays unacknowledged.
MAX_MODEL_TIMEOUT_S = 20.0


class SuggesterSettings(BusSettings):
    """How the suggester reaches NATS and, optionally, a model for written explanations."""

    model_config = SettingsConfigDict(env_prefix="FLOWRELAY_", extra="ignore")

    # -- optional model-assisted guidance (off unless a model is named) -------------------
    suggester_model: str | None = Field(
        default=None,
        description="any-llm model id (e.g. 'openai:gpt-4o-mini') that writes one extra "
        "explanation per failure. Unset: rule-based guidance only.",
    )
    suggester_api_base: str | None = Field(
        default=None, description="Endpoint of the suggester's model (OpenAI-compatible servers)."
    )
    suggester_api_key: SecretStr | None = Field(
        default=None, description="Key for the suggester's model; else the provider's own variable."
    )
    suggester_model_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=MAX_MODEL_TIMEOUT_S,
        description="Deadline of one model call; on expiry the explanation is skipped.",
    )

    # -- observability -------------------------------------------------------------------
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface the Prometheus endpoint (/metrics) binds to."
    )
    metrics_port: int = Field(
        default=9102,
        ge=-1,
        le=65535,
        description="Port of the Prometheus endpoint; 0 picks a free port (logged), -1 turns it off.",
    )

    # -- deployment facts shared with the executor and the API ----------------------------
    default_model: str | None = Field(
        default=None, description="FLOWRELAY_DEFAULT_MODEL: model of nodes without model_id."
    )
    default_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="FLOWRELAY_DEFAULT_TIMEOUT_S: deadline of runs that set none.",
    )
    max_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="FLOWRELAY_MAX_TIMEOUT_S: largest options.timeout_s accepted.",
    )

    @property
    def assisted(self) -> bool:
        """Whether a model writes an extra explanation for each failure."""
        return bool(self.suggester_model)
