"""Unit tests of the pure parts of durable runs: the retry plan, Retry-After, policy
resolution, budgets, and the suggester's budget guidance."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest

from flowrelay_bus import policy
from flowrelay_bus.settings import BusSettings
from flowrelay_contracts import ErrorCode, RetryOptions, RunError, RunFailed, RunOptions, Usage
from flowrelay_executor import retries
from flowrelay_executor.engine.budget import Budget
from flowrelay_executor.errors import classify, retry_after_s
from flowrelay_suggester import rules

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = RetryOptions(attempts=4, initial_backoff_s=1.0, max_backoff_s=3.0, jitter=0.0)


def error(code: ErrorCode = ErrorCode.RATE_LIMITED, *, retryable: bool = True, after: float | None = None) -> RunError:
    return RunError(code=code, message="m", retryable=retryable, retry_after_s=after)


def plan(err: RunError, *, attempt: int = 1, deadline_s: float = 60, **kw: object) -> tuple[retries.Retry | None, str | None]:
    return retries.plan(err, kw.pop("policy", POLICY), failed_attempt=attempt, deadline=NOW + timedelta(seconds=deadline_s),
                        now=NOW, **kw)  # type: ignore[arg-type]


def test_backoff_doubles_from_the_initial_wait_up_to_the_maximum() -> None:
    assert [retries.backoff_s(POLICY, n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_jitter_takes_off_at_most_its_fraction() -> None:
    jittery = POLICY.model_copy(update={"jitter": 0.5})
    waits = [retries.backoff_s(jittery, 2, rng=random.Random(seed)) for seed in range(200)]
    assert all(1.0 <= w <= 2.0 for w in waits) and len(set(waits)) > 100


@pytest.mark.parametrize("code", sorted(retries.RETRYABLE_CODES))
def test_retryable_classes_are_retried_with_their_wait(code: ErrorCode) -> None:
    retry, why = plan(error(code), attempt=2)
    assert retry is not None and why is None
    assert (retry.wait_s, retry.retry_at, retry.failed_attempt, retry.attempts) == (2.0, NOW + timedelta(seconds=2), 2, 4)


@pytest.mark.parametrize("code", sorted(set(ErrorCode) - retries.RETRYABLE_CODES))
def test_other_failures_are_never_retried(code: ErrorCode) -> None:
    assert plan(error(code)) == (None, None)


def test_a_client_side_provider_error_is_not_retried() -> None:
    assert plan(error(ErrorCode.PROVIDER_ERROR, retryable=False)) == (None, None)


def test_retry_after_is_a_floor_not_a_cap() -> None:
    assert plan(error(after=7.5))[0].wait_s == 7.5
    assert plan(error(after=0.1), attempt=2)[0].wait_s == 2.0


def test_no_retry_past_the_deadline_or_the_attempts() -> None:
    retry, why = plan(error(after=30), deadline_s=20)
    assert retry is None and "the provider asked to wait 30 s" in why and "deadline" in why
    retry, why = plan(error(), attempt=4)
    assert retry is None and why == "attempt 4 of 4 (options.retry.attempts)"
    assert plan(error(), policy=POLICY.model_copy(update={"attempts": 1})) == (None, None)
    assert plan(error(), attempt=4, force=True)[0] is not None, "a run killed for another's sake"


def test_retry_after_from_any_llm_and_from_headers() -> None:
    assert retry_after_s([SimpleNamespace(retry_after="12")]) == 12.0
    assert retry_after_s([SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "3"}))]) == 3.0
    assert retry_after_s([SimpleNamespace(response=SimpleNamespace(headers={"retry-after-ms": "250"}))]) == 0.25
    date = format_datetime(datetime.fromtimestamp(1_000_030, UTC), usegmt=True)
    assert retry_after_s([SimpleNamespace(retry_after=date)], now=1_000_000) == pytest.approx(30)
    assert retry_after_s([SimpleNamespace(retry_after="soon")]) is None
    assert retry_after_s([SimpleNamespace(retry_after="1e12")]) == 86_400.0, "bounded"


def test_classify_keeps_the_retry_after_of_a_rate_limit() -> None:
    class RateLimitError(Exception):
        status_code = 429
        retry_after = "4"

    assert classify(RateLimitError("slow down")).retry_after_s == 4.0


def test_policy_fills_defaults_and_caps_requests_published_straight_to_nats() -> None:
    settings = BusSettings(retry_attempts=2, max_retry_attempts=5, retry_initial_backoff_s=0.5, retry_max_backoff_s=8,
                           max_retry_backoff_s=10, retry_jitter=0.1, default_max_tokens=1000)
    resolved = policy.resolve(RunOptions(retry=RetryOptions(attempts=9, max_backoff_s=99)), settings)
    assert resolved.retry == RetryOptions(attempts=5, initial_backoff_s=0.5, max_backoff_s=10, jitter=0.1)
    assert resolved.max_tokens == 1000 and resolved.max_cost_usd is None
    assert policy.resolve(RunOptions(), settings).retry.attempts == 2
    problems = policy.option_problems(RunOptions(retry=RetryOptions(attempts=9, max_backoff_s=99)), settings)
    assert [(p[0], p[1].split("(")[-1]) for p in problems] == [
        (("body", "options", "retry", "attempts"), "FLOWRELAY_MAX_RETRY_ATTEMPTS)"),
        (("body", "options", "retry", "max_backoff_s"), "FLOWRELAY_MAX_RETRY_BACKOFF_S)"),
    ]


def test_budgets_say_which_one_was_passed_and_refuse_unknown_costs() -> None:
    budget = Budget(max_cost_usd=0.01, max_tokens=100)
    assert budget.exceeded(Usage(input_tokens=50, output_tokens=50), 0.01) is None
    assert "options.max_tokens" in budget.exceeded(Usage(input_tokens=50, output_tokens=51), 0.0)
    assert "options.max_cost_usd" in budget.exceeded(Usage(), 0.0101)
    assert "cannot be enforced" in budget.exceeded(Usage(), None, cost_note="no price known")
    assert Budget(max_tokens=100).exceeded(Usage(), None) is None, "a token budget does not need prices"
    assert "no token counts" in Budget(max_tokens=100).exceeded(Usage(), None, tokens_known=False)


def test_budget_guidance_names_the_budget_that_was_set() -> None:
    report = RunFailed(run_id="r", error=RunError(code=ErrorCode.BUDGET_EXCEEDED, message="over"),
                       options=RunOptions(max_cost_usd=0.5))
    [first, *_] = rules.suggest(report)
    assert first.code == "budget_exceeded" and "`options.max_cost_usd` = 0.5 USD" in first.fix
