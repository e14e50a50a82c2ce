"""Settings of the README's configuration table that no other test exercises with a value of
its own: each is given a non-default value here, on real processes, and what it governs is
checked. A setting that stops being read fails its test (its default behaves differently).

Settings whose whole effect is a duration are given a value far from the default and the
test waits past the default: a slow machine can only make such a test pass more surely,
never fail it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import nats
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flowrelay_testkit import Bus, Stack, chain, free_port, model_calls, one_agent, run_body
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve
from flowrelay_bus import topology
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import EventType, RunStatus, subjects

pytestmark = pytest.mark.timeout(180)


def _api(stack: Stack, label: str, **env: str) -> ServiceProcess:
    """One more API process on ``stack``'s NATS, with settings of its own."""
    return ServiceProcess(
        "api", resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API) | env, log_path=stack.root / "logs" / f"{label}.log",
    ).start()


# -- what the topology is declared with ---------------------------------------------------------


async def test_streams_and_buckets_follow_the_retention_dedup_and_queue_settings(tmp_path: Path) -> None:
    server = natsserver.start(tmp_path / "nats")
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        settings = BusSettings(nats_url=server.url, events_max_age_s=1234, runs_ttl_s=5678, dedup_window_s=42,
                               max_queued_runs=77, max_queued_runs_per_tenant=7, thread_ttl_s=4321)
        await topology.declare(js, settings)

        async def config(stream: str) -> Any:
            return (await js.stream_info(stream)).config

        events = await config(subjects.EVENTS_STREAM)  # FLOWRELAY_EVENTS_MAX_AGE_S
        assert events.max_age == 1234 and (await config(subjects.DEADLETTER_STREAM)).max_age == 1234 * 7
        runs = await config(subjects.RUNS_STREAM)  # FLOWRELAY_MAX_QUEUED_RUNS(_PER_TENANT)
        assert (runs.max_msgs, runs.max_msgs_per_subject) == (77, 7)
        for stream in (subjects.RUNS_STREAM, subjects.EVENTS_STREAM, subjects.SUGGESTER_STREAM):
            assert (await config(stream)).duplicate_window == 42  # FLOWRELAY_DEDUP_WINDOW_S
        for stream in (subjects.INDEX_STREAM, f"KV_{subjects.RUNS_BUCKET}", f"KV_{subjects.IDEMPOTENCY_BUCKET}",
                       f"OBJ_{subjects.OUTPUTS_BUCKET}"):
            assert (await config(stream)).max_age == 5678, stream  # FLOWRELAY_RUNS_TTL_S
        for stream in (subjects.THREADS_STREAM, f"KV_{subjects.THREADS_BUCKET}"):
            assert (await config(stream)).max_age == 4321, stream  # FLOWRELAY_THREAD_TTL_S
        await nc.close()
    finally:
        server.stop()


async def test_stream_replicas_are_asked_of_the_server(tmp_path: Path) -> None:
    """A single server cannot hold 3 replicas: it refuses the topology, so the setting reached it."""
    server = natsserver.start(tmp_path / "nats")
    try:
        nc = await nats.connect(server.url)
        with pytest.raises(Exception, match="replicas > 1 not supported in non-clustered mode"):
            await topology.declare(nc.jetstream(), BusSettings(nats_url=server.url, stream_replicas=3))
        await topology.declare(nc.jetstream(), BusSettings(nats_url=server.url, stream_replicas=1))
        assert (await nc.jetstream().stream_info(subjects.RUNS_STREAM)).config.num_replicas == 1
        await nc.close()
    finally:
        server.stop()


def test_the_nats_config_secrets_init_writes_fsyncs_every_write(tmp_path: Path) -> None:
    config = tmp_path / "nats.conf"
    flowrelay = Path(sys.executable).parent / "flowrelay"
    subprocess.run([str(flowrelay), "secrets", "init", str(tmp_path / "secrets"), "--nats-config", str(config)],
                   check=True, capture_output=True, timeout=60)
    assert json.loads(config.read_text())["jetstream"]["sync_interval"] == "always"


# -- an API with limits of its own ---------------------------------------------------------------

