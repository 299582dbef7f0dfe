"""The ledger's set-based batch function against the per-item loop it replaced.

``podium_apply_scores`` (migration 0004) must answer and change exactly what
``podium_apply_scores_serial`` (the loop of 0002) does. Random batches over
every operator and sort order, unknown boards and users, a banned user,
reused nonces, and scores driven past the range Redis ranks exactly run
through both, on the same state: the loop inside a transaction that is then
rolled back, the set form in one that commits. Answers and the tables must
agree, timestamps aside. While the set form runs, the loop is renamed away,
so a batch meant for the set form (four items or more, one per record and
nonce) that fell back to the loop fails.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import asyncpg
import trio_asyncio

CALL = (
    "SELECT * FROM {fn}($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], "
    "$6::text[], $7::inet[], $8::text[])"
)
SERIAL = "podium_apply_scores_serial"
SIGNATURE = "(uuid[], text[], bigint[], text[], bytea[], text[], inet[], text[])"
LIMIT = 9007199254740991  # 2^53 - 1
SET_FORM_MIN = 4  # smaller batches take the loop
BOARDS = {  # id: (sort order, operator)
    "global": ("desc", "incr"),
    "drop": ("desc", "decr"),
    "latest": ("desc", "set"),
    "high": ("desc", "best"),
    "fastest": ("asc", "best"),
}


async def state(conn: asyncpg.Connection) -> dict[str, Any]:
    """Every table the batch function writes, timestamps and serial ids aside."""
    return {
        "records": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT leaderboard_id, period, user_id, score, version "
                "FROM leaderboard_records ORDER BY 1, 2, 3"
            )
        ],
        "nonces": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT nonce, user_id, leaderboard_id FROM used_nonces ORDER BY 1"
            )
        ],
        "history": sorted(
            tuple(r)
            for r in await conn.fetch(
                "SELECT user_id, leaderboard_id, period, score_increment, old_score, new_score, "
                "action_type, action_token_hash, ip_address, user_agent FROM score_history"
            )
        ),
        "totals": [
            tuple(r) for r in await conn.fetch("SELECT id, current_score FROM users ORDER BY 1")
        ],
    }


async def answers(conn: asyncpg.Connection, fn: str, batch: tuple[list[Any], ...]) -> list[Any]:
    rows = await conn.fetch(CALL.format(fn=fn), *batch)
    assert [row["idx"] for row in rows] == list(range(1, len(batch[0]) + 1))
    out = []
    for row in rows:
        record = None
        if row["status"] == "ok":
            # reached_at is the record's own, as this batch or an earlier one left it
            # (unless a later item of this batch changed the record again).
            record = await conn.fetchrow(
                "SELECT reached_at, version FROM leaderboard_records "
                "WHERE leaderboard_id = $1 AND period = $2 AND user_id = $3",
                batch[1][row["idx"] - 1],
                row["period"],
                batch[0][row["idx"] - 1],
            )
            assert record is not None and row["version"] <= record["version"]
            if row["version"] == record["version"]:
                assert row["reached_at"] == record["reached_at"]
        out.append({k: v for k, v in row.items() if k != "reached_at"})
    return out


def make_batch(
    rnd: random.Random,
    users: list[uuid.UUID],
    used: list[str],
    *,
    distinct: bool,
) -> tuple[list[Any], ...]:
    size = rnd.randint(1, 12)
    boards = [*BOARDS, "nowhere"]
    items: list[tuple[Any, ...]] = []
    seen: set[tuple[str, uuid.UUID]] = set()
    nonces: set[str] = set()
    for _ in range(size * 3):
        if len(items) == size:
            break
        board = rnd.choice(boards)
        user = rnd.choice(users)
        nonce = rnd.choice(used) if used and rnd.random() < 0.15 else uuid.uuid4().hex
        if distinct and ((board, user) in seen or nonce in nonces):
            continue
        seen.add((board, user))
        nonces.add(nonce)
        roll = rnd.random()
        if roll < 0.1:
            delta = rnd.choice([LIMIT, -LIMIT, LIMIT - 5])  # the next step leaves the range
        elif roll < 0.2:
            delta = rnd.randint(-50, 0)
        else:
            delta = rnd.randint(1, 1000)
        items.append((user, board, delta, nonce))
    if not distinct:  # a second item on one record, or a second with one nonce
        user, board, delta, nonce = items[0]
        if rnd.random() < 0.5:
            items.append((user, board, delta, uuid.uuid4().hex))
        else:
            items.append((rnd.choice(users[1:]), rnd.choice(list(BOARDS)), delta, nonce))
    items.sort(key=lambda item: (item[1], str(item[0])))  # the ledger's order
    n = len(items)
    return (
        [item[0] for item in items],
        [item[1] for item in items],
        [item[2] for item in items],
        ["score"] * n,
        [rnd.randbytes(32) for _ in range(n)],
        [item[3] for item in items],
        [rnd.choice(["10.0.0.1", None, "2001:db8::1"]) for _ in range(n)],
        [rnd.choice(["agent", None]) for _ in range(n)],
    )


async def compare(dsn: str, batches: int, seed: int) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    seen: dict[str, int] = {}
    try:
        for board, (order, operator) in BOARDS.items():
            await conn.execute(
                "INSERT INTO leaderboards (id, sort_order, operator) VALUES ($1, $2, $3) "
                "ON CONFLICT (id) DO NOTHING",
                board,
                order,
                operator,
            )
        users = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO users (username) SELECT 'p' || g FROM generate_series(1, 6) g "
                "RETURNING id"
            )
        ]
        await conn.execute("UPDATE users SET status = 'banned' WHERE id = $1", users[0])
        users.append(uuid.uuid4())  # nobody
        rnd = random.Random(seed)
        used: list[str] = []
        for number in range(batches):
            distinct = number % 5 != 4
            batch = make_batch(rnd, users, used, distinct=distinct)
            set_form = distinct and len(batch[0]) >= SET_FORM_MIN
            loop = conn.transaction()
            await loop.start()
            try:
                expected = await answers(conn, SERIAL, batch)
                expected_state = await state(conn)
            finally:
                await loop.rollback()
            async with conn.transaction():
                if set_form:  # it must not take the loop's path
                    await conn.execute(f"ALTER FUNCTION {SERIAL}{SIGNATURE} RENAME TO hidden")
                got = await answers(conn, "podium_apply_scores", batch)
                got_state = await state(conn)
                if set_form:
                    await conn.execute(f"ALTER FUNCTION hidden{SIGNATURE} RENAME TO {SERIAL}")
                    seen["set form"] = seen.get("set form", 0) + 1
            assert got == expected, (number, batch)
            assert got_state == expected_state, number
            used += batch[5]
            for row in got:
                seen[row["status"]] = seen.get(row["status"], 0) + 1
    finally:
        await conn.close()
    return seen


async def test_the_set_form_answers_and_changes_what_the_loop_does(database: str) -> None:
    async with trio_asyncio.open_loop():
        seen = await trio_asyncio.aio_as_trio(compare)(database, 150, seed=7)
    # Every answer was exercised, and most items applied.
    assert seen.pop("set form") > 60, seen
    assert set(seen) == {
        "ok",
        "nonce_used",
        "unknown_leaderboard",
        "unknown_user",
        "banned",
        "score_out_of_range",
    }, seen
    assert seen["ok"] > sum(seen.values()) / 3, seen


async def race(dsn: str) -> tuple[list[Any], list[Any], tuple[int, int]]:
    """Two batches score one new player at once: the second waits for the first's
    placeholder, then takes the record it committed."""
    first, second, watcher = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        user = await first.fetchval("INSERT INTO users (username) VALUES ('new') RETURNING id")
        others = [
            r["id"]
            for r in await first.fetch(
                "INSERT INTO users (username) SELECT 'o' || g FROM generate_series(1, 6) g "
                "RETURNING id"
            )
        ]
        batches = iter([others[:3], others[3:]])  # the set form's size; no other lock shared

        def one(delta: int) -> tuple[list[Any], ...]:
            users = sorted([user, *next(batches)], key=str)
            n = len(users)
            return (
                users, ["global"] * n, [delta] * n, ["score"] * n, [b"h" * 32] * n,
                [uuid.uuid4().hex for _ in users], [None] * n, [None] * n,
            )  # fmt: skip

        call = CALL.format(fn="podium_apply_scores")
        async with first.transaction():
            ahead = await first.fetch(call, *one(5))
            behind = asyncio.ensure_future(second.fetch(call, *one(7)))
            # Until the second batch queues on the first one's lock (PostgreSQL
            # says so only through pg_locks).
            async with asyncio.timeout(10):
                waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
                while not await watcher.fetchval(waiting):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        after = await behind
        record = await watcher.fetchrow(
            "SELECT score, version FROM leaderboard_records WHERE user_id = $1", user
        )
        mine = [user == u for u in sorted([user, *others[:3]], key=str)]
        ahead = [row for row, me in zip(ahead, mine, strict=True) if me]
        mine = [user == u for u in sorted([user, *others[3:]], key=str)]
        after = [row for row, me in zip(after, mine, strict=True) if me]
        return ahead, after, (record["score"], record["version"])
    finally:
        for conn in (first, second, watcher):
            await conn.close()


async def test_a_player_scored_by_two_batches_at_once_gets_both(database: str) -> None:
    async with trio_asyncio.open_loop():
        ahead, after, record = await trio_asyncio.aio_as_trio(race)(database)
    assert [(r["status"], r["old_score"], r["new_score"], r["version"]) for r in ahead] == [
        ("ok", 0, 5, 1)
    ]
    assert [(r["status"], r["old_score"], r["new_score"], r["version"]) for r in after] == [
        ("ok", 5, 12, 2)
    ]
    assert record == (12, 2)
