"""The one list of NATS names flowrelay uses: subjects, streams, consumers and KV buckets.

Every publisher and subscriber imports its names from here, so ``grep`` on a constant
shows where a subject is produced and consumed. Nothing else in the code spells a subject.

Subjects carry the tenant as a token, so NATS permissions can confine a user to one tenant
(``flowrelay.events.<tenant>.>``) and the executor learns a run's tenant from the subject it
was published on, which the publisher's permissions vouch for.

Subject map (who publishes -> who consumes):

==============================================  ======================  ==========================
subject                                         published by            consumed by
==============================================  ======================  ==========================
``flowrelay.runs.requested.<tenant>``           api, client             executor (durable, queue)
``flowrelay.runs.cancel.<tenant>.<run_id>``     api, client             executor (core broadcast)
``flowrelay.runs.input.<tenant>.<run_id>``      client                  executor (queue, replies)
``flowrelay.events.<tenant>.<run_id>``          executor, suggester     api (SSE), client, you
``flowrelay.index.<tenant>.<run_id>``           api, executor           api (GET /runs)
``flowrelay.runs.failed``                       executor                suggester (durable)
``flowrelay.runs.advise``                       api (suggest mode)      suggester (durable)
``flowrelay.deadletter``                        executor, suggester     operators
``flowrelay.threads.<tenant>.<thread_id>``      executor                executor, api, client
==============================================  ======================  ==========================
"""

from __future__ import annotations

#: Root of every flowrelay subject; one NATS account can host several deployments only
#: through separate accounts, not prefixes, so this is fixed.
ROOT = "flowrelay"

# -- subjects ---------------------------------------------------------------------------

#: A client asks for a run (payload: :class:`~flowrelay_contracts.messages.RunRequested`);
#: ``flowrelay.runs.requested.<tenant>``.
RUN_REQUESTED_PREFIX = f"{ROOT}.runs.requested"
RUN_REQUESTED_ALL = f"{RUN_REQUESTED_PREFIX}.*"

#: Ask the executor holding a run to stop it (payload: ``CancelRequest``); core NATS;
#: ``flowrelay.runs.cancel.<tenant>.<run_id>``.
RUN_CANCEL_PREFIX = f"{ROOT}.runs.cancel"
RUN_CANCEL_ALL = f"{RUN_CANCEL_PREFIX}.*.*"

#: An answer for a run waiting on ``ask_human`` (payload: ``HumanInput``); core NATS
#: request-reply, one executor of ``INPUT_QUEUE`` applies it and replies;
#: ``flowrelay.runs.input.<tenant>.<run_id>``.
RUN_INPUT_PREFIX = f"{ROOT}.runs.input"
RUN_INPUT_ALL = f"{RUN_INPUT_PREFIX}.*.*"

#: Failure reports for the suggester (payload: ``RunFailed``).
RUN_FAILED = f"{ROOT}.runs.failed"

#: Suggestion-only requests (``FLOWRELAY_EXECUTION=suggest``; payload: ``RunRequested``).
RUN_ADVISE = f"{ROOT}.runs.advise"

#: Trace events of one run (payload: ``TraceEvent``); ``flowrelay.events.<tenant>.<run_id>``.
EVENTS_PREFIX = f"{ROOT}.events"
EVENTS_ALL = f"{EVENTS_PREFIX}.*.*"

#: One small entry per run, written once when its record is created, in creation order:
#: what ``GET /runs`` pages through (payload: ``RunIndexEntry``);
#: ``flowrelay.index.<tenant>.<run_id>``.
INDEX_PREFIX = f"{ROOT}.index"
INDEX_ALL = f"{INDEX_PREFIX}.*.*"

#: Messages no executor can process (payload: ``DeadLetter``).
DEADLETTER = f"{ROOT}.deadletter"

#: The turns of one conversation (payload: ``ThreadTurn``), in order;
#: ``flowrelay.threads.<tenant>.<thread_id>``.
THREADS_PREFIX = f"{ROOT}.threads"
THREADS_ALL = f"{THREADS_PREFIX}.*.*"


def run_requested(tenant: str) -> str:
    """Subject a run request of ``tenant`` is published on."""
    return f"{RUN_REQUESTED_PREFIX}.{tenant}"


def tenant_of_request_subject(subject: str) -> str:
    """The tenant token of a ``flowrelay.runs.requested.<tenant>`` subject."""
    return subject[len(RUN_REQUESTED_PREFIX) + 1 :]


def run_events(tenant: str, run_id: str) -> str:
    """Subject carrying the trace events of ``run_id``."""
    return f"{EVENTS_PREFIX}.{tenant}.{run_id}"


def tenant_events(tenant: str) -> str:
    """Every event subject of ``tenant`` (what its read-only NATS user may read)."""
    return f"{EVENTS_PREFIX}.{tenant}.>"


def run_cancel(tenant: str, run_id: str) -> str:
    """Subject on which a cancel request for ``run_id`` is broadcast to executors."""
    return f"{RUN_CANCEL_PREFIX}.{tenant}.{run_id}"


def run_input(tenant: str, run_id: str) -> str:
    """Subject on which a NATS client answers ``run_id``'s question."""
    return f"{RUN_INPUT_PREFIX}.{tenant}.{run_id}"


def run_index(tenant: str, run_id: str) -> str:
    return f"{INDEX_PREFIX}.{tenant}.{run_id}"


def thread_turns(tenant: str, thread_id: str) -> str:
    """Subject carrying the turns of ``thread_id``."""
    return f"{THREADS_PREFIX}.{tenant}.{thread_id}"


def tenant_threads(tenant: str) -> str:
    """Every thread subject of ``tenant`` (what its NATS users may read)."""
    return f"{THREADS_PREFIX}.{tenant}.>"


