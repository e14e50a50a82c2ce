"""Answering a run that waits on ``ask_human``: shared by the API and the executors.

An answer is checked against the question (the run must be ``waiting`` on it, before its
deadline; with ``choices`` the answer must be one of them), stored in the run's record with
one compare-and-set (``waiting`` -> ``queued``, so of two answers exactly one counts), and a
resume request is queued on ``flowrelay.runs.requested.<tenant>`` for whichever executor
takes it (``Nats-Msg-Id: <run_id>:resume:<wait_id>``: a retried publish is dropped). Should
that publish fail, the record is put back to ``waiting`` so the answer can be sent again.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from nats.js import JetStreamContext

from flowrelay_bus.runs import RunStore
from flowrelay_contracts import HumanInput, RunRecord, RunRequested, RunStatus, subjects
from flowrelay_contracts.messages import utcnow

__all__ = ["InputRefused", "answer_run", "resume_request"]

Refusal = Literal["not_found", "not_waiting", "stale_wait", "wait_expired", "invalid_answer"]


class InputRefused(Exception):
    """Why an answer was not taken: ``code`` (HTTP: 404, 409 or 422), a sentence, the field."""

    def __init__(self, code: Refusal, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def resume_request(record: RunRecord) -> RunRequested:
    """The request that resumes ``record``'s run with the answer stored in it."""
    assert record.waiting is not None and record.workflow is not None
    return RunRequested(
        run_id=record.run_id, tenant=record.tenant, workflow=record.workflow, input=record.input,
        options=record.waiting.options, thread_id=record.thread_id, resume=record.waiting.wait_id,
        created_at=record.created_at,
    )


async def answer_run(
    store: RunStore, js: JetStreamContext, tenant: str, run_id: str, given: HumanInput, *, max_answer_bytes: int
) -> RunRecord:
    """Store ``given`` as the answer of ``run_id``'s question and queue its resumption.

    Raises :class:`InputRefused`; returns the record as stored (``queued``, answer set).
    """
    answer = given.answer
    if not answer.strip():
        raise InputRefused("invalid_answer", "must not be blank", field="answer")
    if (size := len(answer.encode())) > max_answer_bytes:
        raise InputRefused("invalid_answer", f"{size} bytes is above the limit of {max_answer_bytes} "
                           "(FLOWRELAY_MAX_ANSWER_BYTES)", field="answer")
    refusal: InputRefused | None = None

    def take(record: RunRecord) -> RunRecord | None:
        nonlocal refusal
        refusal = _refusal(record, given)
        if refusal is not None:
            return None
        assert record.waiting is not None
        waiting = record.waiting.model_copy(update={"answer": answer, "answered_at": utcnow()})
        return record.model_copy(update={"status": RunStatus.QUEUED, "waiting": waiting})

    # Read first: a refusal decided on a record the store only remembers could be stale.
    if await store.get(tenant, run_id) is None:
        raise InputRefused("not_found", f"run {run_id} not found")
    stored, changed = await store.change(tenant, run_id, take)
    if stored is None:
        raise InputRefused("not_found", f"run {run_id} not found")
    if not changed:
        assert refusal is not None
        raise refusal
    request = resume_request(stored)
    try:
        await js.publish(
            subjects.run_requested(tenant), request.__pydantic_serializer__.to_json(request),
            stream=subjects.RUNS_STREAM,
            headers={subjects.MSG_ID_HEADER: f"{run_id}:resume:{request.resume}"},
        )
    except BaseException:
        with contextlib.suppress(Exception):  # let the answer be sent again
            await store.update(tenant, run_id, _unanswer(answer))
        raise
    return stored


def _refusal(record: RunRecord, given: HumanInput) -> InputRefused | None:
    waiting = record.waiting
    if record.status != RunStatus.WAITING or waiting is None or waiting.answer is not None:
        return InputRefused("not_waiting", f"run {record.run_id} is not waiting for an answer (it is "
                            f"{record.status.value}); answers are for runs whose status is 'waiting'")
    if given.wait_id is not None and given.wait_id != waiting.wait_id:
        return InputRefused("stale_wait", f"run {record.run_id} now waits on question {waiting.wait_id}, not "
                            f"{given.wait_id}: read the run again for its current question", field="wait_id")
    if utcnow() >= waiting.deadline:
        return InputRefused("wait_expired", f"the question of run {record.run_id} waited until "
                            f"{waiting.deadline.isoformat()} (options.wait_timeout_s); the run fails as timed out")
    if waiting.choices and given.answer not in waiting.choices:
        return InputRefused("invalid_answer", "must be one of the question's choices: "
                            + ", ".join(repr(c) for c in waiting.choices), field="answer")
    return None


def _unanswer(answer: str):  # noqa: ANN202 - a RunStore mutation
    def undo(record: RunRecord) -> RunRecord | None:
        if record.status != RunStatus.QUEUED or record.waiting is None or record.waiting.answer != answer:
            return None
        waiting = record.waiting.model_copy(update={"answer": None, "answered_at": None})
        return record.model_copy(update={"status": RunStatus.WAITING, "waiting": waiting})

    return undo
