"""The FastAPI application: routes, error handling, middleware and the NATS lifespan.

``create_app(settings)`` builds an app; its lifespan opens the one NATS connection, declares
the streams and buckets (``topology.declare``) and keeps the handles in
``app.state.context`` for every request (:mod:`flowrelay_api.context`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from starlette.types import Scope

from flowrelay_api import (
    routes_console,
    routes_execute,
    routes_keys,
    routes_ops,
    routes_runs,
    routes_threads,
)
from flowrelay_api.context import ApiContext
from flowrelay_api.errors import install_error_handlers
from flowrelay_api.limits import BodyLimitMiddleware
from flowrelay_api.metrics import Metrics, MetricsMiddleware, SubmitOutcome
from flowrelay_api.settings import ApiSettings

#: Paths whose requests are run submissions (for the submissions counter).
_SUBMIT_PATHS = frozenset({"/runs", "/execute"})  # (and /threads/{id}/runs, counted by submit())

#: Where the Swagger UI and ReDoc assets (shipped by fastapi-offline) are served: under
#: ``/docs`` so that one public prefix covers the docs pages and their files.
DOCS_ASSETS_PATH = "/docs/assets"

_DESCRIPTION = """\
Runs any-agent workflows on a pool of executors over NATS JetStream.

* `POST /runs` queues a run and answers at once (202); follow it with
  `GET /runs/{run_id}/events` (Server-Sent Events) or `GET /runs/{run_id}`.
* `POST /execute` does the same and waits for the result.
* A failed run comes back with the suggester's guidance (`suggestions`, `mode: degraded`).

Every route but `/healthz` and these docs needs `Authorization: Bearer <api key>`; a key acts
for one tenant and sees only that tenant's runs.
"""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API for ``settings`` (read from ``FLOWRELAY_*`` variables when omitted)."""
    settings = settings or ApiSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = await ApiContext.open(settings, metrics)
        app.state.context = context
        try:
            yield
        finally:
            await context.close()

    # FastAPIOffline is FastAPI with /docs and /redoc served from local copies of Swagger UI
    # and ReDoc (FastAPI's own pages load them, and Google fonts, from CDNs: blank offline).
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_PATH,
        title="flowrelay",
        summary="Run any-agent workflows behind a web API.",
        description=_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics

    def count_malformed(request: Request) -> None:
        if request.method == "POST" and request.url.path in _SUBMIT_PATHS:
            metrics.submitted(SubmitOutcome.INVALID)

    def count_too_large(scope: Scope) -> None:
        if scope["path"] in _SUBMIT_PATHS:
            metrics.submitted(SubmitOutcome.TOO_LARGE)

    install_error_handlers(app, on_malformed=count_malformed)
    app.include_router(routes_runs.router)
    app.include_router(routes_threads.router)
    app.include_router(routes_execute.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_console.router)  # the web console at /ui/
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, body_timeout_s=settings.http_body_timeout_s,
        on_refused=count_too_large,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times 413s too
    return app
