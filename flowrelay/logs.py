"""``flowrelay logs [SERVICE] [-f]``: the logs ``flowrelay up`` writes, one file per service.

``<data dir>/logs/<name>.log`` holds everything a service printed (``api``, ``executor-1``,
``suggester``, ``nats``, ``scripted-model``); ``executor`` means all executors. With several
files each line is prefixed with its service. ``-f`` keeps printing what is appended (and
picks up files that appear later, and files truncated or replaced), until Ctrl-C.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from flowrelay.errors import CliError

#: How often ``-f`` looks for new lines (files have no change notification that is portable).
POLL_S = 0.25

_COLOURS = {"api": "cyan", "executor": "green", "suggester": "magenta", "scripted": "yellow", "nats": "blue"}


@dataclass
class _Tail:
    name: str
    path: Path
    offset: int = 0
    partial: bytes = b""


def select(logs_dir: Path, service: str | None) -> list[Path]:
    """The log files of ``service`` (all of them without one); a one-line error if none."""
    available = sorted(logs_dir.glob("*.log"))
    if not available:
        raise CliError(f"no logs in {logs_dir}: has 'flowrelay up' run with this --data-dir?")
    if service is None:
        return available
    chosen = [p for p in available if p.stem == service or p.stem.startswith(f"{service}-")]
    if not chosen:
        names = ", ".join(p.stem for p in available)
        raise CliError(f"no log for {service!r} in {logs_dir} (there are: {names})")
    return chosen


def show(logs_dir: Path, service: str | None, *, lines: int, follow: bool, console: Console) -> int:
    paths = select(logs_dir, service)
    prefixed = len(paths) > 1 or service is None
    tails = [_Tail(p.stem, p) for p in paths]
    for tail in tails:
        data = tail.path.read_bytes()
        tail.offset = len(data)
        for text in data.decode(errors="replace").splitlines()[-lines:] if lines > 0 else []:
            _print(console, tail.name, text, prefixed)
    if not follow:
        return 0
    try:
        while True:
            for tail in tails:
                for text in _read_new(tail):
                    _print(console, tail.name, text, prefixed)
            known = {t.path for t in tails}
            for path in select(logs_dir, service):  # a service started later (another executor)
                if path not in known:
                    tails.append(_Tail(path.stem, path))
                    prefixed = True
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        return 0


def _read_new(tail: _Tail) -> list[str]:
    try:
        size = tail.path.stat().st_size
    except FileNotFoundError:
        return []
    if size < tail.offset:  # truncated or replaced: start again from its beginning
        tail.offset, tail.partial = 0, b""
    if size == tail.offset:
        return []
    with tail.path.open("rb") as file:
        file.seek(tail.offset)
        chunk = file.read(size - tail.offset)
    tail.offset += len(chunk)
    data = tail.partial + chunk
    *complete, tail.partial = data.split(b"\n")
    return [line.decode(errors="replace") for line in complete]


def _print(console: Console, name: str, text: str, prefixed: bool) -> None:
    if prefixed:
        colour = _COLOURS.get(name.split("-")[0], "white")
        console.print(f"[{colour}]{name:>14}[/] | {escape(text)}", highlight=False, soft_wrap=True)
    else:
        console.print(escape(text), highlight=False, soft_wrap=True)
