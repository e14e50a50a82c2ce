"""``flowrelay chat THREAD``: a small terminal chat on a thread, with streamed answers.

Each line typed is a message: a run on the thread (``POST /threads/{id}/runs`` with
``options.stream_tokens``) whose answer is printed as it is written (``llm.delta`` from the
run's SSE stream). When the agent asks a question (``ask_human``: ``run.waiting``), the next
line typed is the answer (``POST /runs/{id}/input``). ``new`` as THREAD starts a thread and
prints its id; an existing thread's last turns are shown first. Ctrl-D or ``/quit`` ends it.

Lines come from standard input, so the chat can be scripted (``printf 'hi\\n' | flowrelay
chat new``); everything but the answers' text goes to standard error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
import typer

from flowrelay.admin import CliError
from flowrelay.cli import _API, _DATA, _fail, app
from flowrelay.follow import sse_events

#: The agent ``flowrelay chat`` talks to without ``--workflow``: one tinyagent agent that
#: may ask the user a question.
DEFAULT_WORKFLOW: dict[str, Any] = {
    "nodes": [{"id": "assistant", "type": "agent", "data": {
        "name": "assistant", "instructions": "You are a helpful assistant. Answer briefly; ask the user when you "
        "need a decision or a fact only they have.", "tools": ["ask_human"]}}],
    "edges": [],
}

#: Seconds to wait for the API's answer to one request (event streams have no read timeout).
REQUEST_TIMEOUT_S = 60.0

#: Turns of an existing thread shown when the chat starts.
SHOWN_TURNS = 5

_QUIT = frozenset({"/quit", "/exit"})


class Chat:
    """One chat session: reads lines, sends them, prints what comes back."""

    def __init__(self, http: httpx.Client, thread_id: str, workflow: dict[str, Any], *,
                 lines: Iterator[str], out: TextIO, err: TextIO) -> None:
        self._http = http
        self.thread_id = thread_id
        self._workflow = workflow
        self._lines = lines
        self._out = out
        self._err = err

    def show_history(self) -> None:
        view = _checked(self._http.get(f"/threads/{self.thread_id}", params={"limit": SHOWN_TURNS}))
        for message in view["messages"]:
            if message.get("role") in ("user", "assistant") and isinstance(message.get("content"), str):
                who = "you" if message["role"] == "user" else "assistant"
                self._note(f"{who}> {message['content']}")

    def loop(self) -> int:
        """Until end of input: one run per line. Returns the exit code."""
        while (line := self._read("you> ")) is not None:
            if line.strip() in _QUIT:
                break
            if line.strip():
                self.send(line)
        return 0

    def send(self, text: str) -> str | None:
        """One message: start the run, stream its answer, answer its questions; its status."""
        body = {"workflow": self._workflow, "input": text, "options": {"stream_tokens": True}}
        response = self._http.post(f"/threads/{self.thread_id}/runs", json=body)
        if response.status_code >= 400:
            self._note(f"refused: {_detail(response)}")
            return None
        run_id = response.json()["run_id"]
        return self._follow(run_id)

    def _follow(self, run_id: str) -> str | None:
        streamed = printed = False  # a line of streamed text is open / any text was streamed
        after = 0
        while True:  # one SSE connection per stretch of the run (a question ends none: the run goes on)
            with self._http.stream("GET", f"/runs/{run_id}/events", params={"after": after}, timeout=None) as events:
                for event in sse_events(events):
                    after = int(event["id"] or after)
                    kind, data = event["event"], event["data"].get("data", {})
                    if kind == "llm.delta":
                        self._out.write(data["text"])
                        self._out.flush()
                        streamed = printed = True
                    elif kind == "llm.finished" and streamed:
                        self._out.write("\n")
                        self._out.flush()
                        streamed = False
                    elif kind == "run.waiting":
                        self._answer(run_id, data)
                    elif kind == "run.completed":
                        if data.get("output") is not None and not printed:  # not streamed: whole
                            output = data["output"]
                            self._out.write((output if isinstance(output, str) else json.dumps(output)) + "\n")
                        return "succeeded"
                    elif kind in ("run.failed", "run.cancelled"):
                        error = data.get("error") or {}
                        self._note(f"{kind.removeprefix('run.')}: {error.get('message', '')}")
                        return kind.removeprefix("run.")
            # the stream ended without a terminal event (a restart of the API): resume after the last seen

    def _answer(self, run_id: str, question: dict[str, Any]) -> None:
        choices = question.get("choices")
        self._note(f"assistant asks: {question['question']}" + (f" [{' / '.join(choices)}]" if choices else ""))
        while (line := self._read("answer> ")) is not None:
            response = self._http.post(f"/runs/{run_id}/input", json={"answer": line, "wait_id": question["wait_id"]})
            if response.status_code < 400:
                return
            self._note(f"refused: {_detail(response)}")
            if response.status_code == 409:  # no longer waiting (cancelled, expired): the stream says how it ended
                return
        self._note("no answer given (end of input): the run waits until its deadline")

    def _read(self, prompt: str) -> str | None:
        if sys.stdin.isatty():
            self._err.write(prompt)
            self._err.flush()
        try:
            return next(self._lines).rstrip("\n")
        except StopIteration:
            return None

    def _note(self, text: str) -> None:
        self._err.write(text + "\n")
        self._err.flush()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail")
    if isinstance(detail, list):
        return "; ".join(item.get("msg", "") for item in detail)
    return f"{detail} ({response.status_code})"


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise CliError(_detail(response))
    return response.json()


@app.command("chat")
def chat_command(
    thread: str = typer.Argument(..., help="A thread id, or 'new' to start a thread."),
    workflow_file: Path | None = typer.Option(None, "--workflow", exists=True, dir_okay=False,
                                              help="Workflow JSON to chat with (default: one assistant agent)."),
    title: str = typer.Option("", "--title", help="Title of a new thread."),
    api_url: str = _API,
    data_dir: Path = _DATA,
) -> None:
    """Chat on a thread: each line is a message, answers stream as they are written."""
    from flowrelay.admin import api_key

    workflow = DEFAULT_WORKFLOW
    if workflow_file is not None:
        document = json.loads(workflow_file.read_text())
        workflow = document.get("workflow", document)
    try:
        headers = {"Authorization": f"Bearer {api_key(data_dir)}"}
        # A plain httpx client, not the CLI's ApiClient: the chat reads statuses and 422
        # details itself (a refused answer is shown and asked again, not an exit).
        with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
            if thread == "new":
                thread = _checked(http.post("/threads", json={"title": title}))["thread_id"]
                typer.echo(f"thread {thread}", err=True)
            chat = Chat(http, thread, workflow, lines=iter(sys.stdin), out=sys.stdout, err=sys.stderr)
            chat.show_history()
            raise typer.Exit(chat.loop())
    except CliError as exc:
        raise _fail(exc) from None
    except httpx.HTTPError as exc:
        raise _fail(CliError(f"cannot reach the API at {api_url}: {exc}")) from None
