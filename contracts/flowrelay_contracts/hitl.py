"""Human in the loop: the built-in ``ask_human`` tool and where a workflow may use it.

An agent that calls ``ask_human(question, choices)`` pauses its run: the run's conversation
is saved, no worker holds it, and it resumes (on whichever executor takes the answer) with
the answer as the tool's result. Resuming means handing the saved conversation back to the
agent, so the agent must be one whose framework takes a message list (tinyagent) and whose
conversation is the run's own: a step of a simple or sequential workflow, or the coordinator
of a collaborative one (a sub-agent's conversation lives inside its coordinator's tool
call, which cannot be saved).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from flowrelay_contracts.workflow import Pattern, Workflow, WorkflowPlan, WorkflowProblem

#: Name of the built-in tool (what a node lists in ``tools``).
ASK_HUMAN = "ask_human"

#: Frameworks whose agents can ask: their conversation can be saved and handed back.
ASKING_FRAMEWORKS = frozenset({"tinyagent"})

#: Most choices one question may offer, and their length.
MAX_CHOICES = 32
MAX_CHOICE_CHARS = 200


class AnswerReply(BaseModel):
    """The reply to an answer sent on ``flowrelay.runs.input.<tenant>.<run_id>``: taken (the
    run is ``queued`` to resume) or refused with the code ``POST /runs/{id}/input`` answers
    with (``not_found``, ``not_waiting``, ``stale_wait``, ``wait_expired``, ``invalid_answer``,
    ``unavailable``) and the field at fault."""

    accepted: bool
    run_id: str | None = None
    status: str | None = None
    wait_id: str | None = None
    code: Literal["not_found", "not_waiting", "stale_wait", "wait_expired", "invalid_answer", "unavailable"] | None = None
    detail: str | None = None
    field: str | None = None


def ask_human_problems(workflow: Workflow, workflow_plan: WorkflowPlan, *, pointer: str = "/workflow") -> list[WorkflowProblem]:
    """Every node that lists ``ask_human`` where it cannot pause the run (see the module)."""
    coordinator = workflow_plan.coordinator
    problems: list[WorkflowProblem] = []
    for i, node in enumerate(workflow.nodes):
        for j, tool in enumerate(node.data.tools):
            if tool != ASK_HUMAN:
                continue
            where = f"{pointer}/nodes/{i}/data/tools/{j}"
            if node.data.framework not in ASKING_FRAMEWORKS:
                problems.append(WorkflowProblem(pointer=where, message=(
                    f"ask_human needs framework tinyagent (agent {node.data.name!r} uses {node.data.framework!r}, "
                    "whose conversation cannot be saved and resumed)")))
            elif workflow_plan.pattern == Pattern.COLLABORATIVE and coordinator is not None \
                    and node.data.name != coordinator.name:
                problems.append(WorkflowProblem(pointer=where, message=(
                    f"ask_human can be used by the coordinator ({coordinator.name!r}) only: agent {node.data.name!r} "
                    "runs inside the coordinator's tool call, which cannot be paused")))
    return problems
