"""langchain: a LangGraph ReAct agent.

* ``on_llm_end`` hands over an ``LLMResult``; the counts are the message's
  ``usage_metadata`` (``input_tokens``/``output_tokens``), or ``llm_output.token_usage``.
  Structured output goes through any-llm directly and gives a ``ChatCompletion``.
* LangChain passes a run's callback handlers down to everything awaited inside it, so in
  agents-as-tools the coordinator's handler also sees the sub-agent's model and tool calls.
  The engine's callbacks report only hooks of the agent running innermost (see
  ``engine.events``); tool arguments and results come from flowrelay's tool wrapper, not
  from LangChain's ``input_str`` and ``ToolMessage``.
"""

from __future__ import annotations

from typing import Any

from flowrelay_executor.engine.frameworks import (
    FrameworkAdapter,
    Tokens,
    tokens_of,
    with_client_args,
)


class LangChainAdapter(FrameworkAdapter):
    name = "langchain"
    packages = ("langchain", "langgraph")
    distribution = "langchain"

    def model_args(self, model_args: dict[str, Any], llm_args: dict[str, Any]) -> dict[str, Any]:
        # Its model calls any-llm's module-level acompletion with the model arguments.
        return with_client_args(model_args, llm_args)

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        response = args[0] if args else None
        if hasattr(response, "choices"):  # a ChatCompletion from any-llm (structured output)
            return tokens_of(getattr(response, "usage", None), "prompt_tokens", "completion_tokens")
        generations = getattr(response, "generations", None)
        if generations and generations[0]:
            message = getattr(generations[0][0], "message", None)
            counted = tokens_of(getattr(message, "usage_metadata", None), "input_tokens", "output_tokens")
            if counted is not None:
                return counted
        llm_output = getattr(response, "llm_output", None) or {}
        return tokens_of(llm_output.get("token_usage"), "prompt_tokens", "completion_tokens")
