"""``flowrelay run FILE --follow``: submit a workflow over HTTP and show its trace live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

#: Terminal event types: the SSE stream ends after one of these (and a late suggestion).
_TERMINAL = {"run.completed", "run.failed", "run.cancelled"}

_STYLE = {
    "run.started": "bold",
    "run.completed": "bold green",
    "run.failed": "bold red",
    "run.cancelled": "bold yellow",
    "suggestion": "magenta",
    "tool.started": "cyan",
    "tool.finished": "cyan",
}


def load_request(path: Path, input_text: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """A run body from a file holding either ``{"workflow", "input"}`` or a bare workflow."""
    document = json.loads(path.read_text())
    body = document if "workflow" in document else {"workflow": document}
    if input_text is not None:
        body["input"] = input_text
    body.setdefault("input", "")
    if options:
        body["options"] = {**body.get("options", {}), **options}
    return body


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream response into ``{"id", "event", "data"}`` dicts."""
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                yield {"id": current.get("id"), "event": current.get("event"), "data": json.loads(current["data"])}
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")


def describe(event: dict[str, Any]) -> str:
    """One line per step: who did what, with tokens, cost and latency where known."""
    data = event["data"].get("data", {})
    parts = [data.get("agent") or ""]
    if "model" in data:
        parts.append(data["model"])
    if "tool" in data:
        parts.append(f"tool={data['tool']}")
    if "input_tokens" in data:
        parts.append(f"in={data['input_tokens']} out={data.get('output_tokens', 0)} tokens")
    if data.get("cost_usd") is not None:
        parts.append(f"${data['cost_usd']:.6f}")
    elif data.get("cost_note"):
        parts.append(f"cost n/a ({data['cost_note']})")
    if "latency_ms" in data:
        parts.append(f"{data['latency_ms']:.0f} ms")
    if event["event"] == "run.started" and data.get("model_provider") == "scripted":
        parts.append("[yellow]SCRIPTED stand-in model[/]")
    if event["event"] == "suggestion":
        parts.extend(f"- {s['title']}: {s['fix']}" for s in data.get("suggestions", []))
    return "  ".join(p for p in parts if p)


def run(api_url: str, body: dict[str, Any], *, follow: bool, console: Console, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api_url, timeout=httpx.Timeout(30, read=None), headers=headers) as client:
        response = client.post("/runs", json=body)
        if response.status_code != 202:
            console.print(f"[red]rejected ({response.status_code}):[/] {response.text}")
            return 2
        run_id = response.json()["run_id"]
        console.print(f"run [bold]{run_id}[/] queued")
        if follow:
            with console.status("waiting for an executor..."), client.stream("GET", f"/runs/{run_id}/events") as stream:
                for event in sse_events(stream):
                    style = _STYLE.get(event["event"], "")
                    console.print(f"[dim]{event['id']:>3}[/] [{style}]{event['event']:<14}[/] {describe(event)}" if style
                                  else f"[dim]{event['id']:>3}[/] {event['event']:<14} {describe(event)}")
        record = client.get(f"/runs/{run_id}").json()
    _summary(console, record)
    return 0 if record["status"] in ("succeeded", "queued", "running") else 1


def _summary(console: Console, record: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("status", record["status"])
    table.add_row("mode", record.get("mode") or "")
    if record.get("output") is not None:
        output = record["output"]
        table.add_row("output", output if isinstance(output, str) else json.dumps(output, indent=2))
    if record.get("error"):
        table.add_row("error", f"{record['error']['code']}: {record['error']['message']}")
    usage = record.get("usage") or {}
    table.add_row("tokens", f"in={usage.get('input_tokens', 0)} out={usage.get('output_tokens', 0)}")
    cost = record.get("cost_usd")
    table.add_row("cost", f"${cost:.6f}" if cost is not None else f"n/a ({record.get('cost_note') or 'unknown'})")
    for suggestion in record.get("suggestions") or []:
        table.add_row("suggestion", f"{suggestion['title']}\n{suggestion['fix']}")
    console.print(Panel(table, title=f"run {record['run_id']}"))
