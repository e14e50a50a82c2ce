"""smolagents: a smolagents ``ToolCallingAgent``.

* It answers only through its ``final_answer`` tool: a model that replies in plain text is
  asked again until the turn limit. (The scripted model calls ``final_answer`` whenever it
  is offered.) The run's output is that tool's argument.
* Tools need Google-style docstrings with an ``Args:`` section describing every
  parameter, or smolagents refuses them (``DocstringParsingException``): flowrelay's tool
  wrapper writes one for every tool it hands to an agent.
* Counts are in the ``ChatMessage``'s ``raw`` completion (``usage.prompt_tokens``...).
* A raising tool is retried by smolagents (its error goes back to the model): flowrelay
  stops the run at the next model call instead.
"""

from __future__ import annotations

from typing import Any

from flowrelay_executor.engine.frameworks import FrameworkAdapter, Tokens, tokens_of


class SmolagentsAdapter(FrameworkAdapter):
    name = "smolagents"
    packages = ("smolagents",)
    distribution = "smolagents"

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        message = args[0] if args else None
        raw = getattr(message, "raw", None)
        usage = raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None)
        counted = tokens_of(usage, "prompt_tokens", "completion_tokens")
        if counted is not None:
            return counted
        return tokens_of(getattr(message, "token_usage", None), "input_tokens", "output_tokens")
