"""compose.yaml in real containers, driven from the host like a backend team would.

One compose project serves every check, in this order: the deployment is the secure one (no
anonymous NATS, each container only its own secrets, ports on loopback), a run of each
pattern, a run on the framework built into the executor image, SSE, a failure with its
suggestion, scale-out to three executors sharing work, an executor container killed mid-run,
the NATS container killed and started again, and ``down`` leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import nats
import pytest
from flowrelay_composekit import (
    FRAMEWORKS,
    REQUIRE_ENV,
    ComposeProject,
    api_sees_executors,
    docker,
    engine_problem,
    ensure_images,
    finished,
    live_executors,
    sse,
    submit,
    versions,
)
from flowrelay_testkit import REPO, Bus, one_agent, run_body

from flowrelay_contracts import RunRecord, RunStatus

pytestmark = pytest.mark.timeout(600)

#: Runs that ended earlier in the module; the NATS restart must not lose any of them.
FINISHED: dict[str, RunRecord] = {}

#: The compose secrets each service's container gets, and nothing else.
OWN_SECRETS = {
    "nats": {"nats_conf"},
    "api": {"api_password", "admin_key"},
    "executor": {"executor_password"},
    "suggester": {"suggester_password"},
    "scripted-model": set(),
}


def _example(name: str) -> dict[str, Any]:
    return json.loads((REPO / "examples" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ComposeProject]:
    if problem := engine_problem():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but containers cannot run: {problem}")
        pytest.skip(problem)
    log_dir = tmp_path_factory.mktemp("compose")
    ensure_images(log_dir)
    project = ComposeProject(log_dir=log_dir)
    print(f"\ncompose test: project {project.name} on {versions()}")
    project.watch_events()
    try:
        project.compose("up", "-d", "--no-build")
        project.wait_healthy("nats")
        project.wait_healthy("api")
        yield project
    finally:
        if request.session.testsfailed:
            print(f"compose logs: {project.save_logs()}")
        project.down()


@pytest.fixture(scope="module")
async def api(project: ComposeProject) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=project.api_url, timeout=60, headers=project.auth_headers) as client:
        yield client


@pytest.fixture(scope="module")
async def bus(project: ComposeProject) -> AsyncIterator[Bus]:
    connection = await Bus.connect(project.nats_url, project.secrets)
    yield connection
    await connection.close()


async def done(bus: Bus, run_id: str, *, timeout: float = 90) -> RunRecord:
    record = FINISHED[run_id] = await finished(bus, run_id, timeout=timeout)
    return record


# -- the checks, in order --------------------------------------------------------------------


async def test_the_deployment_is_the_secure_one(project: ComposeProject, api: httpx.AsyncClient) -> None:
    for credentials in ({}, {"user": "executor", "password": "not-its-password"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(project.nats_url, allow_reconnect=False, connect_timeout=5, **credentials)
    anonymous = await api.get("/runs", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthenticated"
    assert (await api.get("/auth/me")).json()["scopes"] == ["admin"]  # the key compose bootstrapped
    for service, secrets in OWN_SECRETS.items():
        for container in project.containers(service):
            listing = docker("exec", container.id, "ls", "-A", "/run/secrets") if secrets else ""
            assert set(listing.split()) == secrets, (service, listing)
            published = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Ports}}", container.id))
            hosts = {b["HostIp"] for bindings in published.values() if bindings for b in bindings}
            assert hosts <= {"127.0.0.1"}, (service, published)


async def test_the_api_container_serves_the_console_and_its_examples(api: httpx.AsyncClient) -> None:
    # The image's wheel must carry the console's files and the examples (pyproject's
    # force-include): a build context without them gives a console with nothing to submit.
    page = await api.get("/ui/", headers={"Authorization": ""})
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    offered = (await api.get("/ui/examples.json", headers={"Authorization": ""})).json()["examples"]
    assert {e["name"] for e in offered} >= {"simple", "sequential", "collaborative"}
    assert next(e["body"] for e in offered if e["name"] == "simple") == _example("simple")


async def test_each_pattern_runs_in_containers(api: httpx.AsyncClient, bus: Bus) -> None:
    offered = await live_executors(bus, 2)
    assert {frozenset(c.frameworks) for c in offered.values()} == {FRAMEWORKS | {"tinyagent"}}
    ids = {name: await submit(api, _example(name)) for name in ("simple", "sequential", "collaborative")}
    records = {name: await done(bus, run_id) for name, run_id in ids.items()}
    assert records["simple"].output == "echo: What is flowrelay?"
    assert records["sequential"].output == "echo: echo: ping"
    assert records["collaborative"].output == "42"
    for record in records.values():
        assert record.status == RunStatus.SUCCEEDED
        assert record.model_provider == "scripted"
        assert record.isolation == "process"


@pytest.mark.skipif(not FRAMEWORKS, reason="the executor image was built with tinyagent only (FLOWRELAY_FRAMEWORKS)")
async def test_a_framework_from_the_executor_lock_runs_in_its_container(api: httpx.AsyncClient, bus: Bus) -> None:
    # The API accepts a framework only if a live executor offers it (else 422 naming the field).
    for framework in sorted(FRAMEWORKS):
        record = await done(bus, await submit(api, run_body(one_agent(framework=framework), f"on {framework}")))
        assert record.status == RunStatus.SUCCEEDED, (framework, record.error)
        assert record.output == f"echo: on {framework}"
    missing = next(f for f in ("openai", "langchain", "smolagents") if f not in FRAMEWORKS)
    await api_sees_executors(api, 2)
    refused = await api.post("/runs", json=run_body(one_agent(framework=missing), "not in this image"))
    assert refused.status_code == 422 and missing in refused.text


async def test_sse_streams_every_event_and_resumes(api: httpx.AsyncClient) -> None:
    run_id = await submit(api, run_body(one_agent(), "#delay=1 streamed"))
    events = sse((await api.get(f"/runs/{run_id}/events")).text)  # the server closes after the end
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "run.started"
    assert events[-1]["event"] == "run.completed"
    assert events[-1]["data"]["data"]["output"] == "echo: #delay=1 streamed"
    resumed = sse((await api.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "2"})).text)
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]


async def test_a_failure_ends_with_its_suggestion(api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, run_body(one_agent(), "#fail=401 rejected key"))
    events = sse((await api.get(f"/runs/{run_id}/events")).text)
    assert [e["event"] for e in events][-2:] == ["run.failed", "suggestion"]
    record = await bus.wait_record(run_id, predicate=lambda r: r.terminal and r.suggestions)
    assert record.status == RunStatus.FAILED
    assert record.error is not None and record.error.code == "invalid_api_key"
    assert "invalid_api_key" in [s.code for s in record.suggestions]
    FINISHED[run_id] = record


async def test_scale_out_to_three_executors_shares_the_work(project: ComposeProject, api: httpx.AsyncClient, bus: Bus) -> None:
    await asyncio.to_thread(project.compose, "up", "-d", "--no-build", "--scale", "executor=3")
    await live_executors(bus, 3)
    containers = {c.hostname for c in project.containers("executor")}
    assert len(containers) == 3
    # 12 one-second runs against 3 x 2 slots: each executor must take some while work remains.
    ids = [await submit(api, run_body(one_agent(), f"#delay=1 share {i}")) for i in range(12)]
    records = [await done(bus, run_id) for run_id in ids]
    assert all(r.status == RunStatus.SUCCEEDED for r in records)
    ran_on = {r.executor_id.split("-")[0] for r in records if r.executor_id}
    assert ran_on == containers


async def test_a_killed_executor_container_hands_its_run_to_another(project: ComposeProject, api: httpx.AsyncClient, bus: Bus) -> None:
    run_id = await submit(api, run_body(one_agent(), "#delay=4 survives its executor"))
    follower = asyncio.create_task(api.get(f"/runs/{run_id}/events"))
    running = await bus.wait_record(run_id, terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
    assert running.executor_id
    victim = next(c for c in project.containers("executor") if running.executor_id.startswith(c.hostname))
    docker("kill", victim.id)

    record = await done(bus, run_id)
    assert record.status == RunStatus.SUCCEEDED
    assert record.output == "echo: #delay=4 survives its executor"
    assert record.attempts == 2
    assert record.executor_id and not record.executor_id.startswith(victim.hostname)
    survivors = {c.hostname for c in project.containers("executor")}
    assert victim.hostname not in survivors and record.executor_id.split("-")[0] in survivors
    events = sse((await follower).text)
    assert [e["event"] for e in events].count("run.started") == 2
    assert [e["event"] for e in events if e["event"].startswith("run.") and e["event"] != "run.started"] == ["run.completed"]


async def test_killing_and_starting_nats_loses_nothing(project: ComposeProject, api: httpx.AsyncClient, bus: Bus) -> None:
    # More runs than free slots: some are running, the rest wait in the work queue.
    ids = [await submit(api, run_body(one_agent(), f"#delay=2 across the restart {i}")) for i in range(8)]
    await bus.wait_record(ids[0], terminal=False, predicate=lambda r: r.status == RunStatus.RUNNING)
    [server] = project.containers("nats")
    mark = project.event_mark
    docker("kill", server.id)
    await asyncio.to_thread(project.compose, "start", "nats")
    await asyncio.to_thread(project.wait_healthy, "nats", after=mark)

    for run_id in ids:
        record = await done(bus, run_id, timeout=120)
        assert record.status == RunStatus.SUCCEEDED, record
    for run_id, before in FINISHED.items():  # every earlier run: record and events intact
        after = (await api.get(f"/runs/{run_id}")).json()
        assert (after["status"], after["output"]) == (before.status, before.output)
    new = await submit(api, run_body(one_agent(), "after the restart"))
    assert (await done(bus, new)).output == "echo: after the restart"


async def test_down_leaves_nothing_behind(project: ComposeProject) -> None:
    assert any(project.leftovers().values())
    project.save_logs()  # the last chance to keep them
    await asyncio.to_thread(project.compose, "down", "-v", "--remove-orphans", "-t", "10")
    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}
