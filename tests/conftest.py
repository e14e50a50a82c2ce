"""Session fixtures: a real nats-server, the scripted model, and the services as processes."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

# Services started inside the test process (in-process apps) serve their Prometheus metrics
# on a free port, never on the defaults a developer's `make up` uses.
os.environ.setdefault("FLOWRELAY_METRICS_PORT", "0")

from flowrelay_testkit import Bus, Executors, Stack, isolated_stack, leaked_secrets

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.stack import SERVICE_COMMANDS, ServiceProcess, resolve


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_secrets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole session (every stack stopped, so every log is complete): no log file
    of any service or nats-server started under the session's temporary directory holds a
    provider key, an API key or a NATS password."""
    yield
    root = tmp_path_factory.getbasetemp()
    leaks = leaked_secrets(root)
    assert not leaks, "secrets in the logs of this session:\n" + "\n".join(leaks[:50])


@pytest.fixture(scope="session")
def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flowrelay")


@pytest.fixture(scope="session")
def secrets(session_root: Path) -> Secrets:
    """The session deployment's secrets: admin API key, one NATS user per service."""
    return Secrets.ensure(session_root / "secrets")


@pytest.fixture(scope="session")
def nats_server(session_root: Path, secrets: Secrets) -> Iterator[natsserver.NatsServer]:
    """nats-server as flowrelay runs it: users with least privilege, no anonymous access."""
    log_file = session_root / "logs" / "nats.log"
    server = natsserver.start_secure(session_root / "nats", secrets, log_file=log_file)
    yield server
    server.stop()
    violations = natsserver.permission_violations(log_file.read_text(), users=("api", "executor", "suggester"), client_prefix="flowrelay-")
    assert not violations, "services were refused by their NATS permissions:\n" + "\n".join(violations[:20])


@pytest.fixture(scope="session")
def scripted_model(session_root: Path) -> Iterator[str]:
    """Base URL (``.../v1``) of the scripted OpenAI-compatible model server."""
    proc = ServiceProcess(
        "scripted-model",
        resolve(SERVICE_COMMANDS["scripted-model"]) + ["--host", "127.0.0.1", "--port", "0"],
        env=dict(__import__("os").environ),
        log_path=session_root / "logs" / "scripted-model.log",
    ).start()
    url = proc.wait_ready().group(1)
    yield url
    proc.terminate()


@pytest.fixture(scope="session")
def stack(
    nats_server: natsserver.NatsServer, scripted_model: str, session_root: Path, secrets: Secrets
) -> Iterator[Stack]:
    """API + one executor + suggester, shared by the tests that do not break things."""
    stack = Stack(nats_url=nats_server.url, scripted_url=scripted_model, root=session_root / "stack", secrets=secrets)
    stack.start_api()
    # The shared executor offers tinyagent only (tests rely on a framework no executor has);
    # every other framework runs on its own stack in test_frameworks_e2e.py.
    stack.start_executor(FLOWRELAY_FRAMEWORKS="tinyagent")
    stack.start_suggester()
    yield stack
    stack.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the shared stack with its admin key (tenant "default")."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as client:
        yield client


@pytest.fixture
async def bus(nats_server: natsserver.NatsServer, secrets: Secrets) -> AsyncIterator[Bus]:
    connection = await Bus.connect(nats_server.url, secrets)
    yield connection
    await connection.close()


# A module's own stack, for modules that start, configure and kill executors (a shared
# stack would see their executors take its runs). The module may set OWN_STACK_ENV: the
# settings of the executors it starts.


@pytest.fixture(scope="module")
def own_stack(
    request: pytest.FixtureRequest, scripted_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = getattr(request.module, "OWN_STACK_ENV", {})
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_"))
    with isolated_stack(root, scripted_model, **env) as (own, _):
        yield own


@pytest.fixture
async def own_api(own_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the module's own stack with its admin key."""
    async with httpx.AsyncClient(base_url=own_stack.api_url, timeout=60, headers=own_stack.auth_headers) as client:
        yield client


@pytest.fixture
async def own_bus(own_stack: Stack) -> AsyncIterator[Bus]:
    connection = await own_stack.bus()
    yield connection
    await connection.close()


@pytest.fixture(scope="module")
def module_executors(own_stack: Stack) -> Iterator[Executors]:
    pool = Executors(own_stack)
    yield pool
    pool.stop_all()


@pytest.fixture
def executors(module_executors: Executors) -> Iterator[Executors]:
    """A test's executors: ``shared()``, or its own (``start_executor``), stopped after it."""
    yield module_executors
    module_executors.stop_started()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's headless chromium, driven by Playwright (for the console's tests)."""
    from flowrelay_browser import chromium

    async with chromium() as instance:
        yield instance
