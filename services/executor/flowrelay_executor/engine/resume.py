"""Step checkpoints inside a run: reuse what earlier attempts finished, record what finishes.

What: a :class:`StepLog` per run knows the checkpoints of earlier attempts (``Job.checkpoints``,
loaded by the executor) and hands out new ones as steps finish. The orchestrator asks it
before running a step (:meth:`StepLog.reusable`) and tells it after (:meth:`StepLog.save`).

Which steps (``patterns``): in a sequential workflow every agent but the last (the last
one's output is the run's, stored by the terminal write right after); in a collaborative
one every completed call of a sub-agent. A simple (one-agent) run has none.

Why the input digest: a checkpoint answers only the question it was computed for. A
sequential step's input is the previous step's output, so it matches by construction; a
coordinator re-run on a resumed attempt may ask its sub-agents differently (a real model
is not deterministic), and then the call runs again instead of reusing a stale answer.

Checkpoints leave the worker as a :data:`~flowrelay_executor.jobs.CHECKPOINT` item of the
run's event stream, so the executor stores them in order with the events: an event that
follows a step's ``agent.finished`` is only published once that step's checkpoint is stored.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from flowrelay_contracts import Checkpoint, CheckpointKind, Usage
from flowrelay_executor import costs
from flowrelay_executor.jobs import CHECKPOINT, Job

__all__ = ["StepLog"]

#: Hex digits of a digest in a checkpoint name (64 bits: no collisions within one run).
_NAME_DIGEST_CHARS = 16


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class StepLog:
    """The checkpoints of one run: those to reuse, and the spend of those saved now."""

    def __init__(self, job: Job, send: Callable[[str, dict[str, Any]], None]) -> None:
        self._job = job
        self._send = send
        self._calls: Counter[tuple[str, str]] = Counter()
        #: Spend of the steps checkpointed by this attempt (not paid again on a retry).
        self.saved = Usage()
        self.saved_costs: list[float | None] = []
        #: Spend of the steps reused from earlier attempts (already paid, by them).
        self.reused = Usage()
        self.reused_costs: list[float | None] = []

    @staticmethod
    def step_name(index: int) -> str:
        """Name of the ``index``-th (1-based) step of a sequential workflow."""
        return f"step-{index}"

    def call_name(self, agent: str, request: str) -> str:
        """Name of this call of sub-agent ``agent`` with ``request`` (the n-th identical one)."""
        key = (agent, digest(request))
        self._calls[key] += 1
        return f"call-{digest(agent)[:_NAME_DIGEST_CHARS]}-{key[1][:_NAME_DIGEST_CHARS]}-{self._calls[key]}"

    def reusable(self, name: str, *, agent: str, prompt: str) -> Checkpoint | None:
        """The earlier attempt's checkpoint of this step, if it answered this very input."""
        found = self._job.checkpoints.get(name)
        if found is None or found.agent != agent or found.input_sha256 != digest(prompt):
            return None
        self.reused = self.reused + found.usage
        self.reused_costs.append(found.cost_usd)
        return found

    def save(
        self,
        name: str,
        *,
        kind: CheckpointKind,
        step: int,
        agent: str,
        prompt: str,
        output: Any,
        usage: Usage,
        step_costs: list[float | None],
        cost_note: str | None,
    ) -> None:
        """Hand the executor a finished step's checkpoint (it stores it in order with events)."""
        checkpoint = Checkpoint(
            run_id=self._job.run_id, tenant=self._job.tenant, name=name, kind=kind, step=step, agent=agent,
            input_sha256=digest(prompt), output=output, usage=usage, cost_usd=costs.total(step_costs),
            cost_note=cost_note, attempt=self._job.attempt,
        )
        self.saved = self.saved + usage
        self.saved_costs.extend(step_costs)
        self._send(CHECKPOINT, checkpoint.model_dump(mode="json"))
