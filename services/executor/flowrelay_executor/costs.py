"""What an LLM call cost, from its token counts and genai-prices' offline price table.

Why here: any-agent 1.18 reports ``AgentTrace.cost`` as 0.0 (nothing sets it), so flowrelay
prices each call itself. An unknown model is priced ``None`` with a reason, never a made-up
0: a dashboard summing costs must be able to tell "free" from "unknown".

Model ids are any-llm's (``provider:model``, or the legacy ``provider/model``); a few
provider names differ between any-llm and genai-prices and are mapped.
"""

from __future__ import annotations

import threading
from typing import Final

__all__ = ["price", "total", "warm"]

#: any-llm provider name -> genai-prices provider id, where they differ.
_PROVIDER_ALIASES: Final[dict[str, str]] = {
    "gemini": "google",
    "vertexai": "google",
    "xai": "x-ai",
    "bedrock": "aws",
    "azureopenai": "azure",
    "moonshot": "moonshotai",
    "voyage": "voyageai",
}

#: Providers that serve local or self-hosted models: genai-prices cannot know their cost.
_SELF_HOSTED: Final = frozenset({"ollama", "llamacpp", "llamafile", "lmstudio", "vllm"})

_unknown: dict[tuple[str | None, str], str] = {}
_lock = threading.Lock()


def _split(model_id: str) -> tuple[str | None, str]:
    for separator in (":", "/"):
        provider, found, model = model_id.partition(separator)
        if found and provider and model:
            return provider.lower(), model
    return None, model_id


def price(model_id: str, input_tokens: int, output_tokens: int) -> tuple[float | None, str | None]:
    """``(cost in USD, None)`` for a known model, or ``(None, why it is unknown)``."""
    provider, model = _split(model_id)
    key = (provider, model)
    if (reason := _unknown.get(key)) is not None:
        return None, reason
    if provider in _SELF_HOSTED:
        return _remember(key, f"no price for self-hosted provider '{provider}'")

    from genai_prices import Usage, calc_price

    try:
        calculation = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=_PROVIDER_ALIASES.get(provider, provider) if provider else None,
        )
    except LookupError as exc:
        return _remember(key, f"no price known for '{model_id}' ({exc})")
    return float(calculation.total_price), None


def total(costs: list[float | None]) -> float | None:
    """Sum of ``costs``; ``None`` if any part is unknown (a partial sum would under-report)."""
    if any(cost is None for cost in costs):
        return None
    return float(sum(cost for cost in costs if cost is not None))


def warm() -> None:
    """Load genai-prices' table now (about 0.2-1 s) rather than during the first run."""
    price("openai:gpt-4o-mini", 1, 1)


def _remember(key: tuple[str | None, str], reason: str) -> tuple[None, str]:
    # Unknown lookups scan the whole table; cache the answer (the table is a static snapshot).
    with _lock:
        _unknown[key] = reason
    return None, reason
