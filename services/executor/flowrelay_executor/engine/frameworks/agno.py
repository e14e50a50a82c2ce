"""agno: an agno ``Agent``.

* An ``Agent`` keeps the current run on itself (``run_id``, ``run_response``, memory):
  each concurrent run gets its own instance.
* Counts are the assistant message's ``metrics`` (``input_tokens``/``output_tokens``).
* any-agent 1.18's agno wrapper ``unwrap`` assigns the saved ``arun_function_call`` to
  ``arun_function_calls`` (a typo for the method it wrapped), and never restores
  ``arun_function_call``: the second run of a reused agent with a tool fails with
  ``TypeError ... 'function_calls'``, and each run would wrap the previous wrapper.
  :meth:`AgnoAdapter.after_run` removes both instance attributes once no run of the agent
  is in flight, so the model's own methods are used again and the next run wraps afresh.
"""

from __future__ import annotations

from typing import Any, Final

from flowrelay_executor.engine.frameworks import (
    FrameworkAdapter,
    Tokens,
    tokens_of,
    with_client_args,
)

#: Methods of agno's ``Model`` that any-agent's wrapper replaces on the instance.
_WRAPPED_METHODS: Final = ("arun_function_call", "arun_function_calls")


class AgnoAdapter(FrameworkAdapter):
    name = "agno"
    packages = ("agno",)
    distribution = "agno"
    concurrent_runs = False

    def model_args(self, model_args: dict[str, Any], llm_args: dict[str, Any]) -> dict[str, Any]:
        # Its model calls any-llm's module-level acompletion with the model arguments.
        return with_client_args(model_args, llm_args)

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        message = kwargs.get("assistant_message")
        return tokens_of(getattr(message, "metrics", None), "input_tokens", "output_tokens")

    def after_run(self, agent: Any) -> None:
        if getattr(agent._wrapper, "callback_context", None):
            return  # another run of this agent is in flight and still wrapped
        model = agent._agent.model
        for method in _WRAPPED_METHODS:
            model.__dict__.pop(method, None)
