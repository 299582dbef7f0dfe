"""The score path: from a player's JWT and action token to a committed, ranked score.

HTTP ``POST /v1/scores/update`` and the WebSocket ``submit`` message both
go through :class:`ScorePath`, so both keep the same promises:

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

A submission travels through those actors on its own — each hands it to the
next with its reply — and nobody waits between stages: :meth:`ScorePath.start`
sends it on its way and the last stage calls the submitter back. The
WebSocket connection actor writes its ack from that call, with no task per
submission; HTTP awaits it (:meth:`ScorePath.submit`). One task,
:meth:`ScorePath.run`, answers 503 for any submission not finished within
``submit_timeout_s``; the fraud and ledger actors then drop it if it has not
reached them yet, so that 503 means "not committed" unless it was already in
PostgreSQL's hands — and then a retry gets 409, as the answer says.

A submission that did not commit (503) or was refused before its nonce was
consumed gives its nonce back in Redis, so the client may retry the same
token — also when it is refused only after its deadline passed; a retry of
one that did commit gets 409, and so does a retry of a blocked one.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from actors.catalog import CatalogActor
from actors.fraud import Admission, FraudClient, Verdict
from actors.ranking import RankingClient
from actors.reply import OneShot
from config import Settings
from protocol import action_token
from protocol.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PodiumError,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from protocol.jwt_keys import AccessClaims
from protocol.leaderboards import LedgerResult, Submission

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


#: Called once with a submission's outcome: its :class:`Ack`, or the error to answer.
Done = Callable[["Ack | PodiumError"], None]


def action_keys(settings: Settings) -> dict[str, str]:
    """Action-token keys by id: the current one and any still accepted while rotating."""
    assert settings.action_key is not None
    keys = {settings.action_key_id: settings.action_key}
    for pair in (settings.action_retired_keys or "").split(","):
        if pair:
            kid, _, secret = pair.partition("=")
            keys.setdefault(kid, secret)
    return keys


class _Flight:
    """One submission on its way through the actors; it is their reply."""

    __slots__ = (
        "_path",
        "claim",
        "deadline",
        "done",
        "finished",
        "leaderboard",
        "nonce",
        "user_id",
    )

    def __init__(
        self,
        path: ScorePath,
        action: action_token.ActionClaims,
        claim: str,
        deadline: float,
        done: Done,
    ) -> None:
        self._path = path
        self.nonce = action.nonce
        self.claim = claim
        self.leaderboard = action.leaderboard
        self.user_id = action.user_id
        self.deadline = deadline
        self.done = done
        self.finished = False

    def __call__(self, value: outcome.Outcome[Any]) -> None:
        self._path._landed(self, value)

    @property
    def expired(self) -> bool:
        """Answered already: at its deadline (the actors then drop it; see actors.reply)."""
        return self.finished


class ScorePath:
    """See the module docstring. :meth:`run` must be running (the node supervises it)."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: CatalogActor,
        ranking: RankingClient,
        fraud: FraudClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._ranking = ranking
        self._fraud = fraud
        self._clock = clock
        self._keys = action_keys(settings)
        self._rules = action_token.parse_action_types(settings.action_types)
        # In flight, oldest first (insertion order): deadlines grow along it.
        self._flights: dict[_Flight, None] = {}
        # Each attempt's nonce claim: unique across nodes and attempts, which is all a
        # claim must be (only its holder may give it back); a counter behind a random
        # prefix costs no getrandom(2) per submission, as secrets.token_hex() would.
        self._claim_prefix = secrets.token_hex(8)
        self._claims = itertools.count()
        self._wake_run = trio.Event()

    @property
    def in_flight(self) -> int:
        """Submissions started and not yet finished."""
        return len(self._flights)

    def start(
        self,
        claims: AccessClaims,
        token: object,
        *,
        ip: str | None,
        user_agent: str | None,
        device: str | None = None,
        done: Done,
    ) -> None:
        """Check ``token`` and send the submission on its way, without waiting.

        ``done`` is called exactly once, soon, from whichever task finishes the
        submission: with the :class:`Ack`, or with the :class:`PodiumError`
        to answer (409, 429, 403, 404, 422, 503). It must not wait or raise.
        Raises the :class:`PodiumError` at once, without calling ``done``, for
        a token refused on sight (400/404/422) or a full queue (503).
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
        admission = Admission(
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
            claim=f"{self._claim_prefix}{next(self._claims):x}",
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
        flight = _Flight(
            self,
            action,
            admission.claim,
            trio.current_time() + self._settings.submit_timeout_s,
            done,
        )
        self._fraud.submit_nowait(admission, submission, flight)
        self._flights[flight] = None
        if len(self._flights) == 1:
            self._wake_run.set()

    async def submit(
        self,
        claims: AccessClaims,
        token: object,
        *,
        ip: str | None,
        user_agent: str | None,
        device: str | None = None,
    ) -> Ack:
        """:meth:`start`, and wait: the :class:`Ack`, or raises the :class:`PodiumError`."""
        reply = OneShot()
        self.start(
            claims,
            token,
            ip=ip,
            user_agent=user_agent,
            device=device,
            done=lambda result: reply(outcome.Value(result)),
        )
        result: Ack | PodiumError = await reply.wait()
        if isinstance(result, PodiumError):
            raise result
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer 503 for every submission still in flight at its deadline; never returns."""
        task_status.started()
        while True:
            if not self._flights:
                self._wake_run = trio.Event()
                await self._wake_run.wait()
                continue
            oldest = next(iter(self._flights))
            if oldest.deadline > trio.current_time():
                await trio.sleep_until(oldest.deadline)
                continue
            del self._flights[oldest]
            oldest.finished = True
            # Not committed, or not known to be: let the player retry the same
            # token. PostgreSQL still refuses a second commit (409).
            self._ranking.release_nonce_nowait(oldest.nonce, oldest.claim)
            log.warning(
                "score submission timed out",
                extra={"leaderboard": oldest.leaderboard, "user_id": oldest.user_id},
            )
            timeout = Unavailable(
                "the score could not be committed in time; retrying the same token is "
                "safe (409 means it was applied)",
                code="commit_timeout",
            )
            try:
                oldest.done(timeout)
            except Exception:
                log.exception("a submitter's done() failed")

    # ---- where a submission lands

    def _landed(self, flight: _Flight, value: outcome.Outcome[Any]) -> None:
        result = self._result(flight, value)
        if flight.finished:
            return  # answered at its deadline already
        flight.finished = True
        self._flights.pop(flight, None)
        flight.done(result)

    def _result(self, flight: _Flight, value: outcome.Outcome[Any]) -> Ack | PodiumError:
        """What to answer for ``value``; gives the nonce back where the player may retry."""
        if isinstance(value, outcome.Error):
            # Not committed: give the Redis claim back so the player may retry.
            self._ranking.release_nonce_nowait(flight.nonce, flight.claim)
            error = value.error
            if isinstance(error, PodiumError):
                return error
            log.error("a score submission failed", exc_info=error)
            return Unavailable("the score could not be committed", code="commit_failed")
        answer = value.unwrap()
        if isinstance(answer, Verdict):
            match answer.decision:
                case "nonce_used":
                    return _used()
                case "rate_limited":
                    return RateLimited(
                        "too many score submissions from this player or address; retry in "
                        f"{answer.retry_after_s:.1f} s",
                        retry_after_s=answer.retry_after_s,
                        code="rate_limited",
                    )
                case "blocked":
                    return Forbidden(
                        "this submission was refused by the fraud checks", code="fraud_blocked"
                    )
            # "admitted" goes on to the ledger, which answers instead.
            log.error("an admitted submission came back from the fraud actor uncommitted")
            self._ranking.release_nonce_nowait(flight.nonce, flight.claim)
            return Unavailable("the score could not be committed", code="commit_failed")
        result: LedgerResult
        rank: int | None
        result, rank = answer
        match result.status:
            case "ok":
                assert result.old_score is not None and result.new_score is not None
                return Ack(
                    leaderboard=flight.leaderboard,
                    user_id=flight.user_id,
                    old_score=result.old_score,
                    new_score=result.new_score,
                    rank=rank,
                )
            case "nonce_used":
                return _used()
        # Refused before the nonce was consumed in PostgreSQL: give it back in
        # Redis too, so a retry hears the same reason rather than 409.
        self._ranking.release_nonce_nowait(flight.nonce, flight.claim)
        match result.status:
            case "unknown_leaderboard":
                return NotFound(
                    f"no leaderboard {flight.leaderboard!r}", code="leaderboard_not_found"
                )
            case "unknown_user":
                return Unauthorized("the token's user does not exist", code="unknown_user")
            case "banned":
                return Forbidden("this account is banned", code="user_banned")
            case _:
                return Unprocessable(
                    "the new score would leave the range a leaderboard can hold",
                    code="score_out_of_range",
                )


def _used() -> Conflict:
    return Conflict("this action token was already used", code="action_token_used")
