"""The Redis adapter: the only module that imports redis.asyncio.

redis.asyncio is an asyncio library; Podium runs it under Trio through
trio-asyncio. Every public method is a Trio coroutine that crosses into
asyncio once: :meth:`RedisStore.pipeline` sends a whole batch of commands
and Lua script calls in one round trip. Only the ranking actor holds a
:class:`RedisStore` on the hot path.

Lua scripts live beside this module in ``lua/*.lua`` and are called by name
with :class:`Script`; they are run with EVALSHA and loaded on first use.

*Resource handling*: :func:`open_redis` owns a connection pool for the
duration of its ``async with`` block; it must run inside
``trio_asyncio.open_loop()``.

*Error handling*: connection failures and timeouts surface as
:class:`protocol.errors.Unavailable`. Inside a pipeline, a command's own
error (a wrong type, a script error) is returned in its slot as a
:class:`CommandError` rather than failing the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

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


def _load_scripts() -> dict[str, tuple[str, str]]:
    """Every ``lua/<name>.lua`` by name: (source, SHA-1).

    A script whose first line is ``-- uses: a, b`` gets ``lua/lib/a.lua`` and
    ``lua/lib/b.lua`` put in front of it, so scripts share Lua functions
    (Redis has no imports for EVAL scripts).
    """
    folder = resources.files("server.stores").joinpath("lua")
    scripts: dict[str, tuple[str, str]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".lua"):
            source = entry.read_text(encoding="utf-8")
            first = source.split("\n", 1)[0]
            if first.startswith("-- uses:"):
                libraries = [name.strip() for name in first.removeprefix("-- uses:").split(",")]
                source = (
                    "".join(
                        folder.joinpath("lib", f"{name}.lua").read_text(encoding="utf-8")
                        for name in libraries
                    )
                    + source
                )
            scripts[entry.name.removesuffix(".lua")] = (
                source,
                hashlib.sha1(source.encode()).hexdigest(),
            )
    return scripts


SCRIPTS: Final = _load_scripts()

#: Seconds between PINGs on a subscribed pub/sub connection (:meth:`Subscription.deliver`).
PUBSUB_KEEPALIVE_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class Script:
    """A call of the Lua script ``lua/<name>.lua`` in a pipeline."""

    name: str
    keys: Sequence[str]
    args: Sequence[str | int | float | bytes]


@dataclass(frozen=True, slots=True)
class CommandError:
    """The error one command of a pipeline answered with."""

    message: str


Command = tuple[Any, ...] | Script


class RedisStore:
    """A Redis client used from Trio. Make with :func:`open_redis`.

    :meth:`pipeline` — the hot path — does not go through redis-py's
    ``Pipeline`` and pool: it packs the commands itself (:func:`pack_commands`),
    sends them in one write on a redis-py connection of its own and reads the
    replies with redis-py's parser. That skips, per round trip, the pool's lock and
    bookkeeping, the retry wrapper, and the asyncio timeout (a task for the
    write and a timer per reply) that ``socket_timeout`` would add: the whole
    call already runs under a Trio deadline, and a connection interrupted
    mid-reply is closed by redis-py and reconnects on its next use.
    """

    # Connections kept for pipeline(): one per concurrent caller (the ranking
    # actor's batches and a rebuild) is enough; more are closed after use.
    _LANE_SIZE: Final = 4

    def __init__(self, client: aioredis.Redis, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._lane: list[Any] = []

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

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` in one round trip (not a transaction); one result each.

        A command is a tuple of Redis arguments (``("ZSCORE", key, member)``)
        or a :class:`Script`. Replies are Redis's own (RESP2: ``"OK"``, integers,
        flat arrays, ``None`` for nil — no redis-py response callbacks), bulk
        strings decoded to str; a failed command's slot holds a :class:`CommandError`.
        """
        if not commands:
            return []
        result: list[Any] = await self._call(self._pipeline_aio, commands)
        return result

    @contextlib.asynccontextmanager
    async def open_subscription(self) -> AsyncIterator[Subscription]:
        """A pub/sub connection of its own, for the duration of the block."""
        pubsub = self._client.pubsub()
        try:
            yield Subscription(pubsub, self)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout_s):
                await trio_asyncio.aio_as_trio(pubsub.aclose)()

    # ---- asyncio side

    async def _pipeline_aio(self, commands: Sequence[Command]) -> list[Any]:
        results = await self._execute_aio(commands)
        missing = [
            i
            for i, result in enumerate(results)
            if isinstance(result, CommandError) and result.message.startswith("NOSCRIPT")
        ]
        if missing:
            # First use of a script on this server (or after SCRIPT FLUSH):
            # load what is missing, then run just the calls that failed.
            names = {c.name for c in (commands[i] for i in missing) if isinstance(c, Script)}
            await self._execute_aio([("SCRIPT", "LOAD", SCRIPTS[name][0]) for name in names])
            retried = await self._execute_aio([commands[i] for i in missing])
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        return results

    async def _execute_aio(self, commands: Sequence[Command]) -> list[Any]:
        packed = [
            ("EVALSHA", SCRIPTS[c.name][1], len(c.keys), *c.keys, *c.args)
            if isinstance(c, Script)
            else c
            for c in commands
        ]
        conn = self._lane.pop() if self._lane else self._new_lane_connection()
        try:
            # Connects (or reconnects) first if needed; on an error or a
            # cancellation redis-py disconnects, so the next use starts clean.
            await conn.send_packed_command(pack_commands(packed), check_health=False)
            raw: list[Any] = []
            for _ in packed:
                try:
                    raw.append(await conn.read_response())
                except redis.exceptions.ResponseError as exc:
                    raw.append(exc)  # this command's own error; the rest still come
        finally:
            if len(self._lane) < self._LANE_SIZE:
                self._lane.append(conn)
            else:
                await conn.disconnect()
        return [_decode(item) for item in raw]

    def _new_lane_connection(self) -> Any:
        pool = self._client.connection_pool
        # RESP2: replies keep the shapes the callers parse (flat arrays, nil),
        # and a connection needs no HELLO handshake.
        return pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None, "protocol": 2}
        )

    async def _close_lane_aio(self) -> None:
        lane, self._lane = self._lane, []
        for conn in lane:
            await conn.disconnect()


