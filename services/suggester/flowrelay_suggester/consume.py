"""The suggester's pull loop: fetch a batch, handle it all, fetch again; quiet when idle.

Why not FastStream's own pull loop: it suppresses only ``nats.errors.TimeoutError``, but an
idle fetch in nats-py can also end with the builtin ``asyncio.TimeoutError`` (see
FIELD_NOTES), which FastStream then reports as an ERROR with a traceback ("please consider
opening issue") and restarts the loop: seen 15-35 s after every start of an idle suggester.
This loop treats both as "nothing to do", and any other fetch error as a reason to retry.

The FastStream subscribers stay declared for the AsyncAPI document only; handlers receive
a :class:`Delivery`, the few message operations they use, over a plain nats-py message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

#: Pause before fetching again after an unexpected fetch error (e.g. during a reconnect).
RETRY_FETCH_S = 0.5


class Delivery(Protocol):
    """What a handler may do with one message (FastStream's ``NatsMessage`` has the same)."""

    @property
    def body(self) -> bytes: ...

    @property
    def raw_message(self) -> Msg: ...

    async def ack(self) -> None: ...

    async def nack(self, delay: float | None = None) -> None: ...

    async def reject(self) -> None: ...

    async def in_progress(self) -> None: ...


class JetStreamDelivery:
    """A :class:`Delivery` over a nats-py JetStream message."""

    __slots__ = ("raw_message",)

    def __init__(self, msg: Msg) -> None:
        self.raw_message = msg

    @property
    def body(self) -> bytes:
        return self.raw_message.data

    async def ack(self) -> None:
        await self.raw_message.ack()

    async def nack(self, delay: float | None = None) -> None:
        await self.raw_message.nak(delay=delay)

    async def reject(self) -> None:
        await self.raw_message.term()

    async def in_progress(self) -> None:
        await self.raw_message.in_progress()


Handler = Callable[[Delivery], Awaitable[None]]


class PullLoop:
    """Feeds one durable pull consumer's messages to ``handler``, ``batch`` at a time.

    The messages of a batch are handled concurrently and all finish before the next fetch,
    so none waits in memory unheartbeated. ``stop`` ends an idle fetch at once and lets a
    batch in hand finish.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        batch: int,
        fetch_timeout_s: float,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._handler = handler
        self._batch = batch
        self._fetch_timeout_s = fetch_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._fetching = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"suggester-{self._durable}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is None:
            return
        if self._fetching:  # waiting for messages: nothing in hand, stop waiting
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        subscription = await self._js.pull_subscribe_bind(self._durable, stream=self._stream)
        try:
            while not self._stopping:
                self._fetching = True
                try:
                    messages = await subscription.fetch(self._batch, timeout=self._fetch_timeout_s)
                except TimeoutError:  # nats-py raises its own subclass or asyncio's: no work now
                    continue
                except Exception as exc:  # noqa: BLE001 - this loop must outlive any fetch error
                    log.warning("fetching from %s failed (%s); retrying", self._durable, type(exc).__name__)
                    await asyncio.sleep(RETRY_FETCH_S)
                    continue
                finally:
                    self._fetching = False
                results = await asyncio.gather(
                    *(self._handler(JetStreamDelivery(m)) for m in messages), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, Exception):  # handlers settle their own messages
                        log.error("%s: a message was left unsettled: %r", self._durable, result)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
