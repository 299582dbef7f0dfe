"""The rank order's encoding in a sorted set, cursors and board definitions (pure)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import BadRequest, Unprocessable
from protocol.leaderboards import (
    decode_cursor,
    encode_cursor,
    parse_board_definition,
    sorted_set_member,
)

records = st.lists(
    st.tuples(
        st.integers(-(2**53) + 1, 2**53 - 1),  # score
        st.integers(0, 2**52),  # reached_at_us
        st.uuids().map(str),  # user
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda r: r[2],
)


def redis_order(rows: list[tuple[int, str]], *, reverse: bool) -> list[str]:
    """How Redis orders (score, member): ZRANGE ascending, ZREVRANGE reversing both keys."""
    ordered = sorted(rows, key=lambda r: (r[0], r[1].encode()), reverse=reverse)
    return [member.split(":", 1)[1] for _, member in ordered]


@given(records)
def test_descending_boards_rank_higher_scores_then_earlier_times_first(
    rows: list[tuple[int, int, str]],
) -> None:
    members = [(score, sorted_set_member(user, at, descending=True)) for score, at, user in rows]
    expected = [user for _, _, user in sorted(rows, key=lambda r: (-r[0], r[1], r[2]))]
    got = redis_order(members, reverse=True)
    # Equal score and equal microsecond: any fixed order will do; compare what is decided.
    decided = {(s, t) for s, t, _ in rows}
    if len(decided) == len(rows):
        assert got == expected


@given(records)
def test_ascending_boards_rank_lower_scores_then_earlier_times_first(
    rows: list[tuple[int, int, str]],
) -> None:
    members = [(score, sorted_set_member(user, at, descending=False)) for score, at, user in rows]
    expected = [user for _, _, user in sorted(rows, key=lambda r: (r[0], r[1], r[2]))]
    assert redis_order(members, reverse=False) == expected


def test_cursor_round_trips_and_rejects_garbage() -> None:
    user = str(uuid.uuid4())
    assert decode_cursor(encode_cursor(user, 10)) == (user, 10)
    for garbage in ("", "%%%", "bm90IGpzb24", encode_cursor(user, 0), "WzEsMl0"):
        with pytest.raises(BadRequest):
            decode_cursor(garbage)


def test_board_definitions_are_checked() -> None:
    board = parse_board_definition({"id": "weekly-eu", "sort_order": "asc", "operator": "best"})
    assert (board.id, board.sort_order, board.operator, board.reset_schedule) == (
        "weekly-eu", "asc", "best", None,
    )  # fmt: skip
    with pytest.raises(BadRequest):
        parse_board_definition({"id": "Has Spaces"})
    for bad in ({"sort_order": "up"}, {"operator": "mul"}, {"reset_schedule": "hourly"}):
        with pytest.raises(Unprocessable):
            parse_board_definition({"id": "ok"} | bad)
