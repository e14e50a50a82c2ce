"""Declares flowrelay's streams and buckets on JetStream, idempotently.

Every service calls :func:`declare` at start, so whichever starts first creates what is
missing and a broker restarted on an empty store is repaired by the next service start.
Streams whose settings changed are updated in place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import subjects

log = logging.getLogger(__name__)

#: Capability entries older than this mean the executor is gone.
EXECUTOR_LIVENESS_TTL_S = 15.0

#: How long a service keeps declaring while JetStream does not answer (a cluster still forming).
DECLARE_DEADLINE_S = 120.0

#: Pause between two declaration attempts.
DECLARE_RETRY_S = 0.5

#: How long a change of replicas waits for the cluster to have room for them (a node that is
#: restarting, or that the cluster has not yet seen as up) before the stream keeps its settings.
PLACEMENT_DEADLINE_S = 30.0

#: Answers that mean "JetStream is not ready yet", not "the declaration is wrong".
_NOT_READY = (TimeoutError, NoRespondersError, ServiceUnavailableError)

#: JetStream's "no suitable peers for placement": fewer nodes up (or known to be) than replicas.
_NO_SUITABLE_PEERS = 10005

#: Largest message any flowrelay stream accepts (workflows are capped well below this).
MAX_MSG_BYTES = 4 * 1024 * 1024


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
    def stream(name: str, subjects_: tuple[str, ...], retention: RetentionPolicy, **extra: object) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=list(subjects_),
            retention=retention,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
            duplicate_window=settings.dedup_window_s,
            max_msg_size=MAX_MSG_BYTES,
            **extra,
        )

    return [
        # Work queues: a message leaves when its consumer acks (or terms) it. The run queue
        # holds every unfinished run, so its limits cap queued + running runs, per tenant
        # subject too, whoever publishes (discard new: the publisher is refused).
        stream(
            subjects.RUNS_STREAM, subjects.RUNS_STREAM_SUBJECTS, RetentionPolicy.WORK_QUEUE,
            max_msgs=settings.max_queued_runs, max_msgs_per_subject=settings.max_queued_runs_per_tenant,
            discard=DiscardPolicy.NEW, discard_new_per_subject=True,
        ),
        stream(subjects.SUGGESTER_STREAM, subjects.SUGGESTER_STREAM_SUBJECTS, RetentionPolicy.WORK_QUEUE),
        stream(
            subjects.EVENTS_STREAM,
            subjects.EVENTS_STREAM_SUBJECTS,
            RetentionPolicy.LIMITS,
            max_age=settings.events_max_age_s,
            discard=DiscardPolicy.OLD,
            # Followers read history with direct gets (any replica answers, no consumer).
            allow_direct=True,
        ),
        stream(
            subjects.INDEX_STREAM,
            subjects.INDEX_STREAM_SUBJECTS,
            RetentionPolicy.LIMITS,
            max_age=settings.runs_ttl_s,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD,
            allow_direct=True,  # GET /runs pages through it with direct gets only
        ),
        stream(
            subjects.THREADS_STREAM,
            subjects.THREADS_STREAM_SUBJECTS,
            RetentionPolicy.LIMITS,
            max_age=settings.thread_ttl_s,
            discard=DiscardPolicy.OLD,
            allow_direct=True,  # a thread's turns are read with one batched direct get
        ),
        stream(
            subjects.DEADLETTER_STREAM,
            subjects.DEADLETTER_STREAM_SUBJECTS,
            RetentionPolicy.LIMITS,
            max_age=settings.events_max_age_s * 7,
        ),
    ]


def bucket_configs(settings: BusSettings) -> list[KeyValueConfig]:
    # Direct gets (any replica answers, and the key is in the request subject, which is what
    # lets NATS permissions confine a tenant's user to ``$KV.flowrelay_runs.<tenant>.>``).
    def bucket(name: str, ttl: float) -> KeyValueConfig:
        return KeyValueConfig(bucket=name, history=1, ttl=ttl, replicas=settings.stream_replicas, direct=True)

    return [
        bucket(subjects.RUNS_BUCKET, settings.runs_ttl_s),
        bucket(subjects.IDEMPOTENCY_BUCKET, settings.runs_ttl_s),
        bucket(subjects.EXECUTORS_BUCKET, EXECUTOR_LIVENESS_TTL_S),
        bucket(subjects.THREADS_BUCKET, settings.thread_ttl_s),
    ]


def api_keys_bucket_config(settings: BusSettings) -> KeyValueConfig:
    """Only the API's NATS user may read or write it, so only the API declares it."""
    return KeyValueConfig(bucket=subjects.API_KEYS_BUCKET, history=1, replicas=settings.stream_replicas, direct=True)


def stream_names(settings: BusSettings) -> list[str]:
    """Every JetStream stream :func:`declare` makes: the streams, the streams behind the buckets
    (``KV_``) and behind the object store of outputs (``OBJ_``). The API keys' bucket is the
    API's own (:func:`api_keys_bucket_config`), the step checkpoints' the executors' own
    (:func:`checkpoints_bucket_config`)."""
    return (
        [c.name for c in stream_configs(settings)]
        + [f"KV_{c.bucket}" for c in bucket_configs(settings)]
        + [f"OBJ_{subjects.OUTPUTS_BUCKET}"]
    )


