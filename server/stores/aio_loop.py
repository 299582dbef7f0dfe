"""The asyncio loop that asyncpg and redis.asyncio run on, inside Trio.

:func:`open_loop` is ``trio_asyncio.open_loop()`` with one change to how the
loop runs its callbacks. trio-asyncio's loop is a Trio task that takes asyncio
callbacks (``call_soon`` handles: task steps, future callbacks, transport
reads) from a Trio memory channel, **one per pass of the Trio scheduler**:
every callback costs a full scheduler round (a checkpoint, a cancel scope, an
``epoll_wait``). One Redis or PostgreSQL round trip is about ten callbacks:
a score submission over HTTP took ~73 scheduler passes, ~38 with this.

Here the loop runs, after the callback it waited for, every callback that is
**already** queued and every timer already due — up to
:data:`MAX_CALLBACKS_PER_PASS` — before it yields, as asyncio's own loop runs
its whole ready queue per iteration. Order is unchanged (the channel is FIFO;
due timers run first, as in trio-asyncio); callbacks queued while a pass runs
join it, which is what asyncio does too, bounded so Trio tasks are never
starved. With no timer pending it waits for the queue without a cancel scope
(trio-asyncio opens one on every pass), and a cancelled timer is dropped when
it reaches the front rather than kept until it would have been due. (The
store adapters arm no timers, so a pass never needs one.)

And one change to I/O readiness: trio-asyncio watches each file descriptor
asyncio reads (a socket's ``add_reader``) in a Trio task that, after every
read callback, waits for a whole ``synchronize()`` round trip through the
loop (an event, a queued handle, one more task step and scheduler pass)
before it watches again. Here it watches again at once, as asyncio's own
loop does: the callback has consumed what was readable (asyncio's transports
and ``sock_*`` methods all read inside it), and what it queued runs in the
loop's next pass. A Redis or PostgreSQL round trip is one step shorter.
Timers, writers, shutdown and Trio-flavoured handles are trio-asyncio's own
code.

trio-asyncio's loop keeps its queue in ``_q_recv`` and its timers in
``_timers``, and runs readers in ``_io_task``; the version is pinned in
``pyproject.toml`` and ``tests/server/test_aio_loop.py`` fails if those change.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
import trio_asyncio
from sniffio import thread_local as sniffio_library
from trio_asyncio._base import BaseTrioEventLoop
from trio_asyncio._handles import AsyncHandle

MAX_CALLBACKS_PER_PASS: Final = 256
"""Callbacks one pass may run before the loop yields to other Trio tasks."""

_original_main_loop_one: Final = BaseTrioEventLoop._main_loop_one
_original_io_task: Final = BaseTrioEventLoop._io_task


async def _main_loop_one(self: Any, no_wait: bool = False) -> None:
    if no_wait:
        # Shutdown's drain: trio-asyncio's own step.
        await _original_main_loop_one(self, no_wait)
        return
    obj: Any = None
    timers = self._timers
    while timers and timers[0]._cancelled:
        heapq.heappop(timers)  # a cancelled timer must not hold a deadline
    if timers:
        timeout = timers[0]._when - self.time()
        if timeout <= 0:
            obj = heapq.heappop(self._timers)
    else:
        timeout = math.inf
    if obj is None:
        if timeout == math.inf:
            obj = await self._q_recv.receive()
        else:
            with trio.move_on_after(timeout):
                obj = await self._q_recv.receive()
            if obj is None:
                return  # a timer is due: the next pass takes it
        if isinstance(obj, asyncio.TimerHandle):
            heapq.heappush(self._timers, obj)
            return
    budget = MAX_CALLBACKS_PER_PASS
    while True:
        if isinstance(obj, AsyncHandle):
            # A Trio-flavoured handle: started in the loop's nursery, as trio-asyncio does.
            obj._context.run(self._nursery.start_soon, obj._run, name=obj._callback)
            await obj._started.wait()
            return
        if not obj._cancelled:
            prev_library, sniffio_library.name = sniffio_library.name, "asyncio"
            try:
                obj._run()
            finally:
                sniffio_library.name = prev_library
        budget -= 1
        if budget == 0:
            return
        obj = None
        while obj is None:
            if self._timers and self._timers[0]._when <= self.time():
                obj = heapq.heappop(self._timers)
                break
            try:
                obj = self._q_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            if isinstance(obj, asyncio.TimerHandle):
                heapq.heappush(self._timers, obj)
                obj = None


async def _io_task(self: Any, fd: int, handle: Any, wait_ready: Any) -> None:
    # trio-asyncio's own, less its `await self.synchronize()` after each callback.
    with handle._scope:
        try:
            while not handle._cancelled:
                try:
                    await wait_ready(fd)
                except OSError:
                    # Closed under us after the handle was cancelled: done.
                    if handle._cancelled:
                        break
                    raise
                if handle._cancelled:
                    break
                handle._run()
        except Exception as exc:
            handle._raise(exc)


_installed = False


def install() -> None:
    """Make every trio-asyncio loop run as the module doc says (idempotent)."""
    global _installed
    if not _installed:
        BaseTrioEventLoop._main_loop_one = _main_loop_one
        BaseTrioEventLoop._io_task = _io_task
        _installed = True


@asynccontextmanager
async def open_loop() -> AsyncIterator[Any]:
    """``trio_asyncio.open_loop()``, running ready callbacks in batches (see module doc)."""
    install()
    async with trio_asyncio.open_loop() as loop:
        yield loop
