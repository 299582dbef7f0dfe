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
import datetime as dt
import functools
import hashlib
import ipaddress
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import trio
import trio_asyncio

from protocol.errors import Conflict, NotFound, Unavailable, Unprocessable
from protocol.leaderboards import MAX_SCORE, Board, LedgerResult, RecordState, Submission
from server.migrations import Migration, MigrationError, MigrationStatus, status

if TYPE_CHECKING:
    from actors.fraud import FraudLogRow

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

_APPLY: Final = (
    "SELECT * FROM {}($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], "
    "$6::text[], $7::inet[], $8::text[])"
)
_APPLY_SET: Final = _APPLY.format("podium_apply_scores")
_APPLY_LOOP: Final = _APPLY.format("podium_apply_scores_serial")
#: Smaller batches cost PostgreSQL less in the per-item loop (migration 0004's threshold).
_SET_FORM_MIN: Final = 4

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
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
            raise Unavailable(
                "the database schema is not migrated; run `podium migrate`",
                code="schema_not_migrated",
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

    # ---- the ledger

    async def apply_scores(self, batch: Sequence[Submission]) -> list[LedgerResult]:
        """Commit ``batch`` in one transaction; one result per submission, in order.

        Either every submission's effect is committed or none is (the call
        raises). Submissions are applied sorted by (leaderboard, user) — the
        lock order that keeps concurrent batches from deadlocking — and stable,
        so one user's submissions apply in the order given.
        """
        order = sorted(range(len(batch)), key=lambda i: (batch[i].leaderboard, batch[i].user_id))
        ordered = [batch[i] for i in order]
        rows = await self._call(self._apply_scores_aio, ordered)
        results: list[LedgerResult | None] = [None] * len(batch)
        for row in rows:
            position = order[row["idx"] - 1]
            results[position] = _ledger_result(ordered[row["idx"] - 1], row)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    # ---- accounts and sessions

    async def device_user(self, device_id: str, username: str | None) -> tuple[str, str]:
        """(user_id, username) of the device's user, creating it on first sight."""
        row = await self._call(self._device_user_aio, device_id, username)
        return str(row["id"]), row["username"]

    async def create_user(self, username: str, email: str, password_hash: str) -> str:
        """A new user with a password; :class:`Conflict` if the name or email is taken."""
        try:
            user_id = await self._call(
                self._pool.fetchval,
                "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3) "
                "RETURNING id",
                username,
                email,
                password_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _taken(exc) from None
        return str(user_id)

    async def login_candidate(self, login: str) -> dict[str, Any] | None:
        """id, username, password_hash and status of the user named or mailed ``login``."""
        row = await self._call(
            self._pool.fetchrow,
            "SELECT id, username, password_hash, status FROM users "
            "WHERE username = $1 OR lower(email) = lower($1) LIMIT 1",
            login,
        )
        return None if row is None else dict(row) | {"id": str(row["id"])}

    async def create_session(
        self, user_id: str, *, ttl_s: int, refresh_hash: bytes, metadata: dict[str, Any]
    ) -> str:
        session_id = await self._call(
            self._pool.fetchval,
            "INSERT INTO user_sessions (user_id, expires_at, refresh_hash, metadata) "
            "VALUES ($1, now() + make_interval(secs => $2), $3, $4::jsonb) RETURNING session_id",
            user_id,
            float(ttl_s),
            refresh_hash,
            json.dumps(metadata),
        )
        return str(session_id)

    async def rotate_refresh(
        self, session_id: str, old_hash: bytes, new_hash: bytes
    ) -> tuple[str, str] | None:
        """Swap a live session's refresh secret; (user_id, username), or None if not live."""
        row = await self._call(
            self._pool.fetchrow,
            "UPDATE user_sessions s SET refresh_hash = $3 FROM users u "
            "WHERE s.session_id = $1 AND s.refresh_hash = $2 AND s.revoked_at IS NULL "
            "AND s.expires_at > now() AND u.id = s.user_id AND u.status <> 'banned' "
            "RETURNING u.id, u.username",
            session_id,
            old_hash,
            new_hash,
        )
        return None if row is None else (str(row["id"]), row["username"])

    async def revoke_session(self, session_id: str) -> None:
        await self._call(
            self._pool.execute,
            "UPDATE user_sessions SET revoked_at = now() "
            "WHERE session_id = $1 AND revoked_at IS NULL",
            session_id,
        )

    async def revoked_sessions_since(
        self, since: dt.datetime | None
    ) -> tuple[list[tuple[str, float]], dt.datetime]:
        """Sessions revoked after ``since`` (all still unexpired ones if None).

        Returns ([(session_id, expires_at as unix seconds)], the newest
        revoked_at seen — pass it back next time).
        """
        rows, now = await self._call(self._revoked_aio, since)
        newest = max((row["revoked_at"] for row in rows), default=since or now)
        return [(str(r["session_id"]), r["expires_at"].timestamp()) for r in rows], newest

    # ---- leaderboards

    async def leaderboards(self) -> list[Board]:
        rows = await self._call(
            self._pool.fetch,
            "SELECT id, sort_order, operator, reset_schedule, current_period FROM leaderboards",
        )
        return [_board(row) for row in rows]

    async def create_leaderboard(self, board: Board, *, actor: str) -> Board:
        """Create ``board`` and write the audit row, in one transaction."""
        try:
            row = await self._call(self._board_change_aio, "create", board, actor)
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"leaderboard {board.id!r} already exists", code="leaderboard_exists"
            ) from None
        return _board(row)

    async def update_leaderboard(self, board: Board, *, actor: str) -> Board:
        """Change a board's reset schedule and write the audit row, in one transaction."""
        row = await self._call(self._board_change_aio, "update", board, actor)
        if row is None:
            raise NotFound(f"no leaderboard {board.id!r}", code="leaderboard_not_found")
        return _board(row)

    async def records_page(
        self, board: Board, *, after_user: str | None, limit: int
    ) -> list[RecordState]:
        """One page of a board's records in user-id order, for rebuilds."""
        rows = await self._call(
            self._pool.fetch,
            "SELECT r.user_id, u.username, r.score, r.reached_at, r.version "
            "FROM leaderboard_records r JOIN users u ON u.id = r.user_id "
            "WHERE r.leaderboard_id = $1 AND r.period = $2 "
            "AND ($3::uuid IS NULL OR r.user_id > $3::uuid) "
            "ORDER BY r.user_id LIMIT $4",
            board.id,
            board.current_period,
            after_user,
            limit,
        )
        return [_state(board.id, board.current_period, board.descending, row) for row in rows]

    async def hidden_users(self) -> frozenset[str]:
        """Users nobody else may see on a board: banned or shadow-banned."""
        rows = await self._call(
            self._pool.fetch, "SELECT id::text AS id FROM users WHERE status <> 'active'"
        )
        return frozenset(row["id"] for row in rows)

    # ---- the fraud engine

    async def insert_fraud_logs(self, rows: Sequence[FraudLogRow]) -> None:
        """Write a batch of FRAUD_LOGS rows in one statement."""
        await self._call(
            self._pool.execute,
            "INSERT INTO fraud_logs (user_id, event_type, risk_score, metadata) "
            "SELECT u, e, r, m::jsonb FROM unnest($1::uuid[], $2::text[], $3::numeric[], "
            "$4::text[]) AS t(u, e, r, m)",
            [row.user_id for row in rows],
            [row.event_type for row in rows],
            [round(row.risk, 4) for row in rows],
            [json.dumps(row.metadata, separators=(",", ":")) for row in rows],
        )

    async def auto_shadow_ban(self, user_id: str, *, reason: str) -> bool:
        """Shadow-ban an active player for repeated blocks; False if they were not active.

        The status change, its FRAUD_LOGS row and its audit row commit together.
        """
        changed: bool = await self._call(self._auto_shadow_ban_aio, user_id, reason)
        return changed

    async def _auto_shadow_ban_aio(self, user_id: str, reason: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                "UPDATE users SET status = 'shadow_banned', updated_at = now() "
                "WHERE id = $1 AND status = 'active' RETURNING id",
                user_id,
            )
            if updated is None:
                return False
            await conn.execute(
                "INSERT INTO fraud_logs (user_id, event_type, risk_score, metadata) "
                "VALUES ($1, 'shadow_ban', 1, $2::jsonb)",
                user_id,
                json.dumps({"reason": reason}),
            )
            await self._audit_aio(
                conn,
                "fraud-engine",
                "user.shadow_ban",
                user_id,
                {"from": "active", "to": "shadow_banned", "reason": reason},
            )
            return True

    async def records_changed_since(self, since: dt.datetime) -> list[tuple[str, RecordState]]:
        """(leaderboard, state) of every current-period record changed after ``since``."""
        rows = await self._call(
            self._pool.fetch,
            "SELECT r.leaderboard_id, r.period, b.sort_order, r.user_id, u.username, r.score, "
            "r.reached_at, r.version FROM leaderboard_records r "
            "JOIN leaderboards b ON b.id = r.leaderboard_id AND b.current_period = r.period "
            "JOIN users u ON u.id = r.user_id WHERE r.updated_at >= $1",
            since,
        )
        return [
            (
                row["leaderboard_id"],
                _state(row["leaderboard_id"], row["period"], row["sort_order"] == "desc", row),
            )
            for row in rows
        ]

    async def now(self) -> dt.datetime:
        """PostgreSQL's clock."""
        value: dt.datetime = await self._call(self._pool.fetchval, "SELECT now()")
        return value

    async def history(
        self, user_id: str, leaderboard: str | None, *, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        """A user's score history, newest first, paged by ``before_id``."""
        rows = await self._call(
            self._pool.fetch,
            "SELECT id, leaderboard_id, score_increment, old_score, new_score, action_type, "
            "created_at FROM score_history WHERE user_id = $1 "
            "AND ($2::text IS NULL OR leaderboard_id = $2) "
            "AND ($3::bigint IS NULL OR id < $3) AND removed_at IS NULL "
            "ORDER BY created_at DESC, id DESC LIMIT $4",
            user_id,
            leaderboard,
            before_id,
            limit,
        )
        return [dict(row) for row in rows]

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

    async def _apply_scores_aio(self, batch: Sequence[Submission]) -> list[Any]:
        args = (
            [s.user_id for s in batch],
            [s.leaderboard for s in batch],
            [s.delta for s in batch],
            [s.action_type for s in batch],
            [s.token_hash for s in batch],
            [s.nonce for s in batch],
            [_inet(s.ip) for s in batch],
            [s.user_agent for s in batch],
        )
        # The set form (migration 0004) would hand a batch this small to the
        # per-item loop anyway: call the loop without the detour.
        query = _APPLY_SET if len(batch) >= _SET_FORM_MIN else _APPLY_LOOP
        for attempt in range(3):
            try:
                # One statement is one transaction: no BEGIN/COMMIT round trips.
                return list(await self._pool.fetch(query, *args))
            except asyncpg.DeadlockDetectedError:
                # Only possible if two batches share a nonce in a different
                # order; the transaction rolled back whole, so retrying is safe.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _board_change_aio(self, op: str, board: Board, actor: str) -> Any:
        returning = "RETURNING id, sort_order, operator, reset_schedule, current_period"
        async with self._pool.acquire() as conn, conn.transaction():
            if op == "create":
                row = await conn.fetchrow(
                    "INSERT INTO leaderboards (id, sort_order, operator, reset_schedule) "
                    f"VALUES ($1, $2, $3, $4) {returning}",
                    board.id,
                    board.sort_order,
                    board.operator,
                    board.reset_schedule,
                )
            else:
                row = await conn.fetchrow(
                    "UPDATE leaderboards SET reset_schedule = $2, updated_at = now() "
                    f"WHERE id = $1 {returning}",
                    board.id,
                    board.reset_schedule,
                )
            if row is not None:
                await conn.execute(
                    "INSERT INTO audit_log (actor, action, target, details) "
                    "VALUES ($1, $2, $3, $4::jsonb)",
                    actor,
                    f"leaderboard.{op}",
                    board.id,
                    json.dumps(
                        {
                            "sort_order": board.sort_order,
                            "operator": board.operator,
                            "reset_schedule": board.reset_schedule,
                        }
                    ),
                )
            return row

    async def _device_user_aio(self, device_id: str, username: str | None) -> Any:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, username FROM users WHERE device_id = $1", device_id
            )
            if row is not None:
                return row
            name = username or f"player-{device_id_suffix(device_id)}"
            try:
                return await conn.fetchrow(
                    "INSERT INTO users (username, device_id) VALUES ($1, $2) "
                    "ON CONFLICT (device_id) DO UPDATE SET device_id = EXCLUDED.device_id "
                    "RETURNING id, username",
                    name,
                    device_id,
                )
            except asyncpg.UniqueViolationError as exc:
                raise _taken(exc) from None

    async def _revoked_aio(self, since: dt.datetime | None) -> tuple[list[Any], dt.datetime]:
        async with self._pool.acquire() as conn:
            now = await conn.fetchval("SELECT now()")
            if since is None:
                rows = await conn.fetch(
                    "SELECT session_id, revoked_at, expires_at FROM user_sessions "
                    "WHERE revoked_at IS NOT NULL AND expires_at > now()"
                )
            else:
                # Overlap the last poll: a revocation stamped just before it
                # may have committed just after it.
                rows = await conn.fetch(
                    "SELECT session_id, revoked_at, expires_at FROM user_sessions "
                    "WHERE revoked_at > $1::timestamptz - interval '5 seconds'",
                    since,
                )
            return list(rows), now

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

    # ---- admin: fraud review, user status, score removal
    #
    # For the admin API (server.admin_api). Each method is one crossing; each
    # change writes its audit_log row (actor, action, target, details) in the
    # same transaction, so an action is never done without its trail.

    _CASE_SELECT: Final = (
        "SELECT f.id, f.user_id::text AS user_id, u.username, u.status AS user_status, "
        "f.event_type, f.risk_score, f.metadata, f.review_status, f.reviewed_by, "
        "f.reviewed_at, f.review_note, f.created_at "
        "FROM fraud_logs f LEFT JOIN users u ON u.id = f.user_id "
    )

    async def fraud_cases(
        self,
        *,
        review_status: str | None,
        event_type: str | None,
        user_id: str | None,
        after: tuple[dt.datetime, int] | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Fraud cases newest first, filtered; ``after`` is the last (created_at, id) seen."""
        after_at, after_id = after if after is not None else (None, None)
        rows = await self._call(
            self._pool.fetch,
            self._CASE_SELECT + "WHERE ($1::text IS NULL OR f.review_status = $1) "
            "AND ($2::text IS NULL OR f.event_type = $2) "
            "AND ($3::uuid IS NULL OR f.user_id = $3) "
            "AND ($4::timestamptz IS NULL OR (f.created_at, f.id) < ($4, $5::bigint)) "
            "ORDER BY f.created_at DESC, f.id DESC LIMIT $6",
            review_status,
            event_type,
            user_id,
            after_at,
            after_id,
            limit,
        )
        return [self._case_row(row) for row in rows]

    async def fraud_case(self, case_id: int) -> dict[str, Any]:
        """One fraud case; :class:`NotFound` if there is none."""
        row = await self._call(self._pool.fetchrow, self._CASE_SELECT + "WHERE f.id = $1", case_id)
        if row is None:
            raise NotFound(f"no fraud case {case_id}", code="case_not_found")
        return self._case_row(row)

    async def review_fraud_case(
        self, case_id: int, review_status: str, *, note: str | None, actor: str
    ) -> dict[str, Any]:
        """Set a case's review status (and note), stamped with ``actor`` and now."""
        row = await self._call(self._review_aio, case_id, review_status, note, actor)
        if row is None:
            raise NotFound(f"no fraud case {case_id}", code="case_not_found")
        return self._case_row(row)

    async def admin_user(self, user_id: str) -> dict[str, Any]:
        """A user's account status and fraud case counts; :class:`NotFound` if unknown."""
        row = await self._call(
            self._pool.fetchrow,
            "SELECT u.id::text AS user_id, u.username, u.status, u.created_at, "
            "count(f.id) FILTER (WHERE f.review_status = 'open') AS open, "
            "count(f.id) FILTER (WHERE f.review_status = 'confirmed') AS confirmed, "
            "count(f.id) FILTER (WHERE f.review_status = 'false_positive') AS false_positive "
            "FROM users u LEFT JOIN fraud_logs f ON f.user_id = u.id "
            "WHERE u.id = $1 GROUP BY u.id",
            user_id,
        )
        if row is None:
            raise NotFound(f"no user {user_id}", code="user_not_found")
        return dict(row)

    async def set_user_status(
        self, user_id: str, status: str, *, actor: str, reason: str | None
    ) -> str:
        """Set users.status ('active', 'banned', 'shadow_banned'); the status it had."""
        before: str | None = await self._call(self._user_status_aio, user_id, status, actor, reason)
        if before is None:
            raise NotFound(f"no user {user_id}", code="user_not_found")
        return before

    async def remove_score(
        self, history_id: int, *, actor: str, reason: str | None
    ) -> dict[str, Any]:
        """Mark a score_history row removed and recompute its record, in one transaction.

        The record follows the board's operator: ``incr`` subtracts the removed
        increment and ``decr`` adds it back; ``best`` takes the best remaining
        delta and ``set`` the latest remaining one. With no history left the
        record is deleted. A changed record gets a new version (and, like the
        ledger, ``users.current_score`` follows the ``global`` record).

        Returns ``history_id``, ``user_id``, ``leaderboard``, ``period``,
        ``old_score``, ``new_score`` (None if deleted), ``board`` (its :class:`Board`) and
        ``state``: the new :class:`RecordState` when the removal changed the
        board's current period and the record remains, else None. Raises
        :class:`NotFound` (``score_not_found``), :class:`Conflict`
        (``score_already_removed``) or :class:`Unprocessable`
        (``score_out_of_range``, and nothing changes).
        """
        result: dict[str, Any] | None = await self._call(
            self._remove_score_aio, history_id, actor, reason
        )
        if result is None:
            raise NotFound(f"no score {history_id}", code="score_not_found")
        return result

    async def audit(
        self, actor: str, action: str, target: str | None, details: dict[str, Any]
    ) -> None:
        """Write one audit_log row, for an admin action that changed nothing in PostgreSQL."""
        await self._call(self._audit_aio, self._pool, actor, action, target, details)

    async def audit_entries(self, *, limit: int, before_id: int | None) -> list[dict[str, Any]]:
        """audit_log rows newest first, paged by ``before_id``."""
        rows = await self._call(
            self._pool.fetch,
            "SELECT id, actor, action, target, details, created_at FROM audit_log "
            "WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
            before_id,
            limit,
        )
        return [dict(row) | {"details": json.loads(row["details"])} for row in rows]

    async def _review_aio(
        self, case_id: int, review_status: str, note: str | None, actor: str
    ) -> Any:
        async with self._pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(
                "SELECT user_id::text AS user_id, review_status FROM fraud_logs "
                "WHERE id = $1 FOR UPDATE",
                case_id,
            )
            if before is None:
                return None
            await conn.execute(
                "UPDATE fraud_logs SET review_status = $2, reviewed_by = $3, reviewed_at = now(), "
                "review_note = $4 WHERE id = $1",
                case_id,
                review_status,
                actor,
                note,
            )
            await self._audit_aio(
                conn,
                actor,
                "fraud_case.review",
                str(case_id),
                {
                    "user_id": before["user_id"],
                    "from": before["review_status"],
                    "to": review_status,
                    "note": note,
                },
            )
            return await conn.fetchrow(self._CASE_SELECT + "WHERE f.id = $1", case_id)

    async def _user_status_aio(
        self, user_id: str, status: str, actor: str, reason: str | None
    ) -> str | None:
        action = {"active": "user.unban", "banned": "user.ban", "shadow_banned": "user.shadow_ban"}
        async with self._pool.acquire() as conn, conn.transaction():
            before: str | None = await conn.fetchval(
                "SELECT status FROM users WHERE id = $1 FOR UPDATE", user_id
            )
            if before is None:
                return None
            await conn.execute(
                "UPDATE users SET status = $2, updated_at = now() WHERE id = $1", user_id, status
            )
            await self._audit_aio(
                conn,
                actor,
                action[status],
                user_id,
                {"from": before, "to": status, "reason": reason},
            )
            return before

    async def _remove_score_aio(
        self, history_id: int, actor: str, reason: str | None
    ) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT h.user_id, h.leaderboard_id, h.period, h.score_increment, "
                "b.sort_order, b.operator, b.reset_schedule, b.current_period "
                "FROM score_history h JOIN leaderboards b ON b.id = h.leaderboard_id "
                "WHERE h.id = $1",
                history_id,
            )
            if found is None:
                return None
            board = _board(dict(found) | {"id": found["leaderboard_id"]})
            key = (found["leaderboard_id"], found["period"], found["user_id"])
            # The ledger's lock order: the record before anything else of the user's.
            record = await conn.fetchrow(
                "SELECT score, reached_at FROM leaderboard_records "
                "WHERE leaderboard_id = $1 AND period = $2 AND user_id = $3 FOR UPDATE",
                *key,
            )
            removed = await conn.fetchval(
                "UPDATE score_history SET removed_at = clock_timestamp() "
                "WHERE id = $1 AND removed_at IS NULL RETURNING removed_at",
                history_id,
            )
            if removed is None:
                raise Conflict(
                    f"score {history_id} was already removed", code="score_already_removed"
                )
            remaining = (
                "FROM score_history WHERE leaderboard_id = $1 AND period = $2 AND user_id = $3 "
                "AND removed_at IS NULL"
            )
            old: int | None = None if record is None else record["score"]
            new: int | None = None
            reached: dt.datetime | None = None
            increment: int = found["score_increment"]
            if board.operator in ("incr", "decr"):
                sign = 1 if board.operator == "incr" else -1
                left = await conn.fetchrow(
                    f"SELECT count(*) AS n, sum(score_increment) AS total {remaining}", *key
                )
                if left["n"]:
                    # Subtract what the removed row added; from the remaining rows
                    # only if the record is somehow missing.
                    new = old - sign * increment if old is not None else sign * int(left["total"])
            else:
                order = (
                    "created_at DESC, id DESC"
                    if board.operator == "set"
                    else f"score_increment {board.sort_order.upper()}, created_at, id"
                )
                kept = await conn.fetchrow(
                    f"SELECT score_increment, created_at {remaining} ORDER BY {order} LIMIT 1",
                    *key,
                )
                if kept is not None:
                    # Reached when that row was: the tie-break stays fair. (An
                    # incr/decr total is reached now, as the ledger would have it.)
                    new, reached = kept["score_increment"], kept["created_at"]
            if new is not None and not -MAX_SCORE <= new <= MAX_SCORE:
                raise Unprocessable(
                    "removing this score would put the record out of range",
                    code="score_out_of_range",
                )
            state_row = None
            if new is None:
                await conn.execute(
                    "DELETE FROM leaderboard_records "
                    "WHERE leaderboard_id = $1 AND period = $2 AND user_id = $3",
                    *key,
                )
            elif record is None:
                state_row = await conn.fetchrow(
                    "INSERT INTO leaderboard_records "
                    "(leaderboard_id, period, user_id, score, reached_at, updated_at, version) "
                    "VALUES ($1, $2, $3, $4, coalesce($5, clock_timestamp()), "
                    "clock_timestamp(), 1) "
                    "RETURNING user_id, score, reached_at, version",
                    *key,
                    new,
                    reached,
                )
            else:
                state_row = await conn.fetchrow(
                    "UPDATE leaderboard_records SET score = $4, updated_at = clock_timestamp(), "
                    "reached_at = CASE WHEN score = $4 THEN reached_at "
                    "ELSE coalesce($5, clock_timestamp()) END, "
                    "version = version + 1 "
                    "WHERE leaderboard_id = $1 AND period = $2 AND user_id = $3 "
                    "RETURNING user_id, score, reached_at, version",
                    *key,
                    new,
                    reached,
                )
            current = found["period"] == found["current_period"]
            username = await conn.fetchval(
                "SELECT username FROM users WHERE id = $1", found["user_id"]
            )
            if board.id == "global" and current:
                await conn.execute(
                    "UPDATE users SET current_score = $2, updated_at = clock_timestamp() "
                    "WHERE id = $1",
                    found["user_id"],
                    new or 0,
                )
            user_id = str(found["user_id"])
            await self._audit_aio(
                conn,
                actor,
                "score.remove",
                str(history_id),
                {
                    "user_id": user_id,
                    "leaderboard": board.id,
                    "period": found["period"],
                    "score_increment": increment,
                    "old_score": old,
                    "new_score": new,
                    "reason": reason,
                },
            )
        state = None
        if state_row is not None and current:
            row = dict(state_row) | {"username": username}
            state = _state(board.id, board.current_period, board.descending, row)
        return {
            "history_id": history_id,
            "user_id": user_id,
            "leaderboard": board.id,
            "period": found["period"],
            "old_score": old,
            "new_score": new,
            "board": board,
            "state": state,
        }

    @staticmethod
    def _case_row(row: Any) -> dict[str, Any]:
        return dict(row) | {
            "risk_score": float(row["risk_score"]),
            "metadata": json.loads(row["metadata"]),
        }

    @staticmethod
    async def _audit_aio(
        conn: Any,  # a connection in the caller's transaction, or the pool
        actor: str,
        action: str,
        target: str | None,
        details: dict[str, Any],
    ) -> None:
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, details) VALUES ($1, $2, $3, $4::jsonb)",
            actor,
            action,
            target,
            json.dumps(details),
        )


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
                dsn,
                min_size=min_size,
                max_size=max_size,
                # No asyncpg timers: a pending timer makes every pass of the
                # asyncio loop under Trio open a cancel scope. Every call is
                # bounded on the Trio side (PostgresStore._call); idle
                # connections are kept, not timed out.
                command_timeout=None,
                max_inactive_connection_lifetime=0,
                # Prepared statements stay cached (the cache is still bounded in
                # count): a lifetime would re-arm a timer on every query.
                max_cached_statement_lifetime=0,
                reset=_keep_session,
                # Kept idle connections are probed by the server, so a NAT or a
                # load balancer between does not silently drop them.
                server_settings=_KEEPALIVES,
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


