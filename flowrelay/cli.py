"""The ``flowrelay`` command.

``up`` runs the stack locally under a supervisor; ``run``, ``follow``, ``cancel``, ``runs`` and
``status`` talk to the API; ``logs`` reads what ``up`` logged; ``keys`` and ``nats-user``
manage credentials; ``secrets init`` prepares a deployment. Expected failures (the API is
down, a key is refused, a run does not exist) are one line on stderr and exit status 2;
``--json`` prints data for scripts instead of tables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from flowrelay.admin import DEFAULT_DATA_DIR, CliError
from flowrelay.natsconfig import DEFAULT_SYNC_INTERVAL
from flowrelay.up import UpOptions, up

# Never locals in tracebacks (typer's default today; kept explicit): they would show keys.
app = typer.Typer(help="flowrelay: run any-agent workflows behind your backend, over NATS.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="API keys (needs the admin key: FLOWRELAY_API_KEY or <data dir>/secrets/admin.key).",
                       no_args_is_help=True)
secrets_app = typer.Typer(help="A deployment's generated secrets.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(secrets_app, name="secrets")

_API = typer.Option("http://127.0.0.1:8000", "--api", envvar="FLOWRELAY_API_URL", help="Base URL of the API.")
_DATA = typer.Option(DEFAULT_DATA_DIR, "--data-dir", envvar="FLOWRELAY_DATA_DIR",
                     help="Where 'flowrelay up' keeps its state (secrets/admin.key is read from there).")
_JSON = typer.Option(False, "--json", help="Print JSON (one document, or one event per line) for scripts.")
_CANCEL_ON_EXIT = typer.Option(False, "--cancel-on-exit", help="On Ctrl-C, cancel the run without asking.")

_T = TypeVar("_T")


def _fail(exc: CliError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _guarded(call: Callable[[], _T]) -> _T:
    """Run ``call``; a :class:`CliError` becomes one line on stderr and exit status 2."""
    try:
        return call()
    except CliError as exc:
        raise _fail(exc) from None


@app.command("up")
def up_command(
    executors: int = typer.Option(1, "--executors", "-e", min=1, help="Executor processes to start."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="Worker processes per executor."),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, help="Where NATS keeps its store, the secrets, and the logs."),
    api_host: str = typer.Option("127.0.0.1", envvar="FLOWRELAY_API_HOST"),
    api_port: int = typer.Option(8000, envvar="FLOWRELAY_API_PORT"),
    nats_port: int = typer.Option(4222, help="Port of the embedded nats-server."),
    scripted_port: int = typer.Option(9100, help="Port of the scripted model (when no provider key is set)."),
    metrics_port: int = typer.Option(9101, min=-1, help="First Prometheus port: executors get it and the next "
                                     "ones, the suggester the one after them; 0: free ports; -1: off."),
    nats_cluster: int = typer.Option(1, "--nats-cluster", min=1, max=5, metavar="N",
                                     help="Embed a local N-node NATS cluster (client ports --nats-port, +1, ...) "
                                          "with every stream and bucket at N replicas; 3 survives a node's loss."),
) -> None:
    """Run the stack: NATS, API, executors, suggester; restarts what crashes, Ctrl-C stops it in order.

    NATS is embedded unless FLOWRELAY_NATS_URL is set; the scripted model stands in when no
    provider key is set. A second Ctrl-C kills everything at once.
    """
    if nats_cluster > 1 and os.environ.get("FLOWRELAY_NATS_URL"):
        raise _fail(CliError("--nats-cluster embeds its own NATS cluster: unset FLOWRELAY_NATS_URL "
                             "(or give it your cluster's URLs and leave --nats-cluster out)"))
    code = up(UpOptions(executors=executors, workers=workers, data_dir=data_dir, api_host=api_host,
                        api_port=api_port, nats_port=nats_port, scripted_port=scripted_port,
                        metrics_port=metrics_port, nats_cluster=nats_cluster))
    raise typer.Exit(code)


@app.command("run")
def run_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Workflow JSON (or {workflow, input})."),
    input_text: str | None = typer.Option(None, "--input", "-i", help="Input text (overrides the file's)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Show the live trace until the run ends."),
    timeout_s: float | None = typer.Option(None, "--timeout", help="options.timeout_s"),
    max_turns: int | None = typer.Option(None, "--max-turns", help="options.max_turns"),
    cancel_on_exit: bool = _CANCEL_ON_EXIT,
    as_json: bool = _JSON,
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """Submit a workflow; with --follow, show each step with tokens and cost.

    Ctrl-C while following asks whether to cancel the run (--cancel-on-exit: cancel, no question).
    """
    import json

    from flowrelay.admin import client
    from flowrelay.follow import follow as follow_run
    from flowrelay.follow import load_request, submit

    options = {k: v for k, v in {"timeout_s": timeout_s, "max_turns": max_turns}.items() if v is not None}
    console = Console()

    def run() -> int:
        body = load_request(file, input_text, options)
        with client(api_url, data_dir) as api:
            accepted = submit(api, body)
            if as_json and not follow:
                print(json.dumps(accepted))
                return 0
            if not as_json:
                console.print(f"run [bold]{accepted['run_id']}[/] queued", highlight=False)
            if not follow:
                return 0
            return follow_run(api, accepted["run_id"], console=console, as_json=as_json, cancel_on_exit=cancel_on_exit)

    raise typer.Exit(_guarded(run))


@app.command("follow")
def follow_command(
    run_id: str = typer.Argument(..., help="The run's id."),
    cancel_on_exit: bool = _CANCEL_ON_EXIT,
    as_json: bool = _JSON,
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """Show a run's trace from its first event, live until it ends (exit 0: succeeded)."""
    from flowrelay.admin import client
    from flowrelay.follow import follow

    def run() -> int:
        with client(api_url, data_dir) as api:
            return follow(api, run_id, console=Console(), as_json=as_json, cancel_on_exit=cancel_on_exit)

    raise typer.Exit(_guarded(run))


