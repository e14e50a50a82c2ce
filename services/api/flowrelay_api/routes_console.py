"""The web console: a few static files served at ``/ui/``, and ``/`` sending people there.

The console is plain ES modules, CSS and SVG in ``console/static/`` (no build step, nothing
fetched from the internet). Every ``/ui/...`` path that is not an asset or the examples
gets the one page, which routes on the client side (``/ui/runs/<run_id>``, ``/ui/submit``).

These responses carry no data, so they need no API key (like ``/docs``); everything the
console shows it reads from the API with the key the user logged in with. They are strict
about what the page may do instead: a Content-Security-Policy allows only this origin's
scripts, styles and connections, so text from a run (agent output, tool results) can never
become script.
"""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

#: Where the console's files live inside the package.
STATIC_DIR = Path(__file__).resolve().parent / "console" / "static"

#: Example workflows: the wheel carries a copy of ``examples/`` here (pyproject's
#: force-include); a source checkout (editable install) reads the repository's own.
_PACKAGED_EXAMPLES = Path(__file__).resolve().parent / "console" / "examples"
_SOURCE_EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

#: Placeholder in index.html for the app's mount point (a proxy's root_path).
_ROOT_MARK = "%ROOT%"

#: URL prefix of the console; the API's own routes never start with it.
PREFIX = "/ui"

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a key in the first URL (?key=) never leaks onwards
    "X-Frame-Options": "DENY",
    # Revalidate every time (cheap: ETag), so an upgraded API never runs yesterday's modules.
    "Cache-Control": "no-cache",
}

mimetypes.add_type("text/javascript", ".js")  # some systems map .js to text/plain

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> _Asset:
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def response(self, request: Request) -> Response:
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers={"ETag": self.etag, **_SECURITY_HEADERS})
        return Response(
            self.body,
            media_type=self.media_type,
            headers={"ETag": self.etag, **_SECURITY_HEADERS},
        )


@cache
def _assets() -> dict[str, _Asset]:
    """Every file of the console by its path under ``static/`` (read once: a few dozen kB)."""
    assets = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.name != "index.html":
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            assets[path.relative_to(STATIC_DIR).as_posix()] = _Asset.of(path.read_bytes(), media_type)
    return assets


@cache
def _page(root_path: str) -> _Asset:
    text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return _Asset.of(
        text.replace(_ROOT_MARK, html.escape(root_path, quote=True)).encode(), "text/html"
    )


@cache
def _examples() -> _Asset:
    """The example run bodies as one JSON document: ``{"examples": [{"name", "body"}]}``."""
    folder = _PACKAGED_EXAMPLES if _PACKAGED_EXAMPLES.is_dir() else _SOURCE_EXAMPLES
    examples: list[dict[str, Any]] = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            examples.append({"name": path.stem, "body": json.loads(path.read_text(encoding="utf-8"))})
    return _Asset.of(json.dumps({"examples": examples}).encode(), "application/json")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse(f"{_root(request)}{PREFIX}/", status_code=307)


@router.get(PREFIX)
async def console_without_slash(request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""  # keeps ?key=
    return RedirectResponse(f"{_root(request)}{PREFIX}/{query}", status_code=307)


@router.get(f"{PREFIX}/assets/{{name:path}}")
async def asset(request: Request, name: str) -> Response:
    found = _assets().get(name)
    if found is None:
        return Response(status_code=404, headers=_SECURITY_HEADERS)
    return found.response(request)


@router.get(f"{PREFIX}/examples.json")
async def examples(request: Request) -> Response:
    return _examples().response(request)


@router.get(f"{PREFIX}/{{page:path}}")
async def console(request: Request, page: str) -> Response:
    return _page(_root(request)).response(request)
