"""A run's retry policy and budgets: server defaults filled in, deployment maximums applied.

The API refuses options above the maximums (:func:`option_problems`: 422 naming the field
and the setting) and queues the resolved values (:func:`resolve`), so an executor runs what
the client was told. Requests published straight to NATS skip the API: the executor
resolves them again, clamping values above the maximums instead of refusing them.
"""

from __future__ import annotations

from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import RetryOptions, RunOptions

#: Where a problem is (FastAPI's ``loc``), what it is, and its error type.
Problem = tuple[tuple[str | int, ...], str, str]

_OPTIONS = ("body", "options")


def resolve(options: RunOptions, settings: BusSettings) -> RunOptions:
    """``options`` with its retry policy and budgets complete and within the maximums."""
    return options.model_copy(update={
        "retry": resolved_retry(options.retry, settings),
        "max_cost_usd": _capped(_or(options.max_cost_usd, settings.default_max_cost_usd), settings.max_max_cost_usd),
        "max_tokens": _capped(_or(options.max_tokens, settings.default_max_tokens), settings.max_max_tokens),
    })


def resolved_retry(retry: RetryOptions | None, settings: BusSettings) -> RetryOptions:
    """Every field of the policy set: the run's value, else the server default; capped."""
    retry = retry or RetryOptions()
    initial = min(_or(retry.initial_backoff_s, settings.retry_initial_backoff_s), settings.max_retry_backoff_s)
    longest = min(_or(retry.max_backoff_s, settings.retry_max_backoff_s), settings.max_retry_backoff_s)
    return RetryOptions(
        attempts=min(_or(retry.attempts, settings.retry_attempts), settings.max_retry_attempts),
        initial_backoff_s=initial,
        max_backoff_s=max(longest, initial),
        jitter=_or(retry.jitter, settings.retry_jitter),
    )


def option_problems(options: RunOptions, settings: BusSettings) -> list[Problem]:
    """What in the retry policy and budgets is above what this deployment allows."""
    problems: list[Problem] = []
    retry = options.retry or RetryOptions()

    def above(field: tuple[str, ...], value: float | None, limit: float, setting: str, unit: str = "") -> None:
        if value is not None and value > limit:
            problems.append(((*_OPTIONS, *field), f"{value:g}{unit} is above the limit of {limit:g}{unit} ({setting})",
                             "less_than_equal"))

    above(("retry", "attempts"), retry.attempts, settings.max_retry_attempts, "FLOWRELAY_MAX_RETRY_ATTEMPTS")
    for name in ("initial_backoff_s", "max_backoff_s"):
        above(("retry", name), getattr(retry, name), settings.max_retry_backoff_s, "FLOWRELAY_MAX_RETRY_BACKOFF_S", " s")
    if (
        retry.initial_backoff_s is not None and retry.max_backoff_s is not None
        and retry.initial_backoff_s > retry.max_backoff_s
    ):
        problems.append(((*_OPTIONS, "retry", "max_backoff_s"),
                         f"{retry.max_backoff_s:g} s is below initial_backoff_s ({retry.initial_backoff_s:g} s)",
                         "greater_than_equal"))
    above(("max_cost_usd",), options.max_cost_usd, settings.max_max_cost_usd, "FLOWRELAY_MAX_MAX_COST_USD", " USD")
    above(("max_tokens",), options.max_tokens, settings.max_max_tokens, "FLOWRELAY_MAX_MAX_TOKENS")
    return problems


def _or(value: float | int | None, default: float | int | None) -> float | int | None:
    return default if value is None else value


def _capped(value: float | int | None, limit: float | int) -> float | int | None:
    return None if value is None else min(value, limit)
