"""Nonce claims given back by the ranking actor are not lost to a full queue or a failed batch.

A submission that did not commit gives its nonce claim back so that the player
may retry the same token; a lost release would make that retry hear 409
("already used") for a score that was never applied. Redis is a stand-in that
records what reaches it and can fail; ``lua/release_claim.lua`` itself runs
against a real Redis in ``tests/server/test_redis_store.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from actors import ranking
from actors.ranking import RankingActor
from protocol.errors import Unavailable
from server.stores.redis_store import Command, Script


class FlakyRedis:
    """Fails the next ``failures`` batches that carry a script; records released claims."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.released: list[str] = []
        self.ran = trio.Event()

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        first = commands[0]
        if isinstance(first, tuple) and first[0] == "SET":  # the rebuild lock: another node...
            return [None]
        scripts = [c for c in commands if isinstance(c, Script)]
        if scripts and self.failures:
            self.failures -= 1
            raise Unavailable("redis went away")
        self.released += [str(s.args[0]) for s in scripts if s.name == "release_claim"]
        if scripts:
            self.ran.set()
        return ["epoch", *[1] * (len(commands) - 1)]  # ...rebuilt: the epoch is set


def actor_for(redis: FlakyRedis, queue_size: int) -> tuple[ranking.RankingClient, RankingActor]:
    client, inbox = RankingActor.open_inbox(queue_size, timeout_s=5.0)
    actor = RankingActor(
        redis=redis,  # type: ignore[arg-type]
        postgres=None,  # type: ignore[arg-type]
        boards=list,
        key_prefix="t",
        publish_top_n=10,
        inbox=inbox,
        node_id="n",
    )
    return client, actor


async def test_releases_that_find_the_queue_full_or_redis_down_are_given_back_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis = FlakyRedis(failures=1)
    client, actor = actor_for(redis, queue_size=1)
    client.release_nonce_nowait("n1", "claim-1")
    client.release_nonce_nowait("n2", "claim-2")  # the queue is full: held
    assert actor.statistics().releases_held == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        # The first batch fails; both are held and go in the next one.
        with trio.fail_after(3):
            await redis.ran.wait()
        assert redis.released == ["claim-1", "claim-2"]
        statistics = actor.statistics()
        assert (statistics.releases_held, statistics.releases_dropped) == (0, 0)
        nursery.cancel_scope.cancel()


async def test_held_releases_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "_MAX_HELD_RELEASES", 2)
    client, actor = actor_for(FlakyRedis(failures=0), queue_size=1)
    for n in range(5):
        client.release_nonce_nowait(f"n{n}", f"claim-{n}")
    statistics = actor.statistics()
    assert (statistics.queued, statistics.releases_held, statistics.releases_dropped) == (1, 2, 2)
