"""The ledger actor: commits accepted submissions to PostgreSQL in batches.

Submissions queue in a bounded inbox. A committer takes the first and
whatever else is waiting (up to ``batch_max``) and commits them all in
**one** transaction (:meth:`server.stores.pg_store.PostgresStore.apply_scores`):
group commit. :data:`COMMITTERS` committers take turns on the inbox. When no
other batch is being committed, a submission goes to PostgreSQL at once —
waiting could only add latency, as nothing else is coming sooner. While one
is, the next committer gathers more until that commit is done (or
``linger_s`` has passed), so under load one batch gathers while another
commits, and goes the moment PostgreSQL is free. Row locks taken in (leaderboard,
user) order keep their transactions from deadlocking.
Only after the commit does anything answer: each committed submission is
handed, with its requester's reply, to the ranking actor — which
applies it to Redis and answers with the rank — and every other outcome is
answered here at once. The hand-over happens in this actor, not in the
request, so a client that disconnects cannot leave a committed score out of
the ranking.

*Error handling*: if PostgreSQL cannot commit, the transaction rolled back
whole: every submission of the batch is answered with 503 and nothing was
applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from actors.ranking import RankingClient
from actors.reply import Reply, answer, expired
from protocol.errors import Unavailable
from protocol.leaderboards import Submission
from server.stores.pg_store import PostgresStore

log = logging.getLogger(__name__)

#: Batches in flight at once: one commits while the next gathers.
COMMITTERS = 2


@dataclass(slots=True)
class _Pending:
    submission: Submission
    reply: Reply


@dataclass(frozen=True, slots=True)
class LedgerStatistics:
    batches: int
    committed: int
    queued: int


class LedgerActor:
    """See the module docstring. Reach it through :class:`LedgerClient`."""

    def __init__(
        self,
        *,
        postgres: PostgresStore,
        ranking: RankingClient,
        batch_max: int,
        linger_s: float,
        inbox: trio.MemoryReceiveChannel[Any],
    ) -> None:
        self._postgres = postgres
        self._ranking = ranking
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._receive: trio.MemoryReceiveChannel[_Pending] = inbox
        self._batches = 0
        self._committed = 0
        self._committing = 0  # batches on their way to PostgreSQL now
        self._gathering: trio.CancelScope | None = None  # a committer's wait for more

    @staticmethod
    def open_inbox(queue_size: int) -> tuple[LedgerClient, trio.MemoryReceiveChannel[Any]]:
        """The actor's inbox, made apart from it so it survives restarts: (client, inbox)."""
        send, receive = trio.open_memory_channel[_Pending](queue_size)
        return LedgerClient(send), receive

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(
            batches=self._batches,
            committed=self._committed,
            queued=self._receive.statistics().current_buffer_used,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(COMMITTERS):
                nursery.start_soon(self._committer)
            task_status.started()

    async def _committer(self) -> None:
        while True:
            batch = [await self._receive.receive()]
            self._take_waiting(batch)
            if self._committing:
                # PostgreSQL is busy with another batch: gather behind it until it
                # is done (see the finally below). One wake per arrival, and each
                # takes all that came with it.
                with trio.move_on_after(self._linger_s) as gathering:
                    self._gathering = gathering
                    while len(batch) < self._batch_max:
                        batch.append(await self._receive.receive())
                        self._take_waiting(batch)
                self._gathering = None
            # Past their deadline (answered 503 "retry"): commit nothing for them.
            batch = [pending for pending in batch if not expired(pending.reply)]
            if not batch:
                continue
            self._committing += 1
            try:
                await self._commit(batch)
            finally:
                self._committing -= 1
                if not self._committing and self._gathering is not None:
                    self._gathering.cancel()  # PostgreSQL is free: the next batch goes now

    def _take_waiting(self, batch: list[_Pending]) -> None:
        """Add what is already waiting to ``batch``, up to ``batch_max``."""
        while len(batch) < self._batch_max:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = await self._postgres.apply_scores([p.submission for p in batch])
        except Unavailable as exc:
            log.warning(
                "ledger batch not committed", extra={"size": len(batch), "error": exc.message}
            )
            for pending in batch:
                answer(pending.reply, outcome.Error(exc))
            return
        except Exception as exc:
            # A bug, not an outage. The transaction rolled back whole, so tell
            # each submitter that nothing was committed and keep serving.
            log.error("ledger batch failed", extra={"size": len(batch)}, exc_info=exc)
            failed = Unavailable("the score could not be committed", code="commit_failed")
            for pending in batch:
                answer(pending.reply, outcome.Error(failed))
            return
        self._batches += 1
        for pending, result in zip(batch, results, strict=True):
            if result.status == "ok" and result.state is not None:
                self._committed += 1
                await self._ranking.send_apply(result.state, result, pending.reply)
            else:
                answer(pending.reply, outcome.Value((result, None)))


@dataclass(slots=True)
class LedgerClient:
    """How submissions reach the ledger (the fraud actor hands over those it admits)."""

    _inbox: trio.MemorySendChannel[_Pending]

    def submit_nowait(self, submission: Submission, reply: Reply) -> None:
        """Queue ``submission`` for commit. ``reply`` gets (its
        :class:`protocol.leaderboards.LedgerResult`, the user's rank after it if
        known), or :class:`Unavailable` if PostgreSQL cannot commit.

        Raises :class:`Unavailable` at once if the queue is full.
        """
        try:
            self._inbox.send_nowait(_Pending(submission, reply))
        except trio.WouldBlock:
            raise Unavailable(
                "too many score submissions are waiting; retry shortly", code="overloaded"
            ) from None
