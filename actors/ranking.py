"""The ranking actor: the only owner of Redis.

Everything that touches Redis — applying committed scores, releasing action
nonces, reading ranks, other actors' commands — is a request to this actor. It takes whatever
requests are waiting, turns them into **one** pipelined round trip, and
answers each request on its own reply channel. Concurrent requests therefore
batch themselves: one Lua call per touched leaderboard applies all its
records and publishes the board's new top N with the next sequence number.
Up to :data:`PIPELINES` batches are in flight at once, each on a Redis
connection of its own: while one waits for Redis, the next is gathered and
sent, so a request never waits a whole round trip for the one before it
(every submission comes here twice, to be admitted and to be ranked).
Batches in flight together may run in Redis in either order, which nothing
here minds: applying is by version, each publication's top N is read when
its sequence number is taken, and what must follow something (a nonce's
release follows its claim) is only asked for after that something answered.

Redis is an index of PostgreSQL, never the truth. Record states carry a
version and are applied only if newer (``lua/apply_records.lua``), so the
actor may apply them late, twice or after a rebuild. It **rebuilds** every
leaderboard from PostgreSQL in bulk at start and whenever it finds Redis
empty (the epoch key is gone: a restart or FLUSHALL); while it rebuilds,
reads answer 503 rather than wrong ranks. If Redis was unreachable while
scores committed, it catches up from PostgreSQL when Redis answers again.

*Resource handling*: the inbox is bounded (``ranking_queue_size``); a full
inbox makes new requests fail with 503 at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import outcome
import trio

from actors.reply import OneShot, Reply, answer
from protocol.errors import Unavailable
from protocol.leaderboards import Board, Entry, LedgerResult, RecordState
from server.stores.pg_store import PostgresStore
from server.stores.redis_store import Command, CommandError, RedisStore, Script

log = logging.getLogger(__name__)

_MAX_BATCH: Final = 2000
#: Batches in flight to Redis at once (see the module docstring). Two took
#: ws-submit over 64 sockets from 1,931 to 2,242 submissions/s; three did no better.
PIPELINES: Final = 2
_REBUILD_PAGE: Final = 5000
_CATCH_UP_MARGIN: Final = dt.timedelta(seconds=10)
_REBUILD_LOCK_TTL_S: Final = 120
_IDLE_CHECK_S: Final = 1.0
#: Nonce releases held for a later batch (queue full, Redis unreachable); beyond
#: this many, a release is dropped and its nonce stays claimed until its TTL.
_MAX_HELD_RELEASES: Final = 10_000


class BoardKeys(NamedTuple):
    """One board period's keys (see ``lua/apply_records.lua``)."""

    ranked: str  # zset: score -> member
    meta: str  # hash: user -> version|member|username
    seq: str  # publication sequence number
    hidden: str  # hash: hidden user -> score


