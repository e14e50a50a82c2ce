"""nats-server configuration: least-privilege users per role, TLS, JetStream durability.

Each flowrelay service connects as its own user and may publish and subscribe only where
its work is (the tables below are the whole of what each one does on NATS). Tenants get
read-only users confined to ``flowrelay.events.<tenant>.>``: live by subscription, history
only through consumers whose create subject names that filter (``$JS.API`` requests would
otherwise read any stream regardless of subscribe permissions), records by direct gets of
their own keys, and replies under their own inbox prefix (``_INBOX.>`` carries everyone's
replies). Anonymous connections are refused: the config has users and no
``no_auth_user``.

The file is JSON, which nats-server's configuration parser reads as is, so no value needs
quoting rules of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import bcrypt

from flowrelay_contracts import subjects

#: JetStream fsync period of deployments flowrelay configures (``flowrelay up``, compose):
#: "always" fsyncs every write before acknowledging it. The server's own default (2 min)
#: acknowledges writes that a power loss then loses (Jepsen, NATS 2.12, 2025): an accepted
#: run could vanish. Override with FLOWRELAY_NATS_SYNC_INTERVAL (e.g. "1s") to trade that
#: window for latency (the benchmark reports what it costs).
DEFAULT_SYNC_INTERVAL = "always"

#: bcrypt cost of stored password hashes (nats-server checks one per connection, ~60 ms).
BCRYPT_ROUNDS = 10


class Role(StrEnum):
    API = "api"
    EXECUTOR = "executor"
    SUGGESTER = "suggester"
    OPERATOR = "operator"  # people and the test suite: everything; never give it to a service
    TENANT = "tenant"  # read-only subscriber of one tenant
    CLIENT = "client"  # a tenant's backend over NATS: the reader's rights plus submit and cancel


@dataclass(frozen=True)
class NatsUser:
    name: str
    password: str
    role: Role
    tenant: str | None = None


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None
    verify_clients: bool = False  # mTLS: clients must present a certificate signed by ``ca``


_SHARED_STREAMS = (
    subjects.RUNS_STREAM,
    subjects.EVENTS_STREAM,
    subjects.INDEX_STREAM,
    subjects.SUGGESTER_STREAM,
    subjects.DEADLETTER_STREAM,
    f"KV_{subjects.RUNS_BUCKET}",
    f"KV_{subjects.IDEMPOTENCY_BUCKET}",
    f"KV_{subjects.EXECUTORS_BUCKET}",
    f"OBJ_{subjects.OUTPUTS_BUCKET}",
    subjects.THREADS_STREAM,
    f"KV_{subjects.THREADS_BUCKET}",
)
_API = "$JS.API"


def _declare(streams: Iterable[str]) -> list[str]:
    """What declaring the topology takes (every service does it at start): info, create,
    update. Delete and purge are nobody's but the operator's."""
    return [f"{_API}.INFO"] + [f"{_API}.STREAM.{verb}.{s}" for s in streams for verb in ("INFO", "CREATE", "UPDATE")]


def _direct(stream: str, *, body: bool = True, subject: str = ">") -> list[str]:
    gets = [f"{_API}.DIRECT.GET.{stream}.{subject}"]
    return gets + [f"{_API}.DIRECT.GET.{stream}"] if body else gets


def _kv(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def _durable(stream: str, consumer: str) -> list[str]:
    return [
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{_API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{_API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{_API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def permissions(role: Role, tenant: str | None = None) -> dict[str, Any] | None:
    """The publish/subscribe allow lists of ``role`` (None: unrestricted)."""
    events, runs_kv = subjects.EVENTS_STREAM, f"KV_{subjects.RUNS_BUCKET}"
    threads, threads_kv = subjects.THREADS_STREAM, f"KV_{subjects.THREADS_BUCKET}"
    if role == Role.OPERATOR:
        return None
    if role == Role.API:
        publish = [
            *_declare((*_SHARED_STREAMS, f"KV_{subjects.API_KEYS_BUCKET}")),
            f"{_API}.STREAM.MSG.GET.{events}", f"{_API}.STREAM.MSG.GET.{runs_kv}",
            f"{_API}.STREAM.MSG.GET.{subjects.INDEX_STREAM}", f"{_API}.STREAM.MSG.GET.{threads_kv}",
            *_direct(events), *_direct(subjects.INDEX_STREAM), *_direct(runs_kv, body=False),
            *_direct(f"KV_{subjects.IDEMPOTENCY_BUCKET}", body=False),
            *_direct(f"KV_{subjects.EXECUTORS_BUCKET}"), *_direct(f"KV_{subjects.API_KEYS_BUCKET}"),
            *_direct(f"OBJ_{subjects.OUTPUTS_BUCKET}"),  # GET /runs/{id}/output, without a consumer
            # GET /executors reads the queue depth from the executors' consumer
            f"{_API}.CONSUMER.INFO.{subjects.RUNS_STREAM}.{subjects.EXECUTORS_CONSUMER}",
            *_direct(threads), *_direct(threads_kv, body=False),  # threads: turns, records
            subjects.RUN_REQUESTED_ALL, subjects.RUN_ADVISE, subjects.RUN_CANCEL_ALL, subjects.EVENTS_ALL,
            subjects.INDEX_ALL, _kv(subjects.RUNS_BUCKET), _kv(subjects.IDEMPOTENCY_BUCKET),
            _kv(subjects.API_KEYS_BUCKET), _kv(subjects.THREADS_BUCKET),
        ]
        subscribe = ["_INBOX.>", subjects.EVENTS_ALL, _kv(subjects.RUNS_BUCKET), subjects.RUN_INPUT_ALL]
    elif role == Role.EXECUTOR:
        checkpoints = f"KV_{subjects.CHECKPOINTS_BUCKET}"
        publish = [
            *_declare((*_SHARED_STREAMS, checkpoints)), *_durable(subjects.RUNS_STREAM, subjects.EXECUTORS_CONSUMER),
            # step checkpoints (bus/flowrelay_bus/checkpoints.py): written, read back in one
            # batched direct get when a run resumes, and purged per run when it ends
            _kv(subjects.CHECKPOINTS_BUCKET), *_direct(checkpoints), f"{_API}.STREAM.PURGE.{checkpoints}",
            *_direct(f"OBJ_{subjects.OUTPUTS_BUCKET}"),  # a checkpoint too large for KV is read back
            f"{_API}.STREAM.MSG.GET.{events}", f"{_API}.STREAM.MSG.GET.{runs_kv}",
            *_direct(events), *_direct(runs_kv, body=False),
            *_direct(f"KV_{subjects.EXECUTORS_BUCKET}", body=False),  # is a run's holder alive?
            # large outputs: nats-py's object store reads the meta and purges replaced chunks
            f"$O.{subjects.OUTPUTS_BUCKET}.>", f"{_API}.STREAM.MSG.GET.OBJ_{subjects.OUTPUTS_BUCKET}",
            f"{_API}.STREAM.PURGE.OBJ_{subjects.OUTPUTS_BUCKET}",
            *_direct(threads), *_direct(threads_kv, body=False),  # a run's history; thread claims
            subjects.EVENTS_ALL, subjects.INDEX_ALL, subjects.RUN_FAILED, subjects.DEADLETTER,
            subjects.THREADS_ALL, _kv(subjects.RUNS_BUCKET), _kv(subjects.EXECUTORS_BUCKET),
            _kv(subjects.THREADS_BUCKET),
            f"{_API}.STREAM.MSG.DELETE.{subjects.RUNS_STREAM}",  # a resumed run's parked request
        ]
        subscribe = ["_INBOX.>", subjects.RUN_CANCEL_ALL]
    elif role == Role.SUGGESTER:
        publish = [
            *_declare(_SHARED_STREAMS),
            *_durable(subjects.SUGGESTER_STREAM, subjects.SUGGESTER_FAILURES_CONSUMER),
            *_durable(subjects.SUGGESTER_STREAM, subjects.SUGGESTER_ADVISE_CONSUMER),
            f"{_API}.STREAM.MSG.GET.{events}", *_direct(events), *_direct(runs_kv, body=False),
            subjects.EVENTS_ALL, subjects.DEADLETTER, _kv(subjects.RUNS_BUCKET),
        ]
        subscribe = ["_INBOX.>"]
    else:
        if tenant is None:
            raise ValueError(f"role {role} needs a tenant")
        own_events = subjects.tenant_events(tenant)
        publish = [
            f"{_API}.CONSUMER.CREATE.{events}.*.{own_events}",
            f"{_API}.DIRECT.GET.{events}.{own_events}",
            f"{_API}.DIRECT.GET.{runs_kv}.{subjects.run_record_subject(tenant, '>')}",
            # its threads: turns through consumers confined like events, records by key
            f"{_API}.CONSUMER.CREATE.{threads}.*.{subjects.tenant_threads(tenant)}",
            f"{_API}.DIRECT.GET.{threads_kv}.{subjects.thread_record_subject(tenant, '>')}",
        ]
        if role == Role.CLIENT:
            publish += [subjects.run_requested(tenant), subjects.run_cancel(tenant, "*"), subjects.run_input(tenant, "*"),
                        subjects.thread_record_subject(tenant, "*")]  # new threads (KV create)
        subscribe = [own_events, f"{subjects.tenant_inbox_prefix(tenant)}.>"]
    perms: dict[str, Any] = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    if role == Role.API:
        perms["allow_responses"] = True  # replies to answers sent over NATS (RUN_INPUT_ALL)
    return perms


def hash_password(password: str) -> str:
    """A bcrypt hash nats-server accepts (it recognises the ``$2a$`` prefix)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS, prefix=b"2a")).decode()


