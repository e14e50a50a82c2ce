"""Imported once by the executor's fork server, before it forks any worker.

It imports the engine (and so any-agent) and the any-agent module of every framework this
executor may offer (``FLOWRELAY_FRAMEWORKS``, default all installed), which imports the
framework itself: several seconds and hundreds of MB for some of them, paid once and shared
by every worker forked afterwards instead of by each worker's first run.
"""

from __future__ import annotations

import importlib
import logging
import os

from flowrelay_executor.engine import available_frameworks

log = logging.getLogger(__name__)

#: Environment variable limiting the frameworks an executor offers (see ExecutorSettings).
FRAMEWORKS_ENV = "FLOWRELAY_FRAMEWORKS"


def enabled_frameworks() -> list[str] | None:
    """The frameworks the operator enabled, or None for every installed one."""
    listed = [name.strip() for name in os.environ.get(FRAMEWORKS_ENV, "").split(",") if name.strip()]
    return listed or None


def _preload() -> None:
    enabled = enabled_frameworks()
    for name in available_frameworks():
        if name == "tinyagent" or (enabled is not None and name not in enabled):
            continue
        try:
            importlib.import_module(f"any_agent.frameworks.{name}")
        except Exception:  # the self-check reports a framework that cannot load
            log.debug("preloading framework %s failed", name, exc_info=True)


_preload()
