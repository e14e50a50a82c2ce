"""The ``flowrelay`` command: ``up`` runs the stack locally, ``run`` submits and follows a workflow."""

from __future__ import annotations

from pathlib import Path

import typer

from flowrelay.up import UpOptions, up

app = typer.Typer(help="flowrelay: run any-agent workflows behind your backend, over NATS.", no_args_is_help=True)


@app.command("up")
def up_command(
    executors: int = typer.Option(1, "--executors", "-e", min=1, help="Executor processes to start."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="Worker processes per executor."),
    data_dir: Path = typer.Option(Path(".flowrelay"), help="Where NATS keeps its store, and the logs."),
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
    api_url: str = typer.Option("http://127.0.0.1:8000", "--api", envvar="FLOWRELAY_API_URL"),
) -> None:
    """Submit a workflow to the API and, with --follow, show each step with tokens and cost."""
    from rich.console import Console

    from flowrelay.follow import load_request, run

    options = {k: v for k, v in {"timeout_s": timeout_s, "max_turns": max_turns}.items() if v is not None}
    raise typer.Exit(run(api_url, load_request(file, input_text, options), follow=follow, console=Console()))


if __name__ == "__main__":
    app()
