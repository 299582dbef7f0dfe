"""The catalog actor: node-local copies of what every request consults.

Each request needs the leaderboard's definition and must know whether its
session was revoked. Asking PostgreSQL every time would cost a round trip
per request, so this actor keeps both in memory and polls PostgreSQL every
``poll_s`` for sessions revoked on any node (so a logout is honoured
everywhere within about that long) and for leaderboards created or changed.
Reads are plain method calls: the data is owned and replaced by this actor
alone, and Trio runs one task at a time.

*Error handling*: a failed poll is logged and retried at the next tick; the
node keeps serving from what it has.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import trio

from protocol.errors import PodiumError
from protocol.leaderboards import Board
from server.stores.pg_store import PostgresStore

log = logging.getLogger(__name__)

_BOARDS_EVERY_POLLS = 4


class CatalogActor:
    """See the module docstring."""

    def __init__(
        self,
        postgres: PostgresStore,
        *,
        poll_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._postgres = postgres
        self._poll_s = poll_s
        self._clock = clock
        self._boards: dict[str, Board] = {}
        self._revoked: dict[str, float] = {}  # session id -> expires_at (unix s)
        self._revoked_cursor: dt.datetime | None = None
        self._revocation_watchers: list[Callable[[str], None]] = []

    # ---- reads (synchronous, from any task)

    def board(self, board_id: str) -> Board | None:
        return self._boards.get(board_id)

    def boards(self) -> list[Board]:
        return list(self._boards.values())

    def is_revoked(self, session_id: str) -> bool:
        return session_id in self._revoked

    # ---- local changes, seen at once on this node and by the others at their next poll

    def put_board(self, board: Board) -> None:
        self._boards[board.id] = board

    def revoke_nowait(self, session_id: str, expires_at: float) -> None:
        self._revoke(session_id, expires_at)

    def watch_revocations(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(session_id)`` for each session revoked from now on, on any node."""
        self._revocation_watchers.append(callback)

    def _revoke(self, session_id: str, expires_at: float) -> None:
        fresh = session_id not in self._revoked
        self._revoked[session_id] = expires_at
        if fresh:
            for callback in self._revocation_watchers:
                callback(session_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        loaded = await self._poll(boards=True)
        task_status.started()
        polls = 0
        while True:
            await trio.sleep(self._poll_s)
            polls += 1
            loaded = await self._poll(boards=not loaded or polls % _BOARDS_EVERY_POLLS == 0)

    async def _poll(self, *, boards: bool) -> bool:
        """One poll; False if it failed (it is retried at the next tick)."""
        try:
            if boards:
                await self._load_boards()
            await self._poll_revocations()
        except PodiumError as exc:
            log.warning("catalog poll failed; will retry", extra={"error": exc.message})
            return False
        return True

    async def _load_boards(self) -> None:
        self._boards = {board.id: board for board in await self._postgres.leaderboards()}

    async def _poll_revocations(self) -> None:
        revoked, self._revoked_cursor = await self._postgres.revoked_sessions_since(
            self._revoked_cursor
        )
        for session_id, expires_at in revoked:
            self._revoke(session_id, expires_at)
        now = self._clock()
        for session_id in [s for s, expires in self._revoked.items() if expires < now - 60]:
            del self._revoked[session_id]
