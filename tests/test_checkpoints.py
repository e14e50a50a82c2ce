"""The step checkpoint store (bus/flowrelay_bus/checkpoints.py) on the real server, as the
executor's NATS user: what is saved comes back, large outputs included, a run's entries go
away together, and no one but the executors may touch the bucket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from flowrelay import natsserver
from flowrelay.credentials import Secrets
from flowrelay.natsconfig import Role
from flowrelay_bus import topology
from flowrelay_bus.checkpoints import MAX_INLINE_BYTES, CheckpointStore
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import Checkpoint, CheckpointKind, Usage, subjects


async def _connect(server: natsserver.NatsServer, secrets: Secrets, role: Role) -> Client:
    # Named like a service: the session fails on any permission violation of such a connection.
    return await nats.connect(server.url, user=role.value, password=secrets.password(role.value),
                              name=f"flowrelay-{role.value}-checkpoint-test", allow_reconnect=False)


@pytest.fixture
async def executor_nc(nats_server: natsserver.NatsServer, secrets: Secrets) -> AsyncIterator[Client]:
    nc = await _connect(nats_server, secrets, Role.EXECUTOR)
    await topology.declare(nc.jetstream(), BusSettings())  # as an executor does at start
    yield nc
    await nc.close()


def _checkpoint(run_id: str, name: str, step: int, output: object, tenant: str = "default") -> Checkpoint:
    return Checkpoint(run_id=run_id, tenant=tenant, name=name, kind=CheckpointKind.AGENT_STEP, step=step,
                      agent=f"agent-{step}", input_sha256="0" * 64, output=output,
                      usage=Usage(input_tokens=step, output_tokens=2 * step), cost_usd=0.001 * step)


async def test_saved_checkpoints_load_back_and_clear_together(executor_nc: Client) -> None:
    store = await CheckpointStore.open(executor_nc, executor_nc.jetstream(), BusSettings())
    run_id, other = f"cp-{uuid.uuid4().hex}", f"cp-{uuid.uuid4().hex}"
    big = "x" * (MAX_INLINE_BYTES + 1000)  # too large for a KV value of its own: object store
    saved = [
        await store.save(_checkpoint(run_id, "step-1", 1, {"answer": 42})),
        await store.save(_checkpoint(run_id, "step-2", 2, big)),
        await store.save(_checkpoint(other, "step-1", 1, "someone else's")),
        await store.save(_checkpoint(run_id, "step-1", 1, "another tenant's", tenant="acme")),
    ]
    assert saved[1].output is None and saved[1].output_ref is not None, "the large output was linked"

    loaded = await store.load("default", run_id)
    assert sorted(loaded) == ["step-1", "step-2"]
    assert loaded["step-1"].output == {"answer": 42}
    assert loaded["step-1"].usage == Usage(input_tokens=1, output_tokens=2)
    assert loaded["step-2"].output == big, "the linked output comes back inline"

    await store.save(_checkpoint(run_id, "step-1", 1, {"answer": 43}))  # a step written again
    assert (await store.load("default", run_id))["step-1"].output == {"answer": 43}

    await store.clear("default", run_id, linked=list(loaded.values()))
    assert await store.load("default", run_id) == {}
    assert list(await store.load("default", other)) == ["step-1"], "other runs keep theirs"
    assert list(await store.load("acme", run_id)) == ["step-1"], "the same run id of another tenant too"
    await store.clear("default", other)
    await store.clear("acme", run_id)


@pytest.mark.parametrize("role", [Role.API, Role.SUGGESTER])
async def test_only_executors_may_touch_checkpoints(nats_server: natsserver.NatsServer, secrets: Secrets,
                                                    executor_nc: Client, role: Role) -> None:
    await CheckpointStore.open(executor_nc, executor_nc.jetstream(), BusSettings())
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    # Not named like a service: these refusals are the expected outcome, not a failure.
    nc = await nats.connect(nats_server.url, user=role.value, password=secrets.password(role.value),
                            name="probe-checkpoints", error_cb=on_error, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=1)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.get_last_msg(f"KV_{subjects.CHECKPOINTS_BUCKET}", f"$KV.{subjects.CHECKPOINTS_BUCKET}.>",
                                  direct=True)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.publish(f"$KV.{subjects.CHECKPOINTS_BUCKET}.default.x.step-1", b"{}", timeout=1)
        assert any("permissions violation" in r.lower() for r in refused), refused
    finally:
        await nc.close()