LIMITS = {
    "FLOWRELAY_MAX_INPUT_BYTES": "100", "FLOWRELAY_MAX_NODES": "3", "FLOWRELAY_MAX_EDGES": "2",
    "FLOWRELAY_MAX_TOOLS_PER_AGENT": "1", "FLOWRELAY_MAX_JSON_DEPTH": "3", "FLOWRELAY_MAX_OUTPUT_SCHEMA_BYTES": "200",
    "FLOWRELAY_MAX_BODY_BYTES": "20000", "FLOWRELAY_MAX_TIMEOUT_S": "10", "FLOWRELAY_MAX_MAX_TURNS": "5",
    "FLOWRELAY_DEFAULT_TIMEOUT_S": "1", "FLOWRELAY_DEFAULT_MAX_TURNS": "2",
    "FLOWRELAY_MCP_URL_ALLOWLIST": "127.0.0.1", "FLOWRELAY_API_ACCESS_LOG": "true", "FLOWRELAY_KEY_CACHE_S": "600",
    # durable runs: the maximums of options.retry and the budgets, and the default policy
    "FLOWRELAY_MAX_RETRY_ATTEMPTS": "5", "FLOWRELAY_MAX_RETRY_BACKOFF_S": "5", "FLOWRELAY_MAX_MAX_COST_USD": "2",
    "FLOWRELAY_MAX_MAX_TOKENS": "1000", "FLOWRELAY_RETRY_ATTEMPTS": "4", "FLOWRELAY_RETRY_INITIAL_BACKOFF_S": "0.1",
    "FLOWRELAY_RETRY_MAX_BACKOFF_S": "0.1", "FLOWRELAY_RETRY_JITTER": "0",
    # conversations: questions of ask_human, threads
    "FLOWRELAY_MAX_WAIT_TIMEOUT_S": "60", "FLOWRELAY_DEFAULT_WAIT_TIMEOUT_S": "5", "FLOWRELAY_MAX_ANSWER_BYTES": "10",
    "FLOWRELAY_MAX_THREAD_RUNS": "1", "FLOWRELAY_MAX_THREAD_MESSAGE_BYTES": "50",
}


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[tuple[ServiceProcess, str]]:
    port = free_port()
    process = _api(stack, "api-limited", FLOWRELAY_API_PORT=str(port), **LIMITS)
    try:
        process.wait_ready()
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()


@pytest.fixture
async def lapi(limited: tuple[ServiceProcess, str], stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=limited[1], timeout=60, headers=stack.auth_headers) as client:
        yield client


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _triangle() -> dict[str, Any]:
    """Three nodes, three edges."""
    workflow = chain("a", "b", "c")
    return workflow | {"edges": [*workflow["edges"], {"id": "e3", "source": "n1", "target": "n3"}]}


def _tools(count: int) -> list[str]:
    return ["add", "worker_pid"][:count]


def _schema(size: int) -> dict[str, Any]:
    return {"type": "object", "properties": {"p": {"type": "string", "description": "d" * size}}}


