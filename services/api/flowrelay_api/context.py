"""Everything a request needs from NATS, opened once at startup and shared.

No request opens a connection, a JetStream context or a KV handle: they are created in the
app's lifespan (:meth:`ApiContext.open`) and reused, which is most of what keeps the
submit path within a millisecond or two of the bus's own round trips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import Request
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flowrelay_api.capabilities import ExecutorDirectory
from flowrelay_api.metrics import Metrics
from flowrelay_api.settings import ApiSettings
from flowrelay_bus import topology
from flowrelay_bus.connection import make_broker
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import subjects
from flowrelay_contracts.ids import RunIdGenerator

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
    idempotency: KeyValue
    executors: ExecutorDirectory
    ids: RunIdGenerator = field(default_factory=RunIdGenerator)

    @classmethod
    async def open(cls, settings: ApiSettings, metrics: Metrics) -> ApiContext:
        """Connect, make sure the streams and buckets exist, open the handles."""
        broker = make_broker(settings, name=CONNECTION_NAME)
        nc = await broker.connect()
        try:
            js = nc.jetstream(timeout=settings.nats_timeout_s)
            await topology.declare(js, settings)
            runs_kv = await js.key_value(subjects.RUNS_BUCKET)
            idempotency = await js.key_value(subjects.IDEMPOTENCY_BUCKET)
            executors = ExecutorDirectory(await js.key_value(subjects.EXECUTORS_BUCKET))
            await executors.start()
        except BaseException:
            await broker.stop()
            raise
        log.info("connected to NATS; %d executor(s) live", len(executors.live))
        return cls(
            settings=settings,
            metrics=metrics,
            broker=broker,
            nc=nc,
            js=js,
            runs=RunStore(runs_kv),
            idempotency=idempotency,
            executors=executors,
        )

    async def close(self) -> None:
        await self.executors.stop()
        await self.broker.stop()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected


async def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the process's shared :class:`ApiContext`.

    ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a worker thread, which
    costs more than everything else this dependency does.
    """
    return request.app.state.context  # type: ignore[no-any-return]
