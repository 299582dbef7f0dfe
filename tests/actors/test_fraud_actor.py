"""The fraud actor's hand-off: admitted submissions go on to the ledger, refused ones are
answered, and one past its deadline is dropped before anything is claimed for it.

Redis and the ledger are stand-ins that record what reaches them; the admission
script itself runs against a real Redis in ``tests/server/test_fraud_path.py``.
"""

from __future__ import annotations

from typing import Any

import outcome
import trio
from trio.testing import wait_all_tasks_blocked

from actors.fraud import Admission, FraudActor, FraudPolicy, RateLimit, Verdict
from protocol import fraud
from protocol.leaderboards import Submission
from server.stores.redis_store import Script
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
        return [[[self.statuses.get(n, 0), 1500, [], 1, 0, 1, 0, 1] for n in nonces]]


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
        policy=FraudPolicy(
            enabled=False,
            params=fraud.FraudParams(),
            user_limit=RateLimit(10, 10),
            ip_limit=RateLimit(10, 10),
            shadow_ban_blocks=0,
            shadow_ban_window_s=60,
        ),
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
