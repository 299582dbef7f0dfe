"""Migrations against a real PostgreSQL: in order, once, safe with nodes starting together."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio_asyncio

from server.migrations import MigrationError, load_migrations, status
from server.stores.pg_store import open_postgres


def test_shipped_migrations_are_numbered_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.sql.strip() for m in migrations)


def test_status_compares_versions_and_checksums() -> None:
    migrations = load_migrations()
    first = migrations[0]
    assert status(migrations, {}).pending == tuple(m.version for m in migrations)
    assert not status(migrations, {}).current
    all_applied = {m.version: m.checksum for m in migrations}
    assert status(migrations, all_applied).current
    tampered = all_applied | {first.version: "0" * 64}
    assert status(migrations, tampered).mismatched == (first.version,)


async def test_migrations_apply_once_and_are_idempotent(empty_database: str) -> None:
    migrations = load_migrations()
    async with trio_asyncio.open_loop(), open_postgres(empty_database) as pg:
        first = await pg.apply_migrations(migrations)
        second = await pg.apply_migrations(migrations)
        assert first == tuple(m.version for m in migrations)
        assert second == ()
        assert (await pg.migration_status(migrations)).current
        rows = await pg.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in migrations
        ]


async def test_two_nodes_migrating_at_once_apply_each_migration_exactly_once(
    empty_database: str,
) -> None:
    migrations = load_migrations()
    results: list[tuple[int, ...]] = []

    async def node_start() -> None:
        async with open_postgres(empty_database, min_size=1, max_size=1) as pg:
            results.append(await pg.apply_migrations(migrations))

    async with trio_asyncio.open_loop():
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(node_start)
        applied = sorted(v for result in results for v in result)
        assert applied == [m.version for m in migrations]
        async with open_postgres(empty_database) as pg:
            assert (await pg.migration_status(migrations)).current


async def test_an_edited_migration_stops_start_up(database: str) -> None:
    migrations = load_migrations()
    edited = (dataclasses.replace(migrations[0], sql=migrations[0].sql + "\n-- edited"),)
    async with trio_asyncio.open_loop(), open_postgres(database) as pg:
        with pytest.raises(MigrationError, match="differ from the code"):
            await pg.apply_migrations(edited + migrations[1:])
        assert (await pg.migration_status(edited)).mismatched == (migrations[0].version,)


async def test_schema_has_the_seed_tables_and_columns(database: str) -> None:
    expected = {
        "users": {"id", "username", "email", "current_score", "created_at", "updated_at"},
        "score_history": {
            "id", "user_id", "leaderboard_id", "score_increment", "old_score", "new_score",
            "action_type", "action_token_hash", "ip_address", "user_agent", "created_at",
        },
        "fraud_logs": {"id", "user_id", "event_type", "risk_score", "metadata", "created_at"},
        "user_sessions": {"session_id", "user_id", "created_at", "expires_at", "metadata"},
        "used_nonces": {"nonce", "user_id", "leaderboard_id", "created_at"},
        "leaderboards": {"id", "sort_order", "operator", "reset_schedule"},
        "leaderboard_records": {"leaderboard_id", "period", "user_id", "score", "reached_at"},
    }  # fmt: skip
    async with trio_asyncio.open_loop(), open_postgres(database) as pg:
        rows = await pg.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        )
        columns: dict[str, dict[str, str]] = {}
        for row in rows:
            columns.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
        for table, names in expected.items():
            assert names <= set(columns[table]), table
        assert columns["score_history"]["ip_address"] == "inet"
        assert columns["fraud_logs"]["metadata"] == "jsonb"
        assert columns["fraud_logs"]["risk_score"] == "numeric"
        assert columns["users"]["current_score"] == "bigint"
        boards = await pg.fetch("SELECT id, sort_order, operator FROM leaderboards")
        assert boards == [{"id": "global", "sort_order": "desc", "operator": "incr"}]


async def test_schema_enforces_uniqueness_the_score_path_relies_on(database: str) -> None:
    async with trio_asyncio.open_loop(), open_postgres(database) as pg:
        user = (await pg.fetch("INSERT INTO users (username) VALUES ('ann') RETURNING id"))[0]["id"]
        await pg.execute(
            "INSERT INTO used_nonces (nonce, user_id, leaderboard_id) VALUES ('n1', $1, 'global')",
            user,
        )
        with pytest.raises(Exception, match="duplicate key"):
            await pg.execute(
                "INSERT INTO used_nonces (nonce, user_id, leaderboard_id) "
                "VALUES ('n1', $1, 'global')",
                user,
            )
        with pytest.raises(Exception, match="duplicate key"):
            await pg.execute("INSERT INTO users (username) VALUES ('ann')")
