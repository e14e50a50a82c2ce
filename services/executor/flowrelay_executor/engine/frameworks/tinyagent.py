"""tinyagent: any-agent's own loop, talking to any-llm directly.

``after_llm_call`` gets the ``ChatCompletion``; its ``usage`` is the provider's count.
"""

from __future__ import annotations

from typing import Any

from flowrelay_executor.engine.frameworks import FrameworkAdapter, Tokens, tokens_of


class TinyAgentAdapter(FrameworkAdapter):
    name = "tinyagent"

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        response = args[0] if args else None
        return tokens_of(getattr(response, "usage", None), "prompt_tokens", "completion_tokens")