_KEEPALIVES: Final = {
    "tcp_keepalives_idle": "60",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}


async def _keep_session(conn: Any) -> None:
    """The pool's reset between uses: nothing beyond asyncpg's own.

    asyncpg always ends an open transaction when a connection goes back to
    its pool; its default reset then also sends ``RESET ALL``, ``CLOSE ALL``,
    ``UNLISTEN *`` and an advisory-lock release — one more round trip per
    use, for session state this module never leaves behind (no SET, LISTEN
    or cursors; the migration lock is released in a ``finally``).
    """


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


def device_id_suffix(device_id: str) -> str:
    return hashlib.sha256(device_id.encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=4096)
def _inet(ip: str | None) -> Any:
    """``ip`` for an ``inet`` column (None if it is not an address). Cached: a
    batch's players mostly come from addresses seen moments ago."""
    if ip is None:
        return None
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _board(row: Any) -> Board:
    return Board(
        id=row["id"],
        sort_order=row["sort_order"],
        operator=row["operator"],
        reset_schedule=row["reset_schedule"],
        current_period=row["current_period"],
    )


def _state(board_id: str, period: int, descending: bool, row: Any) -> RecordState:
    return RecordState(
        leaderboard=board_id,
        period=period,
        descending=descending,
        user_id=str(row["user_id"]),
        username=row["username"],
        score=row["score"],
        reached_at_us=_micros(row["reached_at"]),
        version=row["version"],
    )


def _ledger_result(submission: Submission, row: Any) -> LedgerResult:
    if row["status"] != "ok":
        return LedgerResult(status=row["status"])
    state = RecordState(
        leaderboard=submission.leaderboard,
        period=row["period"],
        descending=row["sort_order"] == "desc",
        user_id=submission.user_id,
        username=row["username"],
        score=row["new_score"],
        reached_at_us=_micros(row["reached_at"]),
        version=row["version"],
    )
    return LedgerResult(
        status="ok",
        old_score=row["old_score"],
        new_score=row["new_score"],
        changed=row["changed"],
        state=state,
    )


def _taken(exc: Exception) -> Conflict:
    constraint = getattr(exc, "constraint_name", "") or ""
    if "email" in constraint:
        return Conflict("that email is already registered", code="email_taken")
    if "device" in constraint:
        return Conflict("that device is already registered", code="device_taken")
    return Conflict("that username is taken", code="username_taken")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
