"""The PostgreSQL adapter: the only module that imports asyncpg.

asyncpg is an asyncio library; Podium runs it under Trio through
trio-asyncio. Every public method here is a Trio coroutine that crosses into
asyncio **once** and does all of its work there — one crossing costs about
160 µs, so a method is a whole unit of work (a batch, a transaction, a
migration run), never a single row.

*Resource handling*: :func:`open_postgres` owns a connection pool for the
duration of its ``async with`` block. It must run inside
``trio_asyncio.open_loop()``.

*Error handling*: connection and timeout failures surface as
:class:`protocol.errors.Unavailable` (the edge answers 503); SQL errors that
mean a bug propagate unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
import trio
import trio_asyncio

from protocol.errors import Unavailable
from server.migrations import Migration, MigrationError, MigrationStatus, status

# pg_advisory_lock key for migrations: "podium" in ASCII, as a bigint.
MIGRATION_LOCK_KEY: Final = 0x706F6469756D

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)

_CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class PostgresStore:
    """A pool of PostgreSQL connections, used from Trio. Make with :func:`open_postgres`."""

    def __init__(self, pool: Any, *, command_timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = command_timeout_s

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            with trio.fail_after(self._timeout_s):
                return await trio_asyncio.aio_as_trio(fn)(*args)
        except trio.TooSlowError:
            raise Unavailable(
                f"PostgreSQL did not answer within {self._timeout_s:g} s", code="database_timeout"
            ) from None
        except _UNAVAILABLE as exc:
            raise Unavailable(
                f"PostgreSQL is unavailable: {type(exc).__name__}", code="database_unavailable"
            ) from exc

    async def ping(self) -> None:
        """Run a trivial query; raise :class:`Unavailable` if it fails."""
        await self._call(self._pool.fetchval, "SELECT 1")

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Run one read query; rows as dicts. For admin and tests, not hot paths."""
        rows = await self._call(self._pool.fetch, query, *args)
        return [dict(row) for row in rows]

    async def execute(self, query: str, *args: Any) -> str:
        """Run one statement outside any batch. For admin and tests, not hot paths."""
        result: str = await self._call(self._pool.execute, query, *args)
        return result

    async def migration_status(self, migrations: tuple[Migration, ...]) -> MigrationStatus:
        applied = await self._call(self._applied_aio)
        return status(migrations, applied)

    async def apply_migrations(self, migrations: tuple[Migration, ...]) -> tuple[int, ...]:
        """Apply pending migrations in order, under the migration lock.

        Returns the versions this call applied (empty if another node did).
        Raises :class:`server.migrations.MigrationError` if an applied
        migration's checksum differs from the code's. Not bounded by the
        command timeout: a migration may take as long as it takes.
        """
        try:
            result: tuple[int, ...] = await trio_asyncio.aio_as_trio(self._migrate_aio)(migrations)
        except _UNAVAILABLE as exc:
            raise Unavailable(
                f"PostgreSQL is unavailable: {type(exc).__name__}", code="database_unavailable"
            ) from exc
        return result

    # ---- asyncio side: everything below runs on the asyncio loop

    async def _applied_aio(self) -> dict[int, str]:
        async with self._pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return {}
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            return {row["version"]: row["checksum"] for row in rows}

    async def _migrate_aio(self, migrations: tuple[Migration, ...]) -> tuple[int, ...]:
        applied_now: list[int] = []
        async with self._pool.acquire() as conn:
            # Session-level lock: released by the unlock below, or by
            # PostgreSQL if this connection dies mid-way.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            try:
                await conn.execute(_CREATE_MIGRATIONS_TABLE)
                rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
                applied = {row["version"]: row["checksum"] for row in rows}
                state = status(migrations, applied)
                if state.mismatched:
                    raise MigrationError(
                        f"applied migrations {list(state.mismatched)} differ from the code; "
                        "never edit an applied migration, add a new one"
                    )
                for migration in migrations:
                    if migration.version in applied:
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) "
                            "VALUES ($1, $2, $3)",
                            migration.version,
                            migration.name,
                            migration.checksum,
                        )
                    applied_now.append(migration.version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        return tuple(applied_now)


@contextlib.asynccontextmanager
async def open_postgres(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout_s: float = 5.0,
) -> AsyncIterator[PostgresStore]:
    """Open a connection pool to ``dsn`` for the duration of the block.

    Raises :class:`Unavailable` if PostgreSQL cannot be reached within
    ``command_timeout_s``.
    """
    try:
        with trio.fail_after(command_timeout_s):
            pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
                dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout_s
            )
    except (trio.TooSlowError, *_UNAVAILABLE) as exc:
        raise Unavailable(
            f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}",
            code="database_unavailable",
        ) from exc
    try:
        yield PostgresStore(pool, command_timeout_s=command_timeout_s)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(command_timeout_s):
            await trio_asyncio.aio_as_trio(pool.close)()
        pool.terminate()


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> None:
    """``CREATE DATABASE name [TEMPLATE template]`` through ``admin_dsn``."""
    await trio_asyncio.aio_as_trio(_admin_aio)(admin_dsn, "create", name, template)


async def drop_database(admin_dsn: str, name: str) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)`` through ``admin_dsn``."""
    await trio_asyncio.aio_as_trio(_admin_aio)(admin_dsn, "drop", name, None)


async def _admin_aio(admin_dsn: str, op: str, name: str, template: str | None) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        ident = _quote_ident(name)
        if op == "create":
            sql = f"CREATE DATABASE {ident}"
            if template is not None:
                sql += f" TEMPLATE {_quote_ident(template)}"
        else:
            sql = f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)"
        await conn.execute(sql)
    finally:
        await conn.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
