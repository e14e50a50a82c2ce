"""A thread's earlier turns in, the run's own turn out: the first agent's side of a thread.

The run's first agent (the one given the user's input) gets the earlier turns:

* as real messages when its framework's ``run_async`` takes a message list (tinyagent): the
  system prompt, every earlier message as stored (tool calls next to their results,
  provider fields kept), then the user's message. any-agent appends the agent's own
  messages to that list, which is exactly the turn to store;
* as text otherwise: a transcript of the earlier turns before the user's message. The
  ``agent.started`` event says which (``history.as``), and why.

The turn stored is the agent's real messages only when its answer is the run's answer
(simple and collaborative workflows, a message-list framework); otherwise the user's
message and the run's answer as text.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from flowrelay_executor.engine.frameworks import adapter
from flowrelay_executor.engine.text import as_text
from flowrelay_executor.jobs import JobHistory

__all__ = ["Conversation", "transcript"]

#: What the transcript of earlier turns starts with (frameworks without message lists).
TRANSCRIPT_HEADER: Final = "Earlier in this conversation (oldest first):"
#: What follows the transcript, before the user's new message.
NEW_MESSAGE_HEADER: Final = "The user's new message:"


@dataclass
class Conversation:
    """The first agent's prompt on a thread and, after its run, the turn it adds."""

    prompt: str | list[dict[str, Any]]
    given_as: Literal["messages", "text"]
    framework: str
    history: JobHistory
    prefix: int = 0  # messages of ``prompt`` before the user's message

    @classmethod
    def start(cls, history: JobHistory, user_input: str, *, framework: str, instructions: str) -> Conversation:
        if adapter(framework).takes_messages:
            from any_agent.frameworks.tinyagent import DEFAULT_SYSTEM_PROMPT

            # any-agent adds no system prompt to a list and appends to the list it is given.
            messages = [{"role": "system", "content": instructions or DEFAULT_SYSTEM_PROMPT},
                        *copy.deepcopy(history.messages)]
            prompt: str | list[dict[str, Any]] = [*messages, {"role": "user", "content": user_input}]
            return cls(prompt=prompt, given_as="messages", framework=framework, history=history,
                       prefix=len(messages))
        text = f"{transcript(history.messages)}\n\n{NEW_MESSAGE_HEADER}\n{user_input}" if history.messages else user_input
        return cls(prompt=text, given_as="text", framework=framework, history=history)

    @classmethod
    def resumed(cls, messages: list[dict[str, Any]], *, prefix: int, history: JobHistory, framework: str) -> Conversation:
        """The first agent's conversation continued after a pause (``engine.human``)."""
        return cls(prompt=messages, given_as="messages", framework=framework, history=history, prefix=prefix)

    def notice(self) -> dict[str, Any]:
        """What ``agent.started`` says about the history this agent was given."""
        notice: dict[str, Any] = {"turns": self.history.turns, "dropped": self.history.dropped, "as": self.given_as}
        if self.given_as == "text" and self.history.turns:
            notice["note"] = (f"framework '{self.framework}' takes no message list: the earlier turns were given "
                              "as text before the new message")
        if self.history.dropped:
            notice["dropped_note"] = (f"{self.history.dropped} older turn(s) left out to stay within "
                                      "FLOWRELAY_THREAD_HISTORY_MAX_BYTES")
        return notice

    def turn(self, user_input: str, output: Any, *, answer_is_agents: bool) -> tuple[list[dict[str, Any]], str]:
        """The turn to store: (messages, form). ``answer_is_agents``: this agent's answer is
        the run's answer (no other agent came after it)."""
        if answer_is_agents and isinstance(self.prompt, list) and len(self.prompt) > self.prefix:
            return [_plain(m) for m in self.prompt[self.prefix:]], "messages"
        return [{"role": "user", "content": user_input}, {"role": "assistant", "content": as_text(output)}], "text"


def transcript(messages: list[dict[str, Any]]) -> str:
    """Earlier messages as text, one line per message (tool calls with their results)."""
    lines = [TRANSCRIPT_HEADER]
    for message in messages:
        role, content = message.get("role"), _text(message.get("content"))
        if role == "tool":
            lines.append(f"[tool result: {content}]")
            continue
        if content:
            lines.append(f"{'User' if role == 'user' else 'Assistant'}: {content}")
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            lines.append(f"[assistant called {function.get('name')}({function.get('arguments')})]")
    return "\n".join(lines)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content, ensure_ascii=False, default=str)


def _plain(message: Any) -> dict[str, Any]:
    """A message as JSON data (any-agent appends ``model_dump()`` dicts; keep them whole)."""
    if isinstance(message, dict):
        return json.loads(json.dumps(message, ensure_ascii=False, default=str))
    dump = getattr(message, "model_dump", None)
    return dump(mode="json") if callable(dump) else {"role": "assistant", "content": str(message)}
