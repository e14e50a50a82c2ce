"""HTTP identity and tenancy against the real stack: keys, scopes, tenants, revocation, JWTs.

Every route but /healthz and the docs needs a bearer key; a key acts for one tenant and a run
of another tenant is indistinguishable from a run that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flowrelay_testkit import Bus, Stack, free_port, one_agent, run_body

from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve
from flowrelay_api.app import create_app
from flowrelay_contracts import EventType, RunStatus

#: Routes anyone may call (load balancers, the docs).
PUBLIC = {("GET", "/healthz"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"),
          ("GET", "/docs/oauth2-redirect")}


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) of the API's OpenAPI document, with sample path parameters."""
    paths = create_app().openapi()["paths"]
    found = []
    for path, operations in paths.items():
        for method in operations:
            concrete = path.replace("{run_id}", "01KAAAAAAAAAAAAAAAAAAAAAAA").replace("{key_id}", "aaaaaaaaaaaa")
            found.append((method.upper(), concrete))
    return found


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def make_key(api: httpx.AsyncClient, tenant: str, *scopes: str) -> str:
    body: dict = {"tenant": tenant, "name": "test"}
    if scopes:
        body["scopes"] = list(scopes)
    response = await api.post("/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


def client_for(stack: Stack, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=headers)


# -- 401 and 403 -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [r for r in _routes() if r not in PUBLIC])
async def test_every_route_without_a_key_is_401_saying_what_to_send(stack: Stack, method: str, path: str) -> None:
    async with client_for(stack, None) as anonymous:
        response = await anonymous.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == 401, (method, path, response.text)
    assert response.json()["code"] == "unauthenticated"
    assert "Authorization: Bearer" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_public_routes_need_no_key(stack: Stack) -> None:
    async with client_for(stack, None) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize("bad", ["frk_aaaaaaaaaaaa_" + "A" * 43, "not-a-key", "frk_short", "eyJhbGciOiJub25lIn0.e30.sig"])
async def test_unknown_or_malformed_keys_are_401_without_echoing_them(stack: Stack, bad: str) -> None:
    async with client_for(stack, bad) as caller:
        response = await caller.get("/runs")
    assert response.status_code == 401
    assert bad not in response.text


async def test_a_known_key_with_a_wrong_secret_is_401(api: httpx.AsyncClient, stack: Stack) -> None:
    key = (await api.post("/keys", json={"tenant": _tenant()})).json()["key"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")  # its id, another secret
    async with client_for(stack, forged) as caller:
        response = await caller.get("/runs")
    assert response.status_code == 401 and forged not in response.text
    async with client_for(stack, key) as caller:
        assert (await caller.get("/runs")).status_code == 200


async def test_a_key_without_the_scope_is_403_naming_the_scope(api: httpx.AsyncClient, stack: Stack) -> None:
    tenant = _tenant()
    read_only = await make_key(api, tenant, "read")
    async with client_for(stack, read_only) as reader:
        assert (await reader.get("/runs")).status_code == 200
        refused = await reader.post("/runs", json=run_body(one_agent(), "no"))
        assert refused.status_code == 403
        assert refused.json()["code"] == "forbidden" and "'submit'" in refused.json()["detail"]
        assert (await reader.get("/metrics")).status_code == 403
        assert (await reader.get("/keys")).status_code == 403
        assert (await reader.post("/keys", json={"tenant": tenant})).status_code == 403
        assert (await reader.get("/executors")).status_code == 403
    submitter = await make_key(api, tenant, "submit")
    async with client_for(stack, submitter) as writer:
        accepted = await writer.post("/runs", json=run_body(one_agent(), "submit only"))
        assert accepted.status_code == 202
        assert (await writer.get(f"/runs/{accepted.json()['run_id']}")).status_code == 403
        assert (await writer.post(f"/runs/{accepted.json()['run_id']}/cancel")).status_code == 403
    scraper = await make_key(api, tenant, "metrics")
    async with client_for(stack, scraper) as prometheus:
        assert (await prometheus.get("/metrics")).status_code == 200
        assert (await prometheus.get("/runs")).status_code == 403


async def test_who_am_i(api: httpx.AsyncClient, stack: Stack) -> None:
    tenant = _tenant()
    key = await make_key(api, tenant)
    async with client_for(stack, key) as caller:
        me = (await caller.get("/auth/me")).json()
    assert me["tenant"] == tenant and me["scopes"] == ["cancel", "read", "submit"] and me["via"] == "key"


# -- tenants ---------------------------------------------------------------------------------


async def test_tenants_see_follow_list_and_cancel_only_their_own_runs(api: httpx.AsyncClient, stack: Stack, secrets) -> None:
    a, b = _tenant(), _tenant()
    key_a, key_b = await make_key(api, a), await make_key(api, b)
    async with client_for(stack, key_a) as alice, client_for(stack, key_b) as bob:
        run_a = (await alice.post("/runs", json=run_body(one_agent(), "#delay=1.5 alice's"))).json()["run_id"]
        missing = "01KZZZZZZZZZZZZZZZZZZZZZZZ"
        for path in (f"/runs/{run_a}", f"/runs/{run_a}/events"):
            theirs, nobody = await bob.get(path), await bob.get(path.replace(run_a, missing))
            assert theirs.status_code == nobody.status_code == 404
            assert theirs.json()["detail"].replace(run_a, "ID") == nobody.json()["detail"].replace(missing, "ID")
        assert (await bob.post(f"/runs/{run_a}/cancel")).status_code == 404
        assert run_a not in {r["run_id"] for r in (await bob.get("/runs", params={"limit": 100})).json()["runs"]}
        assert (await bob.get("/runs", params={"tenant": a})).status_code == 403

        mine = (await alice.get(f"/runs/{run_a}")).json()
        assert mine["tenant"] == a and mine["workflow"]["nodes"][0]["data"]["name"] == "assistant"
        assert run_a in {r["run_id"] for r in (await alice.get("/runs")).json()["runs"]}

        bus = await Bus.connect(stack.nats_url, secrets, tenant=a)
        try:
            record = await bus.wait_record(run_a, timeout=30)
            assert record.status == RunStatus.SUCCEEDED and record.tenant == a
            started = (await bus.stored_events(run_a))[0]
            assert started.type == EventType.RUN_STARTED and started.data["tenant"] == a
        finally:
            await bus.close()
    # admins see every tenant, and can narrow to one
    everyone = {r["run_id"]: r["tenant"] for r in (await api.get("/runs", params={"limit": 100})).json()["runs"]}
    assert everyone[run_a] == a
    only_b = (await api.get("/runs", params={"tenant": b})).json()["runs"]
    assert all(r["tenant"] == b for r in only_b)
    assert (await api.get(f"/runs/{run_a}")).json()["tenant"] == a


async def test_idempotency_keys_are_per_tenant(api: httpx.AsyncClient, stack: Stack) -> None:
    key_a, key_b = await make_key(api, _tenant()), await make_key(api, _tenant())
    body, header = run_body(one_agent(), "same key"), {"Idempotency-Key": "order-42"}
    async with client_for(stack, key_a) as alice, client_for(stack, key_b) as bob:
        first = (await alice.post("/runs", json=body, headers=header)).json()["run_id"]
        again = (await alice.post("/runs", json=body, headers=header)).json()["run_id"]
        other = await bob.post("/runs", json=body, headers=header)
    assert first == again
    assert other.status_code == 202 and other.json()["run_id"] != first
    assert "Idempotent-Replayed" not in other.headers


async def test_listing_pages_through_a_tenants_runs_newest_first(api: httpx.AsyncClient, stack: Stack) -> None:
    key = await make_key(api, _tenant())
    async with client_for(stack, key) as caller:
        ids = [(await caller.post("/runs", json=run_body(one_agent(), f"page {i}"))).json()["run_id"] for i in range(5)]
        seen, cursor = [], None
        while True:
            page = (await caller.get("/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
            seen += [r["run_id"] for r in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == list(reversed(ids))


# -- key management -----------------------------------------------------------------------------


async def test_keys_are_listed_without_secrets_and_a_revoked_key_stops_working(api: httpx.AsyncClient, stack: Stack) -> None:
    tenant = _tenant()
    created = (await api.post("/keys", json={"tenant": tenant, "name": "ci"})).json()
    key, key_id = created["key"], created["key_id"]
    listed = (await api.get("/keys", params={"tenant": tenant})).json()["keys"]
    assert [k["key_id"] for k in listed] == [key_id]
    assert key not in json.dumps(listed) and "hash" not in listed[0]
    async with client_for(stack, key) as caller:
        assert (await caller.get("/runs")).status_code == 200
        revoked = await api.delete(f"/keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        # every API process re-reads a key after FLOWRELAY_KEY_CACHE_S (2 s): wait for that
        deadline = time.monotonic() + 15
        while (status := (await caller.get("/runs")).status_code) == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert status == 401
    assert (await api.delete("/keys/zzzzzzzzzzzz")).status_code == 404


async def test_the_cli_creates_lists_and_revokes_keys_with_the_admin_key_from_the_data_dir(stack: Stack, tmp_path: Path) -> None:
    data_dir = stack.secrets.root.parent  # <data dir>/secrets/admin.key, as flowrelay up writes it
    tenant = _tenant()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowrelay.cli", *args, "--api", stack.api_url, "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )

    created = cli("keys", "create", "--tenant", tenant, "--scope", "read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("frk_")
    async with client_for(stack, key) as caller:
        assert (await caller.get("/auth/me")).json()["scopes"] == ["read"]
    listed = cli("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entry = next(k for k in json.loads(listed.stdout) if k["tenant"] == tenant)
    assert key not in listed.stdout
    assert cli("keys", "revoke", entry["key_id"]).returncode == 0


# -- JWTs from a configured issuer ------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_file = tmp_path_factory.mktemp("jwt") / "issuer.pem"
    public_file.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public_file


async def test_jwts_of_the_configured_issuer_carry_tenant_and_scopes(stack: Stack, issuer) -> None:
    private, public_file = issuer
    port = free_port()
    from flowrelay.natsconfig import Role

    api = ServiceProcess(
        "api", resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API) | {
            "FLOWRELAY_API_PORT": str(port), "FLOWRELAY_JWT_ISSUER": "https://idp.test",
            "FLOWRELAY_JWT_AUDIENCE": "flowrelay", "FLOWRELAY_JWT_PUBLIC_KEY_FILE": str(public_file),
        },
        log_path=stack.root / "logs" / "api-jwt.log",
    ).start()

    def token(**claims: object) -> str:
        body = {"iss": "https://idp.test", "aud": "flowrelay", "exp": int(time.time()) + 300, "sub": "svc",
                "tenant": "jwt-tenant", "scope": "submit read"} | claims
        return jwt.encode(body, private, algorithm="RS256")

    try:
        api.wait_ready()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            def auth(t: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {t}"}

            me = (await http.get("/auth/me", headers=auth(token()))).json()
            assert me["tenant"] == "jwt-tenant" and me["via"] == "jwt" and me["scopes"] == ["read", "submit"]
            run_id = (await http.post("/runs", json=run_body(one_agent(), "by jwt"), headers=auth(token()))).json()["run_id"]
            assert (await http.get(f"/runs/{run_id}", headers=auth(token()))).json()["tenant"] == "jwt-tenant"
            assert (await http.get(f"/runs/{run_id}", headers=auth(token(tenant="someone-else")))).status_code == 404
            assert (await http.post(f"/runs/{run_id}/cancel", headers=auth(token()))).status_code == 403
            for bad in (token(exp=int(time.time()) - 10), token(iss="https://evil.test"), token(aud="other"),
                        token(tenant="Not A Tenant"), jwt.encode({"iss": "https://idp.test", "aud": "flowrelay",
                        "exp": int(time.time()) + 60, "tenant": "x"}, "a-shared-secret-of-thirty-two-bytes!", algorithm="HS256")):
                assert (await http.get("/runs", headers=auth(bad))).status_code == 401
            # API keys still work next to JWTs
            assert (await http.get("/runs", headers=stack.auth_headers)).status_code == 200
    finally:
        api.terminate()


# -- auth off ----------------------------------------------------------------------------------


def test_auth_none_refuses_to_listen_beyond_loopback(stack: Stack) -> None:
    from flowrelay.natsconfig import Role

    result = subprocess.run(
        resolve(SERVICE_COMMANDS["api"]),
        env=stack.env | stack.secrets.service_env(Role.API) | {
            "FLOWRELAY_AUTH": "none", "FLOWRELAY_API_HOST": "0.0.0.0", "FLOWRELAY_API_PORT": str(free_port())},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "FLOWRELAY_AUTH=none" in result.stdout + result.stderr and "loopback" in result.stdout + result.stderr