@app.command("cancel")
def cancel_command(
    run_id: str = typer.Argument(..., help="The run's id."),
    as_json: bool = _JSON,
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """Cancel a run: a queued one never starts, a running one is stopped by its executor."""
    import json

    from flowrelay.admin import client
    from flowrelay.follow import cancel_run

    def run() -> None:
        with client(api_url, data_dir) as api:
            answer = cancel_run(api, run_id)
        if as_json:
            print(json.dumps(answer))
        elif answer["status"] == "cancelled":
            Console().print(f"run {run_id} cancelled (it had not started)", highlight=False)
        else:
            Console().print(f"run {run_id}: its executor was asked to stop it "
                            f"('flowrelay follow {run_id}' shows the end)", highlight=False)

    _guarded(run)


@app.command("runs")
def runs_command(
    status: str | None = typer.Option(None, "--status", "-s", help="queued, running, succeeded, failed or cancelled."),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Admin keys: only this tenant's runs."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=100, help="How many runs (newest first)."),
    as_json: bool = _JSON,
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """List runs, newest first: status, age, duration, tokens, cost, error."""
    from flowrelay.admin import client
    from flowrelay.runs import list_runs

    def run() -> None:
        with client(api_url, data_dir) as api:
            list_runs(api, status=status, tenant=tenant, limit=limit, as_json=as_json, console=Console())

    _guarded(run)


@app.command("status")
def status_command(as_json: bool = _JSON, api_url: str = _API, data_dir: Path = _DATA) -> None:
    """The stack at a glance: services (of a local 'flowrelay up'), executors, frameworks, the queue."""
    from flowrelay.admin import client
    from flowrelay.status import status

    def run() -> int:
        with client(api_url, data_dir) as api:
            return status(api, data_dir, as_json=as_json, console=Console())

    raise typer.Exit(_guarded(run))


@app.command("logs")
def logs_command(
    service: str | None = typer.Argument(None, help="api, executor (all of them), executor-1, suggester, nats, "
                                         "scripted-model; all without one."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until Ctrl-C."),
    lines: int = typer.Option(40, "--lines", "-n", min=0, help="Lines to show from the end of each log."),
    data_dir: Path = _DATA,
) -> None:
    """Show the logs 'flowrelay up' writes (one file per service in <data dir>/logs)."""
    from flowrelay.logs import show

    raise typer.Exit(_guarded(lambda: show(data_dir / "logs", service, lines=lines, follow=follow, console=Console())))


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

    _guarded(lambda: create_key(api_url, data_dir, tenant=tenant, scopes=scope, name=name,
                                console=Console(stderr=True)))


@keys_app.command("list")
def keys_list(as_json: bool = _JSON, api_url: str = _API, data_dir: Path = _DATA) -> None:
    """List API keys (never their secrets)."""
    from flowrelay.admin import list_keys

    _guarded(lambda: list_keys(api_url, data_dir, as_json=as_json, console=Console()))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(...), api_url: str = _API, data_dir: Path = _DATA) -> None:
    """Revoke an API key: every API process refuses it within a few seconds."""
    from flowrelay.admin import revoke_key

    _guarded(lambda: revoke_key(api_url, data_dir, key_id, console=Console()))


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
    nats_cluster: str | None = typer.Option(
        None, help="Comma-separated node names of a NATS cluster (they reach each other by these names, routes "
        "on port 6222): writes NAME.conf beside --nats-config for each node, with route credentials."),
    container_readable: bool = typer.Option(
        False, help="Files mode 0644 inside the 0700 directory, for compose to mount each one into its own "
        "service's container, whose user is not the files' owner."),
) -> None:
    """Create the admin API key and the NATS users' passwords (keeps what exists)."""
    from flowrelay.credentials import CONTAINER_FILE_MODE, FILE_MODE, Secrets
    from flowrelay.natscluster import node_configs, write_secret
    from flowrelay.natsconfig import server_config

    secrets = Secrets.ensure(directory, file_mode=CONTAINER_FILE_MODE if container_readable else FILE_MODE)
    console = Console(stderr=True)
    console.print(f"secrets in {secrets.root} (admin key: {secrets.admin_key_file})", highlight=False)
    if nats_config is None:
        if nats_cluster:
            raise _fail(CliError("--nats-cluster needs --nats-config (the configs are written beside it)"))
        return
    if nats_cluster:
        names = [name.strip() for name in nats_cluster.split(",") if name.strip()]
        configs = node_configs(names, secrets, listen_host=nats_host, store_dir=nats_store, client_port=nats_port,
                               sync_interval=sync_interval)
        for name, text in configs.items():
            write_secret(nats_config.with_name(f"{name}.conf"), text)
        console.print(f"nats-server configs of {', '.join(names)} in {nats_config.parent}", highlight=False)
        return
    text = server_config(users=secrets.users(), host=nats_host, port=nats_port, store_dir=nats_store,
                         sync_interval=sync_interval)
    write_secret(nats_config, text)
    console.print(f"nats-server config in {nats_config}", highlight=False)


import flowrelay.chat  # noqa: E402, F401 - registers `flowrelay chat` (its own module)

if __name__ == "__main__":
    app()