#: (setting, a body just within its limit, one just above, where the refusal points)
WITHIN_AND_ABOVE = [
    ("FLOWRELAY_MAX_INPUT_BYTES", run_body(one_agent(), "x" * 100), run_body(one_agent(), "x" * 101), ["body", "input"]),
    ("FLOWRELAY_MAX_NODES", run_body(chain("a", "b", "c"), "n"), run_body(chain("a", "b", "c", "d"), "n"),
     ["body", "workflow", "nodes"]),
    ("FLOWRELAY_MAX_EDGES", run_body(chain("a", "b", "c"), "e"), run_body(_triangle(), "e"), ["body", "workflow", "edges"]),
    ("FLOWRELAY_MAX_TOOLS_PER_AGENT", run_body(one_agent(tools=_tools(1)), "t"), run_body(one_agent(tools=_tools(2)), "t"),
     ["body", "workflow", "nodes", 0, "data", "tools"]),
    ("FLOWRELAY_MAX_JSON_DEPTH", run_body(one_agent(model_args={"logit_bias": _deep(2)}), "d"),
     run_body(one_agent(model_args={"logit_bias": _deep(3)}), "d"), ["body", "workflow", "nodes", 0, "data", "model_args"]),
    ("FLOWRELAY_MAX_OUTPUT_SCHEMA_BYTES", run_body(one_agent(output_schema=_schema(100)), "s"),
     run_body(one_agent(output_schema=_schema(200)), "s"), ["body", "workflow", "nodes", 0, "data", "output_schema"]),
    ("FLOWRELAY_MAX_TIMEOUT_S", run_body(one_agent(), "o", timeout_s=10), run_body(one_agent(), "o", timeout_s=11),
     ["body", "options", "timeout_s"]),
    ("FLOWRELAY_MAX_MAX_TURNS", run_body(one_agent(), "o", max_turns=5), run_body(one_agent(), "o", max_turns=6),
     ["body", "options", "max_turns"]),
    ("FLOWRELAY_MAX_RETRY_ATTEMPTS", run_body(one_agent(), "r", retry={"attempts": 5}),
     run_body(one_agent(), "r", retry={"attempts": 6}), ["body", "options", "retry", "attempts"]),
    ("FLOWRELAY_MAX_RETRY_BACKOFF_S", run_body(one_agent(), "b", retry={"max_backoff_s": 5}),
     run_body(one_agent(), "b", retry={"max_backoff_s": 6}), ["body", "options", "retry", "max_backoff_s"]),
    ("FLOWRELAY_MAX_MAX_COST_USD", run_body(one_agent(), "c", max_cost_usd=2), run_body(one_agent(), "c", max_cost_usd=3),
     ["body", "options", "max_cost_usd"]),
    ("FLOWRELAY_MAX_MAX_TOKENS", run_body(one_agent(), "k", max_tokens=1000), run_body(one_agent(), "k", max_tokens=1001),
     ["body", "options", "max_tokens"]),
    ("FLOWRELAY_MAX_WAIT_TIMEOUT_S", run_body(one_agent(), "w", wait_timeout_s=60),
     run_body(one_agent(), "w", wait_timeout_s=61), ["body", "options", "wait_timeout_s"]),
]


@pytest.mark.parametrize(("setting", "within", "above", "loc"), WITHIN_AND_ABOVE, ids=[w[0] for w in WITHIN_AND_ABOVE])
async def test_input_limits_are_the_configured_values(
    lapi: httpx.AsyncClient, bus: Bus, setting: str, within: dict, above: dict, loc: list
) -> None:
    refused = await lapi.post("/runs", json=above)
    assert refused.status_code == 422, refused.text
    problem = refused.json()["detail"][0]
    assert problem["loc"] == loc and setting in problem["msg"]
    accepted = await lapi.post("/runs", json=within)
    assert accepted.status_code == 202, accepted.text
    await bus.wait_record(accepted.json()["run_id"], timeout=60)


async def test_the_body_limit_is_the_configured_value(lapi: httpx.AsyncClient) -> None:
    big = run_body(one_agent(instructions="y" * 20_000), "big")
    response = await lapi.post("/runs", json=big)
    assert response.status_code == 413 and "20000 bytes" in response.json()["detail"]
    assert "FLOWRELAY_MAX_BODY_BYTES" in response.json()["detail"]


async def test_runs_without_options_get_the_apis_default_deadline_and_turns(lapi: httpx.AsyncClient, bus: Bus) -> None:
    slow = (await lapi.post("/runs", json=run_body(one_agent(), "#delay=60 no deadline given"))).json()["run_id"]
    looping = (await lapi.post("/runs", json=run_body(one_agent(tools=["add"]), '#loop=add {"a": 1, "b": 1}'))).json()["run_id"]
    record = await bus.wait_record(slow, timeout=60)
    assert record.error.code == "timeout" and "within its 1 s deadline" in record.error.message
    record = await bus.wait_record(looping, timeout=60)
    assert record.error.code == "max_turns_exceeded" and "made 2 LLM calls" in record.error.message
    assert len([e for e in await bus.stored_events(looping) if e.type == EventType.LLM_STARTED]) == 2