def checkpoints_bucket_config(settings: BusSettings) -> KeyValueConfig:
    """Step checkpoints: only the executors' NATS user may touch them, so only executors
    declare the bucket. Kept as long as run records (a run may be redelivered that long);
    a run's entries are purged when it ends."""
    return KeyValueConfig(
        bucket=subjects.CHECKPOINTS_BUCKET, history=1, ttl=settings.runs_ttl_s,
        replicas=settings.stream_replicas, direct=True, max_value_size=MAX_MSG_BYTES,
    )


async def declare(js: JetStreamContext, settings: BusSettings) -> None:
    """Create or update every stream and bucket flowrelay's services share.

    Several services starting together on a fresh cluster all declare at once; concurrent
    creations of the same replicated stream stall JetStream's answers for several seconds
    (measured: about 6 s at replicas 3), so a timeout here means "try again", up to a deadline.
    """
    await _until_ready(lambda: _declare_once(js, settings))


async def _until_ready(step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` again while JetStream does not answer, or has no room yet for a new
    stream's replicas, until ``DECLARE_DEADLINE_S``."""
    deadline = time.monotonic() + DECLARE_DEADLINE_S
    while True:
        try:
            await step()
            return
        except (*_NOT_READY, BadRequestError) as exc:
            if isinstance(exc, BadRequestError) and exc.err_code != _NO_SUITABLE_PEERS:
                raise
            if time.monotonic() > deadline:
                raise
            log.warning("JetStream cannot declare yet (%s); retrying", exc)
            await asyncio.sleep(DECLARE_RETRY_S)


async def _update(js: JetStreamContext, config: StreamConfig, what: str) -> bool:
    """Update a stream in place. A change the cluster cannot place now (more replicas than
    nodes up) is asked again until ``PLACEMENT_DEADLINE_S``; that and any other refusal
    (e.g. retention cannot change in place) leaves the old settings, with a warning, so a
    service still starts on a degraded cluster. True if updated."""
    deadline = time.monotonic() + PLACEMENT_DEADLINE_S
    while True:
        try:
            await js.update_stream(config)
            return True
        except BadRequestError as exc:
            if exc.err_code == _NO_SUITABLE_PEERS and time.monotonic() < deadline:
                await asyncio.sleep(DECLARE_RETRY_S)
                continue
            log.warning("%s keeps its old settings: %s", what, exc)
            return False


async def _declare_once(js: JetStreamContext, settings: BusSettings) -> None:
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
        else:
            await _update(js, config, f"stream {config.name}")
    for config in bucket_configs(settings):
        await _declare_bucket_once(js, config)
    await declare_object_store(js, settings)


async def declare_object_store(js: JetStreamContext, settings: BusSettings) -> None:
    """The object store of large run outputs, kept as long as run records; an existing one is
    brought to the configured replica count, like the buckets."""
    try:
        await js.object_store(subjects.OUTPUTS_BUCKET)
    except (NotFoundError, Exception) as exc:  # nats-py raises its own NotFoundError subclass here
        if not isinstance(exc, NotFoundError) and type(exc).__name__ not in ("ObjectNotFoundError", "BucketNotFoundError"):
            raise
        await js.create_object_store(subjects.OUTPUTS_BUCKET, config=ObjectStoreConfig(
            bucket=subjects.OUTPUTS_BUCKET, ttl=settings.runs_ttl_s, replicas=settings.stream_replicas,
            storage=StorageType.FILE))
        log.info("created object store %s", subjects.OUTPUTS_BUCKET)
        return
    info = await js.stream_info(f"OBJ_{subjects.OUTPUTS_BUCKET}")
    if info.config.num_replicas != settings.stream_replicas:
        info.config.num_replicas = settings.stream_replicas
        if await _update(js, info.config, f"object store {subjects.OUTPUTS_BUCKET}"):
            log.info("object store %s now has %d replicas", subjects.OUTPUTS_BUCKET, settings.stream_replicas)


async def declare_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    """Create the bucket if missing; bring an existing one to ``config``'s replica count and
    turn on direct gets for buckets made before they were used."""
    await _until_ready(lambda: _declare_bucket_once(js, config))


async def _declare_bucket_once(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await js.key_value(config.bucket)
    except (NotFoundError, Exception) as exc:  # BucketNotFoundError subclasses vary by version
        if not _is_missing_bucket(exc):
            raise
        await js.create_key_value(config)
        log.info("created bucket %s", config.bucket)
        return
    stream = f"KV_{config.bucket}"
    info = await js.stream_info(stream)
    changes = []
    if config.direct and not info.config.allow_direct:
        info.config.allow_direct = True
        changes.append("answers direct gets")
    if info.config.num_replicas != config.replicas:  # e.g. a deployment moving to a cluster
        info.config.num_replicas = config.replicas
        changes.append(f"has {config.replicas} replicas")
    if changes and await _update(js, info.config, f"bucket {config.bucket}"):
        log.info("bucket %s now %s", config.bucket, " and ".join(changes))


def _is_missing_bucket(exc: Exception) -> bool:
    from nats.js.errors import BucketNotFoundError

    return isinstance(exc, (BucketNotFoundError, NotFoundError))


async def bucket(js: JetStreamContext, name: str) -> KeyValue:
    return await js.key_value(name)
