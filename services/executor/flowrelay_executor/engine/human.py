"""``ask_human``: pausing a run for a person's answer, and resuming it with the answer.

Pausing is raised from a hook, not from the tool: any-agent turns an exception inside a tool
into "Error calling tool" text for the model, while an ``AgentCancel`` raised from a hook
ends the agent's run and reaches the engine. So ``before_tool_execution`` sees the call of
``ask_human`` and raises :class:`WaitForHuman` before the tool runs. At that moment the
agent's live message list (which ``before_llm_call`` handed us) ends with the model's
message asking the question: that list, the call's id, the tallies so far and where the
workflow stood make the :class:`PauseState` the executor saves.

Resuming gives the same agent the saved list plus a ``tool`` message carrying the answer
(and, for calls the same model message made after ``ask_human``, results saying they were
not run), so the conversation the model sees is the one it would have seen had the tool
simply taken a long time. Token counts, costs and turn counts continue from the saved
tallies, so the run's totals cover every segment.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from flowrelay_contracts.hitl import ASK_HUMAN, MAX_CHOICE_CHARS, MAX_CHOICES
from flowrelay_executor.engine.run import RunState, StopRun
from flowrelay_executor.errors import InvalidWorkflowError
from flowrelay_executor.jobs import PauseState
from flowrelay_executor.tools import ask_human

if TYPE_CHECKING:
    from flowrelay_executor.engine.history import Conversation
    from flowrelay_executor.engine.recipes import Recipe

__all__ = ["ASK_HUMAN", "WaitForHuman", "ask_human", "pause_here", "pause_state", "resumed_messages"]

#: The result given to a call the model made after ``ask_human`` in the same message.
NOT_RUN: Final = "not run: the run paused for a person's answer before this call; call it again if still needed"

#: Longest question kept (the rest is cut: it is shown to a person, not parsed).
MAX_QUESTION_CHARS: Final = 4000


class WaitForHuman(StopRun):
    """Raised from a hook when the model calls ``ask_human``: the run pauses."""

    def __init__(self, *, agent: str, question: str, choices: list[str] | None, tool_call_id: str,
                 later_calls: list[str], messages: list[dict[str, Any]]) -> None:
        super().__init__(f"agent '{agent}' asked a person: {question}")
        self.agent = agent
        self.question = question
        self.choices = choices
        self.tool_call_id = tool_call_id
        self.later_calls = later_calls
        self.messages = messages


def pause_here(run: RunState, recipe: Recipe, request: Any) -> None:
    """Called by ``before_tool_execution`` for a call of ``ask_human``: raise the pause (or
    fail the run for an agent that cannot pause); return to let the tool answer a call whose
    arguments are unusable."""
    if recipe.name not in run.top_level:
        run.fail(InvalidWorkflowError(
            f"agent '{recipe.name}' called ask_human, but only the workflow's own agents (a coordinator, not the "
            "agents it calls) can pause the run", agent=recipe.name, step=run.step_of(recipe.name)))
        raise StopRun("ask_human called by a sub-agent")
    wait = ask(recipe, request, run.live_messages.get(recipe.name))
    if wait is None:
        return
    run.tool_started(recipe.name, ASK_HUMAN, request.get("arguments") or {})
    raise wait


def pause_state(run: RunState, wait: WaitForHuman, *, step_index: int, conversation: Conversation | None) -> PauseState:
    """What the executor saves for a run paused at ``wait`` (the ``step_index``-th agent)."""
    return PauseState(
        step_index=step_index, agent=wait.agent, messages=run.redact(wait.messages), tool_call_id=wait.tool_call_id,
        later_calls=wait.later_calls, question=run.redact(wait.question), choices=wait.choices,
        tallies=run.tallies_state(), steps=run.step_count, executed_s=run.executed_s(),
        turn_prefix=conversation.prefix if conversation is not None else None,
        history=conversation.history if conversation is not None else None,
    )


def ask(recipe: Recipe, request: Any, messages: list[Any] | None) -> WaitForHuman | None:
    """The pause for a call of ``ask_human`` (``request`` as tinyagent's tool hook gets it),
    or None when the call's arguments are unusable (the tool then answers the model)."""
    arguments = request.get("arguments") if isinstance(request, dict) else None
    if not isinstance(arguments, dict) or messages is None:
        return None
    question = arguments.get("question")
    choices = arguments.get("choices")
    if not isinstance(question, str) or not question.strip():
        return None
    if isinstance(choices, str):  # some models send a JSON list as text
        try:
            choices = json.loads(choices)
        except ValueError:
            choices = None
    if not isinstance(choices, list) or not choices:
        choices = None
    else:
        choices = [str(c)[:MAX_CHOICE_CHARS] for c in choices[:MAX_CHOICES]]
    plain = [_plain(m) for m in messages]
    call_id, later = _pending_call(plain)
    if call_id is None:
        return None
    return WaitForHuman(agent=recipe.name, question=question[:MAX_QUESTION_CHARS], choices=choices,
                        tool_call_id=call_id, later_calls=later, messages=plain)


def resumed_messages(state: PauseState, answer: str) -> list[dict[str, Any]]:
    """The saved conversation with the answer as ``ask_human``'s result."""
    results = [{"role": "tool", "tool_call_id": state.tool_call_id, "name": ASK_HUMAN, "content": answer}]
    results += [{"role": "tool", "tool_call_id": call, "content": NOT_RUN} for call in state.later_calls]
    return [*state.messages, *results]


def _pending_call(messages: list[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """The id of the first unanswered ``ask_human`` call of the last model message, and the
    ids of the calls after it."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        answered = {m.get("tool_call_id") for m in messages[index + 1:] if m.get("role") == "tool"}
        calls = [c for c in message["tool_calls"] if isinstance(c, dict)]
        for position, call in enumerate(calls):
            if call.get("id") in answered or (call.get("function") or {}).get("name") != ASK_HUMAN:
                continue
            later = [str(c.get("id")) for c in calls[position + 1:] if c.get("id") not in answered]
            return str(call.get("id")), later
        return None, []
    return None, []


def _plain(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return json.loads(json.dumps(message, ensure_ascii=False, default=str))
    dump = getattr(message, "model_dump", None)
    return dump(mode="json") if callable(dump) else {"role": "assistant", "content": str(message)}
