"""The web console in a real headless browser against the real stack.

Debian's chromium (driven by Playwright) opens the console served by the API process; the
API, executor, suggester and nats-server are the session's real processes and the scripted
model is the only stand-in. Each test checks what the page shows against what the API
and the bus say, and fails on any uncaught script error in the page.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from flowrelay_browser import ConsoleTab
from flowrelay_testkit import Bus, Stack, chain, isolated_stack, one_agent, run_body
from playwright.async_api import Browser, expect

from flowrelay_contracts import EventType, RunStatus

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUN_URL = re.compile(r"/ui/runs/([0-9A-Z]{26})$")

# Runs take real seconds here (worker start, scripted delays): wait for the page that long.
expect.set_options(timeout=30_000)


@pytest.fixture
async def tab(browser: Browser, stack: Stack) -> AsyncIterator[ConsoleTab]:
    async with ConsoleTab.open(browser, stack.api_url, key=stack.admin_key) as console:
        yield console
        assert console.errors == [], "the page raised script errors"
        foreign = [r.url for r in console.requests if not r.url.startswith(stack.api_url)]
        assert foreign == [], "the console fetched something from another origin"


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


async def _submit_from_form(tab: ConsoleTab, example: str, *, input_prefix: str = "", input_text: str | None = None) -> str:
    """Fill the submit page from an example, run it, return the run id of the page landed on."""
    page = tab.page
    await tab.goto("/ui/submit")
    await expect(page.locator(f'#example option[value="{example}"]')).to_have_count(1)
    await page.select_option("#example", example)
    field = page.locator("#run-input")
    await expect(field).not_to_have_value("")
    if input_text is not None:
        await field.fill(input_text)
    elif input_prefix:
        await field.fill(input_prefix + await field.input_value())
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.wait_for_url(RUN_URL)
    return RUN_URL.search(page.url).group(1)


async def test_submit_the_collaborative_example_and_watch_the_run_page_update_to_succeeded(
    tab: ConsoleTab, bus: Bus, tmp_path: Path
) -> None:
    # "#delay=" slows each of the coordinator's two model calls, so the page is seen running.
    run_id = await _submit_from_form(tab, "collaborative", input_prefix="#delay=1.5 ")
    page = tab.page
    await tab.record_attribute(".run-page", "data-status")
    await expect(page.locator(".run-page")).to_have_attribute("data-status", "succeeded")

    statuses = await tab.recorded(".run-page", "data-status")
    assert statuses is not None, "the page reloaded: the run page must update in place"
    assert "running" in statuses and statuses[-1] == "succeeded"
    assert statuses.index("running") < statuses.index("succeeded")

    record = await bus.wait_record(run_id)
    events = await bus.events(run_id)
    assert record.status == RunStatus.SUCCEEDED and record.output == "42"

    # The graph: every node of the submitted workflow, coloured by what happened to it.
    nodes = page.locator(".graph .node")
    await expect(nodes).to_have_count(3)
    await expect(page.locator('.node[data-agent="coordinator"]')).to_have_attribute("data-state", "succeeded")
    await expect(page.locator('.node[data-agent="analyst"]')).to_have_attribute("data-state", "succeeded")
    await expect(page.locator('.node[data-agent="writer"]')).to_have_attribute("data-state", "not-run")

    # The timeline: one row per started step of the trace, in order, with the trace's figures.
    started = [e for e in events if e.type in (EventType.AGENT_STARTED, EventType.LLM_STARTED, EventType.TOOL_STARTED)]
    rows = page.locator("li.step")
    await expect(rows).to_have_count(len(started))
    kinds = await rows.evaluate_all("rows => rows.map(r => [r.dataset.kind, r.dataset.agent])")
    assert kinds == [[e.type.value.split(".")[0], e.data["agent"]] for e in started]
    first_llm = next(e for e in events if e.type == EventType.LLM_FINISHED)
    llm_row = page.locator('li.step[data-kind="llm"]').first
    await expect(llm_row.locator(".step-tokens")).to_have_text(
        f"{first_llm.data['input_tokens']} / {first_llm.data['output_tokens']}"
    )
    calculator = page.locator('li.step[data-kind="tool"]', has_text="analyst calls calculator")
    await calculator.locator("summary").click()
    await expect(calculator.locator(".step-detail")).to_contain_text("6*7")
    await expect(calculator.locator(".step-detail")).to_contain_text("42")

    await expect(page.locator("pre.output")).to_have_text("42")
    usage = record.usage
    await expect(page.locator('dd[data-fact="tokens"]')).to_have_text(
        f"{usage.input_tokens:,} in, {usage.output_tokens:,} out"
    )
    await tab.screenshot(tmp_path, "console-run-succeeded")


async def test_cancel_a_slow_run_from_its_page(tab: ConsoleTab, bus: Bus, tmp_path: Path) -> None:
    run_id = await _submit_from_form(tab, "simple", input_text="#delay=120 take your time")
    page = tab.page
    await expect(page.locator(".run-page")).to_have_attribute("data-status", "running")
    await expect(page.locator('.node[data-agent="assistant"]')).to_have_attribute("data-state", "running")
    await page.get_by_role("button", name="Cancel run").click()

    await expect(page.locator(".run-page")).to_have_attribute("data-status", "cancelled")
    await expect(page.locator('.node[data-agent="assistant"]')).to_have_attribute("data-state", "cancelled")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    record = await bus.wait_record(run_id)
    assert record.status == RunStatus.CANCELLED and record.cancel_requested
    assert any(r.method == "POST" and r.url.endswith(f"/runs/{run_id}/cancel") for r in tab.requests)
    await tab.screenshot(tmp_path, "console-run-cancelled")


async def test_a_failed_run_shows_the_error_and_the_suggested_fix(
    tab: ConsoleTab, api: httpx.AsyncClient, bus: Bus, tmp_path: Path
) -> None:
    run_id = (await api.post("/runs", json=run_body(one_agent(name="helper"), "#fail=401"))).json()["run_id"]
    record = await bus.wait_record(run_id, predicate=lambda r: r.terminal and r.suggestions)
    await tab.goto(f"/ui/runs/{run_id}")
    page = tab.page
    await expect(page.locator(".run-page")).to_have_attribute("data-status", "failed")
    await expect(page.locator(".error-box")).to_contain_text(f"Failed: {record.error.code.value}")
    suggestion = page.locator(".suggestion").first
    await expect(suggestion).to_have_attribute("data-code", record.suggestions[0].code)
    fix = await suggestion.locator(".fix").inner_text()
    assert fix == f"Fix: {record.suggestions[0].fix.replace('`', '')}"
    await expect(page.locator('.node[data-agent="helper"]')).to_have_attribute("data-state", "failed")
    await tab.screenshot(tmp_path, "console-run-failed")


async def test_an_output_too_large_for_the_record_is_shown_whole(
    tab: ConsoleTab, api: httpx.AsyncClient, bus: Bus, stack: Stack
) -> None:
    """Above FLOWRELAY_MAX_INLINE_OUTPUT_BYTES (128 KiB) the API links the output (`output_ref`,
    `links.output`) instead of carrying it: the page fetches it from there, once. An API that
    still carries it inline is read as before, and nothing else is fetched."""
    text = "large " + "z" * 200_000  # the scripted model echoes it back: "echo: large zzz..."
    run_id = (await api.post("/runs", json=run_body(one_agent(), text))).json()["run_id"]
    record = await bus.wait_record(run_id)
    assert record.status == RunStatus.SUCCEEDED, record.error
    await tab.goto(f"/ui/runs/{run_id}")
    output = tab.page.locator("pre.output")
    await expect(output).to_contain_text("echo: large zzz")
    assert await output.evaluate("pre => pre.textContent") == f"echo: {text}"

    view = (await api.get(f"/runs/{run_id}")).json()
    fetched = [r for r in tab.api_requests() if r.url.split("?")[0].endswith(f"/runs/{run_id}/output")]
    if view.get("output_ref"):  # an API with the object store for outputs
        assert view["output"] is None and view["links"]["output"] == f"/runs/{run_id}/output"
        assert len(fetched) == 1 and await fetched[0].header_value("authorization") == f"Bearer {stack.admin_key}"
    else:
        assert view["output"] == f"echo: {text}" and fetched == []


async def test_the_runs_list_follows_new_runs_without_a_reload(tab: ConsoleTab, api: httpx.AsyncClient) -> None:
    await tab.goto("/ui/")
    page = tab.page
    await page.evaluate("window.__sameDocument = true")
    run_id = (await api.post("/runs", json=run_body(one_agent(), "#delay=1 listed"))).json()["run_id"]
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    await expect(row).to_be_visible()  # it appeared by polling: nobody reloaded the page
    await expect(row.locator(".badge")).to_have_attribute("data-status", "succeeded")
    await expect(row.locator('[data-col="pattern"]')).to_have_text("simple")
    await expect(row.locator('[data-col="tenant"]')).to_have_text("default")  # an admin key's list
    assert await page.evaluate("window.__sameDocument") is True

    await page.select_option("#filter-status", "failed")
    await expect(row).to_have_count(0)
    assert page.url.endswith("/ui/?status=failed")
    assert any("status=failed" in r.url for r in tab.api_requests("/runs"))
    await page.select_option("#filter-status", "")
    await expect(row).to_be_visible()
    await row.get_by_role("link").click()
    await page.wait_for_url(re.compile(f"/ui/runs/{run_id}$"))
    await expect(page.locator(".run-page")).to_have_attribute("data-status", "succeeded")


async def test_replay_plays_a_finished_trace_again_on_the_graph(tab: ConsoleTab, api: httpx.AsyncClient) -> None:
    result = (await api.post("/execute", json=_example("collaborative"))).json()
    assert result["status"] == "succeeded"
    await tab.goto(f"/ui/runs/{result['run_id']}")
    page = tab.page
    analyst = '.node[data-agent="analyst"]'
    await expect(page.locator(analyst)).to_have_attribute("data-state", "succeeded")
    await tab.record_attribute(analyst, "data-state")
    await tab.record_attribute(".badge.replaying", "class")
    await page.select_option("#replay-speed", "10")
    await page.get_by_role("button", name="Replay trace").click()
    await expect(page.get_by_role("button", name="Replay trace")).to_be_visible()  # it ended

    assert await tab.recorded(".badge.replaying", "class") == [None, "badge replaying", None]
    states = await tab.recorded(analyst, "data-state")
    assert states[0] == "succeeded" and states[-1] == "succeeded"
    assert _contains_in_order(states, ["pending", "running", "succeeded"]), states
    await expect(page.locator("li.step")).to_have_count(
        sum(1 for e in result["trace"] if e["type"].endswith(".started") and e["type"] != "run.started")
    )


def _contains_in_order(values: list, wanted: list) -> bool:
    remaining = iter(values)
    return all(any(v == w for v in remaining) for w in wanted)


async def test_a_key_in_the_address_bar_logs_in_and_leaves_the_url(browser: Browser, stack: Stack) -> None:
    key = stack.admin_key
    async with ConsoleTab.open(browser, stack.api_url) as tab:
        await tab.goto(f"/ui/runs?key={key}")
        page = tab.page
        await expect(page.locator("#identity-text")).to_contain_text("Tenant default")
        assert "key=" not in page.url and page.url.endswith("/ui/runs")
        assert await page.evaluate("sessionStorage.getItem('flowrelay.apiKey')") == key
        await expect(page.locator("table.runs")).to_be_visible()
        sent = tab.api_requests()
        assert {r.url.split("?")[0].removeprefix(stack.api_url) for r in sent} >= {"/auth/me", "/runs"}
        assert [await r.header_value("authorization") for r in sent] == [f"Bearer {key}"] * len(sent)
        assert [r.url for r in tab.requests[1:] if key in r.url] == []  # only the first navigation carried it
        assert tab.errors == []


async def test_a_refused_key_leads_to_the_login_form_and_the_right_one_logs_in(browser: Browser, stack: Stack) -> None:
    async with ConsoleTab.open(browser, stack.api_url) as tab:
        await tab.goto("/ui/?key=frk_aaaaaaaaaaaa_" + "b" * 43)
        page = tab.page
        await expect(page.get_by_role("heading", name="Log in to the flowrelay console")).to_be_visible()
        await expect(page.locator("table.runs")).to_have_count(0)
        await page.get_by_label("API key").fill(stack.admin_key)
        await page.get_by_label("API key").press("Enter")
        await expect(page.locator("table.runs")).to_be_visible()
        await expect(page.locator("#identity-text")).to_contain_text("Tenant default")
        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_role("heading", name="Log in to the flowrelay console")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('flowrelay.apiKey')") is None
        assert tab.errors == []


async def test_another_tenants_run_is_refused_and_not_listed(
    browser: Browser, stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    theirs = (await api.post("/runs", json=run_body(one_agent(), "default tenant's run"))).json()["run_id"]
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    created = (await api.post("/keys", json={"tenant": tenant, "name": "console test"})).json()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {created['key']}"}) as own:
        mine = (await own.post("/runs", json=run_body(one_agent(), "tenant's own run"))).json()["run_id"]
    async with ConsoleTab.open(browser, stack.api_url, key=created["key"]) as tab:
        page = tab.page
        await expect(page.locator("#identity-text")).to_contain_text(f"Tenant {tenant}")
        await expect(page.locator(f'tr[data-run-id="{mine}"]')).to_be_visible()
        await expect(page.locator(f'tr[data-run-id="{theirs}"]')).to_have_count(0)
        await expect(page.get_by_role("columnheader", name="Tenant")).to_have_count(0)

        await tab.goto(f"/ui/runs/{theirs}")
        await expect(page.get_by_role("heading", name="Run not found")).to_be_visible()
        await expect(page.get_by_role("alert")).to_contain_text(f"visible to tenant {tenant}")
        await expect(page.locator(".graph, li.step, pre.output")).to_have_count(0)
        await tab.screenshot(tmp_path, "console-other-tenant-refused")
        assert tab.errors == []
    async with ConsoleTab.open(browser, stack.api_url, key=stack.admin_key) as admin:  # admins see all
        row = admin.page.locator(f'tr[data-run-id="{mine}"]')
        await expect(admin.page.get_by_role("columnheader", name="Tenant")).to_be_visible()
        await expect(row.locator('[data-col="tenant"]')).to_have_text(tenant)


async def test_a_key_revoked_while_the_list_is_open_leads_to_the_login_form(
    browser: Browser, stack: Stack, api: httpx.AsyncClient
) -> None:
    created = (await api.post("/keys", json={"tenant": f"t-{uuid.uuid4().hex[:10]}"})).json()
    async with ConsoleTab.open(browser, stack.api_url, key=created["key"]) as tab:
        await expect(tab.page.locator("table.runs")).to_be_visible()
        assert (await api.delete(f"/keys/{created['key_id']}")).status_code in (200, 204)
        await expect(tab.page.get_by_role("alert")).to_contain_text("refused the key")  # the next poll
        await expect(tab.page.get_by_label("API key")).to_be_visible()
        assert await tab.page.evaluate("sessionStorage.getItem('flowrelay.apiKey')") is None
        assert tab.errors == []


async def test_a_pasted_run_body_is_split_and_the_apis_refusal_names_the_field(tab: ConsoleTab) -> None:
    await tab.goto("/ui/submit")
    page = tab.page
    unrunnable = {  # two agents and no edge: neither a chain nor a coordinator
        "workflow": {"nodes": [{"id": "a", "data": {"name": "a"}}, {"id": "b", "data": {"name": "b"}}], "edges": []},
        "input": "pasted input",
        "options": {"max_turns": 3},
    }
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.evaluate("text => navigator.clipboard.writeText(text)", json.dumps(unrunnable))
    await page.locator("#workflow").focus()
    await page.keyboard.press("Control+V")
    await expect(page.locator("#run-input")).to_have_value("pasted input")
    await expect(page.locator("#max-turns")).to_have_value("3")
    assert json.loads(await page.locator("#workflow").input_value()) == unrunnable["workflow"]
    await expect(page.locator("#workflow-status")).to_contain_text("not connected")

    await page.get_by_role("button", name="Run", exact=True).click()
    summary = page.locator(".error-summary")
    await expect(summary).to_be_visible()
    await expect(summary).to_contain_text("body.workflow")
    await expect(page.locator("#workflow")).to_have_attribute("aria-invalid", "true")
    assert await page.evaluate("document.activeElement.classList.contains('error-summary')")
    assert page.url.endswith("/ui/submit")  # nothing was queued: no run page


async def test_keyboard_alone_submits_a_run_and_focus_follows_the_page(tab: ConsoleTab) -> None:
    await tab.goto("/ui/submit")
    page = tab.page
    await expect(page.locator('#example option[value="sequential"]')).to_have_count(1)
    assert await _tab_to(page, "#example")
    await page.keyboard.press("ArrowDown")  # the first example
    await expect(page.locator("#workflow")).not_to_have_value("")
    assert await _tab_to(page, "button[type=submit]")
    await page.keyboard.press("Enter")
    await page.wait_for_url(RUN_URL)
    assert await page.evaluate("document.activeElement.tagName") == "H1"
    await expect(page.locator(".run-page")).to_have_attribute("data-status", "succeeded")


async def _tab_to(page, selector: str, limit: int = 40) -> bool:
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("s => document.activeElement?.matches(s) ?? false", selector):
            return True
    return False


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_every_page_passes_axe_and_fits_a_laptop_screen(
    tab: ConsoleTab, api: httpx.AsyncClient, bus: Bus, scheme: str
) -> None:
    from axe_playwright_python.async_playwright import Axe

    succeeded = (await api.post("/execute", json=_example("collaborative"))).json()["run_id"]
    failed = (await api.post("/runs", json=run_body(one_agent(), "#fail=401"))).json()["run_id"]
    await bus.wait_record(failed, predicate=lambda r: r.terminal and r.suggestions)
    await tab.page.emulate_media(color_scheme=scheme)
    axe = Axe()
    pages = {
        "runs": ("/ui/", "table.runs tbody tr[data-run-id]"),
        "run succeeded": (f"/ui/runs/{succeeded}", ".run-page[data-status=succeeded] .graph"),
        "run failed": (f"/ui/runs/{failed}", ".run-page[data-status=failed] .suggestion"),
        "submit": ("/ui/submit?example=collaborative", ".preview .graph"),
    }
    problems = {}
    for name, (path, ready) in pages.items():
        await tab.goto(path)
        await expect(tab.page.locator(ready).first).to_be_visible()
        if name.startswith("run "):  # check an opened step too (arguments, results)
            await tab.page.locator("li.step summary").first.click()
        results = await axe.run(tab.page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}})
        violations = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in results.response["violations"]]
        overflow = await tab.horizontal_overflow()
        if violations or overflow > 0:
            problems[name] = {"violations": violations, "overflow_px": overflow}
    assert problems == {}


async def test_the_run_page_resumes_its_trace_after_the_api_restarts(
    browser: Browser, scripted_model: str, tmp_path: Path
) -> None:
    """The stream drops mid-run; the page reconnects with Last-Event-ID: no gap, no repeat."""
    with isolated_stack(tmp_path / "stack", scripted_model) as (stack, server):
        stack.start_executor()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=stack.auth_headers) as api, \
                ConsoleTab.open(browser, stack.api_url, key=stack.admin_key) as tab:
            # Each agent's model call waits 2 s (the writer's input repeats the directive).
            run_id = (await api.post("/runs", json=run_body(chain("first", "second"), "#delay=2 go"))).json()["run_id"]
            await tab.goto(f"/ui/runs/{run_id}")
            page = tab.page
            await expect(page.locator('li.step[data-kind="llm"][data-agent="first"]')).to_have_count(1)
            stack.api.kill()
            stack.start_api()
            await expect(page.locator(".run-page")).to_have_attribute("data-status", "succeeded")
            bus = await stack.bus()
            try:
                events = await bus.events(run_id)
            finally:
                await bus.close()
            started = [e for e in events if e.type.value.endswith(".started") and e.type != EventType.RUN_STARTED]
            await expect(page.locator("li.step")).to_have_count(len(started))
            await expect(page.locator("li.marker")).to_have_count(2)  # run started, run succeeded
            streams = [r for r in tab.requests if r.url.endswith(f"/runs/{run_id}/events")]
            assert len(streams) >= 2, "the page never reconnected"
            resumed_from = [await r.header_value("last-event-id") for r in streams[1:]]
            assert all(value is not None and int(value) > 0 for value in resumed_from), resumed_from
            assert tab.errors == []
