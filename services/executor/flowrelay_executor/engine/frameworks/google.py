"""google: Google's Agent Development Kit (``google-adk``).

* ``after_model_callback`` gets ``llm_response``; counts are its ``usage_metadata``
  (``prompt_token_count``/``candidates_token_count``).
* Tool results reach any-agent's hook as a keyword argument (the hook saw None); results
  come from flowrelay's tool wrapper instead. ADK wraps a non-dict return value as
  ``{"result": value}`` before the model sees it.
* ``google-adk`` pins web-framework versions of its own: it lives only in the executors'
  environment (locks/executor), never under the API.
"""

from __future__ import annotations

from typing import Any

from flowrelay_executor.engine.frameworks import (
    FrameworkAdapter,
    Tokens,
    tokens_of,
    with_client_args,
)


class GoogleAdkAdapter(FrameworkAdapter):
    name = "google"
    packages = ("google.adk",)
    distribution = "google-adk"

    def model_args(self, model_args: dict[str, Any], llm_args: dict[str, Any]) -> dict[str, Any]:
        # Its model calls any-llm's module-level acompletion with the model arguments.
        return with_client_args(model_args, llm_args)

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        response = kwargs.get("llm_response")
        return tokens_of(
            getattr(response, "usage_metadata", None), "prompt_token_count", "candidates_token_count"
        )