async def test_runs_without_a_retry_policy_get_the_apis_default_one(
    lapi: httpx.AsyncClient, bus: Bus, scripted_model: str
) -> None:
    """4 attempts, waits of 0.1 s (the 0.2 s a doubling would give is capped), no jitter: the
    defaults (3 attempts, 1 s doubling to 30 s, 20 % jitter) would fail it or wait otherwise."""
    token = uuid.uuid4().hex[:16]
    response = await lapi.post("/runs", json=run_body(one_agent(), f"#fail-first=3:503 #count={token} f", timeout_s=10))
    assert response.status_code == 202, response.text
    record = await bus.wait_record(response.json()["run_id"], timeout=90)
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.attempts == 4 and [r.wait_s for r in record.retries] == [0.1, 0.1, 0.1]
    assert await model_calls(scripted_model, token) == 4


async def test_runs_without_budgets_get_the_apis_default_ones(stack: Stack, bus: Bus) -> None:
    port = free_port()
    process = _api(stack, "api-budgets", FLOWRELAY_API_PORT=str(port), FLOWRELAY_DEFAULT_MAX_TOKENS="7",
                   FLOWRELAY_DEFAULT_MAX_COST_USD="0.000001")
    try:
        await asyncio.to_thread(process.wait_ready)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=stack.auth_headers, timeout=60) as http:
            tokens = (await http.post("/runs", json=run_body(one_agent(), "no budgets given"))).json()["run_id"]
            cost = (await http.post("/runs", json=run_body(one_agent(), "tokens given", max_tokens=10**6))).json()["run_id"]
            record = await bus.wait_record(tokens, timeout=60)
            assert record.error.code == "budget_exceeded" and "above its budget of 7 (options.max_tokens)" in record.error.message
            record = await bus.wait_record(cost, timeout=60)  # the scripted model is priced as gpt-4o-mini
            assert record.error.code == "budget_exceeded" and "above its budget of 1e-06 USD" in record.error.message
    finally:
        process.terminate()


async def test_questions_wait_the_default_time_and_answers_are_bounded(lapi: httpx.AsyncClient, bus: Bus) -> None:
    asker = one_agent(tools=["ask_human"])
    response = await lapi.post("/runs", json=run_body(asker, '#call=ask_human {"question": "Who?"}', timeout_s=10))
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    async for event in bus.stream_events(run_id):
        if event.type == EventType.RUN_WAITING:
            break
        assert not event.type.terminal, event.data
    too_long = await lapi.post(f"/runs/{run_id}/input", json={"answer": "x" * 11})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "answer"]
    assert "FLOWRELAY_MAX_ANSWER_BYTES" in too_long.json()["detail"][0]["msg"]
    record = await bus.wait_record(run_id, timeout=60)  # unanswered: 5 s, not the default hour
    assert record.status == RunStatus.FAILED and record.error.code == "timeout"
    assert "within 5 s" in record.error.message


async def test_thread_messages_and_runs_are_bounded_by_their_settings(lapi: httpx.AsyncClient, bus: Bus) -> None:
    thread_id = (await lapi.post("/threads", json={})).json()["thread_id"]
    too_long = await lapi.post(f"/threads/{thread_id}/runs", json=run_body(one_agent(), "x" * 51))
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "input"]
    assert "FLOWRELAY_MAX_THREAD_MESSAGE_BYTES" in too_long.json()["detail"][0]["msg"]
    first = await lapi.post(f"/threads/{thread_id}/runs", json=run_body(one_agent(), "x" * 50))
    assert first.status_code == 202, first.text
    await bus.wait_record(first.json()["run_id"], timeout=60)
    full = await lapi.post(f"/threads/{thread_id}/runs", json=run_body(one_agent(), "again"))
    assert full.status_code == 409 and full.json()["code"] == "thread_full"


async def test_allowlisted_mcp_hosts_pass_the_api_and_are_checked_again_by_the_executor(
    lapi: httpx.AsyncClient, api: httpx.AsyncClient, bus: Bus
) -> None:
    tools = [{"type": "mcp", "url": f"http://127.0.0.1:{free_port()}/mcp"}]
    assert (await api.post("/runs", json=run_body(one_agent(tools=tools), "m"))).status_code == 422  # default: refused
    response = await lapi.post("/runs", json=run_body(one_agent(tools=tools), "m"))
    assert response.status_code == 202, response.text
    record = await bus.wait_record(response.json()["run_id"], timeout=60)
    # the shared executor allows no such host: it refuses right before connecting
    assert record.status == RunStatus.FAILED and "FLOWRELAY_MCP_URL_ALLOWLIST" in record.error.message


