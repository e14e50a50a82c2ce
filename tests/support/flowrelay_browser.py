"""A real headless browser for the console's tests: Debian's chromium driven by Playwright.

Playwright's own browser download cannot work on this closed network, so it launches the
system's ``chromium`` (``make test`` installs it) through ``executable_path``, with the flags
that keep Chromium from calling home (its background connections are refused here).

:class:`ConsoleTab` wraps one page of the console: it records every request the page makes
and every uncaught script error, so tests can assert that the key never travels in a URL,
that nothing is fetched from another origin, and that the page raised no error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright

REPO = Path(__file__).resolve().parents[2]

#: Where screenshots are copied for people to look at (git-ignored).
ARTIFACTS = REPO / "tests" / "artifacts"

#: A laptop screen: the console must be usable at this size without sideways scrolling.
LAPTOP = {"width": 1366, "height": 768}

#: Chromium flags for a closed network and a root user in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]


def find_chromium() -> str:
    """The system Chromium (``FLOWRELAY_CHROMIUM`` overrides); fails with how to get it."""
    for candidate in (os.environ.get("FLOWRELAY_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(
        "the console tests need Debian's chromium: `make test` installs it "
        "(or `apt-get install chromium`; FLOWRELAY_CHROMIUM=/path/to/chromium for another)"
    )


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class ConsoleTab:
    """One browser tab (its own context: own session storage) on the console."""

    page: Page
    api_url: str
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[ConsoleMessage] = field(default_factory=list)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, browser: Browser, api_url: str, *, key: str | None = None, viewport: dict | None = None
    ) -> AsyncIterator[ConsoleTab]:
        """A new tab; with ``key``, logged in as a person would (``/ui/?key=``)."""
        context = await browser.new_context(viewport=viewport or LAPTOP)
        page = await context.new_page()
        tab = cls(page, api_url)
        page.on("request", lambda request: tab.requests.append(request))
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        page.on("console", lambda message: tab.console.append(message))
        try:
            if key is not None:
                await tab.goto(f"/ui/?key={key}")
                await page.wait_for_selector("#identity:not([hidden])")
            yield tab
        finally:
            await context.close()

    async def goto(self, path: str) -> None:
        """Open a console path and wait until the console has started (``body[data-ready]``)."""
        await self.page.goto(f"{self.api_url}{path}")
        await self.page.wait_for_selector("body[data-ready]")

    def api_requests(self, path_prefix: str = "/") -> list[Request]:
        """Requests the page sent to the API itself (not the console's own files)."""
        prefix = f"{self.api_url}{path_prefix}"
        return [r for r in self.requests if r.url.startswith(prefix) and "/ui/" not in r.url]

    async def screenshot(self, tmp_path: Path, name: str) -> Path:
        """Save a full-page screenshot in the test's tmp dir and copy it to tests/artifacts/."""
        path = tmp_path / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ARTIFACTS / path.name)
        return path

    async def horizontal_overflow(self) -> int:
        """How many CSS pixels the page is wider than the window (0: no sideways scrolling)."""
        return await self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    async def record_attribute(self, selector: str, attribute: str) -> None:
        """Start recording every value ``attribute`` takes on the first ``selector`` element;
        read them with :meth:`recorded`. Proves a page changed in place, step by step."""
        await self.page.evaluate(
            """([selector, attribute]) => {
                const seen = (window.__recorded ??= {})[`${selector}|${attribute}`] = [];
                const note = () => {
                    const value = document.querySelector(selector)?.getAttribute(attribute) ?? null;
                    if (seen.at(-1) !== value) seen.push(value);
                };
                note();
                new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true});
            }""",
            [selector, attribute],
        )

    async def recorded(self, selector: str, attribute: str) -> list[str | None]:
        return await self.page.evaluate(
            "([s, a]) => (window.__recorded ?? {})[`${s}|${a}`] ?? null", [selector, attribute]
        )
