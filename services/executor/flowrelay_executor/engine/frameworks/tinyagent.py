"""tinyagent: any-agent's own loop, talking to any-llm directly.

* ``after_llm_call`` gets the ``ChatCompletion``; its ``usage`` is the provider's count.
* ``run_async`` takes a message list (it then adds no system prompt of its own and appends
  to the list it was given): a thread's earlier turns go in as real messages.
* Its model call is one any-llm ``acompletion``, which flowrelay makes streaming when the
  run asks for tokens (``engine.streaming``); the accumulated ``ChatCompletion`` is what
  the loop and the hooks get, as without streaming.
"""

from __future__ import annotations

from typing import Any

from flowrelay_executor.engine.frameworks import FrameworkAdapter, Tokens, tokens_of


class TinyAgentAdapter(FrameworkAdapter):
    name = "tinyagent"
    takes_messages = True
    streams = True

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        response = args[0] if args else None
        return tokens_of(getattr(response, "usage", None), "prompt_tokens", "completion_tokens")

    def install(self, agent: Any) -> None:
        # any-agent's callback wrapper replaces ``call_model`` per run and puts back what it
        # found, so this instance attribute stays under it.
        from flowrelay_executor.engine.run import CURRENT_AGENT, CURRENT_RUN
        from flowrelay_executor.engine.streaming import DeltaStream, streaming_call_model

        name = agent.config.name

        def current() -> tuple[DeltaStream, int] | None:
            run = CURRENT_RUN.get()
            if run is None or run.stream is None or CURRENT_AGENT.get() != name or agent.config.output_type:
                return None
            return run.stream, run.tally(name).turns

        agent.call_model = streaming_call_model(agent, agent.call_model, current=current)