async def test_the_access_log_has_a_line_per_request_only_when_enabled(
    lapi: httpx.AsyncClient, api: httpx.AsyncClient, limited: tuple[ServiceProcess, str], stack: Stack
) -> None:
    marker = f"/healthz?probe={uuid.uuid4().hex}"
    for client in (lapi, api):
        assert (await client.get(marker)).status_code == 200
    await asyncio.to_thread(limited[0].wait_for, re.escape(f'"GET {marker} HTTP/1.1" 200'), timeout=30)
    assert marker not in (stack.root / "logs" / "api.log").read_text(), "FLOWRELAY_API_ACCESS_LOG is off by default"


async def test_a_verified_key_is_trusted_for_key_cache_s(lapi: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    created = (await api.post("/keys", json={"tenant": f"cache-{uuid.uuid4().hex[:6]}"})).json()
    auth = {"Authorization": f"Bearer {created['key']}"}
    assert (await lapi.get("/auth/me", headers=auth)).status_code == 200  # now cached for 600 s there
    assert (await api.delete(f"/keys/{created['key_id']}")).status_code == 200
    assert (await api.get("/auth/me", headers=auth)).status_code == 401  # the default-cached API re-reads it
    await asyncio.sleep(3)  # past the default FLOWRELAY_KEY_CACHE_S (2 s): only the setting keeps it
    assert (await lapi.get("/auth/me", headers=auth)).status_code == 200


def test_the_api_refuses_to_start_when_a_record_could_outgrow_a_nats_message(stack: Stack) -> None:
    result = subprocess.run(
        resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API) | {
            "FLOWRELAY_API_PORT": str(free_port()), "FLOWRELAY_MAX_BODY_BYTES": str(1024 * 1024),
            "FLOWRELAY_MAX_INLINE_OUTPUT_BYTES": str(512 * 1024)},
        capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Uvicorn running" not in output
    assert "FLOWRELAY_MAX_BODY_BYTES" in output and "FLOWRELAY_MAX_INLINE_OUTPUT_BYTES" in output and "max_payload" in output


def test_the_api_listens_only_on_its_host_and_port(stack: Stack) -> None:
    assert stack.api is not None
    listening = {c.laddr for c in psutil.Process(stack.api.pid).net_connections(kind="inet") if c.status == "LISTEN"}
    assert listening == {("127.0.0.1", stack.api_port)}


def test_the_executors_metrics_listen_on_their_host_and_port(stack: Stack) -> None:
    executor = stack.executors[0]
    host, port = executor.wait_for(r"metrics on http://([\d.]+):(\d+)/metrics", timeout=30).groups()
    assert (host, port) != ("127.0.0.1", "9101"), "FLOWRELAY_METRICS_PORT=0 (the test kit's) picks a free port"
    listening = {c.laddr for c in psutil.Process(executor.pid).net_connections(kind="inet") if c.status == "LISTEN"}
    assert listening == {("127.0.0.1", int(port))}, "FLOWRELAY_METRICS_HOST is loopback by default"


# -- uvicorn worker processes ------------------------------------------------------------------


async def test_api_workers_serve_from_that_many_processes(stack: Stack) -> None:
    port = free_port()
    process = _api(stack, "api-workers", FLOWRELAY_API_PORT=str(port), FLOWRELAY_API_WORKERS="2")
    try:
        first = int((await asyncio.to_thread(process.wait_for, r"Started server process \[(\d+)\]")).group(1))
        second = int((await asyncio.to_thread(
            process.wait_for, rf"Started server process \[(?!{first}\])(\d+)\]")).group(1))
        assert {first, second} <= {p.pid for p in psutil.Process(process.pid).children()}
        await asyncio.to_thread(process.wait_for, r"Application startup complete")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=stack.auth_headers, timeout=60) as http:
            assert (await http.post("/runs", json=run_body(one_agent(), "two workers"))).status_code == 202
    finally:
        process.terminate()


# -- JetStream answers: FLOWRELAY_NATS_TIMEOUT_S ------------------------------------------------


