"""Summarise py-spy raw profiles (``--py-spy``): top frames by own and by inclusive samples.

``python -m bench.profiles bench/results/logs/profiles/*.txt [--top N] [--match TEXT]``

py-spy's raw format is one line per distinct stack, ``frame;frame;...;frame COUNT``, each
frame ``function (file:line)``. Frames are grouped by function and file (lines dropped), so
a function counts once per stack however many of its lines appear. Percentages are of all
samples of that file (py-spy records only non-idle samples by default), which is how the
findings in ``bench/README.md`` are stated.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _frame_key(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['function']} ({match['file']})"


def _process_label(frame: str) -> str:
    """``process PID:"argv"`` -> a short name: the fork server's children are the workers."""
    argv = frame.split('"', 1)[1].rstrip('"') if '"' in frame else frame
    if "multiprocessing.forkserver" in argv:
        return "worker (forked)"
    return argv.split()[-1].rsplit("/", 1)[-1] if argv.split() else argv


def read_stacks(path: Path) -> list[tuple[str, list[str], int]]:
    """(process label, frames outermost first, samples) for every line of a raw profile."""
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        match = _LINE.match(raw)
        if not match:
            continue
        frames = [_frame_key(f) for f in match["stack"].split(";") if f]
        label = ""
        while frames and frames[0].startswith("process "):  # outermost first; keep the innermost
            label = _process_label(frames[0])
            frames = frames[1:]
        if frames:
            out.append((label, frames, int(match["count"])))
    return out


@dataclass
class Profile:
    """Sample counts of one process's stacks."""

    total: int
    own: Counter[str]
    inclusive: Counter[str]

    @classmethod
    def of(cls, stacks: list[tuple[str, list[str], int]]) -> Profile:
        total, own, inclusive = 0, Counter(), Counter()
        for _, frames, count in stacks:
            total += count
            own[frames[-1]] += count
            for key in set(frames):
                inclusive[key] += count
        return cls(total, own, inclusive)

    def share(self, samples: int) -> float:
        return 100.0 * samples / self.total if self.total else 0.0

    def matching(self, text: str) -> float:
        """Percentage of samples whose stack has a frame containing ``text`` (inclusive)."""
        return self.share(max((n for k, n in self.inclusive.items() if text in k), default=0))


def report(path: Path, top: int, match: list[str]) -> str:
    stacks = read_stacks(path)
    lines = []
    for label in sorted({s[0] for s in stacks}):
        profile = Profile.of([s for s in stacks if s[0] == label])
        lines.append(f"== {path.name} {label}: {profile.total} samples")
        lines.append("   own (self) time:")
        lines += [f"   {profile.share(n):5.1f}%  {k}" for k, n in profile.own.most_common(top)]
        lines.append("   inclusive:")
        lines += [f"   {profile.share(n):5.1f}%  {k}" for k, n in profile.inclusive.most_common(top)]
        for text in match:
            lines.append(f"   matching {text!r}: {profile.matching(text):.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", action="append", default=[], help="inclusive share of frames containing TEXT")
    args = parser.parse_args()
    for path in args.files:
        print(report(path, args.top, args.match))


if __name__ == "__main__":
    main()
