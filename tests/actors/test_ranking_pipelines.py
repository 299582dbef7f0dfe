"""The ranking actor keeps PIPELINES round trips in flight: a request never waits for a
slow one before it, and no more than PIPELINES are ever in flight.

Redis is a stand-in whose round trips finish only when the test says so; what the
pipelined batches do in a real Redis is tested in tests/server/test_node.py and
tests/server/test_ws.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

from actors import ranking
from server.stores.redis_store import Command
from tests.actors.test_ranking_releases import actor_for


class HeldRedis:
    """Holds every round trip that carries a ("HOLD", name) command until ``let_go(name)``."""

    def __init__(self) -> None:
        self.gates: dict[str, trio.Event] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    def let_go(self, name: str) -> None:
        self.gates.setdefault(name, trio.Event()).set()

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        first = commands[0]
        if isinstance(first, tuple) and first[0] == "SET":  # the rebuild lock: another node...
            return [None]
        held = [c[1] for c in commands if isinstance(c, tuple) and c[0] == "HOLD"]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for name in held:
                await self.gates.setdefault(name, trio.Event()).wait()
        finally:
            self.in_flight -= 1
        return ["epoch", *[f"done {c[1]}" if isinstance(c, tuple) else 1 for c in commands[1:]]]


async def test_a_request_does_not_wait_for_the_round_trip_before_it() -> None:
    redis = HeldRedis()
    client, actor = actor_for(redis, queue_size=16)  # type: ignore[arg-type]
    answers: list[str] = []

    async def ask(name: str) -> None:
        answers.append((await client.run([("HOLD", name)]))[0])

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with trio.fail_after(5):
            async with trio.open_nursery() as asks:
                asks.start_soon(ask, "slow")
                await trio.testing.wait_all_tasks_blocked()  # "slow" is in flight, held
                redis.let_go("fast")
                await ask("fast")  # in the second pipeline, past the held one
                assert answers == ["done fast"]
                # Every pipeline is busy now ("slow" and the next): the rest wait.
                for name in ("a", "b", "c"):
                    asks.start_soon(ask, name)
                    await trio.testing.wait_all_tasks_blocked()
                assert redis.most_in_flight == ranking.PIPELINES
                for name in ("slow", "a", "b", "c"):
                    redis.let_go(name)
        assert sorted(answers) == ["done a", "done b", "done c", "done fast", "done slow"]
        assert redis.most_in_flight == ranking.PIPELINES
        nursery.cancel_scope.cancel()