@dataclass(frozen=True, slots=True)
class PubSubMessage:
    """One pub/sub event: ``kind`` is "message", "subscribe", "unsubscribe" or "pong"."""

    kind: str
    channel: str
    data: str


class Subscription:
    """A Redis pub/sub connection used from Trio; owned by the fan-out actor.

    One task runs :meth:`deliver` for the connection's life; others may
    (un)subscribe meanwhile — the confirmations arrive through it.
    """

    def __init__(self, pubsub: Any, store: RedisStore) -> None:
        self._pubsub = pubsub
        self._store = store
        # Set once something is subscribed: the reader waits on it while nothing is.
        self._subscribed = asyncio.Event()
        self._last_read = trio.current_time()  # when the reader last got an event

    async def subscribe(self, channel: str) -> None:
        await self._store._call(self._subscribe_aio, channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._store._call(self._pubsub.unsubscribe, channel)

    async def deliver(
        self,
        on_message: Callable[[PubSubMessage], None],
        *,
        keepalive_s: float = PUBSUB_KEEPALIVE_S,
    ) -> None:
        """Call ``on_message`` with every event, in order, as it is read; until the
        connection fails, when it raises :class:`Unavailable`.

        One asyncio task reads for as long as this runs, with no timeout and no
        Trio task woken per event: ``on_message`` is called on the asyncio side
        (the same thread), so it must not wait. It may change the caller's state
        and set Trio events. While something is subscribed, a PING goes out
        every ``keepalive_s``; if nothing at all has come back by the next one
        the connection counts as lost (a peer that vanished sends no reset).
        """
        lost: BaseException | None = None

        async def read(done: trio.CancelScope) -> None:
            nonlocal lost
            try:
                await trio_asyncio.aio_as_trio(self._deliver_aio)(on_message)
            except _UNAVAILABLE as exc:
                lost = exc
            done.cancel()

        async def keepalive(done: trio.CancelScope) -> None:
            nonlocal lost
            while True:
                pinged_at = trio.current_time()
                if self._pubsub.subscribed:  # nothing is read while nothing is
                    try:
                        await self._store._call(self._pubsub.ping)
                    except Unavailable as exc:
                        lost = exc
                        done.cancel()
                        return
                await trio.sleep(keepalive_s)
                if self._pubsub.subscribed and self._last_read < pinged_at:
                    lost = TimeoutError(f"no answer to a PING within {keepalive_s:g} s")
                    done.cancel()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, nursery.cancel_scope)
            nursery.start_soon(keepalive, nursery.cancel_scope)
        if lost is not None:
            raise Unavailable(
                f"Redis pub/sub is unavailable: {type(lost).__name__}: {lost}",
                code="redis_unavailable",
            ) from lost

    async def _subscribe_aio(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._subscribed.set()

    async def _deliver_aio(self, on_message: Callable[[PubSubMessage], None]) -> None:
        pubsub = self._pubsub
        while True:
            if not pubsub.subscribed:
                # redis-py answers at once while nothing is subscribed: wait instead.
                self._subscribed.clear()
                await self._subscribed.wait()
                continue
            m = await pubsub.get_message(timeout=None)  # blocks, with no timer
            self._last_read = trio.current_time()
            if m is not None:
                data = m["data"]
                on_message(
                    PubSubMessage(
                        kind=_decode(m["type"]),
                        channel=_decode(m["channel"]) or "",  # none for a pong
                        data=_decode(data) if isinstance(data, bytes) else str(data),
                    )
                )


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    """``commands`` as one RESP request (what redis-py's ``pack_commands`` sends, ~3x cheaper).

    Arguments are str (UTF-8), int, float (``repr``, as redis-py) or bytes;
    anything else — bool included, as redis-py refuses it — is a TypeError.
    """
    out: list[bytes] = []
    append = out.append
    for args in commands:
        append(b"*%d\r\n" % len(args))
        for arg in args:
            kind = type(arg)
            if kind is str:
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            elif kind is bytes:
                data = arg
            elif kind is float:
                data = repr(arg).encode()
            else:
                raise TypeError(f"a Redis argument must be str, int, float or bytes, not {kind}")
            append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list):
        # Integers are most of a large reply (fraud histories): no call for them.
        return [item if type(item) is int else _decode(item) for item in value]
    if isinstance(value, redis.exceptions.NoScriptError):
        # redis-py drops the NOSCRIPT prefix; put it back so callers can tell.
        return CommandError(f"NOSCRIPT {value}")
    if isinstance(value, redis.exceptions.ResponseError):
        return CommandError(str(value))
    if isinstance(value, _UNAVAILABLE):
        raise value
    return value


@contextlib.asynccontextmanager
async def open_redis(url: str, *, timeout_s: float = 2.0) -> AsyncIterator[RedisStore]:
    """A Redis client for ``url`` for the duration of the block.

    Connections are made lazily; call :meth:`RedisStore.ping` to check
    that Redis is there.
    """
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )
    store = RedisStore(client, timeout_s=timeout_s)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
            await trio_asyncio.aio_as_trio(store._close_lane_aio)()
            await trio_asyncio.aio_as_trio(client.aclose)()
