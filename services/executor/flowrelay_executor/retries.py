"""The retry policy of a run: which failures are retried, how long to wait, and when not to.

What: :func:`plan` looks at the outcome of a failed attempt and the run's policy
(``options.retry``, resolved by :mod:`flowrelay_bus.policy`) and answers a :class:`Retry`
(wait this long, then attempt again) or None with the reason appended to the error.

Only failures that a later attempt can fix by itself are retried: the provider rate limited
the run, could not be reached, or failed on its side (5xx), or the worker process running
the run crashed. A refused key, an unknown model, a broken tool or an invalid workflow fail
the same way every time; retrying them would only spend the deadline.

The wait before attempt ``n + 1`` is ``min(max_backoff_s, initial_backoff_s * 2 ** (n - 1))``
with up to ``jitter`` of it taken off at random (so many runs limited at once do not come
back at once), and never shorter than the provider's ``Retry-After``. The deadline covers
every attempt: a retry whose wait would end past it is not made.

How the executor waits (``service.Executor._retry_later``): it releases the run's claim in
the record (status ``queued``, ``retry_at``), publishes ``run.retrying``, and hands the
request back to JetStream with a nak delayed by the wait. No slot, worker or task is held
while the run waits; whichever executor JetStream delivers it to next claims it as usual.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from flowrelay_contracts import ErrorCode, RetryOptions, RetryRecord, RunError, Usage
from flowrelay_executor import costs

__all__ = ["RETRYABLE_CODES", "Retry", "backoff_s", "plan", "unsaved_spend"]

#: Failures a later attempt can get past by itself.
RETRYABLE_CODES: Final = frozenset({
    ErrorCode.RATE_LIMITED,
    ErrorCode.PROVIDER_UNREACHABLE,
    ErrorCode.PROVIDER_ERROR,  # only the server-side ones: RunError.retryable says which
    ErrorCode.WORKER_CRASHED,
})


@dataclass(frozen=True, slots=True)
class Retry:
    """Attempt the run again after ``wait_s`` (at ``retry_at``)."""

    failed_attempt: int
    attempts: int
    wait_s: float
    retry_at: datetime
    retry_after_s: float | None


def backoff_s(policy: RetryOptions, failed_attempt: int, *, rng: random.Random | None = None) -> float:
    """The policy's wait after attempt ``failed_attempt`` (1-based), jitter applied."""
    assert policy.initial_backoff_s is not None and policy.max_backoff_s is not None and policy.jitter is not None
    base = min(policy.max_backoff_s, policy.initial_backoff_s * 2 ** (failed_attempt - 1))
    return base * (1 - policy.jitter * (rng or random).random())


def plan(
    error: RunError | None,
    policy: RetryOptions,
    *,
    failed_attempt: int,
    deadline: datetime,
    now: datetime,
    force: bool = False,
    rng: random.Random | None = None,
) -> tuple[Retry | None, str | None]:
    """Whether to attempt again after ``failed_attempt`` ended with ``error``.

    Returns the retry, or None and (for a retryable failure) why it is not retried, to add
    to the error's message. ``force``: retry even when the policy's attempts are used up
    (the run lost its worker because another run on it was killed: not its own failure).
    """
    if error is None or error.code not in RETRYABLE_CODES or not error.retryable:
        return None, None
    assert policy.attempts is not None
    if failed_attempt >= policy.attempts and not force:
        # A policy of one attempt is a choice, not news: nothing is added then.
        return None, f"attempt {failed_attempt} of {policy.attempts} (options.retry.attempts)" if policy.attempts > 1 else None
    wait = max(backoff_s(policy, failed_attempt, rng=rng), error.retry_after_s or 0.0)
    retry_at = now + timedelta(seconds=wait)
    if retry_at >= deadline:
        asked = f" (the provider asked to wait {error.retry_after_s:g} s)" if error.retry_after_s else ""
        return None, (f"attempt {failed_attempt}; not retried: waiting {wait:.1f} s{asked} would pass the run's "
                      "deadline (options.timeout_s covers every attempt)")
    return Retry(failed_attempt=failed_attempt, attempts=policy.attempts, wait_s=wait, retry_at=retry_at,
                 retry_after_s=error.retry_after_s), None


def unsaved_spend(retried: list[RetryRecord]) -> tuple[Usage, float | None]:
    """What earlier attempts spent on model calls that no checkpoint keeps: part of the run's
    usage, and counted against its budgets."""
    return sum((r.usage for r in retried), Usage()), costs.total([r.cost_usd for r in retried])
