"""The executor: a competing consumer of run requests that runs them on its worker pool.

Read it top to bottom like arq's worker:

1. ``start``: warm the worker pool (any-agent imported once, in the fork server), connect, declare
   the topology and the durable consumer shared by all executors, advertise capabilities.
2. ``consume``: fetch as many requests as there are free slots (back-pressure: nothing is
   fetched that cannot start); ``accept`` decodes each (poison goes to the dead-letter
   stream with a failure event) and starts ``_execute`` as a task.
3. ``_execute``: mark the record running, stream the worker's events (and its step
   checkpoints) to the bus, heartbeat the message while it runs, then either hand a
   retryable failure back to JetStream to be attempted again later (``retries.py`` decides,
   ``durable.py`` hands it back without holding a slot), or ``_finish``: store the terminal record, publish the terminal event
   (and the failure report for the suggester), and only then ack.
4. ``drain``: on SIGTERM stop fetching, give in-flight runs a grace period, hand the rest
   back (nak) so another executor takes them, stop the workers.

Delivery guarantees: a request is acked only once its outcome is stored. A request seen
again after its run ended (redelivery, duplicate) is acked without running it again; if the
previous holder died between storing and publishing, the terminal event is republished
from the record, so every run ends with exactly one terminal event. A later attempt of a
run (redelivered or retried) resumes after the steps its checkpoints cover
(``flowrelay_bus.checkpoints``, ``engine/resume.py``), within the deadline of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from flowrelay_bus import policy, topology
from flowrelay_bus.cancel import record_cancel
from flowrelay_bus.checkpoints import CheckpointStore
from flowrelay_bus.events import RunEventLog, last_event, terminal_msg_id
from flowrelay_bus.index import RunIndex
from flowrelay_bus.outputs import OutputStore
from flowrelay_bus.runs import RunStore
from flowrelay_bus.threads import ThreadStore
from flowrelay_contracts import (
    Checkpoint,
    DeadLetter,
    ErrorCode,
    EventType,
    ExecutorCapabilities,
    Isolation,
    OutputRef,
    Pattern,
    RunError,
    RunFailed,
    RunIndexEntry,
    RunMode,
    RunOptions,
    RunRecord,
    RunRequested,
    RunStatus,
    plan,
    subjects,
)
from flowrelay_contracts.hitl import ask_human_problems
from flowrelay_contracts.ids import is_valid_run_id
from flowrelay_contracts.limits import workflow_problems
from flowrelay_contracts.messages import utcnow
from flowrelay_contracts.tenants import is_valid_tenant
from flowrelay_contracts.tracing import trace_context
from flowrelay_contracts.workflow import WorkflowError, WorkflowProblem
from flowrelay_executor import retries
from flowrelay_executor.conversations import Conversations
from flowrelay_executor.durable import Attempt, Durability
from flowrelay_executor.hitl import Waits
from flowrelay_executor.jobs import (
    CHECKPOINT,
    CannotStart,
    Job,
    JobHistory,
    ModelDefaults,
    Outcome,
    ResumePoint,
    StreamSpec,
)
from flowrelay_executor.metrics import ExecutorMetrics
from flowrelay_executor.payloads import fit_event, output_bytes
from flowrelay_executor.pool import ProcessPool, WorkerLost, WorkerStartError
from flowrelay_executor.settings import ExecutorSettings
from flowrelay_executor.threads import ThreadPool

log = logging.getLogger("flowrelay.executor")

#: Seconds between capability refreshes (the bucket's TTL is a few times this).
CAPABILITIES_INTERVAL_S = 5.0

#: Delay before a request handed back for an infrastructure error is delivered again.
NAK_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)

#: Most run requests asked for in one fetch (fewer when fewer slots are free).
FETCH_BATCH = 16

#: How long one fetch waits for run requests; also how long a drain waits for the loop.
FETCH_TIMEOUT_S = 1.0

#: Pause before fetching again after the connection dropped.
RETRY_FETCH_S = 0.5

#: Upper bound on ack-pending messages of the shared consumer (all executors together).
MAX_ACK_PENDING = 20_000

#: Pauses between attempts to store a finished run's outcome while the bus refuses it.
FINISH_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)

#: A request held by another live executor is handed back for this long: by then the holder
#: has acked it, or it is dead and its capabilities entry has expired (the TTL is this long).
HELD_ELSEWHERE_DELAY_S = topology.EXECUTOR_LIVENESS_TTL_S

_STATUS_EVENT = {
    "succeeded": EventType.RUN_COMPLETED,
    "failed": EventType.RUN_FAILED,
    "cancelled": EventType.RUN_CANCELLED,
}


@dataclass
class _ActiveRun:
    """A run this executor holds: its message (for heartbeats), its event writer and the
    attempt it claimed (the record's ``attempts``). ``stale`` once another executor took
    the run over (see ``_fence``): nothing more is written for it."""

    msg: Msg
    request: RunRequested
    events: RunEventLog
    attempt: int = 1
    stale: bool = False
    events_lost: bool = False
    #: Checkpoints of the run this attempt started with and those it stored (to clear them).
    checkpoints: list[Checkpoint] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    #: Step events and (``CHECKPOINT``) step checkpoints, in the order the worker reported them.
    outbox: asyncio.Queue[tuple[EventType | str, dict[str, Any], datetime | None] | None] = field(
        default_factory=asyncio.Queue)
    pump: asyncio.Task[None] | None = None


class Executor:
    """One executor process: a pool of agent workers fed from the shared durable consumer."""

    def __init__(self, settings: ExecutorSettings, *, executor_id: str | None = None) -> None:
        self.settings = settings
        self.executor_id = executor_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.pool: ProcessPool | ThreadPool | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._store: RunStore | None = None
        self._index: RunIndex | None = None
        self._executors_kv: KeyValue | None = None
        self._outputs: OutputStore | None = None
        self._durability: Durability = None  # type: ignore[assignment]  # set by attach
        self._conversations: Conversations | None = None
        self._waits: Waits | None = None
        self._active: dict[str, _ActiveRun] = {}
        self._slots: asyncio.Semaphore | None = None
        self._draining = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._background_fences: set[asyncio.Task[None]] = set()
        self._advertiser: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._heartbeater: asyncio.Task[None] | None = None
        self._started_at = utcnow()
        self.metrics = ExecutorMetrics()
        #: Port of this executor's Prometheus endpoint once it serves one (advertised).
        self.metrics_port: int | None = None

    # -- 1. start -----------------------------------------------------------------------

    async def start_pool(self) -> None:
        """Warm the workers before consuming, so the first run does not pay the imports."""
        s = self.settings
        if s.isolation == "process":
            pool = ProcessPool(
                size=s.workers,
                slots_per_worker=s.slots_per_worker,
                kill_grace_s=s.kill_grace_s,
                recycle_after_runs=s.recycle_after_runs,
                recycle_rss_mb=s.recycle_rss_mb,
                start_timeout_s=s.worker_start_timeout_s,
                frameworks=s.framework_list,
                on_worker_replaced=lambda reason: self.metrics.worker_restarts.labels(reason).inc(),
            )
            try:
                await pool.start()
                self.pool = pool
            except WorkerStartError as exc:
                log.error("%s; falling back to thread isolation", exc)
        if self.pool is None:
            pool_t = ThreadPool(slots=s.slots_per_worker, kill_grace_s=s.kill_grace_s, frameworks=s.framework_list)
            await pool_t.start()
            self.pool = pool_t
        self._slots = asyncio.Semaphore(self.pool.slots)
        for name, why in self.pool.framework_failures.items():
            log.warning("framework %s is installed but not offered: its self-check failed: %s", name, why)
        log.info(
            "executor %s: isolation=%s slots=%d frameworks=%s tools=%s",
            self.executor_id, self.pool.isolation, self.pool.slots, self.pool.frameworks, ", ".join(self.pool.tools),
        )
        for warning in self.pool.tool_warnings:  # once per executor, not once per worker
            log.warning("tools: %s", warning)
        pool = self.pool
        self.metrics.observe_state(
            in_flight=lambda: len(self._active), slots=lambda: pool.slots, workers=lambda: len(pool.pids)
        )
        if s.metrics_port >= 0:
            self.metrics_port = self.metrics.server.serve(s.metrics_host, s.metrics_port)

    async def attach(self, nc: Client) -> None:
        """Declare what the executor needs on the bus (before its subscriber binds)."""
        self._nc = nc
        self._js = js = nc.jetstream()
        await topology.declare(js, self.settings)
        self._store = await RunStore.open(js)
        self._index = RunIndex(js)
        self._executors_kv = await js.key_value(subjects.EXECUTORS_BUCKET)
        self._outputs = OutputStore(js)
        checkpoints = await CheckpointStore.open(nc, js, self.settings)
        self._durability = Durability(executor_id=self.executor_id, runs=self._store, checkpoints=checkpoints)
        self._conversations = Conversations(await ThreadStore.open(nc, self._store), self.settings)
        self._waits = Waits(js=js, store=self._store, checkpoints=checkpoints, settings=self.settings,
                            executor_id=self.executor_id)
        await js.add_consumer(subjects.RUNS_STREAM, consumer_config(self.settings))
        self._consumer = asyncio.create_task(self.consume(), name="flowrelay-executor-consume")
        self._consumer.add_done_callback(_report_stopped_consumer)
        self._advertiser = asyncio.create_task(self._advertise())
        self._heartbeater = asyncio.create_task(self._heartbeat())

    # -- 2. consume and accept -----------------------------------------------------------

    async def consume(self) -> None:
        """The fetch loop: ask for as many run requests as there are free slots, no more.

        Nothing is fetched that cannot start at once, so no request waits in this process
        unheard by JetStream, and an idle executor next to a busy one gets the work.
        """
        assert self._js is not None and self._slots is not None
        subscription = await self._js.pull_subscribe_bind(subjects.EXECUTORS_CONSUMER, stream=subjects.RUNS_STREAM)
        try:
            while not self._draining.is_set():
                await self._slots.acquire()  # wait for one free slot before asking for work
                self._slots.release()
                free = max(1, self.pool.slots - len(self._background)) if self.pool else 1
                try:
                    messages = await subscription.fetch(min(free, FETCH_BATCH), timeout=FETCH_TIMEOUT_S)
                except TimeoutError:  # nats-py raises its own subclass or asyncio's: no work now
                    continue
                except Exception as exc:  # noqa: BLE001 - this loop must outlive any fetch error
                    log.warning("fetching run requests failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(RETRY_FETCH_S)  # e.g. the connection is being re-established
                    continue
                for msg in messages:
                    await self.accept(msg)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def accept(self, msg: Msg) -> None:
        """Take one fetched request: decode it and start running it.

        ``consume`` fetched no more requests than there are free slots, so the slot is there.
        """
        assert self._slots is not None
        if self._draining.is_set():  # stopping: give it back at once for another executor
            await msg.nak()
            return
        await self._slots.acquire()
        try:
            request = _decode(msg)
        except (ValidationError, ValueError) as exc:
            self._slots.release()
            await self._reject_poison(msg, exc)
            return
        task = asyncio.create_task(self._guarded_execute(msg, request), name=f"execute-{request.run_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def cancel(self, tenant: str, run_id: str, reason: str) -> None:
        """Stop a run this executor holds (every executor hears every cancel broadcast)."""
        run = self._active.get(run_id)
        if run is not None and run.request.tenant == tenant and self.pool is not None:
            self.pool.cancel(run_id, reason)

    async def record_cancel(self, tenant: str, run_id: str, reason: str) -> None:
        """Apply a cancel that a NATS client only broadcast to the run's record (one executor
        of the queue group does this; the API records its cancels itself)."""
        assert self._store is not None and self._js is not None
        if not (is_valid_tenant(tenant) and is_valid_run_id(run_id)):
            return
        _, outcome = await record_cancel(self._store, self._js, tenant, run_id, reason, by="executor")
        log.info("run %s: cancel requested over NATS: %s", run_id, outcome.value)

    # -- 3. execute -----------------------------------------------------------------------

    async def _guarded_execute(self, msg: Msg, request: RunRequested) -> None:
        assert self._slots is not None
        try:
            await self._execute(msg, request)
        except Exception:
            log.exception("run %s: infrastructure error", request.run_id)
            await self._hand_back(msg)
        finally:
            # Only this delivery's own entry: a redelivery of a run still running here must
            # not end the first delivery's heartbeats and cancel.
            if (held := self._active.get(request.run_id)) is not None and held.msg is msg:
                del self._active[request.run_id]
            self._slots.release()

    async def _execute(self, msg: Msg, request: RunRequested) -> None:
        assert self._store is not None and self._js is not None and self.pool is not None
        assert self._conversations is not None and self._waits is not None
        run_id = request.run_id
        if run_id in self._active:
            # Redelivered while this executor runs it (heartbeats failed during a broker
            # outage): the first delivery's heartbeats and ack count for the message.
            return
        isolation = Isolation(self.pool.isolation)
        defaults = self._model_defaults()
        provider = "scripted" if defaults.scripted_url and _uses_scripted(request, defaults) else None

        tenant = request.tenant
        record = self._presumed(msg, request) or await self._store.get(tenant, run_id)
        if record is None:  # published straight to NATS, not through the API
            if not await self._adopt(msg, request):
                return
            record = await self._store.get(tenant, run_id)
            assert record is not None
        if record.waiting is not None and not record.terminal:  # it asked a person (hitl.py)
            delivery = await self._waits.on_delivery(msg, request, record)
            if delivery == "expired":
                await self._finish(msg, request, await RunEventLog.resume(self._js, tenant, run_id),
                                   self._waits.expired(record), only_if=lambda r: r.status == RunStatus.WAITING)
            if delivery != "run":
                return
        if not record.terminal and await self._held_elsewhere(record):
            log.info("run %s is running on executor %s; handing the redelivery back", run_id, record.executor_id)
            await msg.nak(delay=HELD_ELSEWHERE_DELAY_S)
            return
        if not record.terminal and record.retry_at is not None and (early := (record.retry_at - utcnow()).total_seconds()) > 0:
            await msg.nak(delay=early)  # a retry delivered before its wait ended (a failed nak)
            return
        # Retries are deliveries too, and not the "delivered without an outcome" kind.
        if not record.terminal and _deliveries(msg) - len(record.retries) > self.settings.max_deliver:
            await self._give_up(msg, request, record)
            return
        holder = record.executor_id

        def to_running(r: RunRecord) -> RunRecord | None:
            if r.terminal or r.cancel_requested or r.executor_id != holder:  # or claimed meanwhile
                return None
            return r.model_copy(update={
                "status": RunStatus.RUNNING, "started_at": r.started_at or utcnow(), "attempts": r.attempts + 1,
                "executor_id": self.executor_id, "isolation": isolation, "model_provider": provider, "retry_at": None,
            })

        # One compare-and-set both checks the record and claims the run for this attempt.
        record, claimed = await self._store.change(tenant, run_id, to_running)
        if record is None:  # presumed from a stamp, yet nothing is stored: its redelivery reads, and adopts it
            await msg.nak()
            return
        if record.terminal:
            await self._republish_terminal(record)
            await msg.ack()
            return
        if not claimed and not record.cancel_requested:  # another executor claimed it just now
            await msg.nak(delay=HELD_ELSEWHERE_DELAY_S)
            return
        if not claimed:  # cancel requested before it started
            await self._finish(msg, request, await RunEventLog.resume(self._js, tenant, run_id), Outcome(
                status="cancelled", error=RunError(code=ErrorCode.CANCELLED, message="cancelled before it started")
            ))
            return

        attempt = record.attempts
        if attempt == 1:
            self.metrics.queue_wait_seconds.observe(max(0.0, (utcnow() - record.created_at).total_seconds()))
        events = RunEventLog(self._js, tenant, run_id) if attempt == 1 else await RunEventLog.resume(self._js, tenant, run_id)
        run = _ActiveRun(msg=msg, request=request, events=events, attempt=attempt)
        self._active[run_id] = run
        run.pump = asyncio.create_task(self._pump(run))
        run.outbox.put_nowait((EventType.RUN_STARTED, {
            "attempt": attempt, "executor_id": self.executor_id, "isolation": isolation.value,
            "model_provider": provider, "tenant": tenant, **({"resumed": True} if request.resume else {}),
        }, utcnow()))  # stamped now, not when the pump gets to it: the worker's steps may come first

        try:
            # The API checked this already; a request published straight to NATS was not.
            if too_big := _over_limits(request, self.settings):
                raise WorkflowError(too_big)
            workflow_plan = plan(request.workflow)
            if cannot_ask := ask_human_problems(request.workflow, workflow_plan):
                raise WorkflowError(cannot_ask)
            history, resume = await self._opening(request, record)
        except WorkflowError as exc:
            outcome = Outcome(status="failed", error=RunError(code=ErrorCode.INVALID_WORKFLOW, message=str(exc)))
        except CannotStart as exc:
            outcome = Outcome(status="failed", error=exc.error)
        else:
            outcome = await self._run_attempt(run, record, workflow_plan.pattern, defaults, history, resume)
            if outcome is None:  # handed back to JetStream for a retry later
                return
        await self._close_outbox(run)
        if run.stale:
            log.warning("run %s: another executor took it over; this attempt ends without writing", run_id)
            return  # its holder acks the message; acking it here could lose the run
        if outcome.status == "waiting":  # paused by ask_human: saved and parked, the slot is free
            parked = await self._waits.park(msg, request, events, attempt, outcome)
            if parked.outcome != "cancel_requested":
                return
            outcome = outcome.model_copy(update={"status": "cancelled", "pause": None, "error": RunError(
                code=ErrorCode.CANCELLED, message="cancelled by client as it asked a person")})
        await self._finish_durably(run, outcome)

    def _presumed(self, msg: Msg, request: RunRequested) -> RunRecord | None:
        """The record as the API stored it, rebuilt from the request, when this is the
        request's first delivery and it carries the record's stamp (revision and digest):
        the claim below is a compare-and-set against that revision, so a record changed in
        the meantime (cancelled, say) fails it and the claim is decided on the record as
        read then. Saves the read of every run's record before its claim."""
        assert self._store is not None
        stamp = (msg.headers or {}).get(subjects.RECORD_STAMP_HEADER)
        if stamp is None or request.resume is not None or _deliveries(msg) != 1:
            return None
        return self._store.presume(request.tenant, request.run_id, RunRecord.queued_for(request), stamp)

    async def _opening(self, request: RunRequested, record: RunRecord) -> tuple[JobHistory | None, ResumePoint | None]:
        """What the run starts from besides its input: a thread's earlier turns
        (``conversations.py``), or the saved state of a run answered after ``ask_human``
        (``hitl.py``). Raises ``CannotStart``."""
        assert self._conversations is not None and self._waits is not None
        if request.resume is not None:
            return None, await self._waits.resume_point(record)
        if request.thread_id is not None:
            return await self._conversations.history(request), None
        return None, None

    async def _run_attempt(
        self, run: _ActiveRun, record: RunRecord, pattern: Pattern, defaults: ModelDefaults,
        history: JobHistory | None, resume: ResumePoint | None,
    ) -> Outcome | None:
        """Run this attempt within what is left of the run's deadline, resuming after the steps
        earlier attempts finished (on a thread: with its earlier turns; after an answer: from
        where it paused); its outcome, or None once a retry has been scheduled."""
        request, attempt = run.request, run.attempt
        limits = self._limits(request.options)
        # The deadline counts from the first attempt's start: it covers every attempt, but
        # not the time the run waited for a person (a resumed run gets what it had left).
        deadline = (record.started_at or utcnow()) + timedelta(seconds=limits.timeout_s or 0)
        if resume is not None:
            deadline = utcnow() + timedelta(seconds=(limits.timeout_s or 0) - resume.state.executed_s)
        if (remaining := (deadline - utcnow()).total_seconds()) <= 0:
            return Outcome(status="failed", error=RunError(code=ErrorCode.TIMEOUT, message=(
                f"the run's {limits.timeout_s:g} s deadline passed before attempt {attempt} could start "
                "(options.timeout_s covers every attempt, not the waits for an answer)")))
        if attempt > 1 and pattern != Pattern.SIMPLE:  # a simple run has no step to resume after
            run.checkpoints = await self._durability.resumable(request.tenant, request.run_id)
        spent, spent_cost = retries.unsaved_spend(record.retries)
        job = Job(
            run_id=request.run_id, tenant=request.tenant, workflow=request.workflow, input=request.input,
            timeout_s=remaining, run_timeout_s=limits.timeout_s, max_turns=limits.max_turns, defaults=defaults,
            attempt=attempt, checkpoints={c.name: c for c in run.checkpoints}, trace_context=trace_context(run.msg.headers),
            max_cost_usd=limits.max_cost_usd, max_tokens=limits.max_tokens, spent=spent, spent_cost_usd=spent_cost,
            stream=StreamSpec(interval_s=self.settings.stream_interval_ms / 1000) if request.options.stream_tokens else None,
            history=history, resume=resume,
        )
        log.debug("run %s: %s pattern, attempt %d", request.run_id, pattern, attempt)
        outcome, innocent = await self._attempt(run, job)
        retry, why_not = retries.plan(
            outcome.error, limits.retry, failed_attempt=len(record.retries) + 1, deadline=deadline, now=utcnow(),
            force=innocent and _deliveries(run.msg) < self.settings.max_deliver,
        )
        if retry is None:
            if why_not and outcome.error is not None:
                outcome.error.message += f" ({why_not})"
            return outcome
        await self._close_outbox(run)
        if not run.stale and await self._durability.retry_later(Attempt(run.msg, request, run.events, attempt),
                                                                outcome, retry):
            self.metrics.handed_back.inc()
        return None

    async def _attempt(self, run: _ActiveRun, job: Job) -> tuple[Outcome, bool]:
        """Run ``job`` on the pool; the outcome, and whether the run lost its worker through
        no fault of its own (killed because another run on it overran its deadline)."""
        assert self.pool is not None

        def report(type_: str, data: dict[str, Any], at: float) -> None:
            item = CHECKPOINT if type_ == CHECKPOINT else EventType(type_)
            run.outbox.put_nowait((item, data, datetime.fromtimestamp(at, UTC)))

        try:
            return await self.pool.run(job, report), False
        except WorkerLost as lost:
            retryable = not lost.crashed or self.settings.worker_crash_policy == "retry"
            log.warning("run %s: %s", job.run_id, lost.reason)
            return Outcome(status="failed", error=RunError(
                code=ErrorCode.WORKER_CRASHED, message=f"the run stopped because {lost.reason}", retryable=retryable,
            )), not lost.crashed

    async def _finish_durably(self, run: _ActiveRun, outcome: Outcome) -> None:
        """Store a computed outcome, retrying while the bus cannot take it (a full store, an
        outage) instead of handing the request back: a redelivery would run the agent, and
        pay its model calls, again. The run stays held (heartbeated) meanwhile; only a drain
        gives it up."""
        assert self._js is not None
        for attempt in itertools.count():
            try:
                if run.events_lost or attempt:  # first send what the stream may be missing
                    await run.events.republish_unconfirmed()
                await self._finish(run.msg, run.request, run.events, outcome, attempt=run.attempt)
                await self._durability.forget(run.request, run.checkpoints)
                return
            except Exception as exc:  # noqa: BLE001 - a stored outcome is the goal; keep trying
                if self._draining.is_set() or run.stale:
                    raise
                delay = FINISH_RETRY_S[min(attempt, len(FINISH_RETRY_S) - 1)]
                log.warning("run %s: storing its outcome failed (%s); retrying in %.0f s",
                            run.request.run_id, _describe_bus_error(exc), delay)
                await asyncio.sleep(delay)

    async def _finish(
        self, msg: Msg, request: RunRequested, events: RunEventLog, outcome: Outcome, *, attempt: int | None = None,
        only_if: Callable[[RunRecord], bool] | None = None,
    ) -> None:
        """Store the outcome, publish the terminal event (+ failure report), then ack.

        ``attempt``: the claim this outcome belongs to; the record is only ended while this
        executor still holds that claim (None: a run that was never claimed, e.g. cancelled
        while queued). ``only_if``: a further condition on the stored record (a wait that
        expired ends only if the run is still waiting).
        """
        assert self._store is not None and self._outputs is not None and self._conversations is not None
        assert self._waits is not None
        now = utcnow()
        outcome, output_ref = await self._place_output(request, outcome)
        status = RunStatus(outcome.status)
        if request.thread_id and attempt is not None:  # the turn first: the next run must see it
            await self._conversations.record(request, attempt, outcome)

        def to_terminal(r: RunRecord) -> RunRecord | None:
            if r.terminal:
                return None
            if attempt is not None and (r.executor_id != self.executor_id or r.attempts != attempt):
                return None  # the claim moved on: another executor owns this run now
            if only_if is not None and not only_if(r):
                return None
            return r.model_copy(update={
                "status": status, "output": outcome.output, "output_ref": output_ref, "error": outcome.error,
                "usage": outcome.usage,
                "agents": outcome.agents, "cost_usd": outcome.cost_usd, "cost_note": outcome.cost_note,
                "finished_at": now, "started_at": r.started_at or now,
                "mode": RunMode.DEGRADED if status == RunStatus.FAILED else r.mode,
            })

        stored, changed = await self._store.change(request.tenant, request.run_id, to_terminal)
        if stored is not None and changed:
            await self._publish_terminal(stored, events, request)
            active = self._active.get(request.run_id)
            self.metrics.run_ended(
                status.value, outcome.error.code.value if outcome.error else None,
                time.monotonic() - active.started if active else None,
            )
            if stored.waiting is not None:
                await self._waits.forget(stored)
        elif stored is not None and stored.terminal:
            # Ended by someone else (a cancel), or by an earlier try of ours whose terminal
            # event did not go out: announce it unless it already was (once, by its id).
            await self._republish_terminal(stored)
        elif stored is not None:
            log.warning("run %s: attempt %s is no longer the run's claim; its outcome is dropped", request.run_id, attempt)
            return
        await msg.ack()

    async def _place_output(self, request: RunRequested, outcome: Outcome) -> tuple[Outcome, OutputRef | None]:
        """Keep an output too large for the record in the object store (and link it), and
        fail a run whose output is larger than FLOWRELAY_MAX_OUTPUT_BYTES."""
        assert self._outputs is not None
        if outcome.output is None:
            return outcome, None
        data = output_bytes(outcome.output)
        if len(data) <= self.settings.max_inline_output_bytes:
            return outcome, None
        if len(data) > self.settings.max_output_bytes:
            return outcome.model_copy(update={"status": "failed", "output": None, "error": RunError(
                code=ErrorCode.OUTPUT_TOO_LARGE,
                message=f"the output is {len(data)} bytes, above the limit of {self.settings.max_output_bytes} "
                "(FLOWRELAY_MAX_OUTPUT_BYTES)")}), None
        ref = await self._outputs.put(request.tenant, request.run_id, data)
        return outcome.model_copy(update={"output": None}), ref

    async def _publish_terminal(self, record: RunRecord, events: RunEventLog, request: RunRequested | None) -> None:
        assert self._js is not None
        data: dict[str, Any] = {
            "status": record.status.value, "output": record.output,
            "output_ref": record.output_ref.model_dump() if record.output_ref else None,
            "error": record.error.model_dump(mode="json") if record.error else None,
            "usage": record.usage.model_dump(), "cost_usd": record.cost_usd, "cost_note": record.cost_note,
            "agents": [a.model_dump(mode="json") for a in record.agents], "mode": record.mode.value,
            "isolation": record.isolation.value if record.isolation else None,
            "model_provider": record.model_provider,
        }
        # One terminal event per run even if two executors race to announce the same end:
        # JetStream drops the second publish with this id inside the duplicate window.
        terminal = await events.emit(_STATUS_EVENT[record.status.value], fit_event(data),
                                     msg_id=terminal_msg_id(record.run_id))
        if record.status == RunStatus.FAILED and record.error is not None:
            started = record.started_at or record.created_at
            report = RunFailed(
                run_id=record.run_id, tenant=record.tenant, error=record.error, attempt=record.attempts, last_seq=terminal.seq,
                workflow=request.workflow if request else None, input=request.input if request else record.input,
                options=self._limits(request.options if request else RunOptions()),
                elapsed_s=((record.finished_at or utcnow()) - started).total_seconds(),
            )
            await self._js.publish(
                subjects.RUN_FAILED, report.model_dump_json().encode(),
                headers={subjects.MSG_ID_HEADER: f"{record.run_id}:failed"},
            )

    async def _republish_terminal(self, record: RunRecord) -> None:
        """A run ended but maybe its holder died before announcing it: announce it once."""
        assert self._js is not None and self._waits is not None
        last = await last_event(self._js, record.tenant, record.run_id)  # one read: what exists, and its seq
        if last is None or not last.type.terminal and last.type != EventType.SUGGESTION:
            events = RunEventLog(self._js, record.tenant, record.run_id, last_seq=last.seq if last else 0)
            await self._publish_terminal(record, events, None)
        if record.waiting is not None:  # cancelled while it waited: its saved state goes too
            await self._waits.forget(record)

    # -- events and heartbeats ----------------------------------------------------------

    async def _pump(self, run: _ActiveRun) -> None:
        """Publish a run's events in the order the worker reported them (none once stale)."""
        while (item := await run.outbox.get()) is not None:
            if run.stale:
                continue
            type_, data, at = item
            if type_ == CHECKPOINT:  # stored before any later event is published
                if (stored := await self._durability.keep(run.request, data)) is not None:
                    run.checkpoints.append(stored)
                continue
            await run.events.emit_nowait(type_, fit_event(data), at=at)
            if type_ == EventType.LLM_FINISHED:
                self.metrics.model_call(data, tenant=run.request.tenant)
        if not run.stale:
            await run.events.flush()

    async def _held_elsewhere(self, record: RunRecord) -> bool:
        """Whether another executor that is alive (its capabilities entry is fresh) runs it."""
        if record.status != RunStatus.RUNNING or not record.executor_id or record.executor_id == self.executor_id:
            return False
        assert self._executors_kv is not None
        try:
            entry = await self._executors_kv.get(record.executor_id)
        except KeyNotFoundError:
            return False
        if not entry.value:
            return False
        holder = ExecutorCapabilities.model_validate_json(entry.value)
        return (utcnow() - holder.updated_at).total_seconds() < topology.EXECUTOR_LIVENESS_TTL_S

    async def on_reconnected(self) -> None:
        """After a reconnect, re-check every held run's claim before writing more for it."""
        task = asyncio.create_task(self._fence(), name="flowrelay-executor-fence")
        self._background_fences.add(task)
        task.add_done_callback(self._background_fences.discard)

    async def _fence(self) -> None:
        """A run whose claim another executor took while this one was cut off (it thought us
        dead) is stopped here and nothing more is written for it: one owner per attempt."""
        assert self._store is not None and self._nc is not None
        with contextlib.suppress(Exception):
            await self._nc.flush()  # what was buffered during the outage is now on the server
        for run in list(self._active.values()):
            try:
                record = await self._store.get(run.request.tenant, run.request.run_id)
                # Step events in flight when the connection broke may be lost while later
                # ones, buffered during the outage, were stored: send the unconfirmed again.
                await run.events.republish_unconfirmed()
            except Exception:  # noqa: BLE001 - still reconnecting: the next reconnect checks again
                continue
            if record is not None and (record.executor_id != self.executor_id or record.attempts != run.attempt):
                run.stale = True
                log.warning("run %s: executor %s claimed it while this executor was cut off; stopping here",
                            run.request.run_id, record.executor_id)
                if self.pool is not None:
                    self.pool.cancel(run.request.run_id, "another executor took this run over")

    async def _close_outbox(self, run: _ActiveRun) -> None:
        """Wait for the run's step events to be stored. Steps the bus could not take (a full
        store, an outage) are left out of the trace rather than failing a run whose outcome
        is known: the log is re-read so the events that follow keep a gapless ``seq``."""
        assert self._js is not None
        run.outbox.put_nowait(None)
        if run.pump is None:
            return
        try:
            await run.pump
        except Exception as exc:  # noqa: BLE001 - the outcome still has to be stored
            log.warning("run %s: some step events could not be stored (%s); the trace skips them",
                        run.request.run_id, _describe_bus_error(exc))
            run.events_lost = True

    async def _heartbeat(self) -> None:
        """Tell JetStream every held run is still in progress (one loop for all runs)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            for run in list(self._active.values()):
                with contextlib.suppress(Exception):
                    await run.msg.in_progress()

    async def _advertise(self) -> None:
        assert self._js is not None and self.pool is not None
        kv = await self._js.key_value(subjects.EXECUTORS_BUCKET)
        while not self._draining.is_set():
            caps = ExecutorCapabilities(
                executor_id=self.executor_id, frameworks=self.pool.frameworks,
                framework_versions=self.pool.framework_versions, tools=self.pool.tools,
                mcp_stdio_commands=sorted(c.strip() for c in self.settings.mcp_stdio_allowlist.split(",") if c.strip()),
                slots=self.pool.slots, isolation=Isolation(self.pool.isolation),
                tool_modules=self.pool.tool_modules, unavailable_tools=self.pool.unavailable_tools,
                running=len(self._active), started_at=self._started_at, metrics_port=self.metrics_port,
            )
            with contextlib.suppress(Exception):
                await kv.put(self.executor_id, caps.model_dump_json().encode())
            with contextlib.suppress(Exception):
                queue = await self._js.consumer_info(subjects.RUNS_STREAM, subjects.EXECUTORS_CONSUMER)
                self.metrics.queue_waiting.set(queue.num_pending or 0)
                self.metrics.queue_held.set(queue.num_ack_pending or 0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._draining.wait(), CAPABILITIES_INTERVAL_S)
        with contextlib.suppress(Exception):
            await kv.delete(self.executor_id)

    # -- failures of the message itself ------------------------------------------------------

    async def _adopt(self, msg: Msg, request: RunRequested) -> bool:
        """Create the record (and index entry) of a run published straight to NATS.

        Run ids chosen by NATS clients must be unique across tenants (the API's are ULIDs):
        a request reusing another tenant's run id is refused rather than mixed up with it.
        """
        assert self._store is not None and self._index is not None
        existing = await self._store.find(request.run_id)
        if existing is not None and existing.tenant != request.tenant:
            await self._reject_poison(msg, ValueError(f"run id {request.run_id!r} is already used; choose another"),
                                      fail_record=False)
            return False
        record = RunRecord.queued_for(request)
        if await self._store.create(record):
            await self._index.add(RunIndexEntry(run_id=record.run_id, tenant=record.tenant, created_at=record.created_at))
        return True

    async def _reject_poison(self, msg: Msg, exc: ValidationError | ValueError, *, fail_record: bool = True) -> None:
        """A request that can never run: dead-letter it and fail its run with the reason."""
        assert self._js is not None and self._store is not None and self._index is not None
        reason = _poison_reason(msg.data, exc)
        run_id = _sniff_run_id(msg.data)
        tenant = subjects.tenant_of_request_subject(msg.subject)
        log.error("poison message on %s (run %s): %s", msg.subject, run_id, reason)
        letter = DeadLetter(subject=msg.subject, reason=reason, payload=msg.data[:4096].decode(errors="replace"),
                            run_id=run_id, tenant=tenant if is_valid_tenant(tenant) else None)
        await self._js.publish(subjects.DEADLETTER, letter.model_dump_json().encode())
        if run_id and fail_record and is_valid_tenant(tenant):
            error = RunError(code=ErrorCode.INVALID_REQUEST, message=reason)
            if await self._store.create(RunRecord(run_id=run_id, tenant=tenant)):
                await self._index.add(RunIndexEntry(run_id=run_id, tenant=tenant))

            def to_failed(r: RunRecord) -> RunRecord | None:
                if r.terminal:
                    return None
                return r.model_copy(update={"status": RunStatus.FAILED, "error": error, "finished_at": utcnow(),
                                            "mode": RunMode.DEGRADED})

            stored, changed = await self._store.change(tenant, run_id, to_failed)
            if stored is not None and changed:
                await self._publish_terminal(stored, await RunEventLog.resume(self._js, tenant, run_id), None)
                self.metrics.run_ended(RunStatus.FAILED.value, ErrorCode.INVALID_REQUEST.value, None)
        await msg.term()

    async def _give_up(self, msg: Msg, request: RunRequested, record: RunRecord) -> None:
        """Delivered more than FLOWRELAY_MAX_DELIVER times without an outcome stored (say the
        store's disk was full): fail the run with the reason and dead-letter the request.
        Should this fail too, the request is handed back and taken up again later: it is
        never dropped while its run is unfinished."""
        assert self._js is not None
        deliveries = _deliveries(msg)
        reason = (f"the run request was delivered {deliveries} times without its outcome being stored "
                  f"(limit FLOWRELAY_MAX_DELIVER={self.settings.max_deliver}); see the executor logs")
        log.error("run %s: %s", request.run_id, reason)
        letter = DeadLetter(subject=msg.subject, reason=reason, payload=msg.data[:4096].decode(errors="replace"),
                            run_id=request.run_id, tenant=request.tenant)
        await self._js.publish(subjects.DEADLETTER, letter.model_dump_json().encode(),
                               headers={subjects.MSG_ID_HEADER: f"{request.run_id}:gave-up"})
        events = await RunEventLog.resume(self._js, request.tenant, request.run_id)
        await self._finish(msg, request, events, Outcome(
            status="failed", error=RunError(code=ErrorCode.INTERNAL_ERROR, message=reason, retryable=True)))

    async def _hand_back(self, msg: Msg) -> None:
        self.metrics.handed_back.inc()
        with contextlib.suppress(Exception):
            await msg.nak(delay=NAK_BACKOFF_S[min(_deliveries(msg), len(NAK_BACKOFF_S)) - 1])

    # -- 4. drain -------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking work, let in-flight runs finish for a while, hand back the rest."""
        self._draining.set()
        if self._consumer is not None:
            # It ends after its current fetch; if it waits for a slot instead, stop it there.
            _, waiting = await asyncio.wait({self._consumer}, timeout=2 * FETCH_TIMEOUT_S)
            for task in waiting:
                task.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        running = [t for t in self._background if not t.done()]
        if running:
            log.info("draining: %d runs in flight, up to %.0f s", len(running), self.settings.drain_grace_s)
            _, pending = await asyncio.wait(running, timeout=self.settings.drain_grace_s)
            if pending:
                log.warning("handing back %d unfinished runs to other executors", len(pending))
                self.metrics.handed_back.inc(len(self._active))
                for run in list(self._active.values()):
                    with contextlib.suppress(Exception):
                        await run.msg.nak()
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeater is not None:
            self._heartbeater.cancel()
        if self._advertiser is not None:  # it stops on the drain flag and removes our entry
            with contextlib.suppress(Exception):
                await self._advertiser
        if self.pool is not None:
            await self.pool.close(grace_s=2.0)
        self.metrics.server.close()

    # -- helpers --------------------------------------------------------------------------

    def _limits(self, options: RunOptions) -> RunOptions:
        """The limits a run actually gets: its own, or the server defaults, capped."""
        s = self.settings
        return policy.resolve(options.model_copy(update={
            "timeout_s": min(options.timeout_s or s.default_timeout_s, s.max_timeout_s),
            "max_turns": options.max_turns or s.default_max_turns,
        }), s)

    def _model_defaults(self) -> ModelDefaults:
        s = self.settings
        return ModelDefaults(
            model_id=s.default_model, api_base=s.default_api_base, api_key=s.default_api_key,
            scripted_url=s.scripted_model_url,
        )


def _report_stopped_consumer(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the run-request loop stopped: %r; this executor takes no more work", task.exception())


def consumer_config(settings: ExecutorSettings) -> ConsumerConfig:
    """The durable consumer every executor shares (competing consumers)."""
    return ConsumerConfig(
        durable_name=subjects.EXECUTORS_CONSUMER,
        filter_subject=subjects.RUN_REQUESTED_ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        # Unlimited here: the executor itself gives up after FLOWRELAY_MAX_DELIVER deliveries,
        # failing the run and dead-lettering the request; JetStream giving up would only
        # stop delivering it, leaving the run "running" forever.
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
    )


def _over_limits(request: RunRequested, settings: ExecutorSettings) -> list[WorkflowProblem]:
    problems = workflow_problems(request.workflow, settings.workflow_limits())
    if (size := len(request.input.encode())) > settings.max_input_bytes:
        problems.append(WorkflowProblem(
            pointer="/input", message=f"{size} bytes is above the limit of {settings.max_input_bytes} "
            "(FLOWRELAY_MAX_INPUT_BYTES)"))
    elif request.thread_id and size > settings.max_thread_message_bytes:
        problems.append(WorkflowProblem(
            pointer="/input", message=f"{size} bytes is above the limit of {settings.max_thread_message_bytes} "
            "for a message on a thread (FLOWRELAY_MAX_THREAD_MESSAGE_BYTES)"))
    return problems


def _decode(msg: Msg) -> RunRequested:
    """The request, with its tenant taken from the subject: the publisher's NATS permissions
    vouch for the subject, not for what the payload claims."""
    request = RunRequested.model_validate_json(msg.data)
    tenant = subjects.tenant_of_request_subject(msg.subject)
    if not is_valid_tenant(tenant):
        raise ValueError(f"invalid tenant in subject {msg.subject!r}")
    if not is_valid_run_id(request.run_id):
        raise ValueError(f"invalid run id {request.run_id[:140]!r}: use 1-128 letters, digits, '-' or '_'")
    request.tenant = tenant
    return request


def _describe_bus_error(exc: BaseException) -> str:
    description = getattr(exc, "description", None)
    return f"{type(exc).__name__}: {description}" if description else type(exc).__name__


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered
    except Exception:
        return 1


def _uses_scripted(request: RunRequested, defaults: ModelDefaults) -> bool:
    for node in request.workflow.nodes:
        model = node.data.model_id
        if model is None and defaults.api_base == defaults.scripted_url:
            return True
        if model is None and defaults.model_id.startswith("scripted:"):
            return True
        if model is not None and model.startswith("scripted:"):
            return True
    return False


def _sniff_run_id(data: bytes) -> str | None:
    import json

    try:
        value = json.loads(data)
    except ValueError:
        return None
    run_id = value.get("run_id") if isinstance(value, dict) else None
    return run_id if isinstance(run_id, str) and 0 < len(run_id) <= 128 and run_id.replace("-", "").replace("_", "").isalnum() else None


def _poison_reason(data: bytes, exc: ValidationError | ValueError) -> str:
    import json

    if not isinstance(exc, ValidationError):
        return str(exc)
    try:
        value = json.loads(data)
    except ValueError:
        return "the payload is not JSON"
    if isinstance(value, dict) and value.get("schema_version", 1) != 1:
        return f"unsupported schema_version {value.get('schema_version')!r} (this executor speaks 1)"
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"invalid run request: {where}: {first['msg']}"
