"""The asyncio loop under Trio runs ready callbacks per pass, in order, without starving Trio."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import trio
import trio_asyncio
from trio_asyncio._base import BaseTrioEventLoop

from server.stores import aio_loop
from server.stores.pg_store import open_postgres
from server.stores.redis_store import open_redis


class Passes(trio.abc.Instrument):
    """Counts passes of the Trio scheduler (each pass waits for I/O once)."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        self.count += 1


class IoTaskSteps(trio.abc.Instrument):
    """Counts the steps of the Trio tasks watching asyncio's file descriptors."""

    def __init__(self) -> None:
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._io_task"):
            self.count += 1


def test_the_private_parts_it_relies_on_are_there() -> None:
    # aio_loop replaces BaseTrioEventLoop._main_loop_one and _io_task and reads
    # the loop's _q_recv and _timers; a trio-asyncio that renames or reshapes
    # them must fail here.
    assert callable(BaseTrioEventLoop._main_loop_one)
    assert list(inspect.signature(aio_loop._original_io_task).parameters) == [
        "self",
        "fd",
        "handle",
        "wait_ready",
    ]

    async def main() -> None:
        async with aio_loop.open_loop() as loop:
            assert hasattr(loop, "_q_recv") and hasattr(loop, "_timers")
            assert BaseTrioEventLoop._main_loop_one is aio_loop._main_loop_one
            assert BaseTrioEventLoop._io_task is aio_loop._io_task

    trio.run(main)


async def test_ready_callbacks_run_in_order_within_a_pass_or_two() -> None:
    async with aio_loop.open_loop() as loop:
        ran: list[int] = []
        done = trio.Event()
        passes = Passes()
        trio.lowlevel.add_instrument(passes)
        try:
            for i in range(200):
                loop.call_soon(ran.append, i)
            loop.call_soon(done.set)
            await done.wait()
        finally:
            trio.lowlevel.remove_instrument(passes)
        assert ran == list(range(200))
        # trio-asyncio alone takes one pass per callback (201 here).
        assert passes.count <= 4


async def test_due_timers_run_and_asyncio_code_works() -> None:
    async with aio_loop.open_loop() as loop:
        fired: list[str] = []
        loop.call_later(0.01, fired.append, "later")
        loop.call_soon(fired.append, "soon")

        async def aio_work() -> int:
            await asyncio.sleep(0.02)
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, 7)
            return await fut

        assert await trio_asyncio.aio_as_trio(aio_work)() == 7
        assert fired == ["soon", "later"]


async def test_a_callback_storm_does_not_starve_trio_tasks() -> None:
    async with aio_loop.open_loop() as loop:
        spins = 0
        stop = False

        def spin() -> None:
            # Re-queues itself forever: asyncio's "call_soon in a loop".
            nonlocal spins
            spins += 1
            if not stop:
                loop.call_soon(spin)

        loop.call_soon(spin)
        with trio.fail_after(5):
            for _ in range(3):
                await trio.lowlevel.checkpoint()  # each returns: Trio gets its turns
        stop = True
        assert spins >= 1
        # A pass runs at most MAX_CALLBACKS_PER_PASS callbacks before yielding.
        assert spins <= 4 * aio_loop.MAX_CALLBACKS_PER_PASS


@pytest.mark.parametrize("count", [1, aio_loop.MAX_CALLBACKS_PER_PASS + 5])
async def test_callbacks_queued_during_a_pass_run_in_order(count: int) -> None:
    async with aio_loop.open_loop() as loop:
        ran: list[int] = []
        done = trio.Event()

        def first() -> None:
            ran.append(-1)
            for i in range(count):
                loop.call_soon(ran.append, i)
            loop.call_soon(done.set)

        loop.call_soon(first)
        await done.wait()
        assert ran == [-1, *range(count)]


async def test_a_socket_read_costs_its_watcher_one_step() -> None:
    # An asyncio echo server and client, one round trip at a time: each read
    # is one step of the Trio task watching that socket (trio-asyncio's own
    # takes two, waiting for a synchronize() round trip after every read).
    rounds = 50

    async def aio_echo() -> list[bytes]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = []
        for i in range(rounds):
            writer.write(b"%d\n" % i)
            got.append(await reader.readline())
        writer.close()
        server.close()
        return got

    async with aio_loop.open_loop():
        steps = IoTaskSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            got = await trio_asyncio.aio_as_trio(aio_echo)()
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert got == [b"%d\n" % i for i in range(rounds)]
    # Two reads per round (the server's and the client's), plus some for
    # connecting and closing (7 to 11 seen); trio-asyncio's own takes ~4 per round.
    assert 2 * rounds <= steps.count <= 2 * rounds + 25


async def test_a_cancelled_timer_holds_no_deadline() -> None:
    async with aio_loop.open_loop() as loop:
        loop.call_later(1000, print).cancel()
        done = trio.Event()
        loop.call_soon(done.set)
        await done.wait()
        # Dropped at the next pass rather than kept until it would have been
        # due, so the loop waits for callbacks with no cancel scope.
        assert loop._timers == []


async def test_the_stores_leave_no_timer_pending(redis_url: str, database: str) -> None:
    # asyncpg arms timers for command timeouts, idle connections and its
    # statement cache, redis-py for read timeouts: all off (see the adapters).
    async with (
        aio_loop.open_loop() as loop,
        open_redis(redis_url) as redis,
        open_postgres(database) as postgres,
        redis.open_subscription() as subscription,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(subscription.deliver, lambda message: None)
        await subscription.subscribe("t:timers")
        for _ in range(5):
            await redis.pipeline([("PING",)])
            await postgres.now()
        done = trio.Event()
        loop.call_soon(done.set)
        await done.wait()
        assert [t for t in loop._timers if not t._cancelled] == []
        assert loop._timers == []
        nursery.cancel_scope.cancel()
