"""Threads on the bus: records in ``THREADS_BUCKET``, turns in ``THREADS_STREAM``.

The API creates threads and claims one for each run it accepts on it; the executor claims
it again for runs published straight to NATS, loads the earlier turns a run is given, and
records how each run ended (its turn, usage and status) before the run's record turns
terminal. That order is what lets the next run of the thread, accepted only once the
previous one has ended, see every earlier turn.

Reading a thread never scans its whole stream: the record lists where each run's turn is
stored and how large it is, so a run's history is chosen from the record (newest whole
turns within the budget) and fetched with one batched direct get (no consumer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from flowrelay_bus.runs import RunStore
from flowrelay_contracts import RunStatus, Usage, subjects
from flowrelay_contracts.messages import utcnow
from flowrelay_contracts.threads import ThreadRecord, ThreadRun, ThreadTurn, TurnRef

__all__ = [
    "CLAIM_GRACE_S",
    "History",
    "ThreadBusy",
    "ThreadFull",
    "ThreadMissing",
    "ThreadStore",
    "compact_turn",
    "pick_history",
    "turn_bytes",
]

#: A claim whose run has no record yet counts as busy for this long (the claimer is between
#: claiming and storing the run's record); after it the claim is taken to be abandoned.
CLAIM_GRACE_S = 60.0

#: Compare-and-set attempts on one thread record (conflicts need concurrent submits).
MAX_CAS_ATTEMPTS = 20

#: How long one batched read of turns may take.
READ_TIMEOUT_S = 10.0

#: Room for a compacted turn's JSON framing next to its two messages.
_COMPACT_OVERHEAD = 256

_END_STATUSES = frozenset({"204", "404"})


class ThreadMissing(LookupError):
    """No such thread (or it belongs to another tenant, or it expired)."""


class ThreadBusy(Exception):
    """Another run of the thread has not ended: the thread takes one run at a time."""

    def __init__(self, thread_id: str, run_id: str, status: RunStatus | None) -> None:
        state = status.value if status else "being submitted"
        super().__init__(
            f"thread {thread_id} is busy with run {run_id} ({state}); a thread takes one run at a time: wait for "
            "it to end (or cancel it), then send the next message"
        )
        self.run_id = run_id
        self.status = status


class ThreadFull(Exception):
    def __init__(self, thread_id: str, limit: int) -> None:
        super().__init__(f"thread {thread_id} has {limit} runs, the most one thread may have "
                         "(FLOWRELAY_MAX_THREAD_RUNS); start a new thread")


@dataclass(frozen=True)
class History:
    """The earlier turns a run is given, oldest first, and how many older ones were left out."""

    turns: list[ThreadTurn]
    dropped: int = 0

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [message for turn in self.turns for message in turn.messages]


def turn_bytes(messages: Sequence[dict[str, Any]]) -> int:
    """Size of a turn's messages as JSON: what the history budget counts."""
    return len(json.dumps(list(messages), separators=(",", ":"), ensure_ascii=False, default=str).encode())


def compact_turn(turn: ThreadTurn, budget: int) -> ThreadTurn:
    """``turn`` itself when it fits ``budget``; else its user message and the answer's text,
    shortened to fit (a turn larger than the whole budget would never be remembered)."""
    if turn_bytes(turn.messages) <= budget:
        return turn
    user = turn.messages[0]
    answer = next((m for m in reversed(turn.messages) if m.get("role") == "assistant" and m.get("content")), None)
    text = answer.get("content") if answer else ""
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    room = budget - turn_bytes([user]) - _COMPACT_OVERHEAD
    encoded = text.encode()
    if len(encoded) > room:
        text = encoded[: max(0, room - 64)].decode(errors="ignore") + " [... shortened: the turn was too long to keep]"
    messages = [user, {"role": "assistant", "content": text}]
    return turn.model_copy(update={"messages": messages, "compacted": True})


