"""``flowrelay chat``: the terminal chat, scripted through its standard input against the
shared stack (answers on stdout as they stream, everything else on stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from flowrelay_testkit import Stack

FLOWRELAY = Path(sys.executable).parent / "flowrelay"


def chat(stack: Stack, thread: str, lines: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWRELAY_API_KEY": stack.admin_key}
    return subprocess.run([str(FLOWRELAY), "chat", thread, "--api", stack.api_url, *extra],
                          input="".join(f"{line}\n" for line in lines), capture_output=True, text=True,
                          env=env, timeout=120)


async def test_a_chat_remembers_streams_and_asks(stack: Stack, api: httpx.AsyncClient) -> None:
    question = "#call=ask_human " + json.dumps({"question": "Tea or coffee?", "choices": ["tea", "coffee"]})
    done = chat(stack, "new", ["my name is Ada", "#recall", question, "cocoa", "tea", "/quit"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "echo: my name is Ada",
        "recall: user: my name is Ada | assistant: echo: my name is Ada",
        "tea",
    ]
    assert "assistant asks: Tea or coffee? [tea / coffee]" in done.stderr
    assert "refused: answer: must be one of the question's choices" in done.stderr  # cocoa, then asked again
    thread_id = done.stderr.splitlines()[0].removeprefix("thread ")

    view = (await api.get(f"/threads/{thread_id}")).json()
    assert [r["status"] for r in view["runs"]] == ["succeeded"] * 3
    again = chat(stack, thread_id, [])  # an existing thread: its last turns are shown first
    assert again.returncode == 0 and "you> my name is Ada" in again.stderr and "assistant> tea" in again.stderr


async def test_a_chat_with_an_unknown_thread_says_so(stack: Stack) -> None:
    done = chat(stack, "no-such-thread", ["hello"])
    assert done.returncode == 2 and "thread no-such-thread not found" in done.stderr
