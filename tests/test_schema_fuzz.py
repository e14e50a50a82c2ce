"""Schema fuzzing of the running API with schemathesis: every check, positive and negative
inputs, with an admin key. Zero server errors and zero answers the OpenAPI document does not
describe; the run is bounded by examples per operation and a time budget.

It gets a deployment of its own: with an admin key, its stateful phase may revoke any key it
can list, the deployment's admin key among them (that cut the rest of a session off once).
One schemathesis worker: hypothesis parses lambdas' source with ``ast`` from each worker
thread, which CPython 3.11 does not survive ("AST constructor recursion depth mismatch")."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowrelay_testkit import Stack, isolated_stack

#: Examples per operation and the time budget of the whole run (CI stays well under 20 min).
MAX_EXAMPLES = 40
MAX_TIME_S = 150


@pytest.fixture(scope="module")
def fuzzed(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory.mktemp("fuzzed"), scripted_model) as (stack, _):
        stack.start_executor()
        yield stack


@pytest.mark.timeout(MAX_TIME_S + 240)
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(fuzzed: Stack, tmp_path: Path) -> None:
    stack = fuzzed
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
         f"{stack.api_url}/openapi.json", "--checks", "all", "--mode", "all",
         "--header", f"Authorization: Bearer {stack.admin_key}", "--max-examples", str(MAX_EXAMPLES),
         "--max-time", str(MAX_TIME_S), "--request-timeout", "60", "--seed", "20261201",
         "--report", "junit", "--report-dir", str(tmp_path), "--workers", "1"],
        capture_output=True, text=True, timeout=MAX_TIME_S + 120, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )
    (tmp_path / "schemathesis.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
