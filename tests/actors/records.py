"""What the actor tests hand their actors."""

from __future__ import annotations

from protocol.leaderboards import Submission


def submission(nonce: str, *, ip: str | None = None) -> Submission:
    """A submission of 1 point to global by one player, told apart by its nonce."""
    return Submission(
        user_id="u",
        leaderboard="global",
        delta=1,
        action_type="score",
        token_hash=b"h",
        nonce=nonce,
        ip=ip,
        user_agent=None,
    )
