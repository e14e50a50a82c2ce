"""Recipes: everything that shapes an agent, resolved and checked before anything runs.

A :class:`Recipe` is hashable and is the reuse key of the agent pool: two runs whose nodes
resolve to equal recipes share one agent instance. Resolving one checks the node against
this executor (framework, tools, model id, provider packages) so a workflow that cannot run
fails before any model call, with a message naming what to change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from any_llm import AnyLLM

from flowrelay_contracts import AgentSpec, ErrorCode
from flowrelay_contracts.workflow import KNOWN_FRAMEWORKS
from flowrelay_executor.engine.frameworks import ADAPTERS, available_frameworks
from flowrelay_executor.engine.run import RunState
from flowrelay_executor.engine.text import frozen_json, function_name
from flowrelay_executor.errors import FrameworkNotInstalledError, InvalidWorkflowError, RunFailure
from flowrelay_executor.tools import McpTarget, ToolRegistry

__all__ = ["SCRIPTED_PREFIX", "Model", "Recipe", "recipe_for"]

#: Model ids of this form go to flowrelay's scripted stand-in model.
SCRIPTED_PREFIX: Final = "scripted:"
#: The scripted stand-in accepts any key; the openai client insists on one.
_SCRIPTED_API_KEY: Final = "scripted"

#: Retries inside the provider's SDK client. Zero: the openai client would otherwise retry a
#: 429 or a 5xx with backoff (honouring Retry-After, possibly for minutes) inside one run,
#: hiding the cause and eating the run's deadline. A run fails fast with a classified,
#: ``retryable`` error instead; retrying is the job of whoever owns the run.
_PROVIDER_MAX_RETRIES: Final = 0

#: ``model_args`` keys that would overwrite what the engine itself sends to the model.
_RESERVED_MODEL_ARGS: Final = frozenset(
    {"model", "messages", "tools", "stream", "response_format", "api_key", "api_base"}
)


@dataclass(frozen=True, slots=True)
class Model:
    """Where an agent's model is and how it is priced. ``api_key`` never appears in repr."""

    label: str  # as the workflow wrote it; shown in events and errors
    provider: str
    provider_model: str  # what any-llm gets
    price_as: str
    price_note: str | None
    api_base: str | None
    api_key: str | None = field(repr=False)
    env_key_digest: str | None = None
    llm_args: tuple[tuple[str, Any], ...] = ()
    scripted: bool = False


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that shapes an agent: equal recipes may share one agent instance."""

    name: str
    framework: str
    instructions: str
    model: Model
    model_args: str  # canonical JSON
    output_schema: str | None  # canonical JSON
    tools: tuple[str | McpTarget, ...]
    sub_agents: tuple[tuple[str, Recipe], ...] = ()

    @property
    def per_run(self) -> bool:
        """MCP connections live in anyio task groups that must be closed by the task that
        opened them, so agents with MCP servers are built and closed within one run."""
        return any(isinstance(tool, McpTarget) for tool in self.tools)

    @property
    def description(self) -> str:
        return self.instructions[:200] if self.instructions else f"flowrelay agent '{self.name}'"


class UnknownModel(RunFailure):
    code = ErrorCode.UNKNOWN_MODEL


def recipe_for(
    run: RunState,
    spec: AgentSpec,
    *,
    tools: ToolRegistry,
    unavailable: Mapping[str, str],
    sub_agents: tuple[Recipe, ...] = (),
) -> Recipe:
    """Check ``spec`` and resolve everything that shapes its agent (the reuse key).

    ``unavailable``: frameworks installed here that this executor does not offer, and why
    (not enabled, or failed the start-up self-check).
    """
    where = {"agent": spec.name}
    if spec.framework not in ADAPTERS:
        raise run.fail(
            InvalidWorkflowError(
                f"agent '{spec.name}': unknown framework '{spec.framework}' (known: "
                f"{', '.join(KNOWN_FRAMEWORKS)})",
                **where,
            )
        )
    if spec.framework not in available_frameworks():
        raise run.fail(
            FrameworkNotInstalledError(
                f"agent '{spec.name}' uses framework '{spec.framework}', which is not "
                f"installed on this executor: pip install 'any-agent[{spec.framework}]' "
                f"(installed: {', '.join(available_frameworks())})",
                **where,
            )
        )
    if spec.framework in unavailable:
        raise run.fail(
            FrameworkNotInstalledError(
                f"agent '{spec.name}' uses framework '{spec.framework}', which this executor does "
                f"not offer: {unavailable[spec.framework]}",
                **where,
            )
        )
    reserved = sorted(_RESERVED_MODEL_ARGS & spec.model_args.keys())
    if reserved:
        raise run.fail(
            InvalidWorkflowError(
                f"agent '{spec.name}': model_args may not set {', '.join(reserved)} (the "
                "engine sets them)",
                **where,
            )
        )
    resolved_tools: list[str | McpTarget] = []
    for tool in spec.tools:
        try:
            resolved = tools.resolve(tool)
        except RunFailure as exc:
            exc.agent = spec.name
            raise run.fail(exc) from exc
        resolved_tools.append(resolved if isinstance(resolved, McpTarget) else str(tool))
    sub_tool_names = [function_name(sub.name) for sub in sub_agents]
    named = {t for t in resolved_tools if isinstance(t, str)}
    clashes = sorted(
        name for name in set(sub_tool_names) if sub_tool_names.count(name) > 1 or name in named
    )
    if clashes:
        raise run.fail(
            InvalidWorkflowError(
                f"agent '{spec.name}': the tool name(s) {', '.join(clashes)} would be used "
                "twice (sub-agents are offered as tools named after them): rename an agent",
                **where,
            )
        )
    return Recipe(
        name=spec.name,
        framework=spec.framework,
        instructions=spec.instructions,
        model=_model(run, spec),
        model_args=frozen_json(spec.model_args),
        output_schema=frozen_json(spec.output_schema) if spec.output_schema else None,
        tools=tuple(resolved_tools),
        sub_agents=tuple(zip(sub_tool_names, sub_agents, strict=True)),
    )


def _model(run: RunState, spec: AgentSpec) -> Model:
    defaults = run.job.defaults
    model_id = spec.model_id or defaults.model_id
    api_base = api_key = None
    if spec.model_id is None:
        api_base = defaults.api_base
        api_key = defaults.api_key.get_secret_value() if defaults.api_key else None
    if model_id.startswith(SCRIPTED_PREFIX):
        name = model_id.removeprefix(SCRIPTED_PREFIX)
        if not defaults.scripted_url:
            raise run.fail(
                InvalidWorkflowError(
                    f"agent '{spec.name}' asks for the scripted model '{model_id}', but this "
                    "executor has no scripted model configured",
                    agent=spec.name,
                )
            )
        return scripted_model(name, defaults.scripted_url)
    try:
        provider, _ = AnyLLM.split_model_provider(model_id)
        provider_class = AnyLLM.get_provider_class(provider)
    except Exception as exc:
        raise run.fail(
            UnknownModel(
                f"agent '{spec.name}': cannot use model id '{model_id}' ({exc}); write it as "
                "'<provider>:<model>', e.g. 'openai:gpt-4o-mini'",
                agent=spec.name,
            )
        ) from exc
    if (missing := getattr(provider_class, "MISSING_PACKAGES_ERROR", None)) is not None:
        raise run.fail(
            FrameworkNotInstalledError(
                f"agent '{spec.name}': model provider '{provider}' needs packages that are "
                f"not installed on this executor: pip install 'any-llm-sdk[{provider}]' "
                f"({missing})",
                agent=spec.name,
            )
        )
    env_name = getattr(provider_class, "ENV_API_KEY_NAME", None)
    key_digest = None
    if api_key is None and env_name:
        # Part of the reuse key, so a rotated (or removed) key builds a new agent.
        value = os.environ.get(env_name, "")
        key_digest = hashlib.sha256(value.encode()).hexdigest()[:16] if value else ""
    return Model(
        label=model_id,
        provider=str(provider),
        provider_model=model_id,
        price_as=model_id,
        price_note=None,
        api_base=api_base,
        api_key=api_key,
        env_key_digest=key_digest,
        llm_args=_llm_args(str(provider), provider_class),
    )


def scripted_model(name: str, url: str) -> Model:
    """The scripted stand-in at ``url``, answering as model ``name`` (priced like it)."""
    return Model(
        label=f"{SCRIPTED_PREFIX}{name}",
        provider="openai",
        provider_model=f"openai:{name}",
        price_as=f"openai:{name}",
        price_note=f"scripted stand-in, priced as openai:{name}",
        api_base=url,
        api_key=_SCRIPTED_API_KEY,
        llm_args=_llm_args("openai"),
        scripted=True,
    )


def _llm_args(provider: str, provider_class: Any = None) -> tuple[tuple[str, Any], ...]:
    """Arguments for ``AnyLLM.create``: any-llm's unified exceptions (classifiable by status)
    and no SDK retries where the provider lets us set them."""
    args: dict[str, Any] = {"unified_exceptions": True}
    support = getattr(
        provider_class, "MAX_RETRIES_SUPPORT", "native" if provider == "openai" else None
    )
    if support in ("native", "mapped"):
        args["max_retries"] = _PROVIDER_MAX_RETRIES
    return tuple(sorted(args.items()))
