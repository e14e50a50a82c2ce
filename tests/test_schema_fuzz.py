"""Schema fuzzing of the running API with schemathesis: every check, positive and negative
inputs, with an admin key. Zero server errors and zero answers the OpenAPI document does not
describe; the run is bounded by examples per operation and a time budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flowrelay_testkit import Stack

#: Examples per operation and the time budget of the whole run (CI stays well under 20 min).
MAX_EXAMPLES = 40
MAX_TIME_S = 150


@pytest.mark.timeout(MAX_TIME_S + 180)
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(stack: Stack, tmp_path: Path) -> None:
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
