"""What the API tells operators and users about the executors: GET /executors, tool advice.

Against a real nats-server; executors are stood in for by their capability entries (what a
real executor writes) and, for the queue, by a consumer shaped like theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flowrelay_testkit import Stack
from test_api_unit import Api, running_api, submission

from flowrelay import natsserver
from flowrelay_contracts import ExecutorCapabilities, Isolation, subjects
from flowrelay_executor.service import consumer_config
from flowrelay_executor.settings import ExecutorSettings

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The API in this process against a nats-server of its own (as in test_api_unit)."""
    server = natsserver.start(tmp_path / "nats")
    try:
        async with running_api(server.url, sse_ping_s=0) as app:
            yield app
    finally:
        server.stop()


async def advertise(api: Api, executor_id: str = "ex-1", **fields: Any) -> ExecutorCapabilities:
    caps = ExecutorCapabilities(
        executor_id=executor_id,
        frameworks=fields.pop("frameworks", ["tinyagent"]),
        tools=fields.pop("tools", ["calculator", "word_count"]),
        slots=4,
        isolation=Isolation.PROCESS,
        **fields,
    )
    kv = await api.ctx.js.key_value(subjects.EXECUTORS_BUCKET)
    await kv.put(caps.executor_id, caps.model_dump_json().encode())
    await api.ctx.executors.refresh()  # what the background poll does every 2 s
    return caps


def uses(*tools: str) -> dict[str, Any]:
    return submission({"nodes": [{"id": "n1", "data": {"name": "w", "tools": list(tools)}}], "edges": []})


async def refused_tool(api: Api, *tools: str) -> str:
    response = await api.client.post("/runs", json=uses(*tools))
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"][-2:] == ["tools", len(tools) - 1] and problem["type"] == "tool_not_registered"
    return str(problem["msg"])


# -- tool advice ------------------------------------------------------------------------------


async def test_a_near_miss_gets_a_did_you_mean(api: Api) -> None:
    await advertise(api)
    msg = await refused_tool(api, "calculator", "calculater")
    assert "did you mean 'calculator'?" in msg and "'n1'" in msg


async def test_a_tool_an_executor_could_not_offer_gets_its_reason(api: Api) -> None:
    await advertise(api, unavailable_tools={"search_web": "it needs the Python package(s) duckduckgo_search on the executors"})
    msg = await refused_tool(api, "search_web")
    assert "duckduckgo_search" in msg and "FLOWRELAY_TOOL_MODULES" not in msg


async def test_an_unknown_tool_is_told_where_the_executors_load_tools_from(api: Api) -> None:
    await advertise(api, tool_modules=["acme_tools"])
    msg = await refused_tool(api, "teleport")
    assert "acme_tools" in msg and "teleport()" in msg and "docstring" in msg
    assert "did you mean" not in msg


async def test_an_unknown_tool_without_tool_modules_is_told_how_to_add_one(api: Api) -> None:
    await advertise(api)
    msg = await refused_tool(api, "teleport")
    assert "FLOWRELAY_TOOL_MODULES" in msg and "registered: calculator, word_count" in msg


# -- GET /executors ---------------------------------------------------------------------------


async def test_executors_lists_capabilities_and_the_queue_depth(api: Api) -> None:
    assert (await api.client.get("/executors")).json() == {"executors": [], "queue": {"waiting": 0, "held": 0}}
    for _ in range(3):
        assert (await api.client.post("/runs", json=submission())).status_code == 202
    assert (await api.client.get("/executors")).json()["queue"] == {"waiting": 3, "held": 0}  # no consumer yet

    caps = await advertise(api, "ex-2", running=1, tool_modules=["acme_tools"], metrics_port=9101,
                           unavailable_tools={"search_web": "needs duckduckgo_search"})
    await advertise(api, "ex-1")
    await api.ctx.js.add_consumer(subjects.RUNS_STREAM, consumer_config(ExecutorSettings()))
    subscription = await api.ctx.js.pull_subscribe_bind(subjects.EXECUTORS_CONSUMER, stream=subjects.RUNS_STREAM)
    await subscription.fetch(1, timeout=5)  # one request held, as a running executor holds it

    overview = (await api.client.get("/executors")).json()
    assert overview["queue"] == {"waiting": 2, "held": 1}
    assert [e["executor_id"] for e in overview["executors"]] == ["ex-1", "ex-2"]
    shown = overview["executors"][1]
    assert shown == caps.model_dump(mode="json")
    assert shown["running"] == 1 and shown["unavailable_tools"] == {"search_web": "needs duckduckgo_search"}


async def test_the_live_executor_is_listed_for_an_admin_key(stack: Stack) -> None:
    executor = stack.executors[0]
    port = int(executor.wait_for(r"metrics on http://\S+:(\d+)/metrics", timeout=30).group(1))
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30, headers=stack.auth_headers) as admin:
        async with asyncio.timeout(20):  # the API re-reads the executors' entries every 2 s
            while True:
                overview = (await admin.get("/executors")).json()
                listed = [e for e in overview["executors"] if e["metrics_port"] == port]
                if listed:
                    break
                await asyncio.sleep(0.2)
    (listed_one,) = listed
    assert listed_one["frameworks"] == ["tinyagent"] and "calculator" in listed_one["tools"]
    assert set(overview["queue"]) == {"waiting", "held"}
