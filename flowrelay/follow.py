"""``flowrelay run FILE --follow`` and ``flowrelay follow RUN_ID``: a run's trace, live.

Events come from the API's Server-Sent Events stream (replayed from the start, so nothing is
missed whenever the follower joins). Ctrl-C while following asks whether to cancel the run
(``--cancel-on-exit`` cancels without asking; without a terminal to ask on, the run goes on
and the CLI says how to stop it). ``--json`` prints each event as one JSON line instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.prompt import Confirm
from rich.table import Table

from flowrelay.api_client import ApiClient, ApiError
from flowrelay.errors import CliError

#: Exit status after Ctrl-C (the shell's convention for SIGINT).
INTERRUPTED = 130

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
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CliError(f"{path} holds a JSON {type(document).__name__}, not a workflow object")
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
    parts = [escape(str(data.get("agent") or ""))]
    if "model" in data:
        parts.append(escape(str(data["model"])))
    if "tool" in data:
        parts.append(f"tool={escape(str(data['tool']))}")
    if "input_tokens" in data:
        parts.append(f"in={data['input_tokens']} out={data.get('output_tokens', 0)} tokens")
    if data.get("cost_usd") is not None:
        parts.append(f"${data['cost_usd']:.6f}")
    elif data.get("cost_note"):
        parts.append(f"cost n/a ({escape(str(data['cost_note']))})")
    if "latency_ms" in data:
        parts.append(f"{data['latency_ms']:.0f} ms")
    if event["event"] == "run.started" and data.get("model_provider") == "scripted":
        parts.append("[yellow]SCRIPTED stand-in model[/]")
    if event["event"] == "suggestion":
        parts.extend(f"- {escape(s['title'])}: {escape(s['fix'])}" for s in data.get("suggestions", []))
    return "  ".join(p for p in parts if p)


def submit(client: ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    return client.post("/runs", json=body)  # type: ignore[no-any-return]


def follow(
    client: ApiClient, run_id: str, *, console: Console, as_json: bool = False, cancel_on_exit: bool = False,
) -> int:
    """Show the run's events until it ends, then its record; the exit status of the command.

    0: succeeded; 1: failed or cancelled; :data:`INTERRUPTED` after Ctrl-C.
    """
    not_found = _not_found(run_id)
    try:
        if as_json:
            with client.stream(f"/runs/{run_id}/events", not_found=not_found) as stream:
                for event in sse_events(stream):
                    print(json.dumps(event["data"]), flush=True)
        else:
            with console.status(f"following run {run_id} (Ctrl-C: stop following)"), \
                    client.stream(f"/runs/{run_id}/events", not_found=not_found) as stream:
                for event in sse_events(stream):
                    style = _STYLE.get(event["event"], "")
                    name = f"[{style}]{event['event']:<14}[/]" if style else f"{event['event']:<14}"
                    console.print(f"[dim]{event['id']:>3}[/] {name} {describe(event)}", highlight=False)
    except KeyboardInterrupt:
        return interrupted(client, run_id, console=console, cancel_on_exit=cancel_on_exit)
    record = client.get(f"/runs/{run_id}", not_found=not_found)
    if not as_json:
        summary(console, record)
    return 0 if record["status"] in ("succeeded", "queued", "running") else 1


def interrupted(client: ApiClient, run_id: str, *, console: Console, cancel_on_exit: bool) -> int:
    """Ctrl-C while following: cancel the run if told to (or if the user says so)."""
    cancel = cancel_on_exit
    if not cancel and sys.stdin.isatty():
        try:
            cancel = Confirm.ask(f"\nCancel run {run_id}?", default=False, console=console)
        except (KeyboardInterrupt, EOFError):
            cancel = False
    if cancel:
        try:
            answer = cancel_run(client, run_id)
        except CliError as exc:
            console.print(f"[red]could not cancel run {run_id}:[/] {escape(str(exc))}", highlight=False)
            return INTERRUPTED
        console.print(f"run {run_id}: cancel requested ({answer['status']})", highlight=False)
    else:
        console.print(f"run {run_id} goes on: 'flowrelay follow {run_id}' shows it again, "
                      f"'flowrelay cancel {run_id}' stops it", highlight=False, soft_wrap=True)
    return INTERRUPTED


def cancel_run(client: ApiClient, run_id: str) -> dict[str, Any]:
    """``POST /runs/{id}/cancel``; a run that already ended is a one-line error saying how."""
    try:
        return client.post(f"/runs/{run_id}/cancel", not_found=_not_found(run_id))  # type: ignore[no-any-return]
    except ApiError as exc:
        if exc.status == 409:
            record = client.get(f"/runs/{run_id}", not_found=_not_found(run_id))
            raise CliError(f"run {run_id} has already ended ({record['status']}): nothing to cancel") from None
        raise


def _not_found(run_id: str) -> str:
    return f"no run {run_id} (or it belongs to another tenant than the key's)"


def summary(console: Console, record: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("status", record["status"])
    table.add_row("mode", record.get("mode") or "")
    if record.get("output") is not None:
        output = record["output"]
        table.add_row("output", escape(output if isinstance(output, str) else json.dumps(output, indent=2)))
    if record.get("error"):
        table.add_row("error", escape(f"{record['error']['code']}: {record['error']['message']}"))
    usage = record.get("usage") or {}
    table.add_row("tokens", f"in={usage.get('input_tokens', 0)} out={usage.get('output_tokens', 0)}")
    cost = record.get("cost_usd")
    table.add_row("cost", f"${cost:.6f}" if cost is not None else f"n/a ({escape(record.get('cost_note') or 'unknown')})")
    for suggestion in record.get("suggestions") or []:
        table.add_row("suggestion", escape(f"{suggestion['title']}\n{suggestion['fix']}"))
    console.print(Panel(table, title=f"run {record['run_id']}"))
