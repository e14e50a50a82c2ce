"""llama_index: a LlamaIndex ``FunctionAgent`` (``ReActAgent`` without tools).

* It streams the model's answer and drops chunks without choices, which is where an
  OpenAI-compatible server puts usage: no token counts exist to report. Every model call
  says so (``input_tokens``/``output_tokens`` null plus a ``cost_note``), never a 0.
* It turns a tool's exception, and an ``AgentCancel`` raised from a tool hook, into tool
  output for the model: a failing tool is caught by flowrelay's tool wrapper and the run is
  stopped at the next hook (``engine.run``), so it ends ``tool_failed``.
"""

from __future__ import annotations

from typing import Any

from flowrelay_executor.engine.frameworks import FrameworkAdapter, Tokens


class LlamaIndexAdapter(FrameworkAdapter):
    name = "llama_index"
    packages = ("llama_index.core",)
    distribution = "llama-index-core"

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        return None

    @property
    def no_tokens_note(self) -> str:
        return (
            "llama_index streams model answers without usage, so this call's tokens are unknown "
            "(and its cost)"
        )
