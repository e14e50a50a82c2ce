"""Token streaming: a model's text as ``llm.delta`` events while it is being written.

What streams: the text content of model calls of frameworks whose adapter can stream
(``FrameworkAdapter.streams``: tinyagent, whose model call flowrelay makes with any-llm's
``acompletion(stream=True, stream_options={"include_usage": True})`` and rebuilds with
``ChatCompletionAccumulator``, so tool calls, provider extras and the provider's exact token
counts are what the whole answer would have had). Calls with structured output
(``response_format``) are not streamed: a half-written JSON object is no use to a reader.

Volume: fragments are coalesced per model call and sent once ``StreamSpec.interval_s`` has
passed since the first unsent one, or at ``StreamSpec.max_chars``, and always before the
call's ``llm.finished``; a provider sending one token per chunk thus costs one event per
interval, not one per token.

Secrets: the final answer is redacted like every event, so fragments are too. A fragment is
cut only where no secret can straddle the cut (see ``DeltaStream._safe_cut``); the text
after it waits for more. The fragments of a call therefore concatenate to exactly its redacted
text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from flowrelay_contracts import EventType
from flowrelay_executor.errors import KEY_SHAPE_CHARS, Redactor
from flowrelay_executor.jobs import StreamSpec

if TYPE_CHECKING:
    from flowrelay_executor.engine.recipes import Recipe
    from flowrelay_executor.engine.run import Emit

__all__ = ["DeltaStream", "stream_support", "streaming_call_model"]

#: Text kept back at the end of a buffer at least (more when a known secret is longer).
MIN_HOLD_CHARS: Final = 64


@dataclass(slots=True)
class _Call:
    agent: str
    turn: int
    raw: str = ""
    sent_raw: int = 0  # characters of ``raw`` whose redacted form was sent
    sent_text: str = ""  # what was sent, redacted
    parts: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class DeltaStream:
    """Coalesces one run's text fragments into ``llm.delta`` events (see the module)."""

    def __init__(self, *, spec: StreamSpec, emit: Emit, redactor: Redactor, attempt: int) -> None:
        self._spec = spec
        self._emit = emit
        self._redactor = redactor
        self._attempt = attempt
        self._hold = max(MIN_HOLD_CHARS, redactor.longest_secret)
        self._calls: dict[tuple[str, int], _Call] = {}
        #: Fragments and characters sent, for the run's totals.
        self.events = 0
        self.chars = 0

    def write(self, agent: str, turn: int, text: str) -> None:
        """A fragment of the answer of ``agent``'s model call number ``turn``."""
        call = self._calls.get((agent, turn))
        if call is None:
            call = self._calls[(agent, turn)] = _Call(agent=agent, turn=turn)
        call.raw += text
        if len(call.raw) - call.sent_raw >= self._spec.max_chars + self._hold:
            self._flush(call, final=False)
        elif call.timer is None:
            call.timer = asyncio.get_running_loop().call_later(self._spec.interval_s, self._flush, call, False)

    def end(self, agent: str, turn: int) -> None:
        """The call is complete: send what is left of it."""
        call = self._calls.pop((agent, turn), None)
        if call is not None:
            self._flush(call, final=True)

    def close(self) -> None:
        """The run is over: send every call's rest (a cancelled call's text so far)."""
        for key in list(self._calls):
            self.end(*key)

    def _flush(self, call: _Call, final: bool) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        cut = len(call.raw) if final else self._safe_cut(call.raw, call.sent_raw)
        if cut > call.sent_raw:
            text = self._redactor.redact(call.raw[:cut])
            if text.startswith(call.sent_text):  # always, with a safe cut: never send a secret's half
                fragment = text[len(call.sent_text):]
                call.sent_raw, call.sent_text = cut, text
                for start in range(0, len(fragment), self._spec.max_chars):
                    self._send(call, fragment[start : start + self._spec.max_chars])
        if not final and call.sent_raw < len(call.raw):
            call.timer = asyncio.get_running_loop().call_later(self._spec.interval_s, self._flush, call, False)

    def _send(self, call: _Call, text: str) -> None:
        if not text:
            return
        self._emit(EventType.LLM_DELTA, {
            "agent": call.agent, "turn": call.turn, "attempt": self._attempt, "part": call.parts, "text": text,
        })
        call.parts += 1
        self.events += 1
        self.chars += len(text)

    def _safe_cut(self, raw: str, sent: int) -> int:
        """The furthest position up to which ``raw`` may be sent now: at least the longest
        secret before its end (so every secret that could straddle the cut is already in
        ``raw`` and is found), outside every secret found, and at a character no key shape
        contains (so no key being written is cut in two)."""
        position = len(raw) - self._hold
        if position <= sent:
            return sent
        spans = self._redactor.spans(raw)
        while position > sent:
            char = raw[position]
            if char not in KEY_SHAPE_CHARS and not (char.isspace() and raw[:position].rstrip().endswith("Bearer")) \
                    and not any(start < position < end for start, end in spans):
                return position
            position -= 1
        return sent


def stream_support(recipe: Recipe) -> tuple[bool, str | None]:
    """Whether ``recipe``'s agent streams its text, and if not, why (for ``agent.started``)."""
    from flowrelay_executor.engine.frameworks import adapter

    if not adapter(recipe.framework).streams:
        return False, (f"framework '{recipe.framework}' cannot stream tokens through flowrelay: this agent's "
                       "answers come whole (agent.finished, and the run's output)")
    if recipe.output_schema is not None:
        return False, "structured output (output_schema) is not streamed: this agent's answer comes whole"
    return True, None


def streaming_call_model(
    agent: Any, original: Callable[..., Awaitable[Any]], *, current: Callable[[], tuple[DeltaStream, int] | None]
) -> Callable[..., Awaitable[Any]]:
    """A tinyagent ``call_model`` that streams when the current run asks for it.

    ``current()`` says whether this call streams: the run's :class:`DeltaStream` and the
    call's turn number, or None (not streaming: the original, whole-answer call is made).
    """
    from any_llm.utils.streaming import ChatCompletionAccumulator

    async def call_model(**params: Any) -> Any:
        target = current() if not params.get("response_format") else None
        if target is None:
            return await original(**params)
        stream, turn = target
        name = agent.config.name
        chunks = await agent.llm.acompletion(**params, stream=True, stream_options={"include_usage": True})
        accumulator = ChatCompletionAccumulator()
        try:
            async for chunk in chunks:
                accumulator.add(chunk)
                for choice in chunk.choices:
                    if choice.index == 0 and choice.delta.content:
                        stream.write(name, turn, choice.delta.content)
        finally:
            stream.end(name, turn)
        return accumulator.completion

    return call_model