class Keys:
    """Redis key and channel names. A board period's keys share a hash tag (Redis Cluster)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.epoch = f"{prefix}:epoch"
        self.rebuild_lock = f"{prefix}:rebuild-lock"

    def board(self, board_id: str, period: int, *, suffix: str = "") -> BoardKeys:
        tag = f"{self.prefix}:lb:{{{board_id}:{period}}}"
        return BoardKeys(f"{tag}:z{suffix}", f"{tag}:m{suffix}", f"{tag}:seq", f"{tag}:h{suffix}")

    def channel(self, board_id: str) -> str:
        return f"{self.prefix}:lb:{board_id}:updates"

    def nonce(self, nonce: str) -> str:
        return f"{self.prefix}:nonce:{nonce}"


@dataclass(slots=True)
class _Apply:
    state: RecordState
    result: LedgerResult
    reply: Reply | None


@dataclass(slots=True)
class _Release:
    """Give back a nonce claim if it is still ``claim`` (the fraud actor claims them,
    ``lua/admit.lua``; ``lua/release_claim.lua``)."""

    nonce: str
    claim: str


@dataclass(slots=True)
class _Read:
    board: Board
    mode: Literal["range", "around", "users"]
    args: list[str]
    reply: Reply


@dataclass(slots=True)
class _Snapshot:
    board: Board
    top: int
    reply: Reply


@dataclass(slots=True)
class _Visibility:
    user_id: str
    hidden: bool
    reply: Reply


@dataclass(slots=True)
class _Commands:
    commands: list[Command]
    reply: Reply | None


@dataclass(slots=True)
class _RebuildBoard:
    board: Board
    reply: Reply


@dataclass(slots=True)
class _ReadGroup:
    requests: list[_Read]


_Request = _Apply | _Release | _Read | _Snapshot | _Visibility | _Commands | _RebuildBoard


@dataclass(eq=False, slots=True)
class RankingInbox:
    """The actor's queue, made apart from it so it survives restarts
    (:meth:`RankingActor.open_inbox`), and the nonce releases it holds.

    A release that finds the queue full, or whose batch Redis did not run,
    waits in ``held`` for the actor's next batch: a player whose submission
    failed must be able to retry the token, not hear 409 for a score that
    was never applied. Bounded by ``_MAX_HELD_RELEASES``.
    """

    receive: trio.MemoryReceiveChannel[_Request]
    held: deque[_Release] = field(default_factory=deque)
    dropped: int = 0

    def hold(self, release: _Release) -> None:
        if len(self.held) >= _MAX_HELD_RELEASES:
            self.dropped += 1
            log.warning(
                "nonce release dropped: too many held; the token stays used until it expires",
                extra={"held": len(self.held)},
            )
            return
        self.held.append(release)


@dataclass(frozen=True, slots=True)
class RankingStatistics:
    rebuilding: bool
    rebuilds: int
    batches: int
    queued: int
    releases_held: int
    releases_dropped: int


@dataclass(slots=True)
class _Counters:
    rebuilds: int = 0
    batches: int = 0


class RankingActor:
    """See the module docstring. Reach it through :class:`RankingClient`."""

    def __init__(
        self,
        *,
        redis: RedisStore,
        postgres: PostgresStore,
        boards: Callable[[], Sequence[Board]],
        key_prefix: str,
        publish_top_n: int,
        inbox: RankingInbox,
        node_id: str,
    ) -> None:
        self._redis = redis
        self._postgres = postgres
        self._boards = boards
        self._keys = Keys(key_prefix)
        self._top_n = publish_top_n
        self._node_id = node_id
        self._inbox = inbox
        self._receive = inbox.receive
        self._rebuilding = False
        self._epoch: str | None = None
        self._missed_since: dt.datetime | None = None
        self._counters = _Counters()
        self._nursery: trio.Nursery | None = None

    @property
    def rebuilding(self) -> bool:
        """True while the rankings are being rebuilt (reads answer 503)."""
        return self._rebuilding

    def statistics(self) -> RankingStatistics:
        return RankingStatistics(
            rebuilding=self._rebuilding,
            rebuilds=self._counters.rebuilds,
            batches=self._counters.batches,
            queued=self._receive.statistics().current_buffer_used,
            releases_held=len(self._inbox.held),
            releases_dropped=self._inbox.dropped,
        )

    @staticmethod
    def open_inbox(queue_size: int, *, timeout_s: float) -> tuple[RankingClient, RankingInbox]:
        """The actor's inbox, made apart from it so it survives restarts: (client, inbox)."""
        send, receive = trio.open_memory_channel[_Request](queue_size)
        inbox = RankingInbox(receive)
        return RankingClient(send, timeout_s, hold=inbox.hold), inbox

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rebuild, report ready, then serve requests until cancelled.

        The node re-runs the same instance after a failure; what a run
        needs it sets up here.
        """
        self._missed_since = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._rebuilding = True
            try:
                await self._rebuild_once("start")
            except Unavailable as exc:
                # Start anyway (reads answer 503, readiness says why) and keep trying.
                log.warning("redis unavailable at start", extra={"error": exc.message})
                self._start_rebuild("start, after redis was unavailable")
            else:
                self._rebuilding = False
            task_status.started()
            pipelines = trio.Semaphore(PIPELINES)
            while True:
                # A free pipeline first: the batch then takes all that queued meanwhile.
                await pipelines.acquire()
                batch: list[_Request] = []
                # An idle node still looks at Redis every second, so it notices a
                # flushed or restarted Redis without waiting for traffic.
                with trio.move_on_after(_IDLE_CHECK_S):
                    batch.append(await self._receive.receive())
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                held = self._inbox.held
                while held and len(batch) < _MAX_BATCH:
                    batch.append(held.popleft())
                nursery.start_soon(self._execute_then_release, batch, pipelines)

    async def _execute_then_release(self, batch: list[_Request], pipelines: trio.Semaphore) -> None:
        try:
            await self._execute(batch)
        finally:
            pipelines.release()

    # ---- one batch, one round trip

    async def _execute(self, batch: list[_Request]) -> None:
        commands: list[Command] = [("GET", self._keys.epoch)]
        plan: list[tuple[Any, int]] = []  # (handler info, number of result slots)
        applies: dict[tuple[str, int], list[_Apply]] = defaultdict(list)
        reads: dict[tuple[Any, ...], list[_Read]] = {}
        for request in batch:
            if isinstance(request, _Apply):
                applies[(request.state.leaderboard, request.state.period)].append(request)
        for (board_id, period), group in applies.items():
            first = group[0].state
            commands.append(
                self._apply_script(board_id, period, first.descending, [r.state for r in group])
            )
            plan.append((group, 1))
        for request in batch:
            if isinstance(request, _Release):
                commands.append(
                    Script("release_claim", [self._keys.nonce(request.nonce)], [request.claim])
                )
                plan.append((request, 1))
            elif isinstance(request, _Snapshot):
                if self._rebuilding:
                    answer(request.reply, outcome.Error(_rebuilding()))
                    continue
                board = request.board
                keys = self._keys.board(board.id, board.current_period)
                desc = "1" if board.descending else "0"
                commands.append(("GET", keys.seq))
                commands.append(
                    Script(
                        "read_board",
                        [keys.ranked, keys.meta, keys.hidden],
                        [desc, "range", "0", str(request.top)],
                    )
                )
                plan.append((request, 2))
            elif isinstance(request, _Read):
                if self._rebuilding:
                    answer(request.reply, outcome.Error(_rebuilding()))
                    continue
                # Identical reads in one batch (everyone asking for the top 10)
                # are run once and the answer shared.
                board = request.board
                same = reads.setdefault(
                    (board.id, board.current_period, request.mode, *request.args), []
                )
                same.append(request)
                if len(same) == 1:
                    keys = self._keys.board(board.id, board.current_period)
                    desc = "1" if board.descending else "0"
                    commands.append(
                        Script(
                            "read_board",
                            [keys.ranked, keys.meta, keys.hidden],
                            [desc, request.mode, *request.args],
                        )
                    )
                    plan.append((_ReadGroup(same), 1))
            elif isinstance(request, _Visibility):
                change = ("hide" if request.hidden else "show", request.user_id)
                scripts = [
                    self._apply_script(
                        board.id, board.current_period, board.descending, [], change=change
                    )
                    for board in self._boards()
                ]
                commands += scripts
                plan.append((request, len(scripts)))
            elif isinstance(request, _Commands):
                commands += request.commands
                plan.append((request, len(request.commands)))
            elif isinstance(request, _RebuildBoard):
                assert self._nursery is not None
                self._nursery.start_soon(self._rebuild_one, request)
        try:
            results = await self._redis.pipeline(commands)
        except Unavailable as exc:
            self._fail(plan, exc, catch_up=True)
            return
        self._counters.batches += 1
        epoch, position = results[0], 1
        if epoch is None:
            # Redis lost its data (a restart or FLUSHALL): whatever this batch
            # read is wrong, and ranks of what it applied mean nothing yet.
            self._fail(plan, _rebuilding(), catch_up=False)
        else:
            for target, slots in plan:
                self._answer(
                    target,
                    results[position]
                    if slots == 1 and not isinstance(target, _Visibility | _Commands)
                    else results[position : position + slots],
                )
                position += slots
        if epoch is None and not self._rebuilding:
            self._start_rebuild("redis has no epoch (restarted or flushed)")
        elif self._missed_since is not None and not self._rebuilding:
            since, self._missed_since = self._missed_since, None
            assert self._nursery is not None
            self._nursery.start_soon(self._catch_up_task, since)
        self._epoch = epoch

    def _apply_script(
        self,
        board_id: str,
        period: int,
        descending: bool,
        states: Sequence[RecordState],
        *,
        change: tuple[str, str] = ("", ""),
    ) -> Script:
        """Apply ``states`` to a board period; ``change`` hides or shows a user first."""
        args: list[str | int | float | bytes] = [
            "1" if descending else "0",
            self._top_n,
            self._keys.channel(board_id),
            board_id,
            *change,
        ]
        for state in states:
            args += [state.user_id, state.score, state.member, state.version, state.username]
        return Script("apply_records", self._keys.board(board_id, period), args)

    def _answer(self, target: Any, result: Any) -> None:
        if isinstance(target, list):  # a group of applies
            if isinstance(result, CommandError):
                log.error("applying records failed: %s", result.message)
                self._note_missed()
                for request in target:
                    answer(request.reply, outcome.Value((request.result, None)))
                return
            ranks = result[1:]
            for request, rank in zip(target, ranks, strict=True):
                shown = None if rank is None or rank < 0 else int(rank) + 1
                answer(request.reply, outcome.Value((request.result, shown)))
        elif isinstance(target, _Release):
            if isinstance(result, CommandError):  # nobody waits for it: say so here
                log.error("giving a nonce claim back failed: %s", result.message)
        elif isinstance(target, _Snapshot):
            seq, rows = target_result = result
            if isinstance(rows, CommandError) or isinstance(seq, CommandError):
                log.error("reading a snapshot failed: %s", target_result)
                answer(target.reply, outcome.Error(Unavailable("reading ranks failed")))
            else:
                answer(target.reply, outcome.Value((int(seq or 0), _entries(rows))))
        elif isinstance(target, _Visibility):
            failed = [r for r in result if isinstance(r, CommandError)]
            if failed:
                log.error("changing a user's visibility failed: %s", failed[0].message)
                answer(target.reply, outcome.Error(Unavailable("updating the rankings failed")))
            else:
                answer(target.reply, outcome.Value(None))
        elif isinstance(target, _Commands):
            answer(target.reply, outcome.Value(result))
        elif isinstance(target, _ReadGroup):
            # An Outcome unwraps once: each waiter gets its own.
            if isinstance(result, CommandError):
                log.error("reading ranks failed: %s", result.message)
                for request in target.requests:
                    answer(request.reply, outcome.Error(Unavailable("reading ranks failed")))
            else:
                entries = _entries(result)
                for request in target.requests:
                    answer(request.reply, outcome.Value(entries))

    def _fail(self, plan: list[tuple[Any, int]], error: Unavailable, *, catch_up: bool) -> None:
        """Answer a batch whose results cannot be used.

        Applies were committed in PostgreSQL: they are acknowledged without a
        rank (and, with ``catch_up``, applied again once Redis answers; after a
        flush the rebuild does that). Reads get ``error``.
        """
        for target, _ in plan:
            if isinstance(target, list):
                if catch_up:
                    self._note_missed()
                for request in target:
                    answer(request.reply, outcome.Value((request.result, None)))
            elif isinstance(target, _ReadGroup):
                for request in target.requests:
                    answer(request.reply, outcome.Error(error))
            elif isinstance(target, _Release):
                self._inbox.hold(target)  # tried again in the next batch
            else:
                answer(target.reply, outcome.Error(error))

    def _note_missed(self) -> None:
        if self._missed_since is None:
            self._missed_since = dt.datetime.now(dt.UTC)

    # ---- rebuild and catch-up

    def _start_rebuild(self, why: str) -> None:
        assert self._nursery is not None
        self._rebuilding = True
        self._nursery.start_soon(self._rebuild, why)

    async def _rebuild(self, why: str) -> None:
        """Rebuild every board from PostgreSQL (or wait while another node does)."""
        self._rebuilding = True
        try:
            while True:
                try:
                    await self._rebuild_once(why)
                    return
                except Unavailable as exc:
                    log.warning("rebuild waiting for its stores", extra={"error": exc.message})
                    await trio.sleep(1.0)
        finally:
            self._rebuilding = False

    async def _rebuild_once(self, why: str) -> None:
        lock = await self._redis.pipeline(
            [("SET", self._keys.rebuild_lock, self._node_id, "NX", "EX", _REBUILD_LOCK_TTL_S)]
        )
        if lock[0] is None:
            log.info("another node is rebuilding; waiting for it", extra={"reason": why})
            with trio.move_on_after(_REBUILD_LOCK_TTL_S):
                # The other node is another process: polling Redis is the only way to know.
                while (await self._redis.pipeline([("GET", self._keys.epoch)]))[0] is None:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            return
        started = time.monotonic()
        since = await self._postgres.now() - _CATCH_UP_MARGIN
        total = 0
        hidden = await self._postgres.hidden_users()
        boards = list(self._boards())
        log.info("rebuilding rankings from postgres", extra={"reason": why, "boards": len(boards)})
        for board in boards:
            count = await self._rebuild_board(board, hidden)
            total += count
            log.info("leaderboard rebuilt", extra={"leaderboard": board.id, "records": count})
        await self._catch_up(since)
        epoch = secrets.token_hex(8)
        await self._redis.pipeline(
            [("SET", self._keys.epoch, epoch), ("DEL", self._keys.rebuild_lock)]
        )
        self._epoch = epoch
        self._counters.rebuilds += 1
        log.info(
            "rankings rebuilt",
            extra={"records": total, "seconds": round(time.monotonic() - started, 3)},
        )

    async def _rebuild_board(self, board: Board, hidden: frozenset[str]) -> int:
        """Rebuild one board period from PostgreSQL beside the live keys, then swap them in.

        ``hidden`` users (banned or shadow-banned) keep their records but are not ranked.
        """
        live = self._keys.board(board.id, board.current_period)
        tmp = self._keys.board(board.id, board.current_period, suffix=":rebuild")
        await self._redis.pipeline([("DEL", tmp.ranked, tmp.meta, tmp.hidden)])
        after: str | None = None
        count = 0
        hidden_scores: dict[str, str] = dict.fromkeys(hidden, "")
        while True:
            page = await self._postgres.records_page(board, after_user=after, limit=_REBUILD_PAGE)
            if not page:
                break
            zadd: list[Any] = ["ZADD", tmp.ranked]
            hset: list[Any] = ["HSET", tmp.meta]
            for state in page:
                if state.user_id in hidden:
                    hidden_scores[state.user_id] = str(state.score)
                else:
                    zadd += [state.score, state.member]
                hset += [state.user_id, f"{state.version}|{state.member}|{state.username}"]
            await self._redis.pipeline(
                [tuple(zadd), tuple(hset)] if len(zadd) > 2 else [tuple(hset)]
            )
            count += len(page)
            after = page[-1].user_id
        commands: list[Command] = []
        if hidden_scores:
            flat = [item for pair in hidden_scores.items() for item in pair]
            commands.append(("HSET", tmp.hidden, *flat))
        # A sequence number that keeps growing across a flush: never below now in µs.
        commands.append(("SET", live.seq, time.time_ns() // 1000, "NX"))
        for tmp_key, live_key in zip(
            (tmp.ranked, tmp.meta, tmp.hidden), (live.ranked, live.meta, live.hidden), strict=True
        ):
            commands.append(Script("swap_key", [tmp_key, live_key], []))
        await self._redis.pipeline(commands)
        return count

    async def _rebuild_one(self, request: _RebuildBoard) -> None:
        """Rebuild one board while it stays in service (reads see the old ranks until the swap)."""
        try:
            since = await self._postgres.now() - _CATCH_UP_MARGIN
            count = await self._rebuild_board(request.board, await self._postgres.hidden_users())
            await self._catch_up(since)
        except Unavailable as exc:
            answer(request.reply, outcome.Error(exc))
        else:
            log.info(
                "leaderboard rebuilt", extra={"leaderboard": request.board.id, "records": count}
            )
            answer(request.reply, outcome.Value(count))

    async def _catch_up_task(self, since: dt.datetime) -> None:
        try:
            await self._catch_up(since - _CATCH_UP_MARGIN)
        except Unavailable:
            self._missed_since = since

    async def _catch_up(self, since: dt.datetime) -> None:
        """Apply every record changed since ``since`` (version-guarded, so harmless twice)."""
        changed = await self._postgres.records_changed_since(since)
        groups: dict[tuple[str, int], list[_Apply]] = defaultdict(list)
        for _, state in changed:
            groups[(state.leaderboard, state.period)].append(
                _Apply(state=state, result=LedgerResult(status="ok"), reply=None)
            )
        if groups:
            await self._redis.pipeline(
                [
                    self._apply_script(
                        board_id, period, group[0].state.descending, [r.state for r in group]
                    )
                    for (board_id, period), group in groups.items()
                ]
            )
            log.info("caught up from postgres", extra={"records": len(changed)})


def _rebuilding() -> Unavailable:
    return Unavailable(
        "rankings are being rebuilt from the database; retry shortly", code="ranking_rebuilding"
    )


def _entries(flat: list[Any]) -> list[Entry]:
    return [
        Entry(
            rank=int(flat[i]) + 1,
            user_id=flat[i + 1],
            username=flat[i + 2],
            score=int(float(flat[i + 3])),
        )
        for i in range(0, len(flat), 4)
    ]


class RankingClient:
    """How other parts of the node talk to the ranking actor.

    Every question is bounded by ``timeout_s``: an actor that restarts
    mid-batch loses that batch's replies, and its requesters get 503.
    """

    def __init__(
        self,
        inbox: trio.MemorySendChannel[_Request],
        timeout_s: float,
        *,
        hold: Callable[[_Release], None],
    ) -> None:
        self._inbox = inbox
        self._timeout_s = timeout_s
        self._hold = hold

    def _put(self, request: _Request) -> None:
        try:
            self._inbox.send_nowait(request)
        except trio.WouldBlock:
            raise Unavailable("the ranking queue is full", code="overloaded") from None

    async def _ask(self, make: Callable[[Reply], _Request], timeout_s: float | None = None) -> Any:
        reply = OneShot()
        self._put(make(reply))
        with trio.move_on_after(timeout_s or self._timeout_s):
            return await reply.wait()
        raise Unavailable("the ranking actor did not answer in time", code="ranking_timeout")

    async def apply(
        self, state: RecordState, result: LedgerResult
    ) -> tuple[LedgerResult, int | None]:
        """Apply a committed state; (the ledger result, the user's 1-based rank or None)."""
        answer: tuple[LedgerResult, int | None] = await self._ask(
            lambda reply: _Apply(state, result, reply)
        )
        return answer

    async def send_apply(self, state: RecordState, result: LedgerResult, reply: Reply) -> None:
        """Hand over a committed state, waiting for room; the answer goes to ``reply``.

        No checkpoint while there is room: a batch's states go in one step.
        """
        request = _Apply(state, result, reply)
        try:
            self._inbox.send_nowait(request)
        except trio.WouldBlock:
            await self._inbox.send(request)

    def release_nonce_nowait(self, nonce: str, claim: str) -> None:
        """Give back the claim ``claim`` on ``nonce``, whose submission did not commit,
        unless another attempt holds the nonce by now. Never waits: with the
        queue full, the actor's next batch takes it (:class:`RankingInbox`)."""
        release = _Release(nonce, claim)
        try:
            self._inbox.send_nowait(release)
        except trio.WouldBlock:
            self._hold(release)

    async def top(
        self, board: Board, *, offset: int, limit: int, after_user: str = ""
    ) -> list[Entry]:
        entries: list[Entry] = await self._ask(
            lambda reply: _Read(board, "range", [str(offset), str(limit), after_user], reply)
        )
        return entries

    async def snapshot(self, board: Board, top: int) -> tuple[int, list[Entry]]:
        """The board's publication sequence number and its top ``top``, read together."""
        answer: tuple[int, list[Entry]] = await self._ask(
            lambda reply: _Snapshot(board, top, reply)
        )
        return answer

    async def set_hidden(self, user_id: str, hidden: bool) -> None:
        """Take a user off every board's ranking (``hidden``) or put them back.

        A hidden user's records are kept and still updated; only the user
        themselves can read them (:meth:`users`), with the rank they would have.
        """
        await self._ask(lambda reply: _Visibility(user_id, hidden, reply))

    async def rebuild_board(self, board: Board) -> int:
        """Rebuild ``board``'s ranking from PostgreSQL, staying in service; the record count."""
        count: int = await self._ask(lambda reply: _RebuildBoard(board, reply), timeout_s=120.0)
        return count

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` in the actor's next pipeline; their raw results, one each.

        For other actors' own keys (fraud signals, rate limits): Redis stays
        reached through one actor, and their commands share its round trips.
        A failed command's slot holds a CommandError.
        """
        results: list[Any] = await self._ask(lambda reply: _Commands(list(commands), reply))
        return results

    def run_nowait(self, commands: Sequence[Command]) -> None:
        """Run ``commands`` in a coming pipeline, without waiting or an answer (best effort)."""
        with contextlib.suppress(trio.WouldBlock):
            self._inbox.send_nowait(_Commands(list(commands), None))

    async def around(self, board: Board, user_id: str, radius: int) -> list[Entry]:
        entries: list[Entry] = await self._ask(
            lambda reply: _Read(board, "around", [user_id, str(radius)], reply)
        )
        return entries

    async def users(self, board: Board, user_ids: Sequence[str]) -> list[Entry]:
        entries: list[Entry] = await self._ask(
            lambda reply: _Read(board, "users", list(user_ids), reply)
        )
        return entries
