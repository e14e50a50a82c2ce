"""The API against a real nats-server, without executors (they are faked where needed).

Each test gets its own nats-server (about 20 ms to start) and app, so no state leaks
between tests. Requests go through httpx's ASGI transport, which returns a response once
the app has finished it: SSE tests therefore also prove that streams end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.js.api import ConsumerConfig

from flowrelay import natsserver
from flowrelay_api.app import create_app
from flowrelay_api.context import ApiContext
from flowrelay_api.settings import ApiSettings
from flowrelay_bus.events import RunEventLog
from flowrelay_contracts import (
    CancelRequest,
    ErrorCode,
    EventType,
    ExecutorCapabilities,
    Isolation,
    RunError,
    RunRecord,
    RunRequested,
    RunStatus,
    Suggestion,
    TraceEvent,
    subjects,
)
from flowrelay_contracts.ids import RunIdGenerator, is_valid_run_id
from flowrelay_contracts.messages import utcnow
from flowrelay_contracts.tenants import DEFAULT_TENANT

pytestmark = pytest.mark.timeout(30)

ONE_AGENT = {"nodes": [{"id": "a", "data": {"name": "writer"}}], "edges": []}
TWO_AGENTS = {
    "nodes": [{"id": "a", "data": {"name": "writer"}}, {"id": "b", "data": {"name": "critic"}}],
    "edges": [{"source": "a", "target": "b"}],
}


# -- fixtures -------------------------------------------------------------------------------


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def ctx(self) -> ApiContext:
        return self.app.state.context  # type: ignore[no-any-return]


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = natsserver.start(tmp_path / "nats")
    try:
        yield server.url
    finally:
        server.stop()


@asynccontextmanager
async def running_api(nats_url: str, **overrides: Any) -> AsyncIterator[Api]:
    # Handler tests on a bare nats-server with auth off (tenant "default", every scope);
    # authentication and tenancy are tested against the real stack (test_security_*.py).
    app = create_app(ApiSettings(nats_url=nats_url, **{"auth": "none", **overrides}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", timeout=20
        ) as client:
            yield Api(app, client)


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Api]:
    async with running_api(nats_url, sse_suggestion_grace_s=0.5, sse_ping_s=0) as api:
        yield api


def submission(workflow: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"workflow": workflow or ONE_AGENT, "input": "hello", **extra}


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


async def fake_run(
    api: Api, run_id: str, *types: EventType, status: RunStatus = RunStatus.RUNNING
) -> RunEventLog:
    """A record in ``status`` with ``types`` events already stored, as an executor leaves them."""
    await api.ctx.runs.create(RunRecord(run_id=run_id, status=status, input="x"))
    log = RunEventLog(api.ctx.js, DEFAULT_TENANT, run_id)
    for type_ in types:
        await log.emit(type_, {"n": type_.value})
    return log


async def requests_on_stream(api: Api, stream: str = subjects.RUNS_STREAM) -> list[RunRequested]:
    info = await api.ctx.js.stream_info(stream)
    found: list[RunRequested] = []
    if not info.state.messages:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await api.ctx.js.get_msg(stream, seq)
        found.append(RunRequested.model_validate_json(msg.data))
    return found


# -- ids --------------------------------------------------------------------------------------


def test_run_ids_are_ulids_that_sort_by_creation() -> None:
    generator = RunIdGenerator()
    ids = [generator.new() for _ in range(2000)]
    assert all(len(i) == 26 and is_valid_run_id(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


# -- POST /runs: validation -------------------------------------------------------------------


async def test_malformed_body_is_422_naming_each_field(api: Api) -> None:
    response = await api.client.post(
        "/runs", json={"workflow": {"nodes": "not a list"}, "options": {"timeout_s": -5}}
    )
    assert response.status_code == 422
    problems = {tuple(p["loc"]): p for p in response.json()["detail"]}
    assert set(problems) == {
        ("body", "workflow", "nodes"),
        ("body", "input"),
        ("body", "options", "timeout_s"),
    }
    assert problems[("body", "input")]["msg"].startswith("input:")
    assert problems[("body", "workflow", "nodes")]["msg"].startswith("workflow.nodes:")
    assert problems[("body", "options", "timeout_s")]["type"] == "greater_than"
    assert all(set(p) == {"loc", "msg", "type"} for p in problems.values())  # no echo of the input


async def test_invalid_json_is_422(api: Api) -> None:
    response = await api.client.post(
        "/runs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("workflow", "loc", "words"),
    [
        (
            {
                "nodes": [{"id": "a", "data": {"name": "x"}}, {"id": "a", "data": {"name": "y"}}],
                "edges": [],
            },
            ["body", "workflow", "nodes", 1, "id"],
            "duplicate node id 'a'",
        ),
        (
            {
                "nodes": [{"id": "a", "data": {"name": "x"}}],
                "edges": [{"source": "a", "target": "ghost"}],
            },
            ["body", "workflow", "edges", 0, "target"],
            "unknown node 'ghost'",
        ),
        (
            {
                "nodes": [{"id": "a", "data": {"name": "x"}}, {"id": "b", "data": {"name": "y"}}],
                "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}],
            },
            ["body", "workflow", "edges"],
            "cycle",
        ),
        (
            {
                "pattern": "sequential",
                "nodes": [{"id": n, "data": {"name": n}} for n in "abc"],
                "edges": [{"source": "a", "target": "c"}, {"source": "b", "target": "c"}],
            },
            ["body", "workflow", "edges"],
            "exactly one start, found 2",
        ),
    ],
    ids=["duplicate-id", "unknown-node", "cycle", "two-starts"],
)
async def test_unrunnable_graph_is_422_pointing_at_the_culprit(
    api: Api, workflow: dict[str, Any], loc: list[Any], words: str
) -> None:
    response = await api.client.post("/runs", json=submission(workflow))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [p["loc"] for p in detail] == [loc]
    assert words in detail[0]["msg"]


async def test_options_above_the_limits_are_422(api: Api) -> None:
    response = await api.client.post(
        "/runs", json=submission(options={"timeout_s": 5000, "max_turns": 500})
    )
    assert response.status_code == 422
    detail = {tuple(p["loc"]): p["msg"] for p in response.json()["detail"]}
    assert "FLOWRELAY_MAX_TIMEOUT_S" in detail[("body", "options", "timeout_s")]
    assert "FLOWRELAY_MAX_MAX_TURNS" in detail[("body", "options", "max_turns")]


async def test_oversized_body_is_413_naming_the_limit(nats_url: str) -> None:
    async with running_api(nats_url, max_body_bytes=2048) as api:
        big = submission(input="x" * 4096)
        response = await api.client.post("/runs", json=big)
        assert response.status_code == 413
        assert "2048 bytes" in response.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            body = json.dumps(big).encode()
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        response = await api.client.post(
            "/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        small = await api.client.post(
            "/runs", content=chunks_of(submission()), headers={"content-type": "application/json"}
        )
        assert small.status_code == 202
        assert len(await requests_on_stream(api)) == 1


def chunks_of(body: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        raw = json.dumps(body).encode()
        yield raw[:10]
        yield raw[10:]

    return gen()


# -- POST /runs: queueing ---------------------------------------------------------------------


async def test_submit_stores_a_queued_record_then_queues_the_request(api: Api) -> None:
    response = await api.client.post("/runs", json=submission(TWO_AGENTS, options={"max_turns": 5}))
    assert response.status_code == 202
    body = response.json()
    run_id = body["run_id"]
    assert body["status"] == "queued"
    assert body["links"] == {
        "self": f"/runs/{run_id}",
        "events": f"/runs/{run_id}/events",
        "cancel": f"/runs/{run_id}/cancel",
        "output": f"/runs/{run_id}/output",
        "input": f"/runs/{run_id}/input",
    }
    assert response.headers["location"] == f"/runs/{run_id}"

    record = await api.ctx.runs.get(DEFAULT_TENANT, run_id)
    assert record is not None and record.status == RunStatus.QUEUED and record.input == "hello"

    raw = await api.ctx.js.get_last_msg(subjects.RUNS_STREAM, subjects.run_requested(DEFAULT_TENANT))
    assert raw.headers and raw.headers[subjects.MSG_ID_HEADER] == run_id
    request = RunRequested.model_validate_json(raw.data)
    assert request.run_id == run_id
    assert request.options.timeout_s == 120 and request.options.max_turns == 5  # resolved
    assert [n.id for n in request.workflow.nodes] == ["a", "b"]

    view = (await api.client.get(f"/runs/{run_id}")).json()
    assert view["status"] == "queued" and view["error"] is None and view["suggestions"] == []
    assert view["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert view["links"]["events"] == f"/runs/{run_id}/events"


async def test_idempotency_key_returns_the_same_run_once(api: Api) -> None:
    headers = {"Idempotency-Key": "order-42/attempt"}
    first = await api.client.post("/runs", json=submission(), headers=headers)
    again = await api.client.post("/runs", json=submission(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["run_id"] == again.json()["run_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(await requests_on_stream(api)) == 1

    other = await api.client.post("/runs", json=submission(input="something else"), headers=headers)
    assert other.status_code == 409
    assert "different request body" in other.json()["detail"]

    fresh = await api.client.post(
        "/runs", json=submission(), headers={"Idempotency-Key": "another"}
    )
    assert fresh.json()["run_id"] != first.json()["run_id"]


async def test_concurrent_repeats_make_one_run(api: Api) -> None:
    headers = {"Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(api.client.post("/runs", json=submission(), headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["run_id"] for r in responses}) == 1
    assert len(await requests_on_stream(api)) == 1


async def test_suggest_mode_sends_requests_to_the_suggester(nats_url: str) -> None:
    async with running_api(nats_url, execution="suggest") as api:
        response = await api.client.post("/runs", json=submission())
        assert response.status_code == 202
        advised = await requests_on_stream(api, subjects.SUGGESTER_STREAM)
        assert [r.run_id for r in advised] == [response.json()["run_id"]]
        assert await requests_on_stream(api) == []


async def test_failed_publish_marks_the_run_failed_and_answers_503(api: Api) -> None:
    await api.ctx.js.delete_stream(subjects.RUNS_STREAM)
    response = await api.client.post("/runs", json=submission(), headers={"Idempotency-Key": "k"})
    assert response.status_code == 503
    listed = (await api.client.get("/runs")).json()["runs"]
    assert len(listed) == 1 and listed[0]["status"] == "failed"
    assert listed[0]["error"]["code"] == ErrorCode.INTERNAL_ERROR
    assert listed[0]["run_id"] in response.json()["detail"]
    # the key was released: once NATS is back, the retry makes a new run
    await api.ctx.js.add_stream(
        name=subjects.RUNS_STREAM, subjects=list(subjects.RUNS_STREAM_SUBJECTS)
    )
    retry = await api.client.post("/runs", json=submission(), headers={"Idempotency-Key": "k"})
    assert retry.status_code == 202 and retry.json()["run_id"] != listed[0]["run_id"]


async def test_a_retry_that_finishes_a_dead_submission_releases_the_key_when_queueing_fails(api: Api) -> None:
    """A key left by a request that died before storing its record: the retry that stores it
    and fails to queue it must release the key too, or every later retry gets the failed run."""
    headers = {"Idempotency-Key": "half-done"}
    first = (await api.client.post("/runs", json=submission(), headers=headers)).json()["run_id"]
    runs = await api.ctx.js.key_value(subjects.RUNS_BUCKET)
    await runs.purge(first)  # as if the first request had died between reserving and storing
    await api.ctx.js.delete_stream(subjects.RUNS_STREAM)
    failed = await api.client.post("/runs", json=submission(), headers=headers)
    assert failed.status_code == 503 and first in failed.json()["detail"]
    await api.ctx.js.add_stream(
        name=subjects.RUNS_STREAM, subjects=list(subjects.RUNS_STREAM_SUBJECTS)
    )
    retry = await api.client.post("/runs", json=submission(), headers=headers)
    assert retry.status_code == 202
    assert retry.json()["run_id"] != first and retry.json()["status"] == "queued"


# -- capabilities -------------------------------------------------------------------------------


async def advertise(api: Api, frameworks: list[str], tools: list[str]) -> None:
    caps = ExecutorCapabilities(
        executor_id="ex-1", frameworks=frameworks, tools=tools, slots=4, isolation=Isolation.PROCESS
    )
    kv = await api.ctx.js.key_value(subjects.EXECUTORS_BUCKET)
    await kv.put(caps.executor_id, caps.model_dump_json().encode())


async def test_capabilities_of_live_executors_are_checked(api: Api) -> None:
    needs_openai = {
        "nodes": [{"id": "n1", "data": {"name": "w", "framework": "openai"}}],
        "edges": [],
    }
    assert (
        await api.client.post("/runs", json=submission(needs_openai))
    ).status_code == 202  # nobody yet

    await advertise(api, ["tinyagent"], ["search_web"])
    await api.ctx.executors.refresh()  # what the background poll does every 2 s
    response = await api.client.post("/runs", json=submission(needs_openai))
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "workflow", "nodes", 0, "data", "framework"]
    assert "pip install 'any-agent[openai]'" in problem["msg"] and "'n1'" in problem["msg"]

    needs_tool = {
        "nodes": [{"id": "n1", "data": {"name": "w", "tools": ["search_web", "calc"]}}],
        "edges": [],
    }
    response = await api.client.post("/runs", json=submission(needs_tool))
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "workflow", "nodes", 0, "data", "tools", 1]
    assert "'calc'" in problem["msg"] and "'n1'" in problem["msg"]

    ok = {"nodes": [{"id": "n1", "data": {"name": "w", "tools": ["search_web"]}}], "edges": []}
    assert (await api.client.post("/runs", json=submission(ok))).status_code == 202
    assert (await api.client.get("/healthz")).json() == {
        "status": "ok",
        "nats": "connected",
        "executors": 1,
        "problems": [],
    }


async def test_unknown_framework_is_422_even_without_executors(api: Api) -> None:
    workflow = {"nodes": [{"id": "n1", "data": {"name": "w", "framework": "skynet"}}], "edges": []}
    response = await api.client.post("/runs", json=submission(workflow))
    assert response.status_code == 422
    assert "'skynet'" in response.json()["detail"][0]["msg"]


# -- GET /runs ----------------------------------------------------------------------------------


async def test_list_runs_newest_first_with_cursor(api: Api) -> None:
    ids = [(await api.client.post("/runs", json=submission())).json()["run_id"] for _ in range(5)]
    newest_first = ids[::-1]
    await api.client.post(f"/runs/{ids[1]}/cancel")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/runs", params=params)).json()
        seen += [r["run_id"] for r in page["runs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first and pages == 3

    cancelled = (await api.client.get("/runs", params={"status": "cancelled"})).json()
    assert [r["run_id"] for r in cancelled["runs"]] == [ids[1]] and cancelled["next_cursor"] is None

    bad = await api.client.get("/runs", params={"cursor": "garbage"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]
    too_many = await api.client.get("/runs", params={"limit": 1000})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_unknown_runs_are_404(api: Api) -> None:
    for method, path in [
        ("GET", "/runs/01NOPE"),
        ("GET", "/runs/01NOPE/events"),
        ("POST", "/runs/01NOPE/cancel"),
        ("GET", "/runs/bad.id"),  # not even a valid key / subject token
        ("GET", "/runs/%3E/events"),
    ]:
        response = await api.client.request(method, path)
        assert response.status_code == 404, path
        assert "not found" in response.json()["detail"]


# -- cancel -------------------------------------------------------------------------------------


async def test_cancel_a_queued_run(api: Api) -> None:
    run_id = (await api.client.post("/runs", json=submission())).json()["run_id"]
    response = await api.client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202
    assert response.json() == {"run_id": run_id, "status": "cancelled"}

    record = await api.ctx.runs.get(DEFAULT_TENANT, run_id)
    assert (
        record is not None
        and record.status == RunStatus.CANCELLED
        and record.finished_at is not None
    )
    assert record.error is not None and record.error.code == ErrorCode.CANCELLED

    events = parse_sse((await api.client.get(f"/runs/{run_id}/events")).text)
    assert [(e["id"], e["event"]) for e in events] == [("1", "run.cancelled")]

    again = await api.client.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


async def test_cancel_a_running_run_asks_its_executor(api: Api) -> None:
    run_id = "running-1"
    await fake_run(api, run_id, EventType.RUN_STARTED)
    received: asyncio.Queue[CancelRequest] = asyncio.Queue()

    async def on_cancel(msg: Any) -> None:
        received.put_nowait(CancelRequest.model_validate_json(msg.data))

    sub = await api.ctx.nc.subscribe(subjects.RUN_CANCEL_ALL, cb=on_cancel)
    try:
        response = await api.client.post(f"/runs/{run_id}/cancel")
        assert response.status_code == 202 and response.json()["status"] == "running"
        request = await asyncio.wait_for(received.get(), 2)
        assert request.run_id == run_id
        record = await api.ctx.runs.get(DEFAULT_TENANT, run_id)
        assert record is not None and record.cancel_requested and record.status == RunStatus.RUNNING
    finally:
        await sub.unsubscribe()


# -- SSE ----------------------------------------------------------------------------------------


async def test_events_replay_in_order_and_end_after_the_terminal_event(api: Api) -> None:
    types = [
        EventType.RUN_STARTED,
        EventType.LLM_STARTED,
        EventType.LLM_FINISHED,
        EventType.RUN_COMPLETED,
    ]
    await fake_run(api, "replay-1", *types, status=RunStatus.SUCCEEDED)

    response = await api.client.get("/runs/replay-1/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [(e["id"], e["event"]) for e in events] == [
        (str(i + 1), t.value) for i, t in enumerate(types)
    ]
    first = TraceEvent.model_validate(events[0]["data"])
    assert first.run_id == "replay-1" and first.seq == 1 and first.type == EventType.RUN_STARTED

    resumed = parse_sse(
        (await api.client.get("/runs/replay-1/events", headers={"Last-Event-ID": "2"})).text
    )
    assert [e["id"] for e in resumed] == ["3", "4"]
    after = parse_sse((await api.client.get("/runs/replay-1/events", params={"after": 3})).text)
    assert [e["id"] for e in after] == ["4"]
    done = await api.client.get("/runs/replay-1/events", headers={"Last-Event-ID": "4"})
    assert done.status_code == 200 and parse_sse(done.text) == []


async def streams_open(api: Api, count: int = 1) -> None:
    """Wait until ``count`` event streams are being served (the API's own gauge)."""
    async with asyncio.timeout(20):
        while api.ctx.metrics.sse_streams._value.get() < count:
            await asyncio.sleep(0.01)


async def test_a_stream_ends_at_the_terminal_event_before_the_record_says_so(api: Api) -> None:
    # The executor stores the record first; here the terminal event is all that says "ended".
    await fake_run(api, "early-1", EventType.RUN_STARTED, EventType.RUN_COMPLETED, status=RunStatus.RUNNING)
    response = await asyncio.wait_for(api.client.get("/runs/early-1/events"), 20)
    assert [e["event"] for e in parse_sse(response.text)] == ["run.started", "run.completed"]


async def test_events_follow_a_live_run(api: Api) -> None:
    log = await fake_run(api, "live-1", EventType.RUN_STARTED)
    response = asyncio.create_task(api.client.get("/runs/live-1/events"))
    await streams_open(api)  # the stream is open: what follows can only reach it live
    await log.emit(EventType.LLM_STARTED)
    await log.emit(EventType.RUN_COMPLETED)
    assert [e["event"] for e in parse_sse((await asyncio.wait_for(response, 20)).text)] == [
        "run.started",
        "llm.started",
        "run.completed",
    ]


async def test_after_a_failure_the_stream_waits_for_the_suggestion_within_the_grace(nats_url: str) -> None:
    # A grace far longer than the test may take: the stream can only end on the suggestion.
    async with running_api(nats_url, sse_suggestion_grace_s=600, sse_ping_s=0) as api:
        log = await fake_run(api, "failed-1", EventType.RUN_STARTED, EventType.RUN_FAILED, status=RunStatus.FAILED)
        response = asyncio.create_task(api.client.get("/runs/failed-1/events"))
        await streams_open(api)
        await asyncio.sleep(4)  # a slow suggester: past the default grace (3 s), within this one
        await log.emit(EventType.SUGGESTION, {"suggestions": []})
        events = parse_sse((await asyncio.wait_for(response, 20)).text)
        assert [e["event"] for e in events] == ["run.started", "run.failed", "suggestion"]


async def test_without_a_suggestion_the_grace_ends_the_stream(api: Api) -> None:
    await fake_run(api, "failed-2", EventType.RUN_FAILED, status=RunStatus.FAILED)
    response = await asyncio.wait_for(api.client.get("/runs/failed-2/events"), 20)  # grace: 0.5 s here
    assert [e["event"] for e in parse_sse(response.text)] == ["run.failed"]


async def test_a_run_that_ended_without_a_terminal_event_still_closes(api: Api) -> None:
    await fake_run(api, "silent-1", EventType.RUN_STARTED, status=RunStatus.SUCCEEDED)
    events = parse_sse((await api.client.get("/runs/silent-1/events")).text)
    assert [e["event"] for e in events] == ["run.started"]


async def test_bad_last_event_id_is_422(api: Api) -> None:
    await fake_run(api, "r1", EventType.RUN_COMPLETED, status=RunStatus.SUCCEEDED)
    response = await api.client.get("/runs/r1/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]


# -- POST /execute --------------------------------------------------------------------------------


@asynccontextmanager
async def fake_executor(api: Api, *, fail: bool = False) -> AsyncIterator[None]:
    """Takes run requests off the queue and ends them the way the executor does."""
    js = api.ctx.js
    sub = await js.pull_subscribe(
        subjects.RUN_REQUESTED_ALL,
        durable="test-executor",
        stream=subjects.RUNS_STREAM,
        config=ConsumerConfig(),
    )

    async def serve() -> None:
        while True:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except TimeoutError:  # nats-py raises its own subclass or plain asyncio.TimeoutError
                continue
            for msg in msgs:
                request = RunRequested.model_validate_json(msg.data)
                await run(request)
                await msg.ack()

    async def run(request: RunRequested) -> None:
        store, log = api.ctx.runs, RunEventLog(js, request.tenant, request.run_id)
        await store.update(
            request.tenant, request.run_id, lambda r: r.model_copy(update={"status": RunStatus.RUNNING})
        )
        await log.emit(EventType.RUN_STARTED)
        if fail:
            error = RunError(code=ErrorCode.MISSING_API_KEY, message="no key")
            # mode left as it was: the API itself answers a failed run in degraded mode
            await store.update(
                request.tenant, request.run_id,
                lambda r: r.model_copy(update={"status": RunStatus.FAILED, "error": error}),
            )
            await log.emit(EventType.RUN_FAILED, {"error": error.model_dump(mode="json")})
            await asyncio.sleep(0.1)  # the suggester, a moment later
            tip = Suggestion(
                code="missing_api_key", title="Set a key", detail="none set", fix="export KEY=..."
            )
            # like the suggester: the event first, then the record
            await log.emit(EventType.SUGGESTION, {"suggestions": [tip.model_dump()]})
            await store.update(
                request.tenant, request.run_id, lambda r: r.model_copy(update={"suggestions": [tip]})
            )
        else:
            await store.update(
                request.tenant, request.run_id,
                lambda r: r.model_copy(
                    update={
                        "status": RunStatus.SUCCEEDED,
                        "output": f"echo {request.input}",
                        "finished_at": utcnow(),
                    }
                ),
            )
            await log.emit(EventType.RUN_COMPLETED, {"output": f"echo {request.input}"})

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sub.unsubscribe()


async def test_execute_waits_for_the_result_and_returns_the_trace(api: Api) -> None:
    async with fake_executor(api):
        response = await api.client.post("/execute", json=submission())
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded" and body["mode"] == "real_execution"
    assert body["output"] == "echo hello" and body["error"] is None
    assert [e["type"] for e in body["trace"]] == ["run.started", "run.completed"]


async def test_execute_of_a_failed_run_returns_the_guidance(api: Api) -> None:
    async with fake_executor(api, fail=True):
        response = await api.client.post("/execute", json=submission())
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "failed" and body["mode"] == "degraded"
    assert body["error"]["code"] == "missing_api_key"
    assert [s["code"] for s in body["suggestions"]] == ["missing_api_key"]
    assert [e["type"] for e in body["trace"]] == ["run.started", "run.failed", "suggestion"]


async def test_execute_repeated_with_its_key_returns_the_finished_run(api: Api) -> None:
    headers = {"Idempotency-Key": "sync-1"}
    async with fake_executor(api):
        first = (await api.client.post("/execute", json=submission(), headers=headers)).json()
    again = await api.client.post("/execute", json=submission(), headers=headers)  # no executor now
    assert again.status_code == 200
    body = again.json()
    assert body["run_id"] == first["run_id"] and body["output"] == "echo hello"
    # this waiter subscribed after the events: the trace comes from the stream
    assert [e["type"] for e in body["trace"]] == ["run.started", "run.completed"]


async def test_waiter_distrusts_events_the_stream_refused(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Core NATS also delivers publishes JetStream drops (a duplicate seq from a second
    writer): such a trace is replayed from the stream instead."""
    from flowrelay_api import waiting

    replays: list[str] = []

    async def counting_read_trace(ctx: ApiContext, tenant: str, run_id: str) -> list[TraceEvent]:
        replays.append(run_id)
        return await read_trace(ctx, tenant, run_id)

    read_trace = waiting.read_trace
    monkeypatch.setattr(waiting, "read_trace", counting_read_trace)
    await api.ctx.runs.create(RunRecord(run_id="dup-1", status=RunStatus.RUNNING))
    async with waiting.RunWaiter(api.ctx, DEFAULT_TENANT) as waiter:
        await waiter.start("dup-1")
        log = RunEventLog(api.ctx.js, DEFAULT_TENANT, "dup-1")
        await log.emit(EventType.RUN_STARTED)
        rival = RunEventLog(api.ctx.js, DEFAULT_TENANT, "dup-1")  # also writes seq 1: JetStream drops it
        await rival.emit(EventType.LLM_STARTED)
        await log.emit(EventType.RUN_COMPLETED)
        trace = await waiter.trace()
    assert replays == ["dup-1"]
    assert [(e.seq, e.type) for e in trace] == [
        (1, EventType.RUN_STARTED),
        (2, EventType.RUN_COMPLETED),
    ]


async def test_execute_without_executors_times_out_and_cancels(nats_url: str) -> None:
    async with running_api(nats_url, default_timeout_s=0.3, execute_margin_s=0) as api:
        # the wait is timeout_s + FLOWRELAY_EXECUTE_MARGIN_S: 0.3 s here, 15.3 s with the default margin
        response = await asyncio.wait_for(api.client.post("/execute", json=submission()), 10)
        assert response.status_code == 504
        run_id = (await api.client.get("/runs")).json()["runs"][0]["run_id"]
        assert run_id in response.json()["detail"]
        assert (await api.client.get(f"/runs/{run_id}")).json()["status"] == "cancelled"


# -- operations -----------------------------------------------------------------------------------


async def test_health_and_metrics(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {
        "status": "ok",
        "nats": "connected",
        "executors": 0,
        "problems": [],
    }
    await api.client.post("/runs", json=submission())
    await api.client.post("/runs", json={"input": "no workflow"})
    text = (await api.client.get("/metrics")).text
    assert 'flowrelay_api_runs_submitted_total{outcome="accepted"} 1.0' in text
    assert 'flowrelay_api_runs_submitted_total{outcome="invalid"} 1.0' in text
    assert (
        'flowrelay_api_request_seconds_count{method="POST",route="/runs",status="202"} 1.0' in text
    )


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Wait for ``condition()`` (the NATS client's own connection state) to hold."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_without_nats_health_is_503_and_nothing_is_accepted(tmp_path: Path) -> None:
    server = natsserver.start(tmp_path / "nats")
    try:
        async with running_api(server.url) as api:
            server.stop()
            await until(lambda: not api.ctx.connected)
            health = await api.client.get("/healthz")
            assert health.status_code == 503 and health.json()["nats"] == "disconnected"
            refused = await api.client.post("/runs", json=submission())
            assert refused.status_code == 503 and "NATS" in refused.json()["detail"]

            server = natsserver.start(tmp_path / "nats", port=server.port)  # same store: resumes
            await until(lambda: api.ctx.connected)
            assert (await api.client.get("/healthz")).status_code == 200
            assert (await api.client.post("/runs", json=submission())).status_code == 202
    finally:
        server.stop()


async def test_openapi_documents_the_routes(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    post_runs = schema["paths"]["/runs"]["post"]
    assert post_runs["summary"] == "Submit a run"
    assert "202" in post_runs["responses"] and "413" in post_runs["responses"]
    assert set(schema["paths"]) >= {
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/events",
        "/runs/{run_id}/cancel",
        "/execute",
        "/healthz",
        "/metrics",
    }
