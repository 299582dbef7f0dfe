"""A submission the actors never finish is answered 503 at its deadline, and its nonce freed.

The actors are stand-ins here — a fraud actor that keeps what it is handed
and answers only when the test says, a ranking client that records released
nonces — on Trio's autojump clock, so the deadline is exact and nothing
sleeps. The path through the real actors, stores included, is tested in
``tests/server/test_score_path.py``.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import outcome
import pytest
import trio
from trio.testing import MockClock

from actors.fraud import Verdict
from actors.reply import Reply
from config import Settings
from protocol import action_token
from protocol.errors import PodiumError, Unavailable
from protocol.jwt_keys import AccessClaims
from protocol.leaderboards import Board, LedgerResult
from server.score_path import Ack, ScorePath

TIMEOUT_S = 5.0
PLAYER = AccessClaims(
    user_id="0b7e3a52-6d1c-4c8e-9a1f-2f4d5e6a7b8c",
    session_id=None,
    issuer="podium",
    expires_at=2**40,
)


class HeldFraud:
    """Keeps every submission handed to it, with its reply, unanswered."""

    def __init__(self) -> None:
        self.held: list[tuple[Any, Any, Reply]] = []

    def submit_nowait(self, admission: Any, submission: Any, reply: Reply) -> None:
        self.held.append((admission, submission, reply))


class Releases:
    def __init__(self) -> None:
        self.nonces: list[str] = []
        self.claims: list[str] = []

    def release_nonce_nowait(self, nonce: str, claim: str) -> None:
        self.nonces.append(nonce)
        self.claims.append(claim)


class OneBoard:
    def board(self, board_id: str) -> Board | None:
        return object() if board_id == "global" else None  # type: ignore[return-value]


class Parts(NamedTuple):
    path: ScorePath
    fraud: HeldFraud
    releases: Releases
    kid: str
    key: str

    def token(self) -> tuple[str, str]:
        """A fresh action token for PLAYER, and its nonce."""
        text, claims = action_token.mint(
            user_id=PLAYER.user_id,
            leaderboard="global",
            action_type="score",
            delta=3,
            kid=self.kid,
            key=self.key,
            now=time.time(),
            ttl_s=300,
        )
        return text, claims.nonce


@pytest.fixture
def parts(offline_settings: Settings) -> Parts:
    settings = offline_settings.replace(submit_timeout_s=TIMEOUT_S)
    fraud, releases = HeldFraud(), Releases()
    path = ScorePath(
        settings,
        catalog=OneBoard(),  # type: ignore[arg-type]
        ranking=releases,  # type: ignore[arg-type]
        fraud=fraud,  # type: ignore[arg-type]
    )
    assert settings.action_key is not None
    return Parts(path, fraud, releases, settings.action_key_id, settings.action_key)


def start(path: ScorePath, text: str, answers: list[Ack | PodiumError]) -> None:
    path.start(PLAYER, text, ip="10.0.0.1", user_agent="test", done=answers.append)


async def test_a_submission_nobody_finishes_gets_503_at_its_deadline(
    parts: Parts, autojump_clock: MockClock
) -> None:
    path, fraud, releases, *_ = parts
    text, nonce = parts.token()
    async with trio.open_nursery() as nursery:
        await nursery.start(path.run)
        began = trio.current_time()
        with pytest.raises(Unavailable) as refused:
            await path.submit(PLAYER, text, ip="10.0.0.1", user_agent="test")
        assert trio.current_time() - began == TIMEOUT_S
        assert refused.value.code == "commit_timeout"
        assert len(fraud.held) == 1
        # The player may retry the same token: its claim in Redis is given back,
        # by the value this attempt claimed it with.
        assert releases.nonces == [nonce]
        ((admission, _, _),) = fraud.held
        assert releases.claims == [admission.claim]
        # A retry claims with a value of its own, so the first attempt's late
        # release cannot take the retry's claim away.
        with pytest.raises(Unavailable):
            await path.submit(PLAYER, text, ip="10.0.0.1", user_agent="test")
        assert fraud.held[1][0].nonce == nonce
        assert fraud.held[1][0].claim != admission.claim
        assert path.in_flight == 0
        nursery.cancel_scope.cancel()


async def test_an_answer_after_the_deadline_is_dropped_and_a_late_failure_frees_the_nonce(
    parts: Parts, autojump_clock: MockClock
) -> None:
    path, fraud, releases, *_ = parts
    late_fail, fail_nonce = parts.token()
    late_ok, _ = parts.token()
    answers: list[Ack | PodiumError] = []
    both_answered = trio.Event()

    def done(result: Ack | PodiumError) -> None:
        answers.append(result)
        if len(answers) == 2:
            both_answered.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(path.run)
        began = trio.current_time()
        for text in (late_fail, late_ok):
            path.start(PLAYER, text, ip="10.0.0.1", user_agent="test", done=done)
        with trio.fail_after(2 * TIMEOUT_S):  # virtual time: fails rather than hangs
            await both_answered.wait()
        assert trio.current_time() - began == TIMEOUT_S
        assert [a.code for a in answers if isinstance(a, PodiumError)] == ["commit_timeout"] * 2
        released_at_deadline = len(releases.nonces)
        # The ledger fails the first after all (its claim must be freed again:
        # the fraud actor may have claimed it after the deadline freed it) and
        # commits the second: neither is answered twice.
        (_, _, fail_reply), (_, _, ok_reply) = fraud.held
        fail_reply(outcome.Error(Unavailable("postgres is down")))
        ok_reply(outcome.Value((LedgerResult(status="ok", old_score=0, new_score=3), 1)))
        assert len(answers) == 2
        assert releases.nonces[released_at_deadline:] == [fail_nonce]
        nursery.cancel_scope.cancel()


async def test_each_stage_answers_through_the_same_reply(
    parts: Parts, autojump_clock: MockClock
) -> None:
    path, fraud, releases, *_ = parts
    refused, committed = parts.token(), parts.token()
    answers: list[Ack | PodiumError] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(path.run)
        start(path, refused[0], answers)
        start(path, committed[0], answers)
        assert path.in_flight == 2
        (_, _, refuse), (_, submission, commit) = fraud.held
        refuse(outcome.Value(Verdict("rate_limited", retry_after_s=1.5)))
        commit(outcome.Value((LedgerResult(status="ok", old_score=4, new_score=7), 2)))
        limited, ack = answers
        assert isinstance(limited, PodiumError) and limited.code == "rate_limited"
        assert ack == Ack(
            leaderboard="global", user_id=PLAYER.user_id, old_score=4, new_score=7, rank=2
        )
        assert submission.nonce == committed[1]
        # Rate limited spent nothing and committed consumed its nonce: none given back.
        assert releases.nonces == []
        assert path.in_flight == 0
        nursery.cancel_scope.cancel()
