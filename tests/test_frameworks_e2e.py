"""The framework matrix: every any-agent framework x every case, through the whole stack.

Per framework: its own nats-server, the API and one executor (one warm worker) started from
the executor environment (``make install FRAMEWORKS=all``; ``make test`` installs it) with
``FLOWRELAY_FRAMEWORKS=<framework>``, against the scripted model. The independent cases of
a framework are submitted at once through ``POST /runs`` and followed on the bus; each test
then checks one case's record and trace. The README's framework table is rendered from
:data:`CASES` and checked by :func:`test_readme_framework_table_is_current`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from flowrelay_testkit import REPO, Bus, Stack, agent_node, run_body

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.stack import executor_bin
from flowrelay_contracts import (
    ErrorCode,
    EventType,
    ExecutorCapabilities,
    RunRecord,
    TraceEvent,
    subjects,
)
from flowrelay_contracts.workflow import KNOWN_FRAMEWORKS

#: The framework whose model calls carry no token counts (see its adapter).
NO_TOKENS = {"llama_index"}

#: Distribution behind each framework, for the README's version column.
DISTRIBUTIONS = {
    "tinyagent": "any-agent",
    "openai": "openai-agents",
    "langchain": "langchain",
    "llama_index": "llama-index-core",
    "smolagents": "smolagents",
    "agno": "agno",
    "google": "google-adk",
}

#: Runs of one agent on the one warm worker in the reuse case (half one by one, half at once).
REUSE_RUNS = 8


def _installed_in_executor_env() -> set[str]:
    python = executor_bin() / "python"
    out = subprocess.run(
        [str(python), "-c", "import json; from flowrelay_executor.engine import available_frameworks as a; print(json.dumps(a()))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return set(json.loads(out.stdout))


INSTALLED = _installed_in_executor_env()


# -- the cases ---------------------------------------------------------------------------


@dataclass
class Result:
    """What one case produced: records and traces of its runs."""

    records: list[RunRecord] = field(default_factory=list)
    traces: list[list[TraceEvent]] = field(default_factory=list)
    #: Model calls the scripted model counted for the case (``#count``), where it counts them.
    counted: dict[str, int] = field(default_factory=dict)

    @property
    def record(self) -> RunRecord:
        return self.records[0]

    @property
    def trace(self) -> list[TraceEvent]:
        return self.traces[0]


@dataclass
class Harness:
    api: httpx.AsyncClient
    bus: Bus
    framework: str
    scripted_url: str = ""

    async def counted(self, token: str) -> dict[str, int]:
        """Calls the scripted model received under ``#count=<token>``, per model."""
        async with httpx.AsyncClient() as http:
            stats = (await http.get(self.scripted_url.removesuffix("/v1") + "/stats")).json()
        return stats["counted_by_model"].get(token, {})

    def one(self, name: str = "assistant", **data: Any) -> dict[str, Any]:
        data.setdefault("instructions", "Answer the user.")
        return {"nodes": [agent_node("n1", name, framework=self.framework, **data)], "edges": []}

    async def submit(self, workflow: dict[str, Any], text: str, **options: Any) -> str:
        response = await self.api.post("/runs", json=run_body(workflow, text, **options))
        assert response.status_code == 202, response.text
        return response.json()["run_id"]

    async def finish(self, run_id: str, result: Result) -> None:
        trace = await self.bus.events(run_id, timeout=90)
        result.traces.append(trace)
        result.records.append(await self.bus.wait_record(run_id, timeout=30))

    async def run(self, workflow: dict[str, Any], text: str, **options: Any) -> Result:
        result = Result()
        await self.finish(await self.submit(workflow, text, **options), result)
        return result


async def simple(h: Harness) -> Result:
    return await h.run(h.one(), "ping")


async def tool_call(h: Harness) -> Result:
    return await h.run(h.one(tools=["add"]), '#call=add {"a": 20, "b": 22}')


async def sequential(h: Harness) -> Result:
    nodes = [agent_node(f"n{i}", name, instructions=f"You are {name}.", framework=h.framework)
             for i, name in enumerate(("first", "second"), 1)]
    return await h.run({"nodes": nodes, "edges": [{"id": "e1", "source": "n1", "target": "n2"}]}, "ping")


