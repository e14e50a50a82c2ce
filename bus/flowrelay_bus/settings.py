"""Configuration shared by every service, read from ``FLOWRELAY_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where a locally started nats-server listens (``flowrelay up`` and the README examples).
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class BusSettings(BaseSettings):
    """How to reach NATS and how long the bus keeps things."""

    model_config = SettingsConfigDict(env_prefix="FLOWRELAY_", extra="ignore")

    nats_url: str = Field(
        default=DEFAULT_NATS_URL,
        description="NATS server(s), comma-separated for a cluster.",
    )
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

    @property
    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]
