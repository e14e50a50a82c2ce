"""The services' logs are for people: no ANSI colour codes, no idle error tracebacks.

The suggester's pull loop is checked against nats-py's two kinds of fetch timeout (the
builtin ``asyncio.TimeoutError`` is what made FastStream's loop log an ERROR traceback
15-35 s after every start); the real processes' log files are checked for colour codes.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import nats.errors
import pytest
from flowrelay_testkit import Stack

from flowrelay_suggester.consume import PullLoop


class _ScriptedSubscription:
    """A pull subscription whose fetches raise or return what the test scripted, in order."""

    def __init__(self, outcomes: list[object]) -> None:
        self._outcomes = outcomes
        self.exhausted = asyncio.Event()
        self.unsubscribed = False

    async def fetch(self, batch: int, timeout: float) -> list[object]:
        if not self._outcomes:
            self.exhausted.set()
            await asyncio.sleep(3600)  # an idle fetch: stop() must end it
        outcome = self._outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


async def test_the_suggester_loop_treats_both_fetch_timeouts_as_idle(caplog: pytest.LogCaptureFixture) -> None:
    message = SimpleNamespace(data=b"payload")
    subscription = _ScriptedSubscription(
        [TimeoutError(), nats.errors.TimeoutError(), ConnectionResetError(), [message, message]]
    )

    async def pull_subscribe_bind(durable: str, stream: str) -> _ScriptedSubscription:
        return subscription

    handled: list[bytes] = []

    async def handler(delivery) -> None:  # noqa: ANN001
        handled.append(delivery.body)

    loop = PullLoop(SimpleNamespace(pull_subscribe_bind=pull_subscribe_bind), stream="S", durable="d",  # type: ignore[arg-type]
                    handler=handler, batch=4, fetch_timeout_s=5)
    with caplog.at_level(logging.DEBUG):
        loop.start()
        await asyncio.wait_for(subscription.exhausted.wait(), 10)
        await asyncio.wait_for(loop.stop(), 10)  # ends the idle fetch at once
    assert handled == [b"payload", b"payload"]
    assert subscription.unsubscribed
    assert [r.levelname for r in caplog.records if r.name.startswith("flowrelay")] == ["WARNING"]  # the reset


def test_service_logs_carry_no_colour_codes(stack: Stack) -> None:
    for service in (stack.api, stack.suggester, *stack.executors):
        assert service is not None
        text = service.output()
        assert "FastStream app started successfully" in text or "Application startup complete" in text
        assert "\x1b[" not in text, f"{service.name} writes ANSI colour codes into its log"