async def collaborative(h: Harness) -> Result:
    nodes = [
        agent_node("c", "coordinator", instructions="Delegate to the helper.", framework=h.framework),
        agent_node("h", "helper", instructions="Add numbers.", tools=["add"], framework=h.framework),
    ]
    request = json.dumps({"request": '#call=add {"a": 1, "b": 2}'})
    workflow = {"nodes": nodes, "edges": [{"id": "e1", "source": "c", "target": "h"}], "pattern": "collaborative"}
    return await h.run(workflow, f"#call=helper {request}")


async def tool_raises(h: Harness) -> Result:
    return await h.run(h.one(tools=["explode"]), '#call=explode {"reason": "boom"}')


async def turn_limit(h: Harness) -> Result:
    return await h.run(h.one(tools=["add"]), '#loop=add {"a": 1, "b": 1}', max_turns=3)


async def deadline(h: Harness) -> Result:
    return await h.run(h.one(), "#delay=5 slow", timeout_s=1)


async def cancel(h: Harness) -> Result:
    run_id = await h.submit(h.one(), "#delay=8 slow", timeout_s=60)
    async for event in h.bus.stream_events(run_id):
        if event.type == EventType.LLM_STARTED:
            break
    response = await h.api.post(f"/runs/{run_id}/cancel")
    assert response.status_code in (200, 202), response.text
    result = Result()
    await h.finish(run_id, result)
    return result


