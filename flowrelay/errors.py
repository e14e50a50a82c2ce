"""The CLI's one kind of expected failure."""

from __future__ import annotations


class CliError(Exception):
    """A one-line, actionable error for the user (printed without a traceback, exit status 2)."""
