"""Hostile and oversized input against the real stack (issue 12's reproductions).

Each case was a 500, a wedged run, a run billed several times, or a request accepted and then
always refused. Each must now be refused at the API before anything is queued (4xx naming the
field and the setting), or run once and end with a reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from flowrelay_testkit import Bus, Stack, chain, one_agent, run_body

from flowrelay_bus import runs as runs_module
from flowrelay_contracts import ErrorCode, EventType, RunRecord, RunRequested, RunStatus, subjects


def _problem(response: httpx.Response) -> tuple[list, str]:
    assert response.status_code == 422, response.text
    first = response.json()["detail"][0]
    return first["loc"], first["msg"]


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def _runs_on_queue(bus: Bus) -> int:
    return (await bus.js.stream_info(subjects.RUNS_STREAM)).state.messages


# -- refused before anything is queued --------------------------------------------------------------


@pytest.mark.parametrize(("body", "loc", "setting"), [
    (run_body(one_agent(), "x" * 300_000), ["body", "input"], "FLOWRELAY_MAX_INPUT_BYTES"),
    (run_body(chain(*[f"a{i}" for i in range(1000)]), "long chain"), ["body", "workflow", "nodes"], "FLOWRELAY_MAX_NODES"),
    (run_body(one_agent(model_args={"logit_bias": nested(300)}), "deep"),
     ["body", "workflow", "nodes", 0, "data", "model_args"], "FLOWRELAY_MAX_JSON_DEPTH"),
    (run_body(one_agent(output_schema={"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(10_000)}}),
              "wide"), ["body", "workflow", "nodes", 0, "data", "output_schema"], "FLOWRELAY_MAX_OUTPUT_SCHEMA_BYTES"),
], ids=["input-300KB", "chain-1000", "model-args-300-deep", "schema-10000-props"])
async def test_oversized_shapes_are_422_naming_field_and_setting(api: httpx.AsyncClient, bus: Bus, body, loc, setting) -> None:
    before = await _runs_on_queue(bus)
    loc_got, msg = _problem(await api.post("/runs", json=body))
    assert loc_got == loc and setting in msg
    assert await _runs_on_queue(bus) == before


async def test_an_output_schema_nested_400_levels_is_refused_not_a_500(api: httpx.AsyncClient) -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"x": {"type": "string"}}}
    for _ in range(400):
        schema = {"type": "object", "properties": {"x": schema}}
    response = await api.post("/runs", json=run_body(one_agent(output_schema=schema), "deep schema"))
    assert response.status_code == 422, response.text


async def test_a_body_above_the_limit_is_413_naming_the_setting(api: httpx.AsyncClient) -> None:
    response = await api.post("/runs", json=run_body(one_agent(instructions="y" * 600_000), "big"))
    assert response.status_code == 413 and "FLOWRELAY_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("text", ["", "   \n\t"])
async def test_empty_input_is_refused(api: httpx.AsyncClient, text: str) -> None:
    loc, msg = _problem(await api.post("/runs", json=run_body(one_agent(), text)))
    assert loc == ["body", "input"] and msg.startswith("input:")


@pytest.mark.parametrize("key", ["api_base", "api_key", "model"])
async def test_reserved_model_args_are_refused(api: httpx.AsyncClient, key: str) -> None:
    loc, msg = _problem(await api.post("/runs", json=run_body(one_agent(model_args={key: "x"}), "reserved")))
    assert loc == ["body", "workflow", "nodes", 0, "data", "model_args"] and key in msg


async def test_stdio_mcp_commands_no_executor_allows_are_refused(api: httpx.AsyncClient) -> None:
    # The API judges by the live executors (none live: it cannot tell, the executor refuses
    # later): first see that the shared one is advertised, on a busy machine it may be late.
    async with asyncio.timeout(60):
        while not (await api.get("/executors")).json()["executors"]:
            await asyncio.sleep(0.5)
    tools = [{"type": "mcp", "command": "/bin/sh", "args": ["-c", "id"]}]
    loc, msg = _problem(await api.post("/runs", json=run_body(one_agent(tools=tools), "shell")))
    assert loc[-1] == "command" and "FLOWRELAY_MCP_STDIO_ALLOWLIST" in msg


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:4222/mcp", "http://localhost:8000/mcp", "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.7/mcp", "http://[::1]:9000/mcp", "file:///etc/passwd",
])
async def test_mcp_urls_to_internal_addresses_are_refused(api: httpx.AsyncClient, url: str) -> None:
    tools = [{"type": "mcp", "url": url}]
    loc, msg = _problem(await api.post("/runs", json=run_body(one_agent(tools=tools), "ssrf")))
    assert loc[-1] == "url"
    assert "FLOWRELAY_MCP_URL_ALLOWLIST" in msg or "http://" in msg


# -- accepted, run once, ended with a reason -------------------------------------------------------


async def test_a_large_output_is_kept_whole_and_linked_and_the_model_is_called_once(
    api: httpx.AsyncClient, bus: Bus, scripted_model: str
) -> None:
    token = uuid.uuid4().hex[:12]
    text = f"#count={token} " + "z" * 200_000  # echoed back: an output above the inline limit
    run_id = (await api.post("/runs", json=run_body(one_agent(), text))).json()["run_id"]
    record = await bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.output is None and record.output_ref is not None and record.output_ref.bytes > 200_000
    view = (await api.get(f"/runs/{run_id}")).json()
    assert view["output_ref"]["sha256"] == record.output_ref.sha256
    full = await api.get(view["links"]["output"])
    assert full.status_code == 200 and full.json() == f"echo: {text}"
    completed = [e for e in await bus.stored_events(run_id) if e.type == EventType.RUN_COMPLETED][0]
    assert completed.data["output_ref"]["name"] == record.output_ref.name
    for event in await bus.stored_events(run_id):  # every event's data within 64 KiB
        assert len(json.dumps(event.data, separators=(",", ":"), ensure_ascii=False).encode()) <= 64 * 1024, event.type
    async with httpx.AsyncClient(timeout=30) as http:
        counted = (await http.get(scripted_model.removesuffix("/v1") + "/stats")).json()["counted"]
    assert counted[token] == 1


async def test_output_of_an_unfinished_run_is_409(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(), "#delay=3 slow"))).json()["run_id"]
    response = await api.get(f"/runs/{run_id}/output")
    assert response.status_code == 409
    await bus.wait_record(run_id, timeout=30)
    assert (await api.get(f"/runs/{run_id}/output")).json() == "echo: #delay=3 slow"


async def test_oversized_requests_published_straight_to_nats_fail_once_with_the_reason(bus: Bus, stack: Stack) -> None:
    """The API's limits also hold for clients of NATS (here the operator's connection)."""
    run_id = f"nats-{uuid.uuid4().hex[:10]}"
    request = {"run_id": run_id, "tenant": bus.tenant, "input": "x",
               "workflow": chain(*[f"a{i}" for i in range(100)])}
    await bus.js.publish(subjects.run_requested(bus.tenant), json.dumps(request).encode(),
                         headers={subjects.MSG_ID_HEADER: run_id})
    record = await bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED and record.attempts == 1
    assert record.error.code == ErrorCode.INVALID_WORKFLOW and "FLOWRELAY_MAX_NODES" in record.error.message


async def test_a_request_with_a_made_up_record_stamp_still_runs_once(bus: Bus, stack: Stack) -> None:
    """A NATS client may send the header the API uses to spare the executor a read of the
    record (``Flowrelay-Record-Stamp``): for a run that has no record, the claim finds
    nothing, and the run is adopted and run once, without an infrastructure error."""
    run_id = f"nats-{uuid.uuid4().hex[:10]}"
    request = RunRequested(run_id=run_id, tenant=bus.tenant, input="stamped", workflow=one_agent())
    stamp = f"7 {runs_module._digest(RunRecord.queued_for(request))}"  # the digest matches: only the revision lies
    await bus.js.publish(subjects.run_requested(bus.tenant), request.model_dump_json().encode(),
                         headers={subjects.MSG_ID_HEADER: run_id, subjects.RECORD_STAMP_HEADER: stamp})
    record = await bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.SUCCEEDED and record.attempts == 1 and record.output == "echo: stamped"
    logs = "".join(executor.output() for executor in stack.executors)
    assert "infrastructure error" not in logs


async def test_unknown_model_args_fail_once_as_a_request_error_naming_the_key(api: httpx.AsyncClient, bus: Bus) -> None:
    body = run_body(one_agent(model_args={"frobnicate_level": 3}), "odd args")
    run_id = (await api.post("/runs", json=body)).json()["run_id"]
    record = await bus.wait_record(run_id, timeout=60)
    assert record.status == RunStatus.FAILED, record.output
    assert record.error.code in (ErrorCode.INVALID_REQUEST, ErrorCode.PROVIDER_ERROR)
    assert record.error.retryable is False and "frobnicate_level" in record.error.message
    assert record.attempts == 1
