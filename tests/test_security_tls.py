"""TLS end to end: NATS with mutual TLS, the API over HTTPS, certificates made at test time."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest
import trustme
from flowrelay_testkit import Stack, one_agent, run_body

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role, TlsFiles
from flowrelay_contracts import subjects


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("flowrelay-service")
    files = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key",
             "client_cert": root / "client.pem", "client_key": root / "client.key"}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return files


@pytest.fixture(scope="module")
def tls_stack(pki: dict[str, Path], scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("tls")
    secrets = Secrets.ensure(root / "secrets")
    server = natsserver.start_secure(
        root / "nats", secrets, log_file=root / "logs" / "nats.log",
        tls=TlsFiles(cert=pki["cert"], key=pki["key"], ca=pki["ca"], verify_clients=True),
    )
    stack = Stack(
        nats_url=server.url, scripted_url=scripted_model, root=root, secrets=secrets,
        FLOWRELAY_NATS_TLS_CA=str(pki["ca"]), FLOWRELAY_NATS_TLS_CERT=str(pki["client_cert"]),
        FLOWRELAY_NATS_TLS_KEY=str(pki["client_key"]),
        FLOWRELAY_API_TLS_CERT=str(pki["cert"]), FLOWRELAY_API_TLS_KEY=str(pki["key"]),
    )
    stack.api_url = stack.api_url.replace("http://", "https://")
    try:
        stack.start_api()
        stack.start_suggester()
        stack.start_executor()
        yield stack
    finally:
        stack.stop()
        server.stop()


def _client_tls(pki: dict[str, Path], *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    return context


async def test_a_run_over_https_and_mutual_tls_nats(tls_stack: Stack, pki: dict[str, Path]) -> None:
    async with httpx.AsyncClient(base_url=tls_stack.api_url, verify=ssl.create_default_context(cafile=str(pki["ca"])), timeout=60,
                                 headers=tls_stack.auth_headers) as api:
        result = (await api.post("/execute", json=run_body(one_agent(), "over tls"))).json()
    assert result["status"] == "succeeded" and result["output"] == "echo: over tls"
    # a client that does not trust the CA cannot talk to the API
    async with httpx.AsyncClient(base_url=tls_stack.api_url, timeout=10) as untrusting:
        with pytest.raises(httpx.ConnectError):
            await untrusting.get("/healthz")


async def test_nats_refuses_plaintext_and_clients_without_a_certificate(tls_stack: Stack, pki: dict[str, Path]) -> None:
    operator = {"user": Role.OPERATOR.value, "password": tls_stack.secrets.password(Role.OPERATOR.value)}
    url = tls_stack.nats_url
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, **operator)  # no TLS
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
        await nats.connect(url, tls=_client_tls(pki, with_cert=False), allow_reconnect=False,
                           max_reconnect_attempts=0, **operator)  # TLS without a client certificate
    nc = await nats.connect(url, tls=_client_tls(pki, with_cert=True), allow_reconnect=False, **operator)
    try:
        info = await nc.jetstream().stream_info(subjects.RUNS_STREAM)  # JetStream works over mTLS
        assert info.config.name == subjects.RUNS_STREAM
    finally:
        await nc.close()
