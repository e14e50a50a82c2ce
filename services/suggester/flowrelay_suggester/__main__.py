"""Run the suggester: ``flowrelay-suggester`` or ``python -m flowrelay_suggester``.

Configuration comes from ``FLOWRELAY_*`` environment variables (see :mod:`.settings`);
SIGINT / SIGTERM stop it after the messages in hand are handled or left for redelivery.
"""

from __future__ import annotations

import asyncio
import logging

from flowrelay_suggester.service import create_app
from flowrelay_suggester.settings import SuggesterSettings


def main() -> None:
    settings = SuggesterSettings()
    level = logging.getLevelName(settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # FastStream's own logger drops DEBUG: its start line (the readiness signal) is INFO at
    # any FLOWRELAY_LOG_LEVEL.
    asyncio.run(create_app(settings).run(log_level=logging.INFO))


if __name__ == "__main__":
    main()