async def test_the_api_waits_nats_timeout_s_for_jetstream_then_answers_503(
    scripted_model: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("nats-timeout")
    secrets = Secrets.ensure(root / "secrets")
    server = natsserver.start_secure(root / "nats", secrets, log_file=root / "logs" / "nats.log")
    stack = Stack(nats_url=server.url, scripted_url=scripted_model, root=root, secrets=secrets)
    patient, hasty = free_port(), free_port()
    apis = [_api(stack, "api-patient", FLOWRELAY_API_PORT=str(patient), FLOWRELAY_NATS_TIMEOUT_S="120"),
            _api(stack, "api-hasty", FLOWRELAY_API_PORT=str(hasty), FLOWRELAY_NATS_TIMEOUT_S="1")]
    try:
        for process in apis:
            await asyncio.to_thread(process.wait_ready)
        async with httpx.AsyncClient(timeout=180, headers=stack.auth_headers) as http:
            os.kill(server.process.pid, signal.SIGSTOP)  # NATS stops answering; connections stay up
            try:
                waiting = asyncio.create_task(http.post(f"http://127.0.0.1:{patient}/runs", json=run_body(one_agent(), "w")))
                refused = await http.post(f"http://127.0.0.1:{hasty}/runs", json=run_body(one_agent(), "h"))
                assert refused.status_code == 503 and refused.json()["code"] == "nats_timeout"
                await asyncio.sleep(7)  # the outage outlasts the default FLOWRELAY_NATS_TIMEOUT_S (5 s)
                assert not waiting.done()
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert (await waiting).status_code == 202
    finally:
        for process in apis:
            process.terminate()
        server.stop()


# -- JWTs: keys from a JWKS URL, algorithms and claims of the deployment's choosing ----------------


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[str, Any, Any]]:
    """A JWKS endpoint with an EC and an RSA signing key (kids "ec" and "rsa")."""
    ec_key, rsa_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [json.loads(ECAlgorithm.to_jwk(ec_key.public_key())) | {"kid": "ec", "alg": "ES256", "use": "sig"},
            json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())) | {"kid": "rsa", "alg": "RS256", "use": "sig"}]
    handler = type("Handler", (_Jwks,), {"body": json.dumps({"keys": keys}).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", ec_key, rsa_key
    finally:
        server.shutdown()


async def test_jwts_verified_from_a_jwks_url_with_the_configured_algorithms_and_claims(stack: Stack, jwks) -> None:
    url, ec_key, rsa_key = jwks
    port = free_port()
    process = _api(stack, "api-jwks", FLOWRELAY_API_PORT=str(port), FLOWRELAY_JWT_ISSUER="https://idp.jwks",
                   FLOWRELAY_JWT_JWKS_URL=url, FLOWRELAY_JWT_ALGORITHMS="ES256",
                   FLOWRELAY_JWT_TENANT_CLAIM="org", FLOWRELAY_JWT_SCOPES_CLAIM="perms")

    def token(key: Any, algorithm: str, kid: str, **claims: object) -> dict[str, str]:
        body = {"iss": "https://idp.jwks", "exp": int(time.time()) + 300, "org": "jwks-tenant", "perms": ["read"]}
        return {"Authorization": "Bearer " + jwt.encode(body | claims, key, algorithm=algorithm, headers={"kid": kid})}

    try:
        await asyncio.to_thread(process.wait_ready)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            me = (await http.get("/auth/me", headers=token(ec_key, "ES256", "ec"))).json()
            assert (me["tenant"], me["scopes"], me["via"]) == ("jwks-tenant", ["read"], "jwt")
            assert (await http.post("/runs", json=run_body(one_agent(), "x"),
                                    headers=token(ec_key, "ES256", "ec"))).status_code == 403  # perms: read only
            # signed by a key the JWKS has, with an algorithm the deployment did not allow
            assert (await http.get("/auth/me", headers=token(rsa_key, "RS256", "rsa"))).status_code == 401
            # the default claim names mean nothing here
            default_claims = token(ec_key, "ES256", "ec", org=None, tenant="jwks-tenant")
            assert (await http.get("/auth/me", headers=default_claims)).status_code == 401
    finally:
        process.terminate()
