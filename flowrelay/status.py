"""``flowrelay status``: is the stack up, who runs work, what waits.

Three sources, each optional: the local supervisor's state file (when ``flowrelay up`` runs on
the data dir: its services, pids, restarts and metrics URLs), ``GET /healthz`` (the API and
its NATS connection; no key needed) and ``GET /executors`` (live executors, their frameworks
and tools, and the run queue; needs an admin key).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flowrelay.api_client import ApiClient, ApiError
from flowrelay.datadir import read_state
from flowrelay.errors import CliError


def collect(client: ApiClient, data_dir: Path) -> dict[str, Any]:
    """Everything ``status`` shows, as data (what ``--json`` prints)."""
    report: dict[str, Any] = {"api": client.base_url, "supervisor": read_state(data_dir)}
    try:
        report["health"] = client.get("/healthz")
    except ApiError as exc:
        if exc.status != 503:
            raise
        report["health"] = {"status": "unavailable", "nats": "disconnected"}
    except CliError as exc:  # unreachable: what the supervisor knows is still worth showing
        report["health"] = None
        report["error"] = str(exc)
        return report
    try:
        overview = client.get("/executors")
    except CliError as exc:
        report["executors_error"] = str(exc)
        return report
    report["executors"] = overview["executors"]
    report["queue"] = overview["queue"]
    report["frameworks"] = sorted({f for e in overview["executors"] for f in e["frameworks"]})
    return report


def status(client: ApiClient, data_dir: Path, *, as_json: bool, console: Console) -> int:
    """Print the report; 0 when the API is healthy, 1 otherwise."""
    report = collect(client, data_dir)
    healthy = bool(report.get("health")) and report["health"].get("status") == "ok"
    if as_json:
        print(json.dumps(report, indent=2))
        return 0 if healthy else 1
    _print(report, console, data_dir)
    return 0 if healthy else 1


def _print(report: dict[str, Any], console: Console, data_dir: Path) -> None:
    def line(label: str, text: str) -> None:
        console.print(f"[bold]{label:<11}[/]{text}", highlight=False, soft_wrap=True)

    health = report.get("health")
    if health is None:
        line("API", f"[red]{escape(report['error'])}[/]")
    else:
        colour = "green" if health.get("status") == "ok" else "red"
        line("API", f"{report['api']}  [{colour}]{health.get('status')}[/] (NATS {health.get('nats')})")
    supervisor = report.get("supervisor")
    if supervisor:
        line("supervisor", f"flowrelay up, pid {supervisor.get('pid')}, data dir {data_dir}")
        table = Table("service", "pid", "state", "restarts", "metrics", box=None, pad_edge=False)
        for service in supervisor.get("services", []):
            state = service.get("state", "")
            style = "green" if state == "running" else "yellow" if state in ("starting", "restarting") else "red"
            table.add_row(service["name"], str(service.get("pid") or ""), f"[{style}]{state}[/]",
                          str(service.get("restarts", 0)), service.get("metrics", ""))
        console.print(table)
    else:
        line("supervisor", f"no 'flowrelay up' runs on {data_dir} (services may run elsewhere)")
    if "executors_error" in report:
        line("executors", f"[yellow]{escape(report['executors_error'])}[/]")
        return
    if "executors" not in report:
        return
    executors = report["executors"]
    if not executors:
        line("executors", "[red]none live[/]: runs wait in the queue until one starts")
    else:
        table = Table("executor", "isolation", "slots", "running", "frameworks", "tools", "metrics", "up since",
                      box=None, pad_edge=False)
        for e in executors:
            port = e.get("metrics_port")
            table.add_row(e["executor_id"], e["isolation"], str(e["slots"]), str(e.get("running", 0)),
                          ", ".join(e["frameworks"]), str(len(e["tools"])), str(port) if port else "",
                          _age(e.get("started_at")))
        console.print(table)
    queue = report["queue"]
    line("queue", f"{queue['waiting']} waiting, {queue['held']} held by executors")
    line("frameworks", ", ".join(report["frameworks"]) or "none")


def _age(started_at: str | None) -> str:
    if not started_at:
        return ""
    seconds = (datetime.now(UTC) - datetime.fromisoformat(started_at.replace("Z", "+00:00"))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"
