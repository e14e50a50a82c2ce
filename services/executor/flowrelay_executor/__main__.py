"""``python -m flowrelay_executor`` / ``flowrelay-executor``: run one executor."""

from __future__ import annotations

import asyncio
import logging
import os

from flowrelay_executor.app import create_app
from flowrelay_executor.settings import ExecutorSettings
from flowrelay_executor.tracing import SERVICE_NAME


def main() -> None:
    # Read by the OpenTelemetry SDK when a TracerProvider is created (in the fork server).
    os.environ.setdefault("OTEL_SERVICE_NAME", SERVICE_NAME)
    settings = ExecutorSettings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s executor[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    app, _ = create_app(settings)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        # FastStream logs its start and stop lines at this level through its own logger, which
        # drops DEBUG: at FLOWRELAY_LOG_LEVEL=DEBUG the "started" line (the readiness signal
        # flowrelay up and the tests wait for) would vanish. They are INFO lines at any level.
        runner.run(app.run(log_level=logging.INFO))


if __name__ == "__main__":
    main()
