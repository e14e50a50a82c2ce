"""Back-pressure and resource faults against real processes: rate limits, queue caps, a full
JetStream store, deliveries exhausted, slow clients, and no consumers left behind."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from flowrelay_testkit import Bus, Stack, free_port, isolated_stack, one_agent, run_body

from flowrelay.natsconfig import Role
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve
from flowrelay_contracts import RunStatus, subjects

#: The JetStream store cap of the "small disk" deployment (the topology needs ~0.3 MB).
SMALL_STORE_BYTES = 3 * 1024 * 1024


def _tenant() -> str:
    return f"bp-{uuid.uuid4().hex[:8]}"


async def _key(http: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    created = await http.post("/keys", json={"tenant": tenant})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


# -- request rate per key ---------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(stack: Stack) -> None:
    port = free_port()
    api = ServiceProcess(
        "api", resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API) | {"FLOWRELAY_API_PORT": str(port),
                                                                "FLOWRELAY_RATE_LIMIT": "5/minute"},
        log_path=stack.root / "logs" / "api-rate.log",
    ).start()
    try:
        api.wait_ready()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http, \
                httpx.AsyncClient(base_url=stack.api_url, headers=stack.auth_headers) as admin:
            alice = await _key(admin, _tenant())
            statuses = [(await http.get("/runs", headers=alice)).status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            limited = await http.get("/runs", headers=alice)
            assert limited.json()["code"] == "rate_limited" and "FLOWRELAY_RATE_LIMIT" in limited.json()["detail"]
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            assert (await http.get("/runs", headers=stack.auth_headers)).status_code == 200  # another key
    finally:
        api.terminate()


# -- queue caps ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """No executor, so accepted runs stay queued; at most 3 per tenant and 5 in all."""
    with isolated_stack(tmp_path_factory.mktemp("capped"), scripted_model,
                        FLOWRELAY_MAX_QUEUED_RUNS="5", FLOWRELAY_MAX_QUEUED_RUNS_PER_TENANT="3") as (stack, _):
        yield stack


async def test_queue_caps_per_tenant_and_overall_answer_429_before_storing(capped: Stack) -> None:
    async with httpx.AsyncClient(base_url=capped.api_url, timeout=30, headers=capped.auth_headers) as admin:
        a, b = await _key(admin, _tenant()), await _key(admin, _tenant())
        body = run_body(one_agent(), "wait in the queue")
        first = [(await admin.post("/runs", json=body, headers=a)).status_code for _ in range(4)]
        assert first == [202, 202, 202, 429]
        full = await admin.post("/runs", json=body, headers=a)
        assert full.json()["code"] == "queue_full" and "FLOWRELAY_MAX_QUEUED_RUNS_PER_TENANT" in full.json()["detail"]
        assert int(full.headers["retry-after"]) >= 1
        assert [(await admin.post("/runs", json=body, headers=b)).status_code for _ in range(3)] == [202, 202, 429]
        overall = (await admin.post("/runs", json=body, headers=b)).json()
        assert "FLOWRELAY_MAX_QUEUED_RUNS" in overall["detail"]
        listed = (await admin.get("/runs", headers=a)).json()["runs"]
        assert len(listed) == 3, "refused submissions stored no record"


async def test_the_stream_itself_refuses_runs_over_the_cap_from_nats_clients(capped: Stack) -> None:
    bus = await capped.bus()
    try:
        tenant = _tenant()
        acks = []
        for i in range(5):
            try:
                await bus.js.publish(subjects.run_requested(tenant), b"{}", headers={subjects.MSG_ID_HEADER: f"{tenant}-{i}"})
                acks.append("stored")
            except Exception as exc:  # noqa: BLE001 - the refusal is what is tested
                acks.append(getattr(exc, "err_code", type(exc).__name__))
        assert "stored" not in acks[3:] and 10077 in acks
    finally:
        await bus.close()


# -- a full JetStream store, then room again ------------------------------------------------------


@pytest.fixture
async def small_disk(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, Bus]]:
    with isolated_stack(tmp_path_factory.mktemp("small-disk"), scripted_model, max_file_store=SMALL_STORE_BYTES) as (stack, _):
        stack.start_executor()
        bus = await stack.bus()
        try:
            yield stack, bus
        finally:
            await bus.close()


async def _fill(bus: Bus) -> None:
    """Fill the store with dead letters until JetStream refuses (insufficient resources)."""
    blob = json.dumps({"subject": "x", "reason": "filler", "payload": "f" * 200_000}).encode()
    for _ in range(100):
        try:
            await bus.js.publish(subjects.DEADLETTER, blob)
        except Exception as exc:  # noqa: BLE001
            assert getattr(exc, "err_code", None) == 10023, exc
            return
    raise AssertionError("the store never filled")


async def test_a_full_store_fails_submits_fast_with_a_503_saying_so_and_a_computed_outcome_waits_for_room(
    small_disk, scripted_model: str
) -> None:
    stack, bus = small_disk
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        token = uuid.uuid4().hex[:12]
        run_id = (await api.post("/runs", json=run_body(one_agent(), f"#delay=2 #count={token} finish later"))).json()["run_id"]
        await bus.wait_record(run_id, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
        await _fill(bus)

        refused = await api.post("/runs", json=run_body(one_agent(), "no room"))
        assert refused.status_code == 503 and refused.json()["code"] == "storage_full"
        health = (await api.get("/healthz")).json()
        assert health["status"] == "degraded" and "storage is full" in health["problems"][0]

        # the run finishes in its worker and cannot store its outcome: the executor says so
        await asyncio.to_thread(stack.executors[0].wait_for, rf"run {run_id}: storing its outcome failed", timeout=60)
        assert (await bus.store.get(run_id)).status == RunStatus.RUNNING  # not lost, not failed, held
        await bus.js.purge_stream(subjects.DEADLETTER_STREAM)  # the operator frees space

        record = await bus.wait_record(run_id, timeout=60)
        assert record.status == RunStatus.SUCCEEDED and record.attempts == 1
        assert len(await bus.terminal_events(run_id)) == 1
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(scripted_model.removesuffix("/v1") + "/stats")).json()["counted"][token] == 1
        assert (await api.post("/runs", json=run_body(one_agent(), "room again"))).status_code == 202


# -- slow clients ----------------------------------------------------------------------------------


def _slow_client(port: int, first: bytes) -> bytes:
    """Send ``first`` then nothing; return what the server answers before it closes. The
    socket gives up after 8 s: the test's limits are 1 s, the defaults 10 s and 30 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
        sock.sendall(first)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_slow_headers_and_slow_bodies_are_cut_off(stack: Stack) -> None:
    port = free_port()
    api = ServiceProcess(
        "api", resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API) | {
            "FLOWRELAY_API_PORT": str(port), "FLOWRELAY_HTTP_HEADER_TIMEOUT_S": "1", "FLOWRELAY_HTTP_BODY_TIMEOUT_S": "1"},
        log_path=stack.root / "logs" / "api-slow.log",
    ).start()
    try:
        api.wait_ready()
        headers_only = await asyncio.to_thread(_slow_client, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert headers_only.startswith(b"HTTP/1.1 408")
        body_start = (b"POST /runs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                      b"Authorization: " + stack.auth_headers["Authorization"].encode() + b"\r\n"
                      b"content-length: 100\r\n\r\n{\"input\":")
        partial_body = await asyncio.to_thread(_slow_client, port, body_start)
        assert partial_body.startswith(b"HTTP/1.1 408") and b"FLOWRELAY_HTTP_BODY_TIMEOUT_S" in partial_body
    finally:
        api.terminate()


# -- no consumers left behind ---------------------------------------------------------------------


async def test_listing_runs_and_the_executor_directory_leave_no_consumers(api: httpx.AsyncClient, bus: Bus) -> None:
    async def consumers() -> int:
        total = 0
        for stream in (subjects.RUNS_STREAM, subjects.EVENTS_STREAM, subjects.INDEX_STREAM,
                       f"KV_{subjects.RUNS_BUCKET}", f"KV_{subjects.EXECUTORS_BUCKET}"):
            total += (await bus.js.stream_info(stream)).state.consumer_count
        return total

    before = await consumers()
    for _ in range(300):
        assert (await api.get("/runs", params={"limit": 5})).status_code == 200
    await api.get("/healthz")
    # at most as many: an ephemeral consumer an earlier test left (a closed follower's) may
    # expire meanwhile; a leak would add one per listing
    assert await consumers() <= before
