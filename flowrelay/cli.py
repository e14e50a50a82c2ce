"""The ``flowrelay`` command: ``up`` runs the stack locally, ``run`` submits and follows a workflow,
``keys`` and ``nats-user`` manage credentials, ``secrets init`` prepares a deployment."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from flowrelay.admin import DEFAULT_DATA_DIR, CliError
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL
from flowrelay.up import UpOptions, up

app = typer.Typer(help="flowrelay: run any-agent workflows behind your backend, over NATS.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (needs the admin key: FLOWRELAY_API_KEY or <data dir>/secrets/admin.key).",
                       no_args_is_help=True)
secrets_app = typer.Typer(help="A deployment's generated secrets.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(secrets_app, name="secrets")

_API = typer.Option("http://127.0.0.1:8000", "--api", envvar="FLOWRELAY_API_URL", help="Base URL of the API.")
_DATA = typer.Option(DEFAULT_DATA_DIR, "--data-dir", envvar="FLOWRELAY_DATA_DIR",
                     help="Where 'flowrelay up' keeps its state (secrets/admin.key is read from there).")


def _fail(exc: CliError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


@app.command("up")
def up_command(
    executors: int = typer.Option(1, "--executors", "-e", min=1, help="Executor processes to start."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="Worker processes per executor."),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, help="Where NATS keeps its store, the secrets, and the logs."),
    api_host: str = typer.Option("127.0.0.1", envvar="FLOWRELAY_API_HOST"),
    api_port: int = typer.Option(8000, envvar="FLOWRELAY_API_PORT"),
    nats_port: int = typer.Option(4222, help="Port of the embedded nats-server."),
    scripted_port: int = typer.Option(9100, help="Port of the scripted model (when no provider key is set)."),
) -> None:
    """Start NATS (embedded unless FLOWRELAY_NATS_URL is set), the API, executors and the suggester."""
    code = up(UpOptions(executors=executors, workers=workers, data_dir=data_dir, api_host=api_host,
                        api_port=api_port, nats_port=nats_port, scripted_port=scripted_port))
    raise typer.Exit(code)


@app.command("run")
def run_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Workflow JSON (or {workflow, input})."),
    input_text: str | None = typer.Option(None, "--input", "-i", help="Input text (overrides the file's)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Show the live trace until the run ends."),
    timeout_s: float | None = typer.Option(None, "--timeout", help="options.timeout_s"),
    max_turns: int | None = typer.Option(None, "--max-turns", help="options.max_turns"),
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """Submit a workflow to the API and, with --follow, show each step with tokens and cost."""
    from flowrelay.admin import api_key
    from flowrelay.follow import load_request, run

    options = {k: v for k, v in {"timeout_s": timeout_s, "max_turns": max_turns}.items() if v is not None}
    try:
        key = api_key(data_dir)
    except CliError as exc:
        raise _fail(exc) from None
    raise typer.Exit(run(api_url, load_request(file, input_text, options), follow=follow, console=Console(), key=key))


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant the key acts for."),
    scope: list[str] = typer.Option([], "--scope", "-s", help="submit, read, cancel, metrics or admin (repeat); "
                                    "default: submit, read and cancel."),
    name: str = typer.Option("", "--name", help="What the key is for."),
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """Create an API key; the key is printed alone on the last line (shown once)."""
    from flowrelay.admin import create_key

    try:
        create_key(api_url, data_dir, tenant=tenant, scopes=scope, name=name, console=Console(stderr=True))
    except CliError as exc:
        raise _fail(exc) from None


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json"), api_url: str = _API, data_dir: Path = _DATA) -> None:
    """List API keys (never their secrets)."""
    from flowrelay.admin import list_keys

    try:
        list_keys(api_url, data_dir, as_json=as_json, console=Console())
    except CliError as exc:
        raise _fail(exc) from None


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(...), api_url: str = _API, data_dir: Path = _DATA) -> None:
    """Revoke an API key: every API process refuses it within a few seconds."""
    from flowrelay.admin import revoke_key

    try:
        revoke_key(api_url, data_dir, key_id, console=Console())
    except CliError as exc:
        raise _fail(exc) from None


@app.command("nats-user")
def nats_user(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    submit: bool = typer.Option(False, "--submit", help="Also let it submit and cancel the tenant's runs over NATS."),
    nats_url: str = typer.Option("nats://127.0.0.1:4222", "--nats", envvar="FLOWRELAY_NATS_URL"),
    data_dir: Path = _DATA,
) -> None:
    """Print the NATS URL and credentials of a tenant's subscriber (created if missing) of the local stack."""
    from flowrelay.admin import tenant_nats_user

    try:
        tenant_nats_user(data_dir, tenant, submit=submit, nats_url=nats_url, console=Console(stderr=True))
    except (CliError, ValueError) as exc:
        raise _fail(CliError(str(exc))) from None


@secrets_app.command("init")
def secrets_init(
    directory: Path = typer.Argument(..., help="Directory to create the secrets in."),
    nats_config: Path | None = typer.Option(None, help="Also write a nats-server config with these users here."),
    nats_host: str = typer.Option("0.0.0.0", help="Address the configured nats-server listens on."),
    nats_port: int = typer.Option(4222, help="Port the configured nats-server listens on."),
    nats_store: Path = typer.Option(Path("/data"), help="JetStream store directory of the configured nats-server."),
    sync_interval: str = typer.Option(DEFAULT_SYNC_INTERVAL,
                                      help="JetStream fsync period ('always' fsyncs every write before acking it)."),
) -> None:
    """Create the admin API key and the NATS users' passwords (keeps what exists)."""
    from flowrelay.credentials import Secrets
    from flowrelay.natsconfig import server_config

    secrets = Secrets.ensure(directory)
    console = Console(stderr=True)
    console.print(f"secrets in {secrets.root} (admin key: {secrets.admin_key_file})", highlight=False)
    if nats_config is not None:
        text = server_config(users=secrets.users(), host=nats_host, port=nats_port, store_dir=nats_store,
                             sync_interval=sync_interval)
        nats_config.parent.mkdir(parents=True, exist_ok=True)
        nats_config.touch(mode=0o600)
        nats_config.write_text(text)
        console.print(f"nats-server config in {nats_config}", highlight=False)


if __name__ == "__main__":
    app()
