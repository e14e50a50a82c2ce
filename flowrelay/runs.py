"""``flowrelay runs``: the newest runs of the key's tenant (an admin key: of every tenant)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flowrelay.api_client import ApiClient

_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "queued": "white"}


def list_runs(
    client: ApiClient, *, status: str | None, tenant: str | None, limit: int, as_json: bool, console: Console
) -> None:
    params = {k: v for k, v in {"status": status, "tenant": tenant, "limit": limit}.items() if v is not None}
    page = client.get("/runs", params=params)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    runs = page["runs"]
    if not runs:
        console.print("no runs" + (f" with status {status}" if status else ""), highlight=False)
        return
    table = Table("run id", "tenant", "status", "created", "took", "tokens in/out", "cost", "error", box=None,
                  pad_edge=False)
    for run in runs:
        usage = run.get("usage") or {}
        cost = run.get("cost_usd")
        error = run.get("error") or {}
        table.add_row(
            run["run_id"], run["tenant"], f"[{_STYLE.get(run['status'], 'white')}]{run['status']}[/]",
            run["created_at"][:19].replace("T", " "), _took(run),
            f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}",
            f"${cost:.6f}" if cost is not None else "n/a", escape(error.get("code", "")),
        )
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"[dim]the newest {limit}; there are more (--limit up to 100; --json gives next_cursor)[/]",
                      highlight=False, soft_wrap=True)


def _took(run: dict[str, Any]) -> str:
    if not (run.get("started_at") and run.get("finished_at")):
        return ""
    started, finished = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
    return f"{(finished - started).total_seconds():.2f} s"
