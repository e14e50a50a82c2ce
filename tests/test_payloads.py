"""Trace events fit one NATS message: a step too large is sent with its largest values cut
to previews and ``truncated`` naming them (the record keeps the output whole)."""

from __future__ import annotations

import json

from flowrelay_executor.payloads import MAX_EVENT_DATA_BYTES, fit_event


def _size(data: dict) -> int:
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def test_a_step_above_64_kib_is_cut_to_previews_naming_what_was_cut() -> None:
    data = {"agent": "a", "tool": "t", "result": "r" * 200_000, "arguments": {"q": "é" * 50_000}, "latency_ms": 1.0}
    fitted = fit_event(data)
    assert MAX_EVENT_DATA_BYTES == 64 * 1024 and _size(fitted) <= MAX_EVENT_DATA_BYTES
    assert set(fitted["truncated"]) <= {"result", "arguments"} and "result" in fitted["truncated"]
    assert fitted["result"].startswith("rrrr") and "more bytes not shown" in fitted["result"]
    assert (fitted["agent"], fitted["tool"], fitted["latency_ms"]) == ("a", "t", 1.0)
    assert data["result"] == "r" * 200_000, "the caller's data is left whole"


def test_a_step_that_fits_is_sent_as_it_is() -> None:
    data = {"agent": "a", "output": "x" * 1000}
    assert fit_event(data) is data
