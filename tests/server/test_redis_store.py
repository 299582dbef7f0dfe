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


class FreezingProxy:
    """A TCP proxy to Redis that can stop passing bytes while keeping its sockets
    open: a peer that has vanished without a reset."""

    def __init__(self, redis_url: str) -> None:
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        self._host, port = host_port.rsplit(":", 1)
        self._port = int(port)
        self.frozen = trio.Event()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}/0"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(self._host, self._port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server)
            nursery.start_soon(self._pump, server, client)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some(65536):
            if self.frozen.is_set():
                await trio.sleep_forever()
            await sink.send_all(data)


async def test_a_subscription_whose_peer_goes_silent_is_given_up(redis_url: str) -> None:
    proxy = FreezingProxy(redis_url)
    kinds: list[str] = []
    lost: list[Unavailable] = []
    ended = trio.Event()
    answered = trio.Event()

    def on_message(message: PubSubMessage) -> None:
        kinds.append(message.kind)
        if kinds.count("pong") >= 2:
            answered.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        async with (
            aio_loop.open_loop(),
            open_redis(proxy.url) as redis,
            redis.open_subscription() as subscription,
        ):

            async def deliver() -> None:
                try:
                    await subscription.deliver(on_message, keepalive_s=0.3)
                except Unavailable as exc:
                    lost.append(exc)
                ended.set()

            nursery.start_soon(deliver)
            await subscription.subscribe("t:quiet")
            with trio.fail_after(5):
                await answered.wait()  # quiet, but its PINGs are answered
            assert not ended.is_set()
            assert kinds[0] == "subscribe", kinds
            proxy.frozen.set()
            began = trio.current_time()
            with trio.fail_after(5):
                await ended.wait()
            assert trio.current_time() - began < 1.5
            (error,) = lost
            assert "PING" in error.message
        nursery.cancel_scope.cancel()


async def test_a_claim_is_given_back_only_by_the_attempt_that_holds_it(redis_url: str) -> None:
    async with aio_loop.open_loop(), open_redis(redis_url) as redis:
        await redis.pipeline([("SET", "t:nonce", "retry", "EX", 60)])
        # The first attempt's late release finds the retry's claim: kept.
        late = await redis.pipeline([Script("release_claim", ["t:nonce"], ["first"])])
        assert late == [0]
        assert await redis.pipeline([("GET", "t:nonce")]) == ["retry"]
        mine = await redis.pipeline([Script("release_claim", ["t:nonce"], ["retry"])])
        assert mine == [1]
        assert await redis.pipeline([("EXISTS", "t:nonce")]) == [0]
