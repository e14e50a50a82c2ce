"""smolagents: a smolagents ``ToolCallingAgent``.

* any-agent runs smolagents' synchronous ``agent.run`` directly inside its async
  ``_run_async``: the whole run (every model call is blocking HTTP) would block the worker's
  event loop, and every other run on it. :meth:`SmolagentsAdapter.install` moves the run to
  a thread (with the run's context variables, so hooks and tools still know their run).
* Its tools must be plain ``def`` functions (it parses their source for a ``FunctionDef``;
  an ``async def`` fails with "No function definition found"): async tools, sub-agent tools
  included, are given as sync functions that run the coroutine on the worker's loop.
* It answers only through its ``final_answer`` tool: a model that replies in plain text is
  asked again until the turn limit. (The scripted model calls ``final_answer`` whenever it
  is offered.) The run's output is that tool's argument.
* Tools need Google-style docstrings with an ``Args:`` section describing every
  parameter, or smolagents refuses them (``DocstringParsingException``): flowrelay's tool
  wrapper writes one for every tool it hands to an agent.
* Counts are in the ``ChatMessage``'s ``raw`` completion (``usage.prompt_tokens``...).
* An agent keeps the current run in itself (``memory``, step numbers): concurrent runs of
  one instance mix their conversations, so each concurrent run gets its own instance.
* A raising tool is retried by smolagents (its error goes back to the model): flowrelay
  stops the run at the next model call instead.
* Its model client is created without any-agent's ``any_llm_args`` and its ``ApiModel``
  retries rate limits itself: :meth:`SmolagentsAdapter.install` turns both off, so retries
  are the run's (``options.retry``), visible in the trace.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

from flowrelay_executor.engine.frameworks import FrameworkAdapter, Tokens, tokens_of


class SmolagentsAdapter(FrameworkAdapter):
    name = "smolagents"
    packages = ("smolagents",)
    distribution = "smolagents"
    concurrent_runs = False

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        message = args[0] if args else None
        raw = getattr(message, "raw", None)
        usage = raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None)
        counted = tokens_of(usage, "prompt_tokens", "completion_tokens")
        if counted is not None:
            return counted
        return tokens_of(getattr(message, "token_usage", None), "input_tokens", "output_tokens")

    def adapt_tool(self, tool: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(tool):
            return tool
        loop = asyncio.get_running_loop()  # agents are built on the worker's loop

        def call(*args: Any, **kwargs: Any) -> Any:
            # Called from the run's thread (see install): the coroutine runs on the loop.
            return asyncio.run_coroutine_threadsafe(tool(*args, **kwargs), loop).result()

        functools.update_wrapper(call, tool)
        del call.__wrapped__  # smolagents reads the source of what it is given
        call.__signature__ = inspect.signature(tool)  # type: ignore[attr-defined]
        return call

    def install(self, agent: Any) -> None:
        from any_llm import AnyLLM

        # any-agent's AnyLLMModel creates its client without AgentConfig.any_llm_args (the
        # openai SDK then retries 429s and 5xx twice by itself): create it again with them.
        # And smolagents' ApiModel retries rate-limited calls itself, with waits (its
        # ``retry`` argument would also be sent to the provider as a request field): one
        # attempt per call, the run's retry policy does the rest, visibly.
        model = agent._agent.model
        model.client = AnyLLM.create(provider=model._provider, api_key=model._api_key, api_base=model._api_base,
                                     **(agent.config.any_llm_args or {}))
        model.retryer.max_attempts = 1
        run_in_loop = agent._run_async

        async def run_in_thread(prompt: Any, **kwargs: Any) -> Any:
            # asyncio.to_thread copies the context: the run, the agent and the trace id.
            return await asyncio.to_thread(asyncio.run, run_in_loop(prompt, **kwargs))

        agent._run_async = run_in_thread
