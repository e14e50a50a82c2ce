"""Everything a request needs from NATS, opened once at startup and shared.

No request opens a connection, a JetStream context or a KV handle: they are created in the
app's lifespan (:meth:`ApiContext.open`) and reused, which is most of what keeps the
submit path within a millisecond or two of the bus's own round trips.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flowrelay_api.answers import serve_answers
from flowrelay_api.auth import Authenticator, KeyStore, Scope
from flowrelay_api.auth.jwt import JwtVerifier
from flowrelay_api.backpressure import QueueGauge, RateLimiter
from flowrelay_api.capabilities import ExecutorDirectory
from flowrelay_api.health import BusHealth
from flowrelay_api.metrics import Metrics
from flowrelay_api.settings import ApiSettings
from flowrelay_bus import topology
from flowrelay_bus.connection import make_broker
from flowrelay_bus.index import RunIndex
from flowrelay_bus.lifecycle import stop_broker
from flowrelay_bus.outputs import OutputStore
from flowrelay_bus.runs import RunStore
from flowrelay_bus.threads import ThreadStore
from flowrelay_contracts import subjects
from flowrelay_contracts.ids import RunIdGenerator
from flowrelay_contracts.tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)

#: Client name the API's NATS connection shows in the server's monitoring.
CONNECTION_NAME = "flowrelay-api"


@dataclass
class ApiContext:
    """Connections and handles shared by all requests of one API process."""

    settings: ApiSettings
    metrics: Metrics
    broker: NatsBroker
    nc: Client
    js: JetStreamContext
    runs: RunStore
    index: RunIndex
    idempotency: KeyValue
    executors: ExecutorDirectory
    keys: KeyStore
    auth: Authenticator
    outputs: OutputStore
    rate: RateLimiter
    queue: QueueGauge
    threads: ThreadStore
    answers: Subscription | None = None
    health: BusHealth = field(default_factory=BusHealth)
    ids: RunIdGenerator = field(default_factory=RunIdGenerator)

    @classmethod
    async def open(cls, settings: ApiSettings, metrics: Metrics) -> ApiContext:
        """Connect, make sure the streams and buckets exist, open the handles."""
        # FastStream's default logger writes ANSI colour codes into log files: use ours.
        broker = make_broker(settings, name=CONNECTION_NAME, logger=logging.getLogger("flowrelay.api.broker"))
        nc = await broker.connect()
        try:
            _check_payload_budget(settings, nc.max_payload)
            js = nc.jetstream(timeout=settings.nats_timeout_s)
            await topology.declare(js, settings)
            await topology.declare_bucket(js, topology.api_keys_bucket_config(settings))
            idempotency = await js.key_value(subjects.IDEMPOTENCY_BUCKET)
            executors = ExecutorDirectory(nc)
            await executors.start()
            keys = KeyStore(await js.key_value(subjects.API_KEYS_BUCKET), nc, cache_s=settings.key_cache_s)
            await _bootstrap(settings, keys)
        except BaseException:
            await broker.stop()
            raise
        log.info("connected to NATS; %d executor(s) live; auth: %s", len(executors.live), settings.auth)
        runs = await RunStore.open(js)
        answers = await serve_answers(nc, runs, max_answer_bytes=settings.max_answer_bytes)
        return cls(
            answers=answers,
            settings=settings,
            metrics=metrics,
            broker=broker,
            nc=nc,
            js=js,
            runs=runs,
            threads=await ThreadStore.open(nc, runs, js),
            index=RunIndex(js),
            idempotency=idempotency,
            executors=executors,
            keys=keys,
            auth=Authenticator(keys=keys, jwt=_jwt_verifier(settings), enabled=settings.auth == "keys"),
            outputs=OutputStore(js),
            rate=RateLimiter(settings.rate_limit),
            queue=QueueGauge(js, max_runs=settings.max_queued_runs, max_per_tenant=settings.max_queued_runs_per_tenant),
        )

    async def close(self) -> None:
        if self.answers is not None:
            with contextlib.suppress(Exception):
                await self.answers.unsubscribe()
        await self.executors.stop()
        await stop_broker(self.broker)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected


#: Room in a record for everything but the body and the output (ids, usage, suggestions...).
RECORD_OVERHEAD_BYTES = 64 * 1024


def _check_payload_budget(settings: ApiSettings, max_payload: int) -> None:
    """A run's record (its request, workflow, inline output) must fit in one NATS message."""
    needed = settings.max_body_bytes + settings.max_inline_output_bytes + RECORD_OVERHEAD_BYTES
    if needed > max_payload:
        raise RuntimeError(
            f"FLOWRELAY_MAX_BODY_BYTES ({settings.max_body_bytes}) + FLOWRELAY_MAX_INLINE_OUTPUT_BYTES "
            f"({settings.max_inline_output_bytes}) + {RECORD_OVERHEAD_BYTES} bytes of record overhead exceed the "
            f"NATS server's max_payload ({max_payload}): lower them, or raise max_payload in the server config"
        )


async def _bootstrap(settings: ApiSettings, keys: KeyStore) -> None:
    key = settings.bootstrap_key()
    if key is None:
        return
    created = await keys.bootstrap(key, tenant=DEFAULT_TENANT, scopes=[Scope.ADMIN], name="bootstrap admin")
    if created:
        log.info("bootstrap admin key from %s stored (tenant %s)", settings.bootstrap_key_file, DEFAULT_TENANT)


def _jwt_verifier(settings: ApiSettings) -> JwtVerifier | None:
    if settings.jwt_issuer is None:
        return None
    public_key = Path(settings.jwt_public_key_file).read_text() if settings.jwt_public_key_file else None
    return JwtVerifier(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        algorithms=[a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()],
        jwks_url=settings.jwt_jwks_url,
        public_key=public_key,
        tenant_claim=settings.jwt_tenant_claim,
        scopes_claim=settings.jwt_scopes_claim,
    )


async def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the process's shared :class:`ApiContext`.

    ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a worker thread, which
    costs more than everything else this dependency does.
    """
    return request.app.state.context  # type: ignore[no-any-return]
