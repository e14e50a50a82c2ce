"""W3C trace context on the bus: which headers carry it, and which values are passed on.

A caller's ``traceparent`` (and ``tracestate``) travels from the HTTP request into the
``RunRequested`` message's NATS headers, and from there into the worker, where the run's
spans continue the caller's trace. Anyone publishing a run request over NATS can set the
same headers. The values come from clients, so only well-formed ones are passed on
(https://www.w3.org/TR/trace-context/): anything else is dropped, never echoed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

#: Version 00: ``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``.
_TRACEPARENT_RE: Final = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

#: The spec's limit on ``tracestate`` (32 list members of at most 256 characters in practice
#: stay well below it); printable ASCII only, so nothing can break a header line.
_TRACESTATE_MAX_CHARS: Final = 512
_TRACESTATE_RE: Final = re.compile(r"^[\x20-\x7e]*$")


def trace_context(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The valid W3C trace context in ``headers`` (any case), as lower-case header names.

    Empty when there is no valid ``traceparent``; ``tracestate`` only accompanies one.
    """
    if not headers:
        return {}
    lowered = {name.lower(): value for name, value in headers.items()}
    parent = lowered.get(TRACEPARENT, "").strip()
    match = _TRACEPARENT_RE.match(parent)
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return {}
    found = {TRACEPARENT: parent}
    state = lowered.get(TRACESTATE, "").strip()
    if state and len(state) <= _TRACESTATE_MAX_CHARS and _TRACESTATE_RE.match(state):
        found[TRACESTATE] = state
    return found
