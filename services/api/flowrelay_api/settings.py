"""API configuration, read from ``FLOWRELAY_*`` environment variables.

Every field is documented so the README table can be generated from this class
(``ApiSettings.model_fields``). The limits named here are also what error messages quote,
so a client that hits one learns which variable raises it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flowrelay_bus.settings import BusSettings


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

    # -- what a request may ask for -----------------------------------------------------
    execution: Literal["execute", "suggest"] = Field(
        default="execute",
        description="'execute': executors run the agents. 'suggest': nothing runs; the suggester "
        "answers every request with guidance (degraded mode).",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
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