def authorization(users: Sequence[NatsUser]) -> dict[str, Any]:
    entries = []
    for user in users:
        entry: dict[str, Any] = {"user": user.name, "password": hash_password(user.password)}
        if (perms := permissions(user.role, user.tenant)) is not None:
            entry["permissions"] = perms
        entries.append(entry)
    return {"users": entries}


def server_config(
    *,
    users: Sequence[NatsUser],
    host: str,
    port: int,
    store_dir: Path,
    tls: TlsFiles | None = None,
    sync_interval: str | None = None,
    pid_file: Path | None = None,
    max_file_store: int | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A complete nats-server config (JSON). ``sync_interval`` is JetStream's fsync
    period ("always" fsyncs every write; the server's default is 2 minutes); ``extra`` adds
    top-level blocks (e.g. ``cluster``)."""
    jetstream: dict[str, Any] = {"store_dir": str(store_dir)}
    if sync_interval is not None:
        jetstream["sync_interval"] = sync_interval
    if max_file_store is not None:
        jetstream["max_file_store"] = max_file_store
    config: dict[str, Any] = {
        "host": host,
        "port": port,
        "jetstream": jetstream,
        "authorization": authorization(users),
    }
    if tls is not None:
        block: dict[str, Any] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
        if tls.ca is not None:
            block["ca_file"] = str(tls.ca)
        if tls.verify_clients:
            block["verify"] = True
        config["tls"] = block
    if pid_file is not None:
        config["pid_file"] = str(pid_file)
    config |= extra or {}
    return json.dumps(config, indent=2) + "\n"


#: The user cluster nodes authenticate each other's routes with. It exists only in the
#: ``cluster`` block, so no client can connect with it.
ROUTE_USER = "route"


def cluster_block(*, name: str, host: str, port: int, peers: Sequence[str], route_password: str) -> dict[str, Any]:
    """The ``cluster`` block of one node, for ``server_config(extra={"cluster": ...})``.

    The node listens for routes on ``host:port`` and accepts only peers presenting
    ``ROUTE_USER``/``route_password`` (stored as a bcrypt hash); it connects to each of
    ``peers`` (``host:port`` of the other nodes' route listeners) with the same credentials,
    which therefore appear in clear in the route URLs: the config file is a secret.
    """
    return {
        "name": name,
        "host": host,
        "port": port,
        "authorization": {"user": ROUTE_USER, "password": hash_password(route_password)},
        "routes": [f"nats-route://{ROUTE_USER}:{route_password}@{peer}" for peer in peers],
    }
