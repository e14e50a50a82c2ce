"""Secrets never reach the logs: a stack of its own at DEBUG level is made to handle every kind
of secret (a provider key the model rejects, a secret in a tool argument, API keys good, bad
and revoked, NATS passwords given as values), then every log line it wrote is scanned.

The whole session's logs get the same scan when it ends (``conftest.logs_hold_no_secrets``);
this test makes sure the paths that touch secrets ran, with the most verbose logging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flowrelay_testkit import (
    TEST_SECRET,
    Bus,
    Stack,
    isolated_stack,
    known_secrets,
    leaked_secrets,
    one_agent,
    run_body,
)

from flowrelay.natsconfig import Role

PROVIDER_KEY = "sk-live-provider-key-0123456789abcdefABCDEF"


@pytest.fixture(scope="module")
def verbose_stack(scripted_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("secrets-in-logs")
    with isolated_stack(root, scripted_model, FLOWRELAY_LOG_LEVEL="DEBUG", FLOWRELAY_FRAMEWORKS="tinyagent") as (stack, _):
        # The executor gets its NATS password as a value, which wins over a file (here a wrong
        # one), and a provider key.
        password = stack.secrets.password(Role.EXECUTOR.value)
        wrong = root / "wrong.password"
        wrong.write_text("not-the-executors-password-0123456789")
        stack.start_executor(FLOWRELAY_NATS_PASSWORD=password, FLOWRELAY_NATS_PASSWORD_FILE=str(wrong),
                             FLOWRELAY_DEFAULT_API_KEY=PROVIDER_KEY, OPENAI_API_KEY=PROVIDER_KEY)
        yield stack, root


async def test_logs_of_services_that_handled_every_kind_of_secret_hold_none(verbose_stack) -> None:
    stack, root = verbose_stack
    bus = await Bus.connect(stack.nats_url, stack.secrets)
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
            rejected = (await api.post("/runs", json=run_body(one_agent(), "#fail=401 my key"))).json()["run_id"]
            echoed = (await api.post("/runs", json=run_body(
                one_agent(tools=["lookup_secret_echo"]), '#call=lookup_secret_echo {"text": "' + TEST_SECRET + '"}',
            ))).json()["run_id"]
            crashed = (await api.post("/runs", json=run_body(one_agent(tools=["explode"]),
                                                             '#call=explode {"reason": "' + PROVIDER_KEY + '"}'))).json()["run_id"]
            for run_id in (rejected, echoed, crashed):
                await bus.wait_record(run_id, timeout=60, predicate=lambda r: r.terminal)
            assert (await bus.store.get(rejected)).error.code == "invalid_api_key"

            created = (await api.post("/keys", json={"tenant": "acme"})).json()
            forged = created["key"][:-4] + ("AAAA" if not created["key"].endswith("AAAA") else "BBBB")
            for key in (created["key"], forged, "frk_" + "a" * 12 + "_" + "b" * 43):
                await api.get("/runs", headers={"Authorization": f"Bearer {key}"})
            await api.delete(f"/keys/{created['key_id']}")
        # The suggester's guidance for the failures is the last thing written for them.
        for run_id in (rejected, crashed):
            await bus.wait_record(run_id, timeout=30, predicate=lambda r: bool(r.suggestions))
    finally:
        await bus.close()
    await asyncio.to_thread(stack.stop)  # every log complete

    executor_log = (root / "logs" / "executor-1.log").read_text()
    assert " DEBUG " in executor_log, "the executor logged at DEBUG (FLOWRELAY_LOG_LEVEL)"
    secrets = known_secrets(root) | {PROVIDER_KEY: "the executor's provider key", created["key"]: "an API key"}
    assert not leaked_secrets(root, secrets)
