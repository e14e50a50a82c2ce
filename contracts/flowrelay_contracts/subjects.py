"""The one list of NATS names flowrelay uses: subjects, streams, consumers and KV buckets.

Every publisher and subscriber imports its names from here, so ``grep`` on a constant
shows where a subject is produced and consumed. Nothing else in the code spells a subject.

Subject map (who publishes -> who consumes):

=====================================  ======================  ==========================
subject                                published by            consumed by
=====================================  ======================  ==========================
``flowrelay.runs.requested``           api, client             executor (durable, queue)
``flowrelay.runs.cancel.<run_id>``     api, client             executor (core broadcast)
``flowrelay.events.<run_id>``          executor, suggester     api (SSE), client, you
``flowrelay.runs.failed``              executor                suggester (durable)
``flowrelay.runs.advise``              api (suggest mode)      suggester (durable)
``flowrelay.deadletter``               executor                operators
=====================================  ======================  ==========================
"""

from __future__ import annotations

#: Root of every flowrelay subject; one NATS account can host several deployments only
#: through separate accounts, not prefixes, so this is fixed.
ROOT = "flowrelay"

# -- subjects ---------------------------------------------------------------------------

#: A client asks for a run (payload: :class:`~flowrelay_contracts.messages.RunRequested`).
RUN_REQUESTED = f"{ROOT}.runs.requested"

#: Ask the executor holding a run to stop it (payload: ``CancelRequest``); core NATS.
RUN_CANCEL_PREFIX = f"{ROOT}.runs.cancel"
RUN_CANCEL_ALL = f"{RUN_CANCEL_PREFIX}.*"

#: Failure reports for the suggester (payload: ``RunFailed``).
RUN_FAILED = f"{ROOT}.runs.failed"

#: Suggestion-only requests (``FLOWRELAY_EXECUTION=suggest``; payload: ``RunRequested``).
RUN_ADVISE = f"{ROOT}.runs.advise"

#: Trace events of one run (payload: ``TraceEvent``); ``flowrelay.events.<run_id>``.
EVENTS_PREFIX = f"{ROOT}.events"
EVENTS_ALL = f"{EVENTS_PREFIX}.*"

#: Messages no executor can process (payload: ``DeadLetter``).
DEADLETTER = f"{ROOT}.deadletter"


def run_events(run_id: str) -> str:
    """Subject carrying the trace events of ``run_id``."""
    return f"{EVENTS_PREFIX}.{run_id}"


def run_cancel(run_id: str) -> str:
    """Subject on which a cancel request for ``run_id`` is broadcast to executors."""
    return f"{RUN_CANCEL_PREFIX}.{run_id}"


# -- streams ----------------------------------------------------------------------------

#: Work queue of run requests; a message leaves it when an executor acks or terms it.
RUNS_STREAM = "FLOWRELAY_RUNS"
RUNS_STREAM_SUBJECTS = (RUN_REQUESTED,)

#: Trace events of every run, kept for ``events_max_age_s`` so late subscribers replay them.
EVENTS_STREAM = "FLOWRELAY_EVENTS"
EVENTS_STREAM_SUBJECTS = (EVENTS_ALL,)

#: Work for the suggester: failure reports and suggestion-only requests.
SUGGESTER_STREAM = "FLOWRELAY_SUGGESTER"
SUGGESTER_STREAM_SUBJECTS = (RUN_FAILED, RUN_ADVISE)

#: Poison messages, kept for inspection.
DEADLETTER_STREAM = "FLOWRELAY_DEADLETTER"
DEADLETTER_STREAM_SUBJECTS = (DEADLETTER,)

# -- durable consumers ------------------------------------------------------------------

#: Shared by every executor: they compete for run requests.
EXECUTORS_CONSUMER = "executors"

#: Shared by every suggester instance.
SUGGESTER_FAILURES_CONSUMER = "suggester-failures"
SUGGESTER_ADVISE_CONSUMER = "suggester-advise"

# -- key-value buckets ------------------------------------------------------------------

#: Run records (``RunRecord``), keyed by run id; entries expire after ``runs_ttl_s``.
RUNS_BUCKET = "flowrelay_runs"

#: ``Idempotency-Key`` header -> run id, so a retried ``POST /runs`` returns the same run.
IDEMPOTENCY_BUCKET = "flowrelay_idempotency"

#: Live executors and what they can run (``ExecutorCapabilities``); short TTL = liveness.
EXECUTORS_BUCKET = "flowrelay_executors"

# -- headers ----------------------------------------------------------------------------

#: JetStream de-duplicates publishes with the same id inside the stream's window.
MSG_ID_HEADER = "Nats-Msg-Id"
