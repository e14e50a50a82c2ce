"""Keeping what the executor publishes within what one NATS message carries.

A trace event is informational: a step whose data (a long tool result, a long answer) is
larger than :data:`MAX_EVENT_DATA_BYTES` goes out with its largest values cut to a preview
and ``truncated`` naming them. The run's output itself is never cut: the record carries it,
or links it in the object store when it is larger than ``max_inline_output_bytes``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_json

#: Largest ``data`` of one trace event, in JSON bytes (NATS' default max payload is 1 MiB).
MAX_EVENT_DATA_BYTES = 64 * 1024

#: Smallest preview left of a cut value.
_MIN_PREVIEW_CHARS = 256


def _size(value: Any) -> int:
    # pydantic-core's encoder: compact UTF-8 JSON like json.dumps(ensure_ascii=False), several
    # times faster; it runs for every event.
    return len(to_json(value, fallback=str))


def fit_event(data: dict[str, Any], limit: int = MAX_EVENT_DATA_BYTES) -> dict[str, Any]:
    """``data`` itself when it fits; else a copy with its largest values cut to previews."""
    if _size(data) <= limit:
        return data
    fitted = dict(data)
    cut: list[str] = []
    sizes = sorted(((k, _size(v)) for k, v in fitted.items()), key=lambda kv: kv[1], reverse=True)
    for key, size in sizes:
        if _size(fitted) <= limit:
            break
        text = fitted[key] if isinstance(fitted[key], str) else json.dumps(fitted[key], ensure_ascii=False, default=str)
        keep = max(_MIN_PREVIEW_CHARS, len(text) - (_size(fitted) - limit) - 64)
        fitted[key] = f"{text[:keep]}... [{size - keep} more bytes not shown]"
        cut.append(key)
    fitted["truncated"] = cut
    return fitted


def output_bytes(output: Any) -> bytes:
    """The output as the record would hold it."""
    return to_json(output, fallback=str)
