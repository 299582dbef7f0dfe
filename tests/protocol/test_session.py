"""The session state table and the token bucket: synchronous, no event loop."""

from __future__ import annotations

import pytest

from protocol.messages import (
    Auth,
    ClientMessage,
    CloseCode,
    Ping,
    ProtocolError,
    Submit,
    Subscribe,
    Unsubscribe,
)
from protocol.ratelimit import TokenBucket
from protocol.session import RULES, Phase, Session


def code_of(session: Session, message: ClientMessage) -> str | None:
    try:
        session.check(message)
    except ProtocolError as exc:
        return exc.code
    return None


def test_the_table_covers_every_phase_and_message() -> None:
    kinds = {Auth, Subscribe, Unsubscribe, Submit, Ping}
    for phase in (Phase.CONNECTED, Phase.AUTHED):
        assert {kind for (p, kind) in RULES if p is phase} == kinds


def test_before_auth() -> None:
    session = Session(allow_spectators=True, max_subscriptions=2)
    assert code_of(session, Ping(id=1)) is None
    assert code_of(session, Subscribe("global", 10)) is None
    assert code_of(session, Submit(id="s", action_token="t")) == "auth_required"
    assert code_of(session, Unsubscribe("global")) == "not_subscribed"
    closed = Session(allow_spectators=False, max_subscriptions=2)
    assert code_of(closed, Subscribe("global", 10)) == "auth_required"


def test_after_auth() -> None:
    session = Session(allow_spectators=False, max_subscriptions=2)
    session.authed("u1")
    assert session.phase is Phase.AUTHED and session.user_id == "u1"
    assert code_of(session, Auth("again")) == "already_authed"
    assert code_of(session, Submit(id="s", action_token="t")) is None
    assert code_of(session, Subscribe("global", 10)) is None


def test_subscription_limit_and_unsubscribe() -> None:
    session = Session(allow_spectators=True, max_subscriptions=2)
    for board in ("a", "b"):
        session.check(Subscribe(board, 10))
        session.subscribed(board)
    assert code_of(session, Subscribe("c", 10)) == "too_many_subscriptions"
    assert code_of(session, Subscribe("a", 5)) is None  # re-subscribing is not a new one
    session.check(Unsubscribe("a"))
    session.unsubscribed("a")
    assert code_of(session, Subscribe("c", 10)) is None


def test_failed_auth_closes_with_4001_and_nothing_is_accepted_after() -> None:
    session = Session(allow_spectators=True, max_subscriptions=2)
    error = session.auth_failed("bad token")
    assert (error.code, error.close) == ("unauthorized", CloseCode.UNAUTHORIZED)
    assert code_of(session, Ping(id=1)) == "closed"


def test_errors_keep_the_submit_id() -> None:
    session = Session(allow_spectators=True, max_subscriptions=2)
    with pytest.raises(ProtocolError) as caught:
        session.check(Submit(id="c7", action_token="t"))
    assert caught.value.id == "c7"


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.retry_after_s() == pytest.approx(0.1)
    assert not bucket.take(0.05)
    assert bucket.take(0.15)  # a tenth of a second buys one more
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]  # capped at the burst
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, burst=1, now=0.0)
