"""The API's documentation works offline, and documents every answer the API gives.

``/docs`` and ``/redoc`` are served with their assets from the API itself (the
fastapi-offline package ships Swagger UI and ReDoc): the pages name no other host, every
file they load is served, and a real browser with no way out to the network renders them.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from flowrelay_testkit import Stack
from test_api_unit import Api, fake_run, running_api, submission

from flowrelay import natsserver
from flowrelay_contracts import EventType, RunStatus

DOCS_PAGES = ("/docs", "/redoc")

#: Any absolute URL written into a page (attributes, inline scripts, CSS).
_ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


class _References(HTMLParser):
    """Every URL a page makes the browser load (``src``, ``href``, ReDoc's ``spec-url``)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)


async def test_docs_pages_load_nothing_from_another_host(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        for page in DOCS_PAGES:
            response = await client.get(page)
            assert response.status_code == 200, page
            html = response.text
            external = [u for u in _ABSOLUTE_URL.findall(html) if not _is_local(u, stack.api_url)]
            assert external == [], f"{page} references {external}"
            parser = _References()
            parser.feed(html)
            assert any(u.endswith(".js") for u in parser.urls), f"{page} loads no script?"
            for url in parser.urls:
                asset = await client.get(urljoin(stack.api_url + page, url))
                assert asset.status_code == 200 and asset.content, f"{page}: {url} not served"
        openapi = (await client.get("/openapi.json")).json()
        assert openapi["info"]["title"] == "flowrelay"


def _is_local(url: str, api_url: str) -> bool:
    return urlsplit(url if "://" in url else "http:" + url).netloc == urlsplit(api_url).netloc


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize("page", DOCS_PAGES)
def test_a_browser_without_network_renders_the_docs(stack: Stack, page: str, tmp_path: Path) -> None:
    # Everything but loopback goes to a proxy that does not exist: a page that needs a CDN
    # stays blank. ``--dump-dom`` prints the DOM once the page's scripts have run.
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=20000",
            "--dump-dom", stack.api_url + page,
        ],
        capture_output=True, text=True, timeout=90, check=True,
    ).stdout
    assert "Submit a run" in dom, f"{page} did not render its operations offline"


# -- every answer is documented ---------------------------------------------------------------


async def test_every_error_status_the_api_answers_is_in_the_openapi_document(tmp_path: Path) -> None:
    server = natsserver.start(tmp_path / "nats")
    seen: set[tuple[str, str, int]] = set()
    try:
        async with running_api(server.url, max_body_bytes=2048, sse_ping_s=0, nats_timeout_s=1) as api:

            async def call(method: str, route: str, path: str, **kwargs: object) -> httpx.Response:
                response = await api.client.request(method, path, **kwargs)  # type: ignore[arg-type]
                seen.add((method.lower(), route, response.status_code))
                return response

            unreadable = {"content": b'{"input": "\xff"}', "headers": {"content-type": "application/json"}}
            for route in ("/runs", "/execute"):
                bad = await call("POST", route, route, **unreadable)
                assert bad.status_code == 400 and "UTF-8" in bad.json()["detail"]
                await call("POST", route, route, json={"input": "no workflow"})  # 422
                await call("POST", route, route, json=submission(input="x" * 4096))  # 413
            await call("GET", "/runs", "/runs?limit=0")  # 422
            for method, route, suffix in [("GET", "/runs/{run_id}", ""), ("GET", "/runs/{run_id}/events", "/events"),
                                          ("POST", "/runs/{run_id}/cancel", "/cancel")]:
                await call(method, route, f"/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV{suffix}")  # 404
            await fake_run(api, "01ARZ3NDEKTSV4RRFFQ69G5FAW", EventType.RUN_COMPLETED, status=RunStatus.SUCCEEDED)
            await call("POST", "/runs/{run_id}/cancel", "/runs/01ARZ3NDEKTSV4RRFFQ69G5FAW/cancel")  # 409
            key = {"Idempotency-Key": "k1"}
            await call("POST", "/runs", "/runs", json=submission(), headers=key)
            await call("POST", "/runs", "/runs", json=submission(input="other"), headers=key)  # 409
            await _without_nats(api, server, call)
            schema = (await api.client.get("/openapi.json")).json()
    finally:
        server.stop()
    errors = {(m, r, s) for m, r, s in seen if s >= 400}
    assert {s for _, _, s in errors} >= {400, 404, 409, 413, 422, 503}, "the test reached every case"
    undocumented = sorted(
        (m, r, s) for m, r, s in errors if str(s) not in schema["paths"][r][m]["responses"]
    )
    assert undocumented == []


async def _without_nats(api: Api, server: natsserver.NatsServer, call) -> None:  # noqa: ANN001
    server.stop()
    while api.ctx.connected:  # nats-py notices the closed socket at once; the loop yields to it
        await asyncio.sleep(0.01)
    await call("POST", "/runs", "/runs", json=submission())
    await call("GET", "/runs", "/runs")
    await call("GET", "/runs/{run_id}", "/runs/01ARZ3NDEKTSV4RRFFQ69G5FAW")
    await call("GET", "/healthz", "/healthz")
