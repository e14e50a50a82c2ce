"""The CLI's side of authentication: finding the API key, key management, tenant NATS users.

The CLI acts with ``FLOWRELAY_API_KEY`` when set, else with the admin key ``flowrelay up``
wrote to ``<data dir>/secrets/admin.key``, so commands run from the checkout need no flag.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import nats
from rich.console import Console
from rich.table import Table

from flowrelay import natsserver
from flowrelay.api_client import ApiClient
from flowrelay.credentials import Secrets
from flowrelay.errors import CliError

#: Where ``flowrelay up`` keeps its state unless told otherwise.
DEFAULT_DATA_DIR = Path(".flowrelay")

#: How long ``nats-user`` waits for a reloaded server to accept the new user.
RELOAD_WAIT_S = 10.0


def api_key(data_dir: Path) -> str:
    if key := os.environ.get("FLOWRELAY_API_KEY"):
        return key.strip()
    path = data_dir / "secrets" / "admin.key"
    try:
        return path.read_text().strip()
    except OSError:
        raise CliError(
            f"no API key: set FLOWRELAY_API_KEY, or run from the directory where 'flowrelay up' keeps "
            f"{path} (or pass --data-dir)"
        ) from None


def key_source(data_dir: Path) -> str:
    """Where :func:`api_key` finds the key, for error messages (never the key itself)."""
    return "FLOWRELAY_API_KEY" if os.environ.get("FLOWRELAY_API_KEY") else str(data_dir / "secrets" / "admin.key")


def client(api_url: str, data_dir: Path, **options: Any) -> ApiClient:
    """An API client acting with the CLI's key (see :func:`api_key`)."""
    return ApiClient(api_url, api_key(data_dir), key_source=key_source(data_dir), **options)


def create_key(api_url: str, data_dir: Path, *, tenant: str, scopes: list[str], name: str, console: Console) -> None:
    body: dict[str, Any] = {"tenant": tenant, "name": name}
    if scopes:
        body["scopes"] = scopes
    with client(api_url, data_dir) as http:
        created = http.post("/keys", json=body)
    console.print(f"key {created['key_id']} for tenant {created['tenant']} (scopes: {', '.join(created['scopes'])}); "
                  "it is shown once, keep it:", highlight=False, soft_wrap=True)
    print(created["key"], flush=True)  # alone on the last line, for scripts


def list_keys(api_url: str, data_dir: Path, *, as_json: bool, console: Console) -> None:
    with client(api_url, data_dir) as http:
        keys = http.get("/keys")["keys"]
    if as_json:
        print(json.dumps(keys, indent=2))
        return
    table = Table("key id", "tenant", "scopes", "name", "created", "revoked")
    for key in keys:
        table.add_row(key["key_id"], key["tenant"], ",".join(key["scopes"]), key["name"], key["created_at"][:19],
                      (key.get("revoked_at") or "")[:19])
    console.print(table)


def revoke_key(api_url: str, data_dir: Path, key_id: str, *, console: Console) -> None:
    with client(api_url, data_dir) as http:
        revoked = http.delete(f"/keys/{key_id}", not_found=f"no API key {key_id} ('flowrelay keys list' shows them)")
    console.print(f"key {revoked['key_id']} revoked at {revoked['revoked_at']}")


def tenant_nats_user(data_dir: Path, tenant: str, *, submit: bool, nats_url: str, console: Console) -> None:
    """Create (or show) a tenant's NATS user and make the running embedded server accept it."""
    secrets_dir = data_dir / "secrets"
    if not (secrets_dir / "nats").is_dir():
        raise CliError(f"no NATS users in {secrets_dir}: start 'flowrelay up' first (or pass --data-dir)")
    secrets = Secrets(secrets_dir)
    user = secrets.add_tenant_user(tenant, submit=submit)
    server_dir = data_dir / "nats"
    try:
        natsserver.refresh_users(server_dir, secrets)
    except (OSError, ValueError) as exc:
        raise CliError(f"could not reload the nats-server of {server_dir} ({exc}); is 'flowrelay up' running?") from None
    _wait_accepted(nats_url, user.name, user.password)
    role = "read and submit" if submit else "read-only"
    console.print(f"NATS user for tenant {tenant} ({role}: flowrelay.events.{tenant}.>):", highlight=False)
    print(f"url={nats_url}\nuser={user.name}\npassword={user.password}\n"
          f"inbox_prefix=_FR_INBOX.{tenant}\npassword_file={secrets.password_file(user.name)}", flush=True)


def _wait_accepted(url: str, user: str, password: str) -> None:
    import asyncio

    async def attempt() -> bool:
        try:
            nc = await nats.connect(url, user=user, password=password, allow_reconnect=False,
                                    max_reconnect_attempts=0, connect_timeout=2)
        except Exception:  # noqa: BLE001 - not reloaded yet
            return False
        await nc.close()
        return True

    deadline = time.monotonic() + RELOAD_WAIT_S
    while not asyncio.run(attempt()):
        if time.monotonic() > deadline:
            raise CliError(f"the server at {url} did not accept user {user} after its reload; see its log")
        time.sleep(0.1)
