"""The fan-out actor: pushes leaderboard changes from Redis pub/sub to local sockets.

Every node's ranking actor publishes a board's new top N, with a sequence
number, on that board's channel after each batch. This actor subscribes to a
channel when the first local client watches the board, and unsubscribes
after the last leaves. It keeps only the **latest** state per board and,
once per ``tick_s``, encodes and frames it **once** per distinct ``top`` and
hands the same bytes to every watcher's bounded outbox — so a board that
changes a hundred times a second costs each client at most one frame per
tick, and a client never receives an older sequence number after a newer one.

Watchers who are signed in also get ``me`` messages: on each tick where a
board changed, one Redis round trip per board reads the rank and score of
every local signed-in watcher, and each gets a ``me`` only if theirs changed.

*Slow clients*: pushing never waits. A watcher whose outbox is full is told
to close (the connection closes it with 4508) and nobody else waits for it.

*Error handling*: if the pub/sub connection fails, the actor reconnects with
backoff, resubscribes, and sends every watcher a fresh snapshot, so nobody
is left on a state that missed an update.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from actors.ranking import Keys, RankingClient
from protocol.errors import Unavailable
from protocol.leaderboards import Board
from protocol.messages import Me, Snapshot, encode, encode_update, frame_text
from server.stores.redis_store import PubSubMessage, RedisStore, Subscription

log = logging.getLogger(__name__)

_BACKOFF_INITIAL_S: Final = 0.1
_BACKOFF_MAX_S: Final = 5.0
_CONFIRM_TIMEOUT_S: Final = 2.0


@dataclass(eq=False, slots=True)
class Watcher:
    """One connection's view of the boards it watches.

    ``push`` puts a whole WebSocket frame (:func:`protocol.messages.frame_text`)
    in the connection's outbox without waiting, and returns False if the
    outbox is full; the actor then calls ``too_slow``. ``push`` must not
    call back into the fan-out actor.
    """

    push: Callable[[bytes], bool]
    too_slow: Callable[[], None]
    user_id: str | None = None
    last_seq: dict[str, int] = field(default_factory=dict)
    last_me: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FanoutStatistics:
    boards: int
    watchers: int
    frames: int
    slow_closed: int
    reconnects: int


class FanoutActor:
    """See the module docstring. Connection actors call :meth:`watch` and :meth:`forget`."""

    def __init__(
        self,
        *,
        redis: RedisStore,
        ranking: RankingClient,
        board: Callable[[str], Board | None],
        key_prefix: str,
        tick_s: float,
    ) -> None:
        self._redis = redis
        self._ranking = ranking
        self._board = board
        self._keys = Keys(key_prefix)
        self._tick_s = tick_s
        self._watchers: dict[str, dict[Watcher, int]] = defaultdict(dict)
        self._latest: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._changed: set[str] = set()
        self._subscription: Subscription | None = None
        self._subscribed: dict[str, trio.Event] = {}
        self._frames = 0
        self._slow_closed = 0
        self._reconnects = 0

    def statistics(self) -> FanoutStatistics:
        return FanoutStatistics(
            boards=len(self._watchers),
            watchers=sum(len(w) for w in self._watchers.values()),
            frames=self._frames,
            slow_closed=self._slow_closed,
            reconnects=self._reconnects,
        )

    # ---- what connection actors call

    async def watch(self, watcher: Watcher, board: Board, top: int) -> None:
        """Start sending ``board``'s changes to ``watcher``, beginning with a snapshot.

        Raises :class:`Unavailable` if the snapshot cannot be read (rankings
        rebuilding, Redis down); the watcher is then not registered.
        """
        first = board.id not in self._watchers or not self._watchers[board.id]
        self._watchers[board.id][watcher] = top
        try:
            if first:
                await self._subscribe(board.id)
            await self._send_snapshot(watcher, board, top)
        except BaseException:
            self.forget(watcher, board.id)
            raise

    def forget(self, watcher: Watcher, board_id: str | None = None) -> None:
        """Stop sending ``board_id`` (or every board) to ``watcher``."""
        for bid in [board_id] if board_id is not None else list(self._watchers):
            watchers = self._watchers.get(bid)
            if watchers is None:
                continue
            watchers.pop(watcher, None)
            watcher.last_seq.pop(bid, None)
            watcher.last_me.pop(bid, None)
            if not watchers:
                del self._watchers[bid]
                self._latest.pop(bid, None)
                self._changed.discard(bid)
                self._unsubscribe_soon(bid)

    # ---- the actor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._listen)
            nursery.start_soon(self._tick)
            task_status.started()

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        backoff = _BACKOFF_INITIAL_S
        ready = False
        while True:
            try:
                async with self._redis.open_subscription() as subscription:
                    self._subscription = subscription
                    boards = list(self._watchers)
                    for board_id in boards:
                        await subscription.subscribe(self._keys.channel(board_id))
                    if not ready:
                        ready = True
                        task_status.started()
                    if boards:
                        self._nursery.start_soon(self._resnapshot_all, boards)
                    backoff = _BACKOFF_INITIAL_S
                    # Publications land in _on_message as they are read; the
                    # tick sends them on.
                    await subscription.deliver(self._on_message)
            except Unavailable as exc:
                self._subscription = None
                for event in self._subscribed.values():
                    event.set()  # nobody waits for a confirmation that cannot come
                self._subscribed.clear()
                self._reconnects += 1
                log.warning(
                    "pub/sub connection lost; reconnecting",
                    extra={"error": exc.message, "backoff_s": backoff},
                )
                if not ready:
                    ready = True
                    task_status.started()
                await trio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)

    def _on_message(self, message: PubSubMessage) -> None:
        # Called from the pub/sub reader as each event is read: must not wait.
        kind, channel, data = message.kind, message.channel, message.data
        if kind == "subscribe":
            event = self._subscribed.pop(channel, None)
            if event is not None:
                event.set()
            return
        if kind != "message":
            return
        try:
            body = json.loads(data)
            board_id, seq, entries = body["leaderboard"], int(body["seq"]), body["entries"]
        except (ValueError, KeyError, TypeError):
            log.error("unreadable leaderboard publication", extra={"channel": channel})
            return
        held = self._latest.get(board_id)
        if board_id in self._watchers and (held is None or seq > held[0]):
            self._latest[board_id] = (seq, entries)
            self._changed.add(board_id)

    async def _subscribe(self, board_id: str) -> None:
        subscription = self._subscription
        if subscription is None:
            return  # the reconnect will subscribe and send snapshots
        channel = self._keys.channel(board_id)
        confirmed = self._subscribed.setdefault(channel, trio.Event())
        await subscription.subscribe(channel)
        # Subscribed before the snapshot is read: no publication falls between.
        with trio.move_on_after(_CONFIRM_TIMEOUT_S):
            await confirmed.wait()

    def _unsubscribe_soon(self, board_id: str) -> None:
        subscription = self._subscription
        if subscription is None:
            return

        async def unsubscribe() -> None:
            if board_id in self._watchers:
                return  # someone came back meanwhile
            # If it fails, the connection is being replaced anyway.
            with contextlib.suppress(Unavailable):
                await subscription.unsubscribe(self._keys.channel(board_id))

        self._nursery.start_soon(unsubscribe)

    async def _send_snapshot(self, watcher: Watcher, board: Board, top: int) -> None:
        seq, entries = await self._ranking.snapshot(board, top)
        me: dict[str, int] | None = None
        if watcher.user_id is not None:
            mine = await self._ranking.users(board, [watcher.user_id])
            if mine:
                me = {"rank": mine[0].rank, "score": mine[0].score}
            watcher.last_me[board.id] = (me["rank"], me["score"]) if me else (None, None)
        frame = frame_text(
            encode(
                Snapshot(
                    leaderboard=board.id, seq=seq, entries=[e.as_json() for e in entries], me=me
                )
            )
        )
        watcher.last_seq[board.id] = seq
        self._push(watcher, frame)

    async def _resnapshot_all(self, boards: list[str]) -> None:
        for board_id in boards:
            board = self._board(board_id)
            if board is None:
                continue
            for watcher, top in list(self._watchers.get(board_id, {}).items()):
                while watcher in self._watchers.get(board_id, {}):
                    try:
                        await self._send_snapshot(watcher, board, top)
                        break
                    except Unavailable:
                        await trio.sleep(0.2)  # rankings still rebuilding

    def _push(self, watcher: Watcher, frame: bytes) -> None:
        if watcher.push(frame):
            self._frames += 1
        else:
            self._too_slow(watcher)

    def _too_slow(self, watcher: Watcher) -> None:
        self._slow_closed += 1
        self.forget(watcher)
        watcher.too_slow()

    async def _tick(self) -> None:
        # A deadline loop, so a busy tick does not stretch the period.
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + self._tick_s, trio.current_time())
            await trio.sleep_until(deadline)
            changed, self._changed = self._changed, set()
            for board_id in changed:
                if board_id in self._latest:
                    self._fan_out(board_id, *self._latest[board_id])
            for board_id in changed:
                await self._refresh_me(board_id)

    def _fan_out(self, board_id: str, seq: int, entries: list[dict[str, Any]]) -> None:
        # The hot loop: one frame per distinct top, pushed to every watcher.
        # Pushing calls nothing back, so the dict is iterated as it is and
        # the slow are dealt with afterwards.
        frames: dict[int, bytes] = {}
        slow: list[Watcher] = []
        sent = 0
        for watcher, top in self._watchers.get(board_id, {}).items():
            last_seq = watcher.last_seq
            if last_seq.get(board_id, -1) >= seq:
                continue  # its snapshot is already this new, or newer
            frame = frames.get(top)
            if frame is None:
                frame = frames[top] = frame_text(encode_update(board_id, seq, entries[:top]))
            last_seq[board_id] = seq
            if watcher.push(frame):
                sent += 1
            else:
                slow.append(watcher)
        self._frames += sent
        for watcher in slow:
            self._too_slow(watcher)

    async def _refresh_me(self, board_id: str) -> None:
        board = self._board(board_id)
        watchers = [w for w in self._watchers.get(board_id, {}) if w.user_id is not None]
        if board is None or not watchers:
            return
        users = list({w.user_id for w in watchers if w.user_id is not None})
        try:
            entries = await self._ranking.users(board, users)
        except Unavailable:
            return  # the next change refreshes them
        found = {e.user_id: (e.rank, e.score) for e in entries}
        for watcher in watchers:
            assert watcher.user_id is not None
            now = found.get(watcher.user_id, (None, None))
            if watcher.last_me.get(board_id) != now and watcher in self._watchers.get(board_id, {}):
                watcher.last_me[board_id] = now
                me = Me(leaderboard=board_id, rank=now[0], score=now[1])
                self._push(watcher, frame_text(encode(me)))
