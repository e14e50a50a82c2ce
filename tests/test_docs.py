"""What the README and docs/asyncapi promise matches the code, so neither drifts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowrelay_api.settings import ApiSettings
from flowrelay_contracts import subjects
from flowrelay_executor.settings import ExecutorSettings
from flowrelay_suggester import rules
from flowrelay_suggester.settings import SuggesterSettings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make up", "make test"]


@pytest.mark.parametrize("settings", [ApiSettings, ExecutorSettings, SuggesterSettings])
def test_every_setting_is_documented(settings: type) -> None:
    missing = [f"FLOWRELAY_{name.upper()}" for name in settings.model_fields if f"`FLOWRELAY_{name.upper()}`" not in README]
    assert missing == []


def test_error_code_table_is_the_suggesters() -> None:
    assert rules.markdown_table().strip() in README


def test_every_subject_stream_and_bucket_is_in_the_readme() -> None:
    names = [subjects.run_requested("<tenant>"), subjects.run_cancel("<tenant>", "<run_id>"),
             subjects.run_events("<tenant>", "<run_id>"), subjects.run_index("<tenant>", "<run_id>"),
             subjects.RUN_FAILED, subjects.RUN_ADVISE, subjects.DEADLETTER,
             subjects.RUNS_STREAM, subjects.EVENTS_STREAM, subjects.INDEX_STREAM, subjects.SUGGESTER_STREAM,
             subjects.DEADLETTER_STREAM, subjects.RUNS_BUCKET, subjects.IDEMPOTENCY_BUCKET,
             subjects.EXECUTORS_BUCKET, subjects.API_KEYS_BUCKET, subjects.CANCEL_QUEUE,
             subjects.thread_turns("<tenant>", "<thread_id>"), subjects.run_input("<tenant>", "<run_id>"),
             subjects.THREADS_STREAM, subjects.THREADS_BUCKET, subjects.INPUT_QUEUE]
    assert [n for n in names if n not in README] == []


@pytest.mark.parametrize(
    ("factory", "document"),
    [("flowrelay_executor.app:asyncapi_app", "executor.yaml"), ("flowrelay_suggester.service:asyncapi_app", "suggester.yaml"),
     ("flowrelay_api.asyncapi:asyncapi_app", "api.yaml")],
)
def test_committed_asyncapi_documents_are_current(factory: str, document: str, tmp_path: Path) -> None:
    out = tmp_path / document
    faststream = Path(sys.executable).parent / "faststream"
    subprocess.run([str(faststream), "docs", "gen", "--factory", factory, "--yaml", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    # Compared as data: FastStream keeps subscribers in a WeakSet, so channel order varies.
    generated = yaml.safe_load(out.read_text())
    committed = yaml.safe_load((REPO / "docs" / "asyncapi" / document).read_text())
    assert generated == committed, "the services changed: run `make asyncapi` and commit docs/asyncapi"


def test_the_api_imports_no_part_of_the_engine() -> None:
    """Agents never run in the web server's process: nothing the API imports pulls in the
    executor or any-agent (services meet only on the bus)."""
    import ast

    forbidden = ("flowrelay_executor", "any_agent", "any_llm", "flowrelay_suggester")
    found = []
    for path in sorted((REPO / "services" / "api" / "flowrelay_api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert found == []
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, flowrelay_api.app, flowrelay_api.__main__; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'flowrelay_executor', 'any_agent'}))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert probe.stdout.strip() == "[]"
