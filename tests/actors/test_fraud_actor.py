"""The fraud actor's hand-off: admitted submissions go on to the ledger, refused ones are
answered, and one past its deadline is dropped before anything is claimed for it. And what
an allowed submission teaches the population: its player's velocity.

Redis and the ledger are stand-ins that record what reaches them, except for the
player's history below, which ``lua/admit.lua`` keeps in a real Redis; the rest of the
script runs against a real Redis in ``tests/server/test_fraud_path.py``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import outcome
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from actors.fraud import (
    Admission,
    FraudActor,
    FraudPolicy,
    RateLimit,
    Verdict,
    _Pending,
    history_fields,
)
from protocol import fraud
from protocol.leaderboards import Submission
from server.stores import aio_loop
from server.stores.redis_store import RedisStore, Script, open_redis
from tests.actors.records import submission

KEYS_PER_ADMISSION = 11


class ScriptedRedis:
    """The ranking client's ``run``: one admit script per call, every admission's
    answer ``status`` (0 admitted, 2 rate limited), recorded."""

    def __init__(self, statuses: dict[str, int]) -> None:
        self.statuses = statuses
        self.admitted_nonces: list[list[str]] = []

    async def run(self, commands: list[Script]) -> list[Any]:
        (script,) = commands
        nonces = [key.rsplit(":", 1)[1] for key in script.keys[::KEYS_PER_ADMISSION]]
        self.admitted_nonces.append(nonces)
        return [[[self.statuses.get(n, 0), 1500, "", 1, 0, 1, 0, 1] for n in nonces]]


class Ledger:
    def __init__(self) -> None:
        self.got: list[str] = []

    def submit_nowait(self, submission: Submission, reply: Any) -> None:
        self.got.append(submission.nonce)


class Reply:
    def __init__(self, expired: bool = False) -> None:
        self.expired = expired
        self.values: list[Any] = []

    def __call__(self, value: outcome.Outcome[Any]) -> None:
        self.values.append(value.unwrap())


TEN_PER_S = RateLimit(10, 10)


def policy(
    *,
    enabled: bool = True,
    params: fraud.FraudParams | None = None,
    limit: RateLimit = TEN_PER_S,
) -> FraudPolicy:
    """A policy with ``limit`` for players and IPs alike, and no shadow bans."""
    return FraudPolicy(
        enabled=enabled,
        params=params or fraud.FraudParams(),
        user_limit=limit,
        ip_limit=limit,
        shadow_ban_blocks=0,
        shadow_ban_window_s=60,
    )


def pending(nonce: str) -> tuple[Admission, Submission]:
    admission = Admission(
        user_id="u",
        ip="10.0.0.1",
        device=None,
        leaderboard="global",
        action_type="score",
        delta=1,
        delta_min=1,
        delta_max=10,
        nonce=nonce,
        nonce_ttl_s=60,
        claim=f"claim-{nonce}",
    )
    return admission, submission(nonce, ip="10.0.0.1")


async def test_admitted_go_to_the_ledger_refused_are_answered_expired_are_dropped() -> None:
    redis, ledger = ScriptedRedis({"limited": 2}), Ledger()
    client, inbox = FraudActor.open_inbox(10)
    actor = FraudActor(
        policy=policy(enabled=False),
        ranking=redis,  # type: ignore[arg-type]
        ledger=ledger,  # type: ignore[arg-type]
        postgres=None,  # type: ignore[arg-type]  # no flag or block to log here
        key_prefix="t",
        inbox=inbox,
        queue_size=10,
        node_id="n",
    )
    replies = {"ok": Reply(), "limited": Reply(), "late": Reply(expired=True)}
    for nonce, reply in replies.items():
        client.submit_nowait(*pending(nonce), reply)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await wait_all_tasks_blocked()
        # One admission call, without the expired one: nothing claimed for it.
        assert redis.admitted_nonces == [["ok", "limited"]]
        assert ledger.got == ["ok"]  # the ledger answers it from here on
        assert replies["ok"].values == []
        (limited,) = replies["limited"].values
        assert isinstance(limited, Verdict) and limited.decision == "rate_limited"
        assert replies["late"].values == []
        nursery.cancel_scope.cancel()


class RecordingSketch:
    """A population sketch with the given ``stats()``, recording what it observes."""

    def __init__(self, stats: fraud.PopulationStats | None) -> None:
        self._stats = stats
        self.observed: list[float] = []

    def observe(self, velocity: float) -> None:
        self.observed.append(velocity)

    def stats(self) -> fraud.PopulationStats | None:
        return self._stats


@pytest.mark.parametrize(
    "population", [None, fraud.PopulationStats(median=500.0, mad=100.0, count=100)]
)
@pytest.mark.parametrize("in_order", [True, False])
def test_an_allowed_submission_feeds_the_population_its_user_velocity(
    population: fraud.PopulationStats | None, in_order: bool
) -> None:
    # With a population the velocity factor has measured it; without one it is computed.
    # Either way it is user_velocity() of the history as admit.lua gives it, which is
    # out of order when the nodes' clocks differ.
    params = fraud.FraudParams()
    now = 1_700_000_000.0
    times_ms = [int(now * 1000) - ago_s * 1000 for ago_s in (98, 91, 78, 74, 53, 44, 38, 23, 12, 7)]
    if not in_order:
        times_ms[3], times_ms[4] = times_ms[4], times_ms[3]
    deltas = [100, 120, 90, 110, 100, 105, 95, 100, 115, 85]
    history = "".join(f"{t:016x}{d:016x}" for t, d in zip(times_ms, deltas, strict=True))
    sketch = RecordingSketch(population)
    _, inbox = FraudActor.open_inbox(10)
    actor = FraudActor(
        policy=policy(params=params),
        ranking=None,  # type: ignore[arg-type]  # _judge() is handed the admission's answer
        ledger=None,  # type: ignore[arg-type]
        postgres=None,  # type: ignore[arg-type]
        key_prefix="t",
        inbox=inbox,
        queue_size=10,
        node_id="n",
    )
    actor._populations["score"] = sketch  # type: ignore[assignment]
    admission, _ = pending("n1")
    admission = replace(admission, delta=100, delta_max=1000)

    verdict = actor._judge(admission, [0, 0, history, 1, 0, 1, 0, 1], now)

    assert verdict.decision == "admitted"
    assert verdict.assessment is not None and verdict.assessment.decision == "allow"
    assert ("velocity" in verdict.assessment.measures["velocity"]) == (population is not None)
    times = [at / 1000.0 for at in times_ms]
    expected = fraud.user_velocity(times, deltas, now, 100, params.velocity_window_s)
    assert repr(sketch.observed) == repr([expected])


class RealRedis:
    """The ranking client's ``run``, straight to a real Redis."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def run(self, commands: list[Script]) -> list[Any]:
        return await self.store.pipeline(commands)


