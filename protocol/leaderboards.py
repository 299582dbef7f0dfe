"""Leaderboards as data: boards, entries, committed record states, the rank order.

Pure: no I/O. The ranking order is a total order on (score, reached_at,
user_id): a better score ranks first; on equal scores whoever reached the
score **first** ranks first; the user id breaks what is left.

How that order is kept in a Redis sorted set: the score is the set's score,
and the member is ``<tiebreak>:<user_id>`` where ``tiebreak`` is 14 hex
digits of the microsecond the score was reached — inverted for descending
boards. Redis orders equal scores by member, byte-wise: ascending boards
read with ZRANGE (earliest first), descending boards with ZREVRANGE, which
reverses the member order too, hence the inversion. Scores must stay within
±(2**53 - 1), where a double is still exact; the ledger refuses others.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Final, Literal

from protocol.errors import BadRequest, Unprocessable

BOARD_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_SCORE: Final = 2**53 - 1
_TIEBREAK_MAX: Final = 16**14 - 1
# Far beyond any board's size, and small enough for Redis to take as a rank.
_MAX_CURSOR_RANK: Final = 10**12

SortOrder = Literal["desc", "asc"]
Operator = Literal["incr", "set", "best", "decr"]
ResetSchedule = Literal["daily", "weekly", "monthly"]

SORT_ORDERS: Final = ("desc", "asc")
OPERATORS: Final = ("incr", "set", "best", "decr")
RESET_SCHEDULES: Final = ("daily", "weekly", "monthly")


@dataclass(frozen=True, slots=True)
class Board:
    """A leaderboard's definition."""

    id: str
    sort_order: SortOrder
    operator: Operator
    reset_schedule: ResetSchedule | None
    current_period: int

    @property
    def descending(self) -> bool:
        return self.sort_order == "desc"


@dataclass(frozen=True, slots=True)
class Entry:
    """One ranked row. ``rank`` is 1-based."""

    rank: int
    user_id: str
    username: str
    score: int

    def as_json(self) -> dict[str, int | str]:
        return {
            "rank": self.rank,
            "user_id": self.user_id,
            "username": self.username,
            "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class RecordState:
    """A user's record on a board after a commit; ``version`` grows with each change."""

    leaderboard: str
    period: int
    descending: bool
    user_id: str
    username: str
    score: int
    reached_at_us: int
    version: int

    @property
    def member(self) -> str:
        return sorted_set_member(self.user_id, self.reached_at_us, descending=self.descending)


def sorted_set_member(user_id: str, reached_at_us: int, *, descending: bool) -> str:
    """The sorted-set member encoding the tie-break (see the module docstring)."""
    tiebreak = _TIEBREAK_MAX - reached_at_us if descending else reached_at_us
    return f"{tiebreak:014x}:{user_id}"


def check_board_id(board_id: str) -> str:
    if not BOARD_ID_RE.fullmatch(board_id):
        raise BadRequest(
            "a leaderboard id is 1-64 characters: a-z, 0-9, '_' and '-', starting with a "
            "letter or digit",
            code="bad_leaderboard_id",
        )
    return board_id


def parse_board_definition(body: object, *, board_id: str | None = None) -> Board:
    """A board from an admin request body ``{id, sort_order, operator, reset_schedule}``."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="bad_request")
    ident = board_id if board_id is not None else body.get("id")
    if not isinstance(ident, str):
        raise Unprocessable('"id" must be a string', code="invalid_value")
    check_board_id(ident)
    sort_order = body.get("sort_order", "desc")
    operator = body.get("operator", "incr")
    reset = body.get("reset_schedule")
    if sort_order not in SORT_ORDERS:
        raise Unprocessable('"sort_order" must be "desc" or "asc"', code="invalid_value")
    if operator not in OPERATORS:
        raise Unprocessable(
            '"operator" must be one of "incr", "set", "best", "decr"', code="invalid_value"
        )
    if reset is not None and reset not in RESET_SCHEDULES:
        raise Unprocessable(
            '"reset_schedule" must be null, "daily", "weekly" or "monthly"', code="invalid_value"
        )
    return Board(
        id=ident,
        sort_order=sort_order,
        operator=operator,
        reset_schedule=reset,
        current_period=0,
    )


def encode_cursor(user_id: str, rank: int) -> str:
    """An opaque keyset cursor: continue after ``user_id`` (or after ``rank`` if it moved away)."""
    raw = json.dumps([user_id, rank], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """The (user_id, rank) in ``cursor``; :class:`BadRequest` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        user_id, rank = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("the cursor is not valid", code="bad_cursor") from None
    if not isinstance(user_id, str) or not isinstance(rank, int) or isinstance(rank, bool):
        raise BadRequest("the cursor is not valid", code="bad_cursor")
    if not 1 <= rank <= _MAX_CURSOR_RANK or len(user_id) > 64:
        raise BadRequest("the cursor is not valid", code="bad_cursor")
    return user_id, rank


@dataclass(frozen=True, slots=True)
class Submission:
    """An accepted score submission, on its way to the ledger."""

    user_id: str
    leaderboard: str
    delta: int
    action_type: str
    token_hash: bytes
    nonce: str
    ip: str | None
    user_agent: str | None


LedgerStatus = Literal[
    "ok", "nonce_used", "unknown_leaderboard", "unknown_user", "banned", "score_out_of_range"
]


@dataclass(frozen=True, slots=True)
class LedgerResult:
    """What committing one submission did. ``state`` is set when status is "ok"."""

    status: LedgerStatus
    old_score: int | None = None
    new_score: int | None = None
    changed: bool = False
    state: RecordState | None = None
