"""The console's own parts without the stack: its routes, its packaging, and its pure modules
run in the browser against the Python they must agree with.

The routes are served by a real uvicorn (the console router alone: these pages need no NATS),
and Chromium imports the same ES modules the console runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from flowrelay_testkit import free_port
from pydantic import ValidationError

from flowrelay_api import routes_console
from flowrelay_api.app import create_app
from flowrelay_api.settings import ApiSettings
from flowrelay_contracts import Workflow
from flowrelay_contracts.workflow import WorkflowError, plan

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "services" / "api" / "flowrelay_api" / "console" / "static"


@pytest.fixture(scope="module")
def console_url() -> Iterator[str]:
    """The console router alone on a real uvicorn (its pages and assets need no NATS)."""
    app = FastAPI()
    app.include_router(routes_console.router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
        assert thread.is_alive(), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
async def http(console_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console_url) as client:
        yield client


@pytest.fixture
async def page(browser: Any, console_url: str) -> AsyncIterator[Any]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{console_url}/ui/assets/favicon.svg")  # same origin, no console running
    yield page
    await context.close()
    assert errors == []


# -- routes -------------------------------------------------------------------------------


async def test_home_and_bare_prefix_lead_to_the_console_keeping_the_query(http: httpx.AsyncClient) -> None:
    home = await http.get("/")
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    bare = await http.get("/ui", params={"key": "k"})
    assert bare.status_code == 307 and bare.headers["location"] == "/ui/?key=k"


@pytest.mark.parametrize("path", ["/ui/", "/ui/runs/01M8RFT15M8K2D2GJF4KRRABHR", "/ui/submit", "/ui/anything/else"])
async def test_every_console_path_gets_the_page_with_a_strict_policy(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/assets/app.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_every_module_the_console_imports_is_served_as_javascript(http: httpx.AsyncClient) -> None:
    """Walk the import graph from app.js over HTTP: a missing or misnamed module fails here."""
    pending, seen = ["app.js"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        response = await http.get(f"/ui/assets/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        folder = Path(name).parent
        for target in re.findall(r'^import .* from "(\.{1,2}/[^"]+)";$', response.text, flags=re.M):
            pending.append((folder / target).as_posix().replace("./", "") if target.startswith("./") else
                           Path(folder.parent, target.removeprefix("../")).as_posix())
    on_disk = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*.js")}
    assert seen == on_disk, "every module on disk is used, and every used module exists"
    css = await http.get("/ui/assets/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_assets_revalidate_cheaply_and_nothing_outside_them_is_served(http: httpx.AsyncClient) -> None:
    first = await http.get("/ui/assets/app.js")
    again = await http.get("/ui/assets/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert first.headers["cache-control"] == "no-cache"
    for path in ["/ui/assets/index.html", "/ui/assets/%2e%2e/%2e%2e/routes_console.py", "/ui/assets/..%2F..%2Fapp.py", "/ui/assets/nope.js"]:
        assert (await http.get(path)).status_code == 404, path


async def test_the_examples_are_the_repositorys(http: httpx.AsyncClient) -> None:
    served = {e["name"]: e["body"] for e in (await http.get("/ui/examples.json")).json()["examples"]}
    on_disk = {p.stem: json.loads(p.read_text()) for p in (REPO / "examples").glob("*.json")}
    assert served == on_disk and "collaborative" in served


async def test_behind_a_proxy_prefix_the_page_points_at_the_prefix() -> None:
    app = create_app(ApiSettings())  # its lifespan (NATS) is not run: the page needs none
    transport = httpx.ASGITransport(app=app, root_path="/flowrelay")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = await client.get("/ui/")
        home = await client.get("/")
    assert page.status_code == 200
    assert 'data-root="/flowrelay"' in page.text and 'src="/flowrelay/ui/assets/app.js"' in page.text
    assert home.headers["location"] == "/flowrelay/ui/"


def test_the_wheel_ships_the_console_and_the_examples(tmp_path: Path) -> None:
    """What `pip install .` (the Dockerfile) installs: the assets and the examples."""
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "--target", "wheel", "--directory", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True, timeout=180,
    )
    wheel = next(tmp_path.glob("flowrelay-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"flowrelay_api/console/static/{p.relative_to(STATIC).as_posix()}" for p in STATIC.rglob("*") if p.is_file()}
    examples = {f"flowrelay_api/console/examples/{p.name}" for p in (REPO / "examples").glob("*.json")}
    assert shipped - names == set() and examples - names == set()


# -- modules in the browser ---------------------------------------------------------------

_NODE = {"type": "agent"}


def _nodes(*names: str) -> list[dict]:
    return [{"id": n, **_NODE, "data": {"name": f"agent {n}"}} for n in names]


#: Workflows the API accepts and refuses; the console must read every one as plan() does.
WORKFLOWS = {
    **{f"example {p.stem}": json.loads(p.read_text())["workflow"] for p in sorted((REPO / "examples").glob("*.json"))},
    "compact sequential": {"pattern": "sequential", "agents": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
    "compact collaborative": {"pattern": "collaborative", "agents": [{"name": "hub"}, {"name": "x"}, {"name": "y"}]},
    "compact without pattern": {"agents": [{"name": "a"}, {"name": "b"}]},
    "chain listed backwards": {"nodes": _nodes("c", "b", "a"), "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}]},
    "hub listed last": {"nodes": _nodes("x", "y", "hub"), "edges": [{"source": "hub", "target": "x"}, {"source": "hub", "target": "y"}]},
    "explicit collaborative pair": {"pattern": "collaborative", "nodes": _nodes("a", "b"), "edges": [{"source": "a", "target": "b"}]},
    "one node": {"nodes": _nodes("solo"), "edges": []},
    # refused by the API:
    "cycle": {"nodes": _nodes("a", "b"), "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]},
    "branch and join": {"nodes": _nodes("a", "b", "c", "d"), "edges": [
        {"source": "a", "target": "b"}, {"source": "a", "target": "c"}, {"source": "b", "target": "d"}, {"source": "c", "target": "d"}]},
    "two without edges": {"nodes": _nodes("a", "b"), "edges": []},
    "simple with two": {"pattern": "simple", "nodes": _nodes("a", "b"), "edges": [{"source": "a", "target": "b"}]},
    "two starts": {"pattern": "sequential", "nodes": _nodes("a", "b", "c"), "edges": [{"source": "a", "target": "c"}, {"source": "b", "target": "c"}]},
    "compact collaborative of one": {"pattern": "collaborative", "agents": [{"name": "alone"}]},
}


def _python_reading(document: dict) -> dict:
    try:
        result = plan(Workflow.model_validate(document))
    except (WorkflowError, ValidationError):
        return {"pattern": None, "order": None}
    return {"pattern": result.pattern.value, "order": [agent.name for agent in result.agents]}


async def test_the_console_reads_workflows_exactly_as_the_api_does(page: Any) -> None:
    readings = await page.evaluate(
        """async (documents) => {
            const { graphOf } = await import("/ui/assets/workflow.js");
            const out = {};
            for (const [name, doc] of Object.entries(documents)) {
                const g = graphOf(doc);
                out[name] = {pattern: g.pattern, order: g.order && g.order.map((id) => g.nodes.find((n) => n.id === id).name)};
            }
            return out;
        }""",
        WORKFLOWS,
    )
    expected = {name: _python_reading(doc) for name, doc in WORKFLOWS.items()}
    assert readings == expected
    assert sum(1 for r in expected.values() if r["pattern"] is None) == 6  # the refused ones are refused


async def test_the_sse_parser_gives_the_same_events_however_the_stream_is_cut(page: Any) -> None:
    stream = (
        ": keep-alive\r\n\r\n"
        "id: 1\r\nevent: run.started\r\ndata: {\"seq\": 1}\r\n\r\n"
        "id: 2\nevent: agent.started\ndata: line one\ndata: line two\n\n"
        ": ping\n\n"
        "id: 3\revent: run.completed\rdata:{\"seq\": 3}\r\r"
    )
    results = await page.evaluate(
        """async (text) => {
            const { SseParser } = await import("/ui/assets/sse.js");
            const runs = [];
            for (let cut = 0; cut <= text.length; cut++) {
                const parser = new SseParser();
                runs.push([...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut)), ...parser.end()]);
            }
            const byChar = new SseParser();
            runs.push([...[...text].flatMap((c) => byChar.push(c)), ...byChar.end()]);
            return runs;
        }""",
        stream,
    )
    expected = [
        {"id": "1", "event": "run.started", "data": '{"seq": 1}'},
        {"id": "2", "event": "agent.started", "data": "line one\nline two"},
        {"id": "3", "event": "run.completed", "data": '{"seq": 3}'},
    ]
    assert all(run == expected for run in results), next(run for run in results if run != expected)


async def test_the_trace_folds_a_collaborative_run_into_states_and_nested_steps(page: Any) -> None:
    """The run page's model of a trace (trace.js), fed a real collaborative event sequence."""
    events = [
        ("run.started", {"attempt": 1}),
        ("agent.started", {"agent": "coordinator", "step": 1, "pattern": "collaborative"}),
        ("llm.started", {"agent": "coordinator", "turn": 1}),
        ("llm.finished", {"agent": "coordinator", "turn": 1, "input_tokens": 10, "output_tokens": 2, "cost_usd": 0.5}),
        ("tool.started", {"agent": "coordinator", "tool": "analyst", "arguments": {}}),
        ("agent.started", {"agent": "analyst", "step": 2, "pattern": "collaborative"}),
        ("llm.started", {"agent": "analyst", "turn": 1}),
    ]
    at = "2026-12-01T10:00:00.{:03d}Z"
    trace_events = [{"seq": i + 1, "type": t, "at": at.format(i * 10), "data": d} for i, (t, d) in enumerate(events)]
    cancelled = {"seq": len(events) + 1, "type": "run.cancelled", "at": at.format(900), "data": {"status": "cancelled", "cost_usd": None}}
    folded = await page.evaluate(
        """async ([events, end]) => {
            const { Trace } = await import("/ui/assets/trace.js");
            const trace = new Trace();
            for (const e of events) trace.add(e);
            const during = {
                states: ["coordinator", "analyst", "writer"].map((n) => trace.nodeState(n)),
                calls: [...trace.activeCalls], depths: trace.spans.map((s) => [s.kind, s.agent, s.depth]),
                repeated: trace.add(events[2]),
            };
            trace.add(end);
            return { during, after: {
                states: ["coordinator", "analyst", "writer"].map((n) => trace.nodeState(n)),
                open: trace.spans.filter((s) => s.end === null).length, calls: [...trace.activeCalls],
                spanStates: trace.spans.map((s) => s.state), status: trace.status, costKnown: trace.costKnown,
                elapsed: trace.elapsed(),
            }};
        }""",
        [trace_events, cancelled],
    )
    assert folded["during"] == {
        "states": ["running", "running", "pending"],
        "calls": ["coordinator\u0000analyst"],
        "depths": [["agent", "coordinator", 0], ["llm", "coordinator", 1], ["tool", "coordinator", 1],
                   ["agent", "analyst", 2], ["llm", "analyst", 3]],
        "repeated": False,
    }
    assert folded["after"] == {
        "states": ["cancelled", "cancelled", "not-run"],
        "open": 0,
        "calls": [],
        "spanStates": ["cancelled", "succeeded", "cancelled", "cancelled", "cancelled"],
        "status": "cancelled",
        "costKnown": False,
        "elapsed": 900,
    }