def tenant_index(tenant: str | None) -> str:
    """Index entries of ``tenant``, or of every tenant for ``None``."""
    return f"{INDEX_PREFIX}.{tenant}.*" if tenant else INDEX_ALL


# -- streams ----------------------------------------------------------------------------

#: Work queue of run requests; a message leaves it when an executor acks or terms it.
RUNS_STREAM = "FLOWRELAY_RUNS"
RUNS_STREAM_SUBJECTS = (RUN_REQUESTED_ALL,)

#: Trace events of every run, kept for ``events_max_age_s`` so late subscribers replay them.
EVENTS_STREAM = "FLOWRELAY_EVENTS"
EVENTS_STREAM_SUBJECTS = (EVENTS_ALL,)

#: The run index (see ``INDEX_PREFIX``), kept as long as run records.
INDEX_STREAM = "FLOWRELAY_RUN_INDEX"
INDEX_STREAM_SUBJECTS = (INDEX_ALL,)

#: Work for the suggester: failure reports and suggestion-only requests.
SUGGESTER_STREAM = "FLOWRELAY_SUGGESTER"
SUGGESTER_STREAM_SUBJECTS = (RUN_FAILED, RUN_ADVISE)

#: Conversation turns, each kept ``thread_ttl_s`` from when it was written.
THREADS_STREAM = "FLOWRELAY_THREADS"
THREADS_STREAM_SUBJECTS = (THREADS_ALL,)

#: Poison messages, kept for inspection.
DEADLETTER_STREAM = "FLOWRELAY_DEADLETTER"
DEADLETTER_STREAM_SUBJECTS = (DEADLETTER,)

# -- durable consumers ------------------------------------------------------------------

#: Shared by every executor: they compete for run requests.
EXECUTORS_CONSUMER = "executors"

#: Shared by every suggester instance.
SUGGESTER_FAILURES_CONSUMER = "suggester-failures"
SUGGESTER_ADVISE_CONSUMER = "suggester-advise"

#: Queue group of executors applying cancel requests to records (one of them per request).
CANCEL_QUEUE = "flowrelay-cancel"

#: Queue group of executors applying answers sent over NATS (one of them per answer).
INPUT_QUEUE = "flowrelay-input"

# -- key-value buckets ------------------------------------------------------------------

#: Run records (``RunRecord``), keyed ``<tenant>.<run_id>``; entries expire after ``runs_ttl_s``.
RUNS_BUCKET = "flowrelay_runs"

#: ``Idempotency-Key`` header (hashed with the tenant) -> run id, so a retried ``POST /runs``
#: returns the same run.
IDEMPOTENCY_BUCKET = "flowrelay_idempotency"

#: Live executors and what they can run (``ExecutorCapabilities``); short TTL = liveness.
EXECUTORS_BUCKET = "flowrelay_executors"

#: The API's keys (hashes only), keyed by key id. Only the API's NATS user may touch it.
API_KEYS_BUCKET = "flowrelay_api_keys"

#: Thread records (``ThreadRecord``), keyed ``<tenant>.<thread_id>``; entries expire
#: ``thread_ttl_s`` after their last change.
THREADS_BUCKET = "flowrelay_threads"

#: Object store of run outputs too large for the record, named ``<tenant>.<run_id>``.
OUTPUTS_BUCKET = "flowrelay_outputs"

#: Step checkpoints of runs (``Checkpoint``), keyed ``<tenant>.<run_id>.<name>``: what a
#: redelivered or retried run resumes from. Only the executors' NATS user may touch it;
#: entries expire with the run records (``runs_ttl_s``) and are purged when a run ends.
CHECKPOINTS_BUCKET = "flowrelay_checkpoints"


def run_key(tenant: str, run_id: str) -> str:
    """Key of a run's record in ``RUNS_BUCKET``."""
    return f"{tenant}.{run_id}"


def checkpoint_key(tenant: str, run_id: str, name: str) -> str:
    """Key of one step checkpoint of a run in ``CHECKPOINTS_BUCKET``."""
    return f"{tenant}.{run_id}.{name}"


def run_checkpoints(tenant: str, run_id: str) -> str:
    """Key filter matching every checkpoint of a run."""
    return f"{tenant}.{run_id}.*"
def thread_key(tenant: str, thread_id: str) -> str:
    """Key of a thread's record in ``THREADS_BUCKET``."""
    return f"{tenant}.{thread_id}"


def thread_record_subject(tenant: str, thread_id: str) -> str:
    """The KV subject behind a thread's record (what NATS permissions match)."""
    return f"$KV.{THREADS_BUCKET}.{thread_key(tenant, thread_id)}"


def run_record_subject(tenant: str, run_id: str) -> str:
    """The KV subject behind a run's record (what NATS permissions match)."""
    return f"$KV.{RUNS_BUCKET}.{run_key(tenant, run_id)}"


# -- headers and inboxes ----------------------------------------------------------------

#: JetStream de-duplicates publishes with the same id inside the stream's window.
MSG_ID_HEADER = "Nats-Msg-Id"

#: Set by the API on cancel broadcasts whose record change it has already made.
CANCEL_RECORDED_HEADER = "Flowrelay-Cancel-Recorded"

#: Set by the API on a run request it just stored the record of: ``<revision> <digest>``
#: of that record (``RunStore.stamp``), so the executor's claim can compare-and-set against
#: it without reading the record first.
RECORD_STAMP_HEADER = "Flowrelay-Record-Stamp"


def tenant_inbox_prefix(tenant: str) -> str:
    """Reply-subject prefix of a tenant's NATS users: they may not read ``_INBOX.>``, where
    every other client's replies (records of other tenants among them) arrive."""
    return f"_FR_INBOX.{tenant}"
