"""Executor configuration, from ``FLOWRELAY_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from flowrelay_bus.settings import BusSettings


class ExecutorSettings(BusSettings):
    """How one executor runs agents: its worker pool, limits and delivery timing."""

    model_config = SettingsConfigDict(env_prefix="FLOWRELAY_", extra="ignore")

    # -- model defaults (for agent nodes without a model_id) ----------------------------
    default_model: str = Field(default="openai:gpt-4o-mini", description="Model of nodes without model_id.")
    default_api_base: str | None = Field(default=None, description="Endpoint of the default model.")
    default_api_key: SecretStr | None = Field(default=None, description="Key for the default model's endpoint.")
    scripted_model_url: str | None = Field(
        default=None, description="Base URL of the scripted stand-in model (model ids 'scripted:<name>')."
    )

    # -- isolation and pool ---------------------------------------------------------------
    isolation: Literal["process", "thread"] = Field(
        default="process", description="Run agents in warm worker processes, or in one thread with its own loop."
    )
    workers: int = Field(default=2, ge=1, le=64, description="Worker processes per executor.")
    slots_per_worker: int = Field(default=256, ge=1, le=4096, description="Concurrent runs per worker.")
    recycle_after_runs: int = Field(default=5000, ge=1, description="Replace a worker after this many runs.")
    recycle_rss_mb: int = Field(default=1536, ge=64, description="Replace a worker above this RSS.")
    worker_start_timeout_s: float = Field(
        default=120.0, gt=0, description="Time for a worker to import any-agent (the first also self-checks every framework)."
    )
    frameworks: str = Field(
        default="",
        description=(
            "Comma-separated any-agent frameworks to offer (tinyagent always). Empty: every installed one. "
            "Only those that pass the start-up self-check are advertised."
        ),
    )

    # -- limits --------------------------------------------------------------------------
    default_timeout_s: float = Field(default=120.0, gt=0, description="Deadline of runs that set no options.timeout_s.")
    max_timeout_s: float = Field(default=3600.0, gt=0, description="Cap on any run's deadline.")
    default_max_turns: int = Field(default=20, ge=1, description="LLM calls per agent for runs that set no options.max_turns.")
    stream_interval_ms: float = Field(
        default=100.0, gt=0, le=5000,
        description="Token streaming: a text fragment waits at most this long for more before its llm.delta is sent.",
    )
    kill_grace_s: float = Field(
        default=1.5, gt=0, description="After a deadline, how long a run has to stop before its worker is killed."
    )
    worker_crash_policy: Literal["fail", "retry"] = Field(
        default="retry",
        description="Runs on a worker that died: retry them under their retry policy (options.retry), or fail "
        "them at once (worker_crashed).",
    )

    # -- delivery ------------------------------------------------------------------------
    ack_wait_s: float = Field(default=30.0, gt=1, description="JetStream redelivers a run not acked or heartbeated within this.")
    max_deliver: int = Field(default=5, ge=1, description="Deliveries of one request before it is dead-lettered.")
    drain_grace_s: float = Field(default=20.0, ge=0, description="On SIGTERM, time in-flight runs get to finish.")
    tool_modules: str = Field(
        default="", description="Comma-separated modules whose functions are tools (plus 'flowrelay.tools' entry points)."
    )
    mcp_stdio_allowlist: str = Field(
        default="", description="Comma-separated commands MCP stdio servers may run (stdio MCP is code execution)."
    )

    # -- observability -------------------------------------------------------------------
    metrics_host: str = Field(default="127.0.0.1", description="Interface the Prometheus endpoint (/metrics) binds to.")
    metrics_port: int = Field(
        default=9101, ge=-1, le=65535,
        description="Port of the Prometheus endpoint; 0 picks a free port (logged), -1 turns it off.",
    )

    @property
    def heartbeat_interval_s(self) -> float:
        """In-progress heartbeats well inside ``ack_wait`` so slow runs are not redelivered."""
        return max(0.5, self.ack_wait_s / 3)

    @property
    def framework_list(self) -> list[str] | None:
        """``frameworks`` as a list, or None for every installed framework."""
        return [name.strip() for name in self.frameworks.split(",") if name.strip()] or None

    @property
    def slots(self) -> int:
        return self.workers * self.slots_per_worker if self.isolation == "process" else self.slots_per_worker
