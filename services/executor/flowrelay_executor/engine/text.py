"""Small text and naming helpers shared by the engine's modules."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any


def function_name(name: str) -> str:
    """``name`` as a valid function (tool) name: letters, digits and ``_``, at most 64."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name.strip()) or "agent"
    if not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = f"agent_{cleaned}"
    return cleaned[:64]


def frozen_json(value: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces): usable as part of a dict key."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def as_text(output: Any) -> str:
    """An agent's output as the text the next agent (or a coordinator) reads."""
    return (
        output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    )


def maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"…[{len(text) - limit} more chars]"
    return text[: max(0, limit - len(marker))] + marker


def elapsed_ms(started: float | None) -> float | None:
    return None if started is None else round((time.perf_counter() - started) * 1000, 3)
