"""One small adapter per any-agent framework: what the engine must know about each.

any-agent gives every framework the same ``AgentConfig`` and the same callback hooks, but
what reaches those hooks differs: where a model call's token counts are (a ``ChatCompletion``,
an openai-agents ``ModelResponse``, a LangChain ``LLMResult``, agno metrics, ADK usage
metadata, or nowhere), and what state any-agent's own wrapper leaves behind after a run.
An adapter answers exactly those questions for one framework; everything else (tool events,
failures, patterns) is framework-independent and lives in the engine.

Adding a framework: a module here with a :class:`FrameworkAdapter` subclass, listed in
:data:`ADAPTERS`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from collections.abc import Callable
from typing import Any, ClassVar

from flowrelay_contracts.workflow import KNOWN_FRAMEWORKS

__all__ = [
    "ADAPTERS", "FrameworkAdapter", "Tokens", "adapter", "available_frameworks", "tokens_of", "with_client_args",
]

#: (input tokens, output tokens) of one model call, or None when the framework reports none.
Tokens = tuple[int, int] | None


class FrameworkAdapter:
    """Defaults for a framework; a subclass overrides what its framework does differently."""

    #: any-agent's name of the framework (``AgentFramework``).
    name: ClassVar[str]
    #: Modules that must be importable for the framework to work (its any-agent extra).
    packages: ClassVar[tuple[str, ...]] = ()
    #: The distribution whose version is reported for the framework.
    distribution: ClassVar[str] = "any-agent"
    #: Whether one agent instance may serve several runs at once. False when the framework
    #: keeps the current run's state on the agent object: each concurrent run then gets an
    #: instance of its own (still reused by later runs).
    concurrent_runs: ClassVar[bool] = True
    #: Whether ``run_async`` takes an OpenAI-style message list (a thread's earlier turns as
    #: real messages); the others get them as text.
    takes_messages: ClassVar[bool] = False
    #: Whether flowrelay can stream this framework's model text (``llm.delta``).
    streams: ClassVar[bool] = False

    def installed(self) -> bool:
        try:
            return all(importlib.util.find_spec(package) is not None for package in self.packages)
        except (ImportError, ValueError):
            return False

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def prepare(self) -> None:
        """Called once before this framework's first agent is built in a process."""

    def tokens(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tokens:
        """Token counts of one model call, from what ``after_llm_call`` received."""
        return None

    @property
    def no_tokens_note(self) -> str:
        """The ``cost_note`` of a model call whose token counts the framework did not give."""
        return f"framework '{self.name}' reports no token counts for this model call"

    def adapt_tool(self, tool: Callable[..., Any]) -> Callable[..., Any]:
        """``tool`` (already wrapped by flowrelay) in the form this framework can call."""
        return tool

    def model_args(self, model_args: dict[str, Any], llm_args: dict[str, Any]) -> dict[str, Any]:
        """The node's ``model_args`` as this framework must get them for ``llm_args`` (any-llm
        client settings: unified exceptions, no SDK retries) to apply as well. The default is
        for frameworks whose model client any-agent creates from ``AgentConfig.any_llm_args``."""
        return model_args

    def install(self, agent: Any) -> None:
        """Adjust a newly created agent (the any-agent instance) before its first run."""

    def after_run(self, agent: Any) -> None:
        """Repair what a finished run left in ``agent`` (the any-agent instance), if anything."""


def with_client_args(model_args: dict[str, Any], llm_args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` plus ``llm_args`` as ``client_args``, for frameworks that call any-llm's
    module-level ``acompletion`` with the model arguments (it builds a client per call from
    ``client_args`` and ignores ``AgentConfig.any_llm_args``). flowrelay's settings win: the
    SDK's own retries would hide attempts from the run's retry policy."""
    return {**model_args, "client_args": {**model_args.get("client_args", {}), **llm_args}}


def tokens_of(usage: Any, input_field: str, output_field: str) -> Tokens:
    """``(input, output)`` from a usage object or dict, or None if it has neither count."""
    if usage is None:
        return None
    read = usage.get if isinstance(usage, dict) else lambda name: getattr(usage, name, None)
    input_tokens, output_tokens = read(input_field), read(output_field)
    if input_tokens is None and output_tokens is None:
        return None
    return int(input_tokens or 0), int(output_tokens or 0)


def _load() -> dict[str, FrameworkAdapter]:
    from flowrelay_executor.engine.frameworks import (
        agno,
        google,
        langchain,
        llama_index,
        openai,
        smolagents,
        tinyagent,
    )

    classes = [
        tinyagent.TinyAgentAdapter,
        openai.OpenAIAgentsAdapter,
        langchain.LangChainAdapter,
        llama_index.LlamaIndexAdapter,
        google.GoogleAdkAdapter,
        agno.AgnoAdapter,
        smolagents.SmolagentsAdapter,
    ]
    adapters = {cls.name: cls() for cls in classes}
    assert set(adapters) == set(KNOWN_FRAMEWORKS), "every known framework needs an adapter"
    return adapters


#: The adapter of every framework flowrelay knows, by name.
ADAPTERS: dict[str, FrameworkAdapter] = _load()


def adapter(framework: str) -> FrameworkAdapter:
    return ADAPTERS[framework]


@functools.cache
def _installed(framework: str) -> bool:
    found = ADAPTERS.get(framework)
    return found is not None and found.installed()


def available_frameworks() -> list[str]:
    """The any-agent frameworks importable in this process (``tinyagent`` always).

    Importable is not the same as working: executors advertise only the frameworks that
    also pass :func:`flowrelay_executor.engine.selfcheck.check_frameworks`.
    """
    return [name for name in KNOWN_FRAMEWORKS if _installed(name)]
