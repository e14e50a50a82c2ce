"""docs/GUARANTEES.md cannot drift from the README or from the tests (see its introduction).

- The ids of "Claims of the README" are exactly the ``<!-- guarantee: <id> -->`` marks of
  the README.
- The ids of "Settings" are exactly the ``FLOWRELAY_*`` variables of the README's
  configuration table.
- Every row names at least one test and how the guarantee was broken, and every test it
  names exists: pytest collects it by that node id.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
GUARANTEES = (REPO / "docs" / "GUARANTEES.md").read_text()

_MARK = re.compile(r"<!-- guarantee: ([a-z0-9-]+) -->")
_NODE = re.compile(r"`(tests/[\w/]+\.py::[\w\[\]./-]+)`")
_SECTIONS = ("Claims of the README", "Claims made in code", "Settings")


def _rows(section: str) -> dict[str, tuple[list[str], str]]:
    """``id -> (test node ids, how it was broken)`` of one section's table."""
    body = GUARANTEES.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[list[str], str]] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("id", "---"):
            continue
        assert cells[0] not in rows, f"{section}: {cells[0]} has two rows"
        rows[cells[0]] = (_NODE.findall(cells[2]), cells[3])
    return rows


def _configuration_variables() -> list[str]:
    table = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(FLOWRELAY_[A-Z0-9_]+)` \|", table, re.M)


def test_every_guarantee_marked_in_the_readme_has_a_row_and_every_row_a_mark() -> None:
    marked = _MARK.findall(README)
    assert len(marked) == len(set(marked)), "a guarantee id is marked twice in the README"
    rows = _rows("Claims of the README")
    assert sorted(set(marked) - set(rows)) == [], "marked in the README but missing in docs/GUARANTEES.md"
    assert sorted(set(rows) - set(marked)) == [], "in docs/GUARANTEES.md but no longer marked in the README"


def test_every_setting_of_the_configuration_table_has_a_row() -> None:
    variables = _configuration_variables()
    assert len(variables) > 50, "the README's configuration table was not found"
    rows = _rows("Settings")
    assert sorted(set(variables) - set(rows)) == [], "settings without a row in docs/GUARANTEES.md"
    assert sorted(set(rows) - set(variables)) == [], "rows for settings the README no longer has"


@pytest.mark.parametrize("section", _SECTIONS)
def test_every_row_names_its_tests_and_how_it_was_broken(section: str) -> None:
    rows = _rows(section)
    assert rows, f"no rows in section {section!r}"
    assert [i for i, (tests, _) in rows.items() if not tests] == [], "rows without a test"
    assert [i for i, (_, broken) in rows.items() if len(broken) < 10] == [], "rows that do not say how it was broken"


@pytest.mark.timeout(300)
def test_every_test_named_exists(request: pytest.FixtureRequest) -> None:
    named = sorted({node for section in _SECTIONS for tests, _ in _rows(section).values() for node in tests})
    files = sorted({node.split("::")[0] for node in named})
    missing_files = [f for f in files if not (REPO / f).is_file()]
    assert missing_files == []
    # What this session collected (all of it under `make test`); files it did not, collected now.
    ids = {item.nodeid for item in request.session.items}
    uncollected = [f for f in files if not any(i.startswith(f + "::") for i in ids)]
    if uncollected:
        collected = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *uncollected],
            cwd=REPO, capture_output=True, text=True, timeout=280,
        )
        ids |= {line.strip() for line in collected.stdout.splitlines() if "::" in line}
    functions = {i.split("[", 1)[0] for i in ids}
    missing = [n for n in named if n not in ids and n not in functions]
    assert missing == [], f"tests named in docs/GUARANTEES.md that pytest does not collect: {missing}"
