"""RedisStore.pipeline against the real Redis: replies, errors in their slots, scripts, cut-offs."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from redis.asyncio.connection import Connection

from protocol.errors import Unavailable
from server.stores import aio_loop
from server.stores.redis_store import (
    CommandError,
    PubSubMessage,
    Script,
    open_redis,
    pack_commands,
)


async def test_one_round_trip_gives_each_command_its_reply_or_its_error(redis_url: str) -> None:
    async with aio_loop.open_loop(), open_redis(redis_url) as redis:
        replies = await redis.pipeline(
            [
                ("SET", "t:s", "héllo"),
                ("GET", "t:s"),
                ("INCR", "t:s"),  # not an integer: this command's error, in its slot
                ("ZADD", "t:z", 5, "ann"),
                ("ZRANGE", "t:z", 0, -1, "WITHSCORES"),
                ("GET", "t:missing"),
            ]
        )
        assert replies[0] == "OK"
        assert replies[1] == "héllo"
        assert isinstance(replies[2], CommandError)
        assert "not an integer" in replies[2].message
        assert replies[3:] == [1, ["ann", "5"], None]


async def test_scripts_load_themselves_after_a_flush(redis_url: str) -> None:
    async with aio_loop.open_loop(), open_redis(redis_url) as redis:
        call = Script("gcra", keys=["t:gcra"], args=[1_000, 10_000, 1_000_000, 1])
        first = await redis.pipeline([call])
        assert not isinstance(first[0], CommandError)
        await redis.pipeline([("SCRIPT", "FLUSH")])
        again = await redis.pipeline([("PING",), call])
        assert again[0] == "PONG"
        assert not isinstance(again[1], CommandError), again[1]


async def test_a_cut_off_pipeline_leaves_no_reply_behind_for_the_next(redis_url: str) -> None:
    async with aio_loop.open_loop(), open_redis(redis_url, timeout_s=0.3) as redis:
        # BLPOP holds the connection for 3 s; the store gives up at 0.3 s.
        began = time.monotonic()
        with pytest.raises(Unavailable) as cut:
            await redis.pipeline([("BLPOP", "t:never", "3")])
        assert cut.value.code == "redis_timeout"
        # Were the connection reused, PING would wait behind BLPOP and then
        # read its nil reply: it must answer PONG, at once.
        with trio.fail_after(1):
            assert await redis.pipeline([("PING",), ("ECHO", "after")]) == ["PONG", "after"]
        assert time.monotonic() - began < 2


async def test_concurrent_pipelines_each_get_their_own_replies(redis_url: str) -> None:
    async with aio_loop.open_loop(), open_redis(redis_url) as redis:
        results: dict[int, list[object]] = {}

        async def one(i: int) -> None:
            results[i] = await redis.pipeline([("ECHO", f"a{i}"), ("ECHO", f"b{i}")])

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert results == {i: [f"a{i}", f"b{i}"] for i in range(20)}


@pytest.mark.parametrize(
    "commands",
    [
        [("PING",)],
        [("SET", "k", "v"), ("GET", "k")],
        [("EVALSHA", "a" * 40, 2, "k1", "k2", 0, -7, 2**63 - 1, 1.5, 1e-7, "héllo", b"\x00\xff")],
        [("ECHO", ""), ("ECHO", "x" * 70_000)],
    ],
)
def test_pack_commands_sends_what_redis_py_would(commands: list[tuple[Any, ...]]) -> None:
    reference = Connection(host="127.0.0.1", port=1, protocol=2)
    assert pack_commands(commands) == b"".join(reference.pack_commands(commands))


def test_pack_commands_refuses_what_redis_py_refuses() -> None:
    for bad in (True, None, ["x"]):
        with pytest.raises(TypeError):
            pack_commands([("SET", "k", bad)])


async def test_a_subscription_delivers_events_in_order_and_outlasts_having_none(
    redis_url: str,
) -> None:
    got: list[tuple[str, str, str]] = []
    changed = trio.Event()

    def on_message(message: PubSubMessage) -> None:
        nonlocal changed
        got.append((message.kind, message.channel, message.data))
        changed.set()
        changed = trio.Event()

    async def until(count: int) -> None:
        with trio.fail_after(5):
            while len(got) < count:
                await changed.wait()

    async with (
        aio_loop.open_loop(),
        open_redis(redis_url) as redis,
        redis.open_subscription() as subscription,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(subscription.deliver, on_message)
        await subscription.subscribe("t:a")
        await until(1)
        for i in range(3):
            await redis.pipeline([("PUBLISH", "t:a", f"m{i}")])
        await until(4)
        # With nothing subscribed the reader waits (redis-py would answer at
        # once), and picks up again at the next subscription.
        await subscription.unsubscribe("t:a")
        await until(5)
        await redis.pipeline([("PUBLISH", "t:a", "unheard")])
        await subscription.subscribe("t:b")
        await redis.pipeline([("PUBLISH", "t:b", "heard")])
        await until(7)
        assert got == [
            ("subscribe", "t:a", "1"),
            ("message", "t:a", "m0"),
            ("message", "t:a", "m1"),
            ("message", "t:a", "m2"),
            ("unsubscribe", "t:a", "0"),
            ("subscribe", "t:b", "1"),
            ("message", "t:b", "heard"),
        ]
        nursery.cancel_scope.cancel()
