"""The worker's outbox: lines sent from a framework's own thread (smolagents runs its agent
in one) reach the executor, all of them, each thread's in order, over a real socket pair."""

from __future__ import annotations

import asyncio
import socket
import threading

from pydantic_core import from_json

from flowrelay_executor.worker import Outbox

THREADS = 4
LINES = 2000
#: The race it guards against is lost only now and then: several rounds make it show.
ROUNDS = 8


async def test_lines_sent_from_other_threads_all_arrive_in_order() -> None:
    for _ in range(ROUNDS):
        await _round()


async def _round() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    peer_reader, _ = await asyncio.open_unix_connection(sock=theirs)
    outbox = Outbox(writer, loop=asyncio.get_running_loop())

    def burst(thread: int) -> None:
        for n in range(LINES):
            outbox.send({"op": "event", "thread": thread, "n": n})

    # The loop keeps sending lines of its own meanwhile, as a worker serving other runs does.
    async def loop_lines() -> None:
        for n in range(LINES):
            outbox.send({"op": "event", "thread": "loop", "n": n})
            await asyncio.sleep(0)

    await asyncio.gather(loop_lines(), *(asyncio.to_thread(burst, t) for t in range(THREADS)))
    outbox.send({"op": "done"})

    seen: dict[object, list[int]] = {}
    while (message := from_json(await asyncio.wait_for(peer_reader.readline(), 30)))["op"] != "done":
        seen.setdefault(message["thread"], []).append(message["n"])
    assert seen == {key: list(range(LINES)) for key in [*range(THREADS), "loop"]}
    writer.close()