async def test_admit_keeps_the_newest_history_oldest_first(redis_url: str) -> None:
    _, inbox = FraudActor.open_inbox(10)
    async with aio_loop.open_loop(), open_redis(redis_url) as store:
        actor = FraudActor(
            policy=policy(limit=RateLimit(100_000, 1_000_000)),
            ranking=RealRedis(store),  # type: ignore[arg-type]
            ledger=None,  # type: ignore[arg-type]
            postgres=None,  # type: ignore[arg-type]
            key_prefix=f"t{time.monotonic_ns()}",
            inbox=inbox,
            queue_size=10,
            node_id="n",
        )
        start_ms = 1_700_000_000_000
        # Negative, large (up to 2^53, a Lua number's exact integers) and past int64.
        deltas = [-5, 2**53, 2**63 - 1] + [100 + i for i in range(fraud.HISTORY_MAX + 3)]
        sent: list[int] = []
        for i, delta in enumerate(deltas):
            admission, sub = pending(f"n{i}")
            admission = replace(admission, delta=delta, delta_min=-10, delta_max=2**63 - 1)
            at_ms = start_ms + 1000 * i
            script = actor._admit_script([_Pending(admission, sub, Reply())], at_ms / 1000)
            [[result]] = await store.pipeline([script])
            assert result[0] == 0, result
            assert history_fields(result[2]) == tuple(sent[-2 * fraud.HISTORY_MAX :])
            # Clamped to the largest double a signed 64-bit integer holds.
            sent += [at_ms, min(delta, 2**63 - 1024)]


def test_history_fields_takes_the_newest_it_can_use() -> None:
    pairs = [(i, -i) for i in range(100)]
    held = "".join(f"{t:016x}{d & 0xFFFFFFFFFFFFFFFF:016x}" for t, d in pairs)
    fields = history_fields(held)
    assert len(fields) == 2 * fraud.HISTORY_MAX
    assert fields[:2] == (100 - fraud.HISTORY_MAX, fraud.HISTORY_MAX - 100)
    assert fields[-2:] == (99, -99)
    assert history_fields("") == ()
