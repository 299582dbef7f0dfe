"""The score path: from a player's JWT and action token to a committed, ranked score.

HTTP ``POST /v1/scores/update`` and the WebSocket ``submit`` message both
call :meth:`ScorePath.submit`, so both keep the same promises:

1. the JWT was checked by the caller (401 if bad, expired or revoked);
2. the action token is genuine, current, for this user and a known
   leaderboard, with a delta its action type allows (400/404/422);
3. the fraud actor admits it (:mod:`actors.fraud`): its nonce is claimed in
   Redis — turning concurrent duplicates away with 409 on every node at
   once — the player's and the IP's rate limits are spent (429), and its
   fraud risk is scored (403 ``fraud_blocked`` when blocked);
4. the ledger commits it in PostgreSQL, where the nonce is recorded in the
   same transaction (409 there too, so a flushed Redis reopens nothing);
5. the ranking actor applies it to Redis and answers with the rank.

A submission that did not commit (503) or was rate limited gives its nonce
back in Redis, so the client may retry the same token; a retry of one that
did commit gets 409, and so does a retry of a blocked one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from actors.catalog import CatalogActor
from actors.fraud import Admission, FraudClient
from actors.ledger import LedgerClient
from actors.ranking import RankingClient
from config import Settings
from protocol import action_token
from protocol.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from protocol.jwt_keys import AccessClaims
from protocol.leaderboards import Submission

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ack:
    leaderboard: str
    user_id: str
    old_score: int
    new_score: int
    rank: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "leaderboard": self.leaderboard,
            "user_id": self.user_id,
            "old_score": self.old_score,
            "new_score": self.new_score,
            "rank": self.rank,
        }


def action_keys(settings: Settings) -> dict[str, str]:
    """Action-token keys by id: the current one and any still accepted while rotating."""
    assert settings.action_key is not None
    keys = {settings.action_key_id: settings.action_key}
    for pair in (settings.action_retired_keys or "").split(","):
        if pair:
            kid, _, secret = pair.partition("=")
            keys.setdefault(kid, secret)
    return keys


class ScorePath:
    """See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: CatalogActor,
        ledger: LedgerClient,
        ranking: RankingClient,
        fraud: FraudClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._ledger = ledger
        self._ranking = ranking
        self._fraud = fraud
        self._clock = clock
        self._keys = action_keys(settings)
        self._rules = action_token.parse_action_types(settings.action_types)

    async def submit(
        self,
        claims: AccessClaims,
        token: object,
        *,
        ip: str | None,
        user_agent: str | None,
        device: str | None = None,
    ) -> Ack:
        """Check, admit, commit and rank one action token; the :class:`Ack`.

        ``device`` is what the client calls its device (``X-Device-Id``); the
        fraud engine falls back to ``user_agent`` without it.
        """
        if not isinstance(token, str):
            raise BadRequest('"action_token" must be a string', code="action_token_malformed")
        now = self._clock()
        action = action_token.verify(
            token,
            keys=self._keys,
            now=now,
            max_lifetime_s=self._settings.action_token_max_lifetime_s,
            leeway_s=self._settings.jwt_leeway_s,
        )
        if action.user_id != claims.user_id:
            raise BadRequest(
                "this action token was minted for another player", code="action_token_wrong_user"
            )
        if self._catalog.board(action.leaderboard) is None:
            raise NotFound(f"no leaderboard {action.leaderboard!r}", code="leaderboard_not_found")
        action_token.check_delta(
            action, self._rules, allow_unknown=self._settings.allow_unknown_action_types
        )
        rule = self._rules.get(action.action_type)
        verdict = await self._fraud.admit(
            Admission(
                user_id=claims.user_id,
                ip=ip,
                device=(device or user_agent or "")[:256] or None,
                leaderboard=action.leaderboard,
                action_type=action.action_type,
                delta=action.delta,
                delta_min=rule.min_delta if rule else min(action.delta, 0),
                delta_max=rule.max_delta if rule else max(action.delta, 1),
                nonce=action.nonce,
                # The Redis claim must outlive every moment the token could still verify.
                nonce_ttl_s=int(action.expires_at - now + self._settings.jwt_leeway_s) + 1,
            )
        )
        match verdict.decision:
            case "nonce_used":
                raise _used()
            case "rate_limited":
                raise RateLimited(
                    "too many score submissions from this player or address; retry in "
                    f"{verdict.retry_after_s:.1f} s",
                    retry_after_s=verdict.retry_after_s,
                    code="rate_limited",
                )
            case "blocked":
                raise Forbidden(
                    "this submission was refused by the fraud checks", code="fraud_blocked"
                )
        submission = Submission(
            user_id=claims.user_id,
            leaderboard=action.leaderboard,
            delta=action.delta,
            action_type=action.action_type,
            token_hash=action_token.token_hash(token),
            nonce=action.nonce,
            ip=ip,
            user_agent=user_agent[:512] if user_agent else None,
        )
        try:
            with trio.fail_after(self._settings.submit_timeout_s):
                result, rank = await self._ledger.submit(submission)
        except BaseException as exc:
            # Not committed (or not known to be): give the Redis claim back so
            # the player may retry; PostgreSQL still refuses a second commit.
            self._ranking.release_nonce_nowait(action.nonce)
            if isinstance(exc, trio.TooSlowError):
                raise Unavailable(
                    "the score could not be committed in time; retrying the same token is "
                    "safe (409 means it was applied)",
                    code="commit_timeout",
                ) from None
            raise
        match result.status:
            case "ok":
                assert result.old_score is not None and result.new_score is not None
                return Ack(
                    leaderboard=action.leaderboard,
                    user_id=claims.user_id,
                    old_score=result.old_score,
                    new_score=result.new_score,
                    rank=rank,
                )
            case "nonce_used":
                raise _used()
        # Refused before the nonce was consumed in PostgreSQL: give it back in
        # Redis too, so a retry hears the same reason rather than 409.
        self._ranking.release_nonce_nowait(action.nonce)
        match result.status:
            case "unknown_leaderboard":
                raise NotFound(
                    f"no leaderboard {action.leaderboard!r}", code="leaderboard_not_found"
                )
            case "unknown_user":
                raise Unauthorized("the token's user does not exist", code="unknown_user")
            case "banned":
                raise Forbidden("this account is banned", code="user_banned")
            case _:
                raise Unprocessable(
                    "the new score would leave the range a leaderboard can hold",
                    code="score_out_of_range",
                )


def _used() -> Conflict:
    return Conflict("this action token was already used", code="action_token_used")
