"""Every service exports Prometheus metrics; runs move them the way the README says.

Scraped over HTTP from the real processes of the session stack (each logs the port it
serves on). The stack is shared, so assertions are on differences between two scrapes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from flowrelay_testkit import Stack, one_agent, run_body
from prometheus_client.parser import text_string_to_metric_families

from flowrelay.stack import ServiceProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: Upper bound on how long a service takes to reflect a finished run in its metrics.
WAIT_S = 20.0


def metrics_url(service: ServiceProcess) -> str:
    match = service.wait_for(r"metrics on (http://\S+/metrics)", timeout=30)
    return match.group(1)


async def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        text = (await client.get(url)).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for ``check`` (a scrape) to hold; metrics have no change notification."""
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.05)


async def test_executor_counts_runs_tokens_and_durations(stack: Stack) -> None:
    url = metrics_url(stack.executors[0])
    before = await scrape(url)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        ok = (await api.post("/execute", json=run_body(one_agent(), "count me"))).json()
        failed = (await api.post("/execute", json=run_body(one_agent(), "#fail=401 no"))).json()
    assert ok["status"] == "succeeded" and failed["error"]["code"] == "invalid_api_key"
    after = await scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("flowrelay_executor_runs_total", status="succeeded", error_code="none") == 1
    assert delta("flowrelay_executor_runs_total", status="failed", error_code="invalid_api_key") == 1
    assert delta("flowrelay_executor_run_seconds_count", status="succeeded") == 1
    assert delta("flowrelay_executor_queue_wait_seconds_count") == 2
    model = "scripted:gpt-4o-mini"
    tenant = "default"  # the tenant of the stack's admin key
    assert delta("flowrelay_executor_tokens_total", model=model, tenant=tenant, direction="input") == ok["usage"]["input_tokens"]
    assert delta("flowrelay_executor_tokens_total", model=model, tenant=tenant, direction="output") == ok["usage"]["output_tokens"]
    assert delta("flowrelay_executor_cost_usd_total", model=model, tenant=tenant) == pytest.approx(ok["cost_usd"])
    assert value(after, "flowrelay_executor_runs_in_flight") == 0
    assert value(after, "flowrelay_executor_workers") == 1 and value(after, "flowrelay_executor_slots") > 0
    assert ("flowrelay_queue_waiting", frozenset()) in after and ("flowrelay_queue_held", frozenset()) in after


async def test_a_crashed_worker_counts_as_a_restart(stack: Stack) -> None:
    url = metrics_url(stack.executors[0])
    before = value(await scrape(url), "flowrelay_executor_worker_restarts_total", reason="crashed")
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        body = run_body(one_agent(tools=["crash_worker"]), "#call=crash_worker {}")
        result = (await api.post("/execute", json=body)).json()
    assert result["error"]["code"] == "worker_crashed"

    async def counted() -> bool:
        restarts = value(await scrape(url), "flowrelay_executor_worker_restarts_total", reason="crashed")
        return restarts == before + 1

    await until(counted, "the restart")


async def test_suggester_counts_the_failures_it_guided(stack: Stack) -> None:
    assert stack.suggester is not None
    url = metrics_url(stack.suggester)
    name = "flowrelay_suggester_guidance_total"
    before = await scrape(url)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api:
        failed = (await api.post("/execute", json=run_body(one_agent(), "#fail=429 slow down"))).json()
    assert failed["error"]["code"] == "rate_limited"

    async def counted() -> bool:
        after = await scrape(url)
        return value(after, name, error_code="rate_limited") == value(before, name, error_code="rate_limited") + 1

    await until(counted, "the guidance")
    after = await scrape(url)
    handled = value(after, "flowrelay_suggester_messages_total", kind="failure", outcome="handled")
    assert handled > value(before, "flowrelay_suggester_messages_total", kind="failure", outcome="handled")


async def test_api_metrics_are_on_its_own_port(stack: Stack) -> None:
    samples = await scrape(f"{stack.api_url}/metrics", stack.auth_headers)
    assert any(name == "flowrelay_api_runs_submitted_total" for name, _ in samples)


def test_metrics_port_is_logged_with_the_real_port(stack: Stack) -> None:
    port = int(re.search(r":(\d+)/metrics", metrics_url(stack.executors[0])).group(1))  # type: ignore[union-attr]
    assert port not in (0, 9101), "FLOWRELAY_METRICS_PORT=0 picks a free port"
