"""openai: the OpenAI Agents SDK (``openai-agents``).

* Usage arrives as the SDK's own ``Usage`` on a ``ModelResponse``: ``input_tokens`` and
  ``output_tokens``, not chat-completions' ``prompt_tokens`` (reading those gave 0/0).
* The SDK exports traces to OpenAI by default whenever a key is set: a workflow's prompts
  and tool results would leave the executor. It is switched off here unless the operator
  asks for it with the SDK's own variable (``OPENAI_AGENTS_DISABLE_TRACING=0``).
* any-agent 1.18 builds ``InputTokensDetails`` without ``cache_write_tokens``, which openai
  >= 2.45 requires: the executor environment pins ``openai<2.45`` (locks/executor).
"""

from __future__ import annotations

import os
from typing import Any, Final

from flowrelay_executor.engine.frameworks import FrameworkAdapter, Tokens, tokens_of

#: The SDK's own switch; when the operator sets it, the SDK decides.
TRACING_ENV: Final = "OPENAI_AGENTS_DISABLE_TRACING"


class OpenAIAgentsAdapter(FrameworkAdapter):
    name = "openai"
    packages = ("agents",)
    distribution = "openai-agents"

    def prepare(self) -> None:
        if TRACING_ENV not in os.environ:
            from agents import set_tracing_disabled

            set_tracing_disabled(True)

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        response = args[0] if args else None
        return tokens_of(getattr(response, "usage", None), "input_tokens", "output_tokens")
