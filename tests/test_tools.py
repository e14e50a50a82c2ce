"""Which functions become tools, what an operator is told when one does not, and the README.

Discovery runs on real modules written to a temporary directory and imported; the README's
"Add your own tool" example is executed end to end: its module on a real executor's path,
its request through the API, a real worker calling the tool for the scripted model.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flowrelay_testkit import REPO, isolated_stack

from flowrelay_executor.tools import ToolRegistry, UnknownToolError

README = (REPO / "README.md").read_text()


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))


def load(module_dir: Path, name: str, source: str):  # noqa: ANN201 - a module
    (module_dir / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


# -- discovery ------------------------------------------------------------------------------


def test_public_functions_a_module_defines_are_tools(module_dir: Path) -> None:
    module = load(module_dir, "plain_tools", '''
        from os.path import join  # imported: not this module's tool


        def greet(name: str) -> str:
            """Say hello to someone."""
            return f"hello {name}"


        async def fetch_count(limit: int = 3) -> int:
            """Count to a limit, asynchronously."""
            return limit


        def _private(x: int) -> int:
            """Not a tool: private."""
            return x


        class Helper:
            """Not a tool: a class."""
    ''')
    registry = ToolRegistry(builtins=False)
    assert registry.add_module(module) == ["greet", "fetch_count"]
    # ask_human is offered by every registry (the engine pauses the run on it), built-ins or not
    assert registry.names() == ["ask_human", "fetch_count", "greet"] and registry.warnings == []
    assert registry.resolve("greet")("ada") == "hello ada"


def test_a_function_that_cannot_be_a_tool_is_skipped_with_its_reason(module_dir: Path) -> None:
    module = load(module_dir, "half_tools", '''
        def good(x: int) -> int:
            """Double x."""
            return 2 * x


        def undocumented(x: int) -> int:
            return x


        def untyped(x) -> int:
            """No type hint on x."""
            return x
    ''')
    registry = ToolRegistry(builtins=False)
    assert registry.add_module(module) == ["good"]
    assert set(registry.unavailable()) == {"undocumented", "untyped"}
    assert "needs a docstring" in registry.unavailable()["undocumented"]
    assert "'x' needs a type annotation" in registry.unavailable()["untyped"]
    assert len(registry.warnings) == 2 and all("module half_tools" in w for w in registry.warnings)
    with pytest.raises(UnknownToolError, match="needs a docstring"):
        registry.resolve("undocumented")


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("from os.path import join\n\n\ndef _hidden() -> None:\n    '''Private.'''\n", "defines no public function"),
        ("def bare(x):\n    return x\n", "every public function it defines was skipped"),
        ("TOOLS = []\n", "its TOOLS or __all__ list is empty"),
    ],
    ids=["nothing-public", "all-skipped", "empty-list"],
)
def test_a_module_that_gives_no_tool_is_a_warning_saying_why(module_dir: Path, source: str, why: str) -> None:
    module = load(module_dir, "no_tools", source)
    registry = ToolRegistry(builtins=False)
    assert registry.add_module(module) == []
    assert any(w.startswith("module no_tools gave no tools") and why in w for w in registry.warnings), registry.warnings


def test_all_and_tools_lists_choose_and_are_strict(module_dir: Path) -> None:
    module = load(module_dir, "listed_tools", '''
        __all__ = ["chosen"]


        def chosen(x: int) -> int:
            """Chosen."""
            return x


        def other(x: int) -> int:
            """Not listed, so not a tool."""
            return x
    ''')
    registry = ToolRegistry(builtins=False)
    registry.add_module(module)
    assert registry.names() == ["ask_human", "chosen"]  # ask_human: always offered
    strict = load(module_dir, "strict_tools", '''
        def broken(x):
            return x


        TOOLS = [broken]
    ''')
    with pytest.raises(TypeError, match="needs a docstring"):
        ToolRegistry(builtins=False).add_module(strict)


def test_from_environment_loads_plain_modules_and_names_them(module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load(module_dir, "env_tools", '''
        def ping() -> str:
            """Answer pong."""
            return "pong"
    ''')
    monkeypatch.setenv("FLOWRELAY_TOOL_MODULES", "env_tools")
    registry = ToolRegistry.from_environment()
    assert "ping" in registry.names() and registry.modules == ["env_tools"]
    assert {"calculator", "current_time", "word_count"} <= set(registry.names())  # entry point


def test_an_unknown_tool_on_the_executor_gets_a_did_you_mean() -> None:
    with pytest.raises(UnknownToolError, match="did you mean 'calculator'"):
        ToolRegistry.from_environment().resolve("calculater")


# -- the README -------------------------------------------------------------------------------


def _readme_tools() -> dict[str, str]:
    table = README.split("<!-- tools:start")[1].split("<!-- tools:end -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {re.match(r"\| `(\w+)`", row).group(1): row.rsplit("|", 2)[1] for row in rows}  # type: ignore[union-attr]


def test_readme_tool_table_is_what_a_default_executor_offers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWRELAY_TOOL_MODULES", raising=False)
    registry = ToolRegistry.from_environment()  # built-ins whose packages are here + entry points
    documented = _readme_tools()
    assert set(documented) == set(registry.names()) | set(registry.unavailable())
    for name in registry.names():
        assert "not installed" not in documented[name], f"{name} is installed"
    for name, reason in registry.unavailable().items():
        packages = reason.split("package(s) ")[1].split(" on the")[0].split(", ")
        assert "not installed" in documented[name] and all(f"`{p}`" in documented[name] for p in packages), name


def _readme_example() -> tuple[str, dict[str, object]]:
    section = README.split("### Add your own tool")[1]
    module = section.split("```python\n")[1].split("```")[0]
    request = section.split("<<'JSON'\n")[1].split("\nJSON")[0]
    return module, json.loads(request)


async def test_readme_add_your_own_tool_example_runs(tmp_path: Path, scripted_model: str) -> None:
    module, request = _readme_example()
    tools_dir = tmp_path / "tools"
    tools_dir.mkdir()
    (tools_dir / "my_tools.py").write_text(module)
    (tools_dir / "no_tools_here.py").write_text("from os.path import join as joined\n")
    with isolated_stack(tmp_path / "stack", scripted_model) as (stack, _):
        executor = stack.start_executor(
            FLOWRELAY_TOOL_MODULES="my_tools,no_tools_here",
            PYTHONPATH=f"{tools_dir}:{stack.env['PYTHONPATH']}",
        )
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
            result = (await api.post("/execute", json=request)).json()
        assert result["status"] == "succeeded", result
        assert result["output"] == "HELLO!"
        tool_events = [e for e in result["trace"] if e["type"] == "tool.finished"]
        assert [e["data"]["tool"] for e in tool_events] == ["shout"]
        warnings = [line for line in executor.output().splitlines() if "WARNING" in line and "tools: " in line]
        assert len(warnings) == 1 and "module no_tools_here gave no tools" in warnings[0], warnings