def pick_history(record: ThreadRecord, *, budget: int, exclude_run: str | None = None) -> tuple[list[TurnRef], int]:
    """The stored turns a run gets, oldest first: the newest whole turns whose sizes fit
    ``budget``, and how many older turns were left out."""
    refs = [r.turn for r in record.runs if r.turn is not None and r.run_id != exclude_run]
    kept: list[TurnRef] = []
    used = 0
    for ref in reversed(refs):
        if used + ref.bytes > budget:
            break
        kept.append(ref)
        used += ref.bytes
    kept.reverse()
    return kept, len(refs) - len(kept)


class ThreadStore:
    """Thread records (compare-and-set) and their turns; see the module docstring."""

    def __init__(self, nc: Client, js: JetStreamContext, kv: KeyValue, runs: RunStore) -> None:
        self._nc = nc
        self._js = js
        self._kv = kv
        self._runs = runs

    @classmethod
    async def open(cls, nc: Client, runs: RunStore, js: JetStreamContext | None = None) -> ThreadStore:
        js = js or nc.jetstream()
        return cls(nc, js, await js.key_value(subjects.THREADS_BUCKET), runs)

    # -- records ------------------------------------------------------------------------

    async def create(self, record: ThreadRecord) -> bool:
        key = subjects.thread_key(record.tenant, record.thread_id)
        try:
            await self._kv.create(key, record.__pydantic_serializer__.to_json(record))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def get(self, tenant: str, thread_id: str) -> ThreadRecord | None:
        found = await self._read(tenant, thread_id)
        return found[0] if found else None

    async def find(self, thread_id: str) -> ThreadRecord | None:
        """The thread ``thread_id`` whatever its tenant (admin keys): one wildcard read."""
        try:
            raw = await self._js.get_last_msg(f"KV_{subjects.THREADS_BUCKET}",
                                              subjects.thread_record_subject("*", thread_id))
        except NotFoundError:
            return None
        if not raw.data or (raw.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return ThreadRecord.model_validate_json(raw.data)

    async def claim(self, tenant: str, thread_id: str, run_id: str, *, max_runs: int) -> ThreadRecord:
        """Make ``run_id`` the thread's run in progress and list it among its runs.

        Raises :class:`ThreadMissing`, :class:`ThreadBusy` (another run has not ended) or
        :class:`ThreadFull`. Claiming again for the same run is a no-op (a repeated request,
        or the executor confirming the API's claim).
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            found = await self._read(tenant, thread_id)
            if found is None:
                raise ThreadMissing(thread_id)
            record, revision = found
            if record.active_run == run_id:
                return record
            if record.active_run is not None:
                status = await self._blocking_status(record)
                if status is not False:
                    raise ThreadBusy(thread_id, record.active_run, status)
            if any(r.run_id == run_id for r in record.runs):  # ended, then delivered again
                return record
            if len(record.runs) >= max_runs:
                raise ThreadFull(thread_id, max_runs)
            now = utcnow()
            claimed = record.model_copy(update={
                "active_run": run_id, "active_since": now, "updated_at": now,
                "runs": [*record.runs, ThreadRun(run_id=run_id, created_at=now)],
            })
            if await self._write(tenant, thread_id, claimed, revision):
                return claimed
        raise RuntimeError(f"thread {thread_id}: too many concurrent updates")

    async def record_end(
        self, tenant: str, thread_id: str, run_id: str, *, status: RunStatus, usage: Usage,
        cost_usd: float | None, turn: TurnRef | None,
    ) -> None:
        """Note how ``run_id`` ended (and where its turn is) in the thread's record."""

        def ended(run: ThreadRun) -> ThreadRun:
            return run.model_copy(update={"status": status, "usage": usage, "cost_usd": cost_usd, "turn": turn})

        await self._change(tenant, thread_id, lambda r: r.model_copy(update={
            "updated_at": utcnow(),
            "runs": [ended(run) if run.run_id == run_id else run for run in r.runs],
        }) if any(run.run_id == run_id for run in r.runs) else None)

    async def _blocking_status(self, record: ThreadRecord) -> RunStatus | None | bool:
        """The status of the run holding the thread, None for one not stored yet (and
        claimed recently), False when it no longer blocks anything."""
        assert record.active_run is not None
        run = await self._runs.get(record.tenant, record.active_run)
        if run is None:
            recent = record.active_since is not None and utcnow() - record.active_since < timedelta(seconds=CLAIM_GRACE_S)
            return None if recent else False
        return False if run.terminal else run.status

    async def _read(self, tenant: str, thread_id: str) -> tuple[ThreadRecord, int] | None:
        try:
            entry = await self._kv.get(subjects.thread_key(tenant, thread_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return ThreadRecord.model_validate_json(entry.value), entry.revision

    async def _write(self, tenant: str, thread_id: str, record: ThreadRecord, revision: int) -> bool:
        try:
            await self._kv.update(subjects.thread_key(tenant, thread_id),
                                  record.__pydantic_serializer__.to_json(record), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _change(self, tenant: str, thread_id: str, mutate: Callable[[ThreadRecord], ThreadRecord | None]) -> None:
        for _ in range(MAX_CAS_ATTEMPTS):
            found = await self._read(tenant, thread_id)
            if found is None:
                return
            changed = mutate(found[0])
            if changed is None or await self._write(tenant, thread_id, changed, found[1]):
                return
        raise RuntimeError(f"thread {thread_id}: too many concurrent updates")

    # -- turns --------------------------------------------------------------------------

    async def append_turn(self, turn: ThreadTurn, *, budget: int) -> TurnRef:
        """Store a run's turn (shortened if larger than ``budget``) and say where it is.

        The message id carries the attempt: a retried publish of the same attempt is
        dropped, a later attempt's turn is stored next to it (readers follow the record).
        """
        turn = compact_turn(turn, budget)
        ack = await self._js.publish(
            subjects.thread_turns(turn.tenant, turn.thread_id),
            turn.__pydantic_serializer__.to_json(turn),
            headers={subjects.MSG_ID_HEADER: f"{turn.run_id}:turn:{turn.attempt}"},
        )
        return TurnRef(seq=ack.seq, bytes=turn_bytes(turn.messages), attempt=turn.attempt)

    async def history(self, record: ThreadRecord, *, budget: int, exclude_run: str | None = None) -> History:
        """The earlier turns a run of ``record``'s thread is given (see :func:`pick_history`)."""
        refs, dropped = pick_history(record, budget=budget, exclude_run=exclude_run)
        return History(turns=await self.read_turns(record, refs), dropped=dropped)

    async def read_turns(self, record: ThreadRecord, refs: Sequence[TurnRef]) -> list[ThreadTurn]:
        """The turns stored at ``refs`` (oldest first), with batched direct gets from the
        oldest one forward: one request unless other attempts' turns sit in between."""
        wanted = {ref.seq for ref in refs}
        if not wanted:
            return []
        subject = subjects.thread_turns(record.tenant, record.thread_id)
        found: dict[int, ThreadTurn] = {}
        start = min(wanted)
        async with asyncio.timeout(READ_TIMEOUT_S):
            while len(found) < len(wanted):
                batch = await self._batch(subject, start, len(wanted) - len(found))
                if not batch:
                    break  # expired (the stream's max age) since the record was written
                for seq, data in batch:
                    if seq in wanted:
                        found[seq] = ThreadTurn.model_validate_json(data)
                start = batch[-1][0] + 1
                if start > max(wanted):
                    break
        return [found[seq] for seq in sorted(found)]

    async def _batch(self, subject: str, start_seq: int, count: int) -> list[tuple[int, bytes]]:
        """Up to ``count`` messages of ``subject`` from stream sequence ``start_seq`` on."""
        inbox = self._nc.new_inbox()
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            arrived.put_nowait(msg)

        sub = await self._nc.subscribe(inbox, cb=on_message)
        try:
            request = {"seq": start_seq, "next_by_subj": subject, "batch": count}
            await self._nc.publish(f"$JS.API.DIRECT.GET.{subjects.THREADS_STREAM}", json.dumps(request).encode(),
                                   reply=inbox)
            out: list[tuple[int, bytes]] = []
            while True:
                msg = await arrived.get()
                headers = msg.headers or {}
                status = headers.get("Status")
                if status in _END_STATUSES:
                    return out
                if status:
                    raise RuntimeError(f"reading thread turns failed: {status} {headers.get('Description', '')}")
                out.append((int(headers["Nats-Sequence"]), msg.data))
        finally:
            await sub.unsubscribe()
