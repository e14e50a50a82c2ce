"""``flowrelay-api``: serve the API with uvicorn (uvloop and httptools)."""

from __future__ import annotations

import logging

import uvicorn

from flowrelay_api.server import PROTOCOL
from flowrelay_api.settings import ApiSettings

#: Import string of the app factory, for uvicorn's multi-process mode.
APP_FACTORY = "flowrelay_api.__main__:create_worker_app"


#: Seconds uvicorn keeps an idle HTTP connection open.
KEEP_ALIVE_S = 75


def _configure_logging(settings: ApiSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def create_worker_app() -> object:
    """The app of one uvicorn worker process (FLOWRELAY_API_WORKERS > 1). A worker is a new
    interpreter: without this its log lines (startup, errors, access log) went nowhere."""
    from flowrelay_api.app import create_app

    settings = ApiSettings()
    _configure_logging(settings)
    return create_app(settings)


def main() -> None:
    settings = ApiSettings()
    _configure_logging(settings)
    if (refusal := settings.unsafe_binding()) is not None:
        logging.getLogger("flowrelay.api").error("refusing to start: %s", refusal)
        raise SystemExit(2)
    options = {
        "host": settings.api_host,
        "port": settings.api_port,
        "loop": "uvloop",
        "http": PROTOCOL,
        "access_log": settings.api_access_log,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # keep the logging configured above
        # Longer than common client pool expiries (httpx: 5 s), so an idle kept-alive
        # connection is never closed by the server while a client reuses it.
        "timeout_keep_alive": KEEP_ALIVE_S,
    }
    if settings.api_tls_cert is not None and settings.api_tls_key is not None:
        options |= {"ssl_certfile": str(settings.api_tls_cert), "ssl_keyfile": str(settings.api_tls_key)}
    if settings.api_workers > 1:  # each worker process builds its app from the environment
        uvicorn.run(APP_FACTORY, factory=True, workers=settings.api_workers, **options)  # type: ignore[arg-type]
    else:
        from flowrelay_api.app import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
