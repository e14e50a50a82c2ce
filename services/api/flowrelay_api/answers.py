"""Answers sent over NATS: ``flowrelay.runs.input.<tenant>.<run_id>`` (request-reply).

A backend that talks to flowrelay over NATS alone answers a waiting run's ``ask_human``
question by sending a ``HumanInput`` there; one API process of the ``INPUT_QUEUE`` queue
group applies it exactly like ``POST /runs/{id}/input`` (``flowrelay_bus.hitl``: checked,
stored, the run's resumption queued) and replies ``{"accepted": true, "status", "wait_id"}``
or ``{"accepted": false, "code", "detail", "field"}``. The tenant is the subject's, which the
sender's NATS permissions vouch for. The API does this, not the executors, because queueing
work is the API's job: executors take runs, they never submit them.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from flowrelay_bus.hitl import InputRefused, answer_run
from flowrelay_bus.runs import RunStore
from flowrelay_contracts import HumanInput, subjects
from flowrelay_contracts.hitl import AnswerReply
from flowrelay_contracts.ids import is_valid_run_id
from flowrelay_contracts.tenants import is_valid_tenant

__all__ = ["serve_answers"]

log = logging.getLogger(__name__)


async def serve_answers(nc: Client, runs: RunStore, *, max_answer_bytes: int) -> Subscription:
    """Subscribe (queue group ``INPUT_QUEUE``) and answer every request until unsubscribed."""
    js = nc.jetstream()

    async def on_request(msg: Any) -> None:
        reply = await _apply(msg.subject, msg.data)
        if msg.reply:
            await nc.publish(msg.reply, reply.model_dump_json(exclude_none=True).encode())

    async def _apply(subject: str, data: bytes) -> AnswerReply:
        tenant, _, run_id = subject[len(subjects.RUN_INPUT_PREFIX) + 1:].partition(".")
        if not (is_valid_tenant(tenant) and is_valid_run_id(run_id)):
            return AnswerReply(accepted=False, code="not_found", detail="no such run")
        try:
            given = HumanInput.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            return AnswerReply(accepted=False, code="invalid_answer", detail=f"{where}: {first['msg']}", field=where)
        try:
            record = await answer_run(runs, js, tenant, run_id, given, max_answer_bytes=max_answer_bytes)
        except InputRefused as refused:
            return AnswerReply(accepted=False, code=refused.code, detail=refused.message, field=refused.field)
        except Exception as exc:  # noqa: BLE001 - the sender needs an answer, the log the details
            log.warning("answer for run %s over NATS failed: %s", run_id, type(exc).__name__)
            return AnswerReply(accepted=False, code="unavailable", detail="the answer could not be stored; retry")
        assert record.waiting is not None
        return AnswerReply(accepted=True, run_id=run_id, status=record.status.value, wait_id=record.waiting.wait_id)

    return await nc.subscribe(subjects.RUN_INPUT_ALL, queue=subjects.INPUT_QUEUE, cb=on_request)
