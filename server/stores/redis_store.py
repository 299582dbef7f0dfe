"""The Redis adapter: the only module that imports redis.asyncio.

redis.asyncio is an asyncio library; Podium runs it under Trio through
trio-asyncio. Every public method is a Trio coroutine that crosses into
asyncio once — batch work into one method call (a pipeline), never one call
per item. Only the ranking actor holds a :class:`RedisStore` on the hot path.

*Resource handling*: :func:`open_redis` owns a connection pool for the
duration of its ``async with`` block; it must run inside
``trio_asyncio.open_loop()``.

*Error handling*: connection failures and timeouts surface as
:class:`protocol.errors.Unavailable`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import trio
import trio_asyncio

from protocol.errors import Unavailable

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class RedisStore:
    """A Redis client used from Trio. Make with :func:`open_redis`."""

    def __init__(self, client: aioredis.Redis, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            with trio.fail_after(self._timeout_s):
                return await trio_asyncio.aio_as_trio(fn)(*args)
        except trio.TooSlowError:
            raise Unavailable(
                f"Redis did not answer within {self._timeout_s:g} s", code="redis_timeout"
            ) from None
        except _UNAVAILABLE as exc:
            raise Unavailable(
                f"Redis is unavailable: {type(exc).__name__}", code="redis_unavailable"
            ) from exc

    async def ping(self) -> None:
        """PING; raise :class:`Unavailable` if Redis does not answer."""
        await self._call(self._client.ping)

    async def info(self, section: str) -> dict[str, Any]:
        """One INFO section, parsed."""
        result: dict[str, Any] = await self._call(self._client.info, section)
        return result


@contextlib.asynccontextmanager
async def open_redis(url: str, *, timeout_s: float = 2.0) -> AsyncIterator[RedisStore]:
    """A Redis client for ``url`` for the duration of the block.

    Connections are made lazily; call :meth:`RedisStore.ping` to check
    that Redis is there.
    """
    client = aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
    )
    try:
        yield RedisStore(client, timeout_s=timeout_s)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
            await trio_asyncio.aio_as_trio(client.aclose)()