async def agent_reuse(h: Harness) -> Result:
    workflow = h.one(name="reused", tools=["add"])
    result = Result()
    for i in range(REUSE_RUNS // 2):
        await h.finish(await h.submit(workflow, f'#call=add {{"a": {i}, "b": 100}}'), result)
    ids = [await h.submit(workflow, f'#call=add {{"a": {i}, "b": 100}}') for i in range(REUSE_RUNS // 2, REUSE_RUNS)]
    for run_id in ids:
        await h.finish(run_id, result)
    return result


async def resume_sequential(h: Harness) -> Result:
    """Agent three fails once (503) and the run is retried: it resumes after agent two."""
    nodes = [agent_node(f"n{i}", name, instructions=f"You are {name}.", framework=h.framework,
                        model_id=f"scripted:{name}") for i, name in enumerate(("one", "two", "three"), 1)]
    edges = [{"id": f"e{i}", "source": f"n{i}", "target": f"n{i + 1}"} for i in (1, 2)]
    token = f"{h.framework}-resume-seq"
    result = await h.run({"nodes": nodes, "edges": edges}, f"#count={token} resume #fail-first=1:503@three",
                         retry={"attempts": 2, "initial_backoff_s": 0})
    result.counted = await h.counted(token)
    return result


async def resume_collaborative(h: Harness) -> Result:
    """The second sub-agent call fails once: the retried run reuses the first call's answer."""
    nodes = [
        agent_node("c", "coordinator", instructions="Ask analyst, then writer.", framework=h.framework),
        agent_node("a", "analyst", instructions="Answer.", framework=h.framework),
        agent_node("w", "writer", instructions="Answer.", framework=h.framework, model_id="scripted:wm"),
    ]
    workflow = {"nodes": nodes, "edges": [{"source": "c", "target": "a"}, {"source": "c", "target": "w"}],
                "pattern": "collaborative"}
    first, second = f"{h.framework}-resume-a", f"{h.framework}-resume-w"
    text = (f"#call=analyst {json.dumps({'request': f'#count={first} part one'})} "
            f"#call=writer {json.dumps({'request': f'#count={second} part two #fail-first=1:503@wm'})}")
    result = await h.run(workflow, text, retry={"attempts": 2, "initial_backoff_s": 0})
    result.counted = {"analyst": sum((await h.counted(first)).values()), "writer": sum((await h.counted(second)).values())}
    return result


async def budget(h: Harness) -> Result:
    return await h.run(h.one(tools=["add"]), '#loop=add {"a": 1, "b": 1}', max_turns=50, max_tokens=400)
#: Frameworks whose agents take a message list: a thread's earlier turns go in as real
#: messages, and their text streams (llm.delta); the others get the turns as text and
#: answer whole.
TAKES_MESSAGES = {"tinyagent"}


async def thread(h: Harness) -> Result:
    thread_id = (await h.api.post("/threads", json={})).json()["thread_id"]
    second = "#recall" if h.framework in TAKES_MESSAGES else "what was the word?"
    result = Result()
    for text in ("remember the word teapot", second):
        response = await h.api.post(f"/threads/{thread_id}/runs", json=run_body(h.one(), text))
        assert response.status_code == 202, response.text
        await h.finish(response.json()["run_id"], result)
    return result


async def stream_tokens(h: Harness) -> Result:
    return await h.run(h.one(), "#tokens=40", stream_tokens=True)


#: Case name -> (how to run it, the README column it backs).
CASES: dict[str, tuple[Callable[[Harness], Awaitable[Result]], str]] = {
    "simple": (simple, "simple"),
    "tool_call": (tool_call, "tool call"),
    "sequential": (sequential, "sequential"),
    "collaborative": (collaborative, "collaborative"),
    "tool_raises": (tool_raises, "tool raises → `tool_failed`"),
    "turn_limit": (turn_limit, "turn limit"),
    "deadline": (deadline, "deadline"),
    "cancel": (cancel, "cancel"),
    "agent_reuse": (agent_reuse, f"agent reuse ({REUSE_RUNS} runs, one worker)"),
    "resume_sequential": (resume_sequential, "resume (sequential)"),
    "resume_collaborative": (resume_collaborative, "resume (collaborative)"),
    "budget": (budget, "budget"),
    "thread": (thread, "thread history"),
    "stream_tokens": (stream_tokens, "`stream_tokens`"),
}

#: Cases run once the others have finished: these count attempts (a run re-run because its
#: worker was killed would count twice).
AFTERWARDS = frozenset({"resume_sequential", "resume_collaborative", "budget", "thread", "stream_tokens"})

#: Run alone, last: the deadline case kills its worker (with every run on it) when the
#: framework cannot stop a run cooperatively (smolagents runs in a thread), or when the
#: cooperative stop is slower than FLOWRELAY_KILL_GRACE_S on a loaded machine; the runs
#: killed with it would be retried and their traces would show it.
ALONE = frozenset({"deadline"})


# -- one stack per framework ------------------------------------------------------------------


@pytest.fixture(scope="module", params=KNOWN_FRAMEWORKS)
async def outcomes(
    request: pytest.FixtureRequest, scripted_model: str, secrets: Secrets, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, dict[str, Result | BaseException], ExecutorCapabilities]]:
    """Run every case of one framework at once on its own stack; their results."""
    framework = request.param
    if framework not in INSTALLED:
        pytest.skip(f"{framework} is not in the executor environment: make install FRAMEWORKS=all")
    root = tmp_path_factory.mktemp(f"frameworks-{framework}")
    server = natsserver.start_secure(root / "nats", secrets, log_file=root / "logs" / "nats.log")
    stack = Stack(nats_url=server.url, scripted_url=scripted_model, root=root, secrets=secrets)
    try:
        stack.start_api()
        # A long kill grace: the deadline case must end by cancelling the run in its worker; a
        # kill (the test kit's 1 s grace on a busy machine) would re-queue the other cases.
        stack.start_executor(FLOWRELAY_FRAMEWORKS=framework, FLOWRELAY_WORKERS="1", FLOWRELAY_KILL_GRACE_S="20")
        bus = await stack.bus()
        try:
            caps = await _capabilities(bus)
            async with httpx.AsyncClient(base_url=stack.api_url, headers=stack.auth_headers, timeout=60) as api:
                harness = Harness(api=api, bus=bus, framework=framework, scripted_url=scripted_model)
                first = [name for name in CASES if name not in AFTERWARDS | ALONE]
                then = [name for name in CASES if name in AFTERWARDS]
                last = [name for name in CASES if name in ALONE]
                results: dict[str, Result | BaseException] = {}
                for wave in (first, then, last):
                    done = await asyncio.gather(*(CASES[name][0](harness) for name in wave), return_exceptions=True)
                    results |= dict(zip(wave, done, strict=True))
            yield framework, results, caps
        finally:
            await bus.close()
    finally:
        stack.stop()
        server.stop()


async def _capabilities(bus: Bus) -> ExecutorCapabilities:
    kv = await bus.js.key_value(subjects.EXECUTORS_BUCKET)
    for _ in range(100):
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError while the bucket is empty
            keys = []
        if keys:
            return ExecutorCapabilities.model_validate_json((await kv.get(keys[0])).value)
        await asyncio.sleep(0.1)
    raise AssertionError("the executor never advertised its capabilities")


def _case(outcomes: tuple[str, dict[str, Any], ExecutorCapabilities], name: str) -> tuple[str, Result]:
    framework, results, _ = outcomes
    result = results[name]
    if isinstance(result, BaseException):
        raise result
    return framework, result


def _of(trace: list[TraceEvent], kind: EventType) -> list[dict[str, Any]]:
    return [e.data for e in trace if e.type == kind]


def _check_tokens(framework: str, trace: list[TraceEvent], record: RunRecord) -> None:
    """Every model call has real counts, or null plus a note (never a made-up 0)."""
    calls = _of(trace, EventType.LLM_FINISHED)
    assert calls, "no model call was reported"
    for call in calls:
        if framework in NO_TOKENS:
            assert call["input_tokens"] is None and call["output_tokens"] is None, call
            assert call["cost_usd"] is None and call["cost_note"], call
        else:
            assert isinstance(call["input_tokens"], int) and call["input_tokens"] > 0, call
            assert isinstance(call["output_tokens"], int) and call["output_tokens"] > 0, call
            assert call["cost_usd"] is not None and call["cost_usd"] > 0, call
    if framework in NO_TOKENS:
        assert record.cost_usd is None and record.cost_note
    else:
        assert record.usage.input_tokens == sum(c["input_tokens"] for c in calls)
        assert record.usage.output_tokens == sum(c["output_tokens"] for c in calls)


# -- the matrix -------------------------------------------------------------------------------


def test_executor_advertises_the_framework_it_self_checked(outcomes: Any) -> None:
    framework, _, caps = outcomes
    assert framework in caps.frameworks
    assert caps.framework_versions.get(framework)


def test_simple(outcomes: Any) -> None:
    framework, result = _case(outcomes, "simple")
    assert result.record.status == "succeeded", result.record.error
    assert result.record.output == "echo: ping"
    types = [e.type for e in result.trace]
    assert types == [EventType.RUN_STARTED, EventType.AGENT_STARTED, EventType.LLM_STARTED,
                     EventType.LLM_FINISHED, EventType.AGENT_FINISHED, EventType.RUN_COMPLETED]
    assert {e.data["agent"] for e in result.trace if "agent" in e.data} == {"assistant"}
    _check_tokens(framework, result.trace, result.record)


def test_tool_call(outcomes: Any) -> None:
    framework, result = _case(outcomes, "tool_call")
    assert result.record.status == "succeeded", result.record.error
    assert result.record.output == "42"
    started, finished = _of(result.trace, EventType.TOOL_STARTED), _of(result.trace, EventType.TOOL_FINISHED)
    assert [(d["agent"], d["tool"], d["arguments"]) for d in started] == [("assistant", "add", {"a": 20, "b": 22})]
    assert [(d["agent"], d["tool"], d["result"]) for d in finished] == [("assistant", "add", 42)]
    assert "error" not in finished[0]
    _check_tokens(framework, result.trace, result.record)


def test_sequential(outcomes: Any) -> None:
    framework, result = _case(outcomes, "sequential")
    assert result.record.status == "succeeded", result.record.error
    assert result.record.output == "echo: echo: ping"
    assert [d["agent"] for d in _of(result.trace, EventType.AGENT_STARTED)] == ["first", "second"]
    assert [d["agent"] for d in _of(result.trace, EventType.LLM_FINISHED)] == ["first", "second"]
    _check_tokens(framework, result.trace, result.record)


def test_collaborative(outcomes: Any) -> None:
    framework, result = _case(outcomes, "collaborative")
    record, trace = result.record, result.trace
    assert record.status == "succeeded", record.error
    assert record.output == "3"
    started = [(d["agent"], d["tool"], d["arguments"]) for d in _of(trace, EventType.TOOL_STARTED)]
    assert started == [("coordinator", "helper", {"request": '#call=add {"a": 1, "b": 2}'}), ("helper", "add", {"a": 1, "b": 2})]
    finished = [(d["agent"], d["tool"], d["result"]) for d in _of(trace, EventType.TOOL_FINISHED)]
    assert finished == [("helper", "add", 3), ("coordinator", "helper", "3")]
    # Each agent's two model calls are reported once, under that agent (not also the other).
    assert sorted(d["agent"] for d in _of(trace, EventType.LLM_FINISHED)) == ["coordinator"] * 2 + ["helper"] * 2
    assert [d["agent"] for d in _of(trace, EventType.AGENT_STARTED)] == ["coordinator", "helper"]
    if framework not in NO_TOKENS:
        by_agent = {a.agent: a.usage for a in record.agents}
        for agent in ("coordinator", "helper"):
            calls = [d for d in _of(trace, EventType.LLM_FINISHED) if d["agent"] == agent]
            assert by_agent[agent].input_tokens == sum(c["input_tokens"] for c in calls) > 0
    _check_tokens(framework, trace, record)


def test_tool_that_raises_fails_the_run_tool_failed(outcomes: Any) -> None:
    _, result = _case(outcomes, "tool_raises")
    record = result.record
    assert record.status == "failed"
    assert record.error is not None and record.error.code == ErrorCode.TOOL_FAILED
    assert record.error.tool == "explode" and "exploded: boom" in record.error.message
    finished = _of(result.trace, EventType.TOOL_FINISHED)
    assert [(d["tool"], "exploded: boom" in d["error"]) for d in finished] == [("explode", True)]
    assert result.trace[-1].type == EventType.RUN_FAILED


def test_turn_limit(outcomes: Any) -> None:
    _, result = _case(outcomes, "turn_limit")
    assert result.record.status == "failed", (result.record.output, [(e.type, e.data) for e in result.trace])
    assert result.record.error is not None and result.record.error.code == ErrorCode.MAX_TURNS_EXCEEDED
    assert len(_of(result.trace, EventType.LLM_STARTED)) == 3


def test_deadline(outcomes: Any) -> None:
    _, result = _case(outcomes, "deadline")
    assert result.record.status == "failed"
    assert result.record.error is not None and result.record.error.code == ErrorCode.TIMEOUT
    assert "stopped after" in result.record.error.message, "cancelled in its worker, not killed with it"


def test_cancel(outcomes: Any) -> None:
    _, result = _case(outcomes, "cancel")
    assert result.record.status == "cancelled"
    assert result.trace[-1].type == EventType.RUN_CANCELLED


def test_agent_reuse_across_many_runs_on_one_warm_worker(outcomes: Any) -> None:
    framework, result = _case(outcomes, "agent_reuse")
    assert len(result.records) == REUSE_RUNS
    for i, (record, trace) in enumerate(zip(result.records, result.traces, strict=True)):
        assert record.status == "succeeded", (i, record.error)
        assert record.output == str(i + 100)
        assert [d["arguments"] for d in _of(trace, EventType.TOOL_STARTED)] == [{"a": i, "b": 100}]
        assert [d["result"] for d in _of(trace, EventType.TOOL_FINISHED)] == [i + 100]
        _check_tokens(framework, trace, record)
    # One executor with one worker process (FLOWRELAY_WORKERS=1) ran them all.
    executors = {e.data.get("executor_id") for t in result.traces for e in t if e.type == EventType.RUN_STARTED}
    assert len(executors) == 1


def test_a_retried_sequential_run_resumes_after_its_finished_agents(outcomes: Any) -> None:
    _, result = _case(outcomes, "resume_sequential")
    record, trace = result.record, result.trace
    assert record.status == "succeeded", record.error
    assert record.attempts == 2 and [r.error.agent for r in record.retries] == ["three"]
    [resumed] = [e for e in trace if e.type == EventType.RUN_RESUMED]
    assert resumed.data["agents"] == ["one", "two"]
    assert {d["agent"] for d in _of([e for e in trace if e.seq > resumed.seq], EventType.LLM_STARTED)} == {"three"}
    assert result.counted == {"one": 1, "two": 1, "three": 2}


def test_a_retried_collaborative_run_reuses_its_finished_sub_agent_calls(outcomes: Any) -> None:
    _, result = _case(outcomes, "resume_collaborative")
    record, trace = result.record, result.trace
    assert record.status == "succeeded", record.error
    assert record.attempts == 2
    assert [e.data["agents"] for e in trace if e.type == EventType.RUN_RESUMED] == [["analyst"]]
    assert result.counted["analyst"] == 1, "the analyst's finished call was not made again"
    assert result.counted["writer"] == 2


def test_a_run_over_its_token_budget_stops(outcomes: Any) -> None:
    framework, result = _case(outcomes, "budget")
    record, trace = result.record, result.trace
    assert record.status == "failed" and record.error.code == ErrorCode.BUDGET_EXCEEDED, record.error
    if framework in NO_TOKENS:
        assert "cannot be enforced" in record.error.message
    else:
        assert record.usage.input_tokens + record.usage.output_tokens > 400
    last_call = max(e.seq for e in trace if e.type == EventType.LLM_FINISHED)
    assert not [e for e in trace if e.seq > last_call and e.type == EventType.LLM_STARTED], "no call after the budget"
def test_a_thread_run_sees_the_earlier_turn(outcomes: Any) -> None:
    framework, result = _case(outcomes, "thread")
    first, second = result.records
    assert first.status == second.status == "succeeded", (first.error, second.error)
    assert "teapot" in second.output and second.thread_id == first.thread_id
    [started] = _of(result.traces[1], EventType.AGENT_STARTED)
    assert started["history"]["turns"] == 1
    if framework in TAKES_MESSAGES:
        assert started["history"]["as"] == "messages"
        assert second.output == "recall: user: remember the word teapot | assistant: echo: remember the word teapot"
    else:  # said so: the turns came as text
        assert started["history"]["as"] == "text" and framework in started["history"]["note"]


def test_stream_tokens_streams_or_says_it_cannot(outcomes: Any) -> None:
    framework, result = _case(outcomes, "stream_tokens")
    record = result.record
    assert record.status == "succeeded", record.error
    assert record.output == " ".join(f"{i:03d}" for i in range(40))
    deltas = _of(result.trace, EventType.LLM_DELTA)
    [started] = _of(result.trace, EventType.AGENT_STARTED)
    if framework in TAKES_MESSAGES:
        assert started["stream_tokens"] is True and "".join(d["text"] for d in deltas) == record.output
    else:
        assert deltas == [] and started["stream_tokens"] is False and framework in started["stream_note"]
    _check_tokens(framework, result.trace, record)


# -- the README table ------------------------------------------------------------------------

_TABLE_START, _TABLE_END = "<!-- frameworks:start", "<!-- frameworks:end -->"


def framework_table() -> str:
    """The README's framework table: what the matrix above checks, per framework."""
    lock = tomllib.loads((REPO / "locks" / "executor" / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"]}
    columns = [label for _, label in CASES.values()]
    lines = [
        "| framework | `make install FRAMEWORKS=` | tested with | " + " | ".join(columns) + " | tokens |",
        "|---" * (len(columns) + 4) + "|",
    ]
    for name in KNOWN_FRAMEWORKS:
        extra = "(built in)" if name == "tinyagent" else f"`{name}`"
        version = f"{DISTRIBUTIONS[name]} {versions[DISTRIBUTIONS[name]]}"
        tokens = "unknown: null + `cost_note`" if name in NO_TOKENS else "yes"
        cells = [_cell(name, case) for case in CASES]
        lines.append(f"| `{name}` | {extra} | {version} | " + " | ".join(cells) + f" | {tokens} |")
    return "\n".join(lines)


def _cell(framework: str, case: str) -> str:
    messages = framework in TAKES_MESSAGES
    if case == "thread":
        return "yes (messages)" if messages else "yes (as text, said in `history.note`)"
    if case == "stream_tokens":
        return "yes" if messages else "whole answer (said in `stream_note`)"
    return "yes"


def test_readme_framework_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index(_TABLE_START)
    body = readme[readme.index("\n", start) + 1 : readme.index(_TABLE_END)].strip()
    assert body == framework_table(), f"update the README's framework table to:\n{framework_table()}"


def test_every_framework_has_an_adapter_module() -> None:
    folder = Path(REPO / "services" / "executor" / "flowrelay_executor" / "engine" / "frameworks")
    assert sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__") == sorted(KNOWN_FRAMEWORKS)
