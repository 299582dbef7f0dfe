"""The ledger actor's group commit: at once when PostgreSQL is idle, gathered behind a commit
until it is done.

PostgreSQL is a stand-in here that records each batch and finishes it when
the test says so: what is under test is when the actor commits and what it
puts together, on Trio's mock clock (it moves only when the test jumps it,
so "committed without lingering" is exact). What a batch does in PostgreSQL
is tested against a real server in ``tests/server/test_score_path.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from actors.ledger import LedgerActor, LedgerClient
from actors.reply import OneShot
from protocol.leaderboards import LedgerResult, Submission
from tests.actors.records import submission

LINGER_S = 0.005


class HeldPostgres:
    """``apply_scores`` that records its batch and returns when the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release: list[trio.Event] = []

    async def apply_scores(self, submissions: Sequence[Submission]) -> list[LedgerResult]:
        self.batches.append([s.nonce for s in submissions])
        done = trio.Event()
        self.release.append(done)
        await done.wait()
        # "ok" without a state: answered by the ledger itself, no ranking involved.
        return [LedgerResult(status="ok", old_score=0, new_score=1) for _ in submissions]


async def start_ledger(
    nursery: trio.Nursery, postgres: HeldPostgres, *, batch_max: int = 100
) -> LedgerClient:
    client, inbox = LedgerActor.open_inbox(100)
    actor = LedgerActor(
        postgres=postgres,  # type: ignore[arg-type]
        ranking=None,  # type: ignore[arg-type]  # never reached: no result carries a state
        batch_max=batch_max,
        linger_s=LINGER_S,
        inbox=inbox,
    )
    await nursery.start(actor.run)
    return client


async def submit_all(
    nursery: trio.Nursery, client: LedgerClient, nonces: list[str], answers: dict[str, Any]
) -> None:
    async def one(nonce: str) -> None:
        reply = OneShot()
        client.submit_nowait(submission(nonce), reply)
        answers[nonce] = await reply.wait()

    for nonce in nonces:
        nursery.start_soon(one, nonce)


async def test_an_idle_ledger_commits_at_once(mock_clock: MockClock) -> None:
    postgres = HeldPostgres()
    answers: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        client = await start_ledger(nursery, postgres)
        started = trio.current_time()
        await submit_all(nursery, client, ["a"], answers)
        await wait_all_tasks_blocked()
        # In PostgreSQL's hands before any time has passed: no linger.
        assert postgres.batches == [["a"]]
        assert trio.current_time() == started
        postgres.release[0].set()
        await wait_all_tasks_blocked()
        assert answers["a"][0].status == "ok"
        nursery.cancel_scope.cancel()


async def first_in_flight(
    nursery: trio.Nursery, postgres: HeldPostgres, answers: dict[str, Any]
) -> LedgerClient:
    """A ledger with the submission "first" in PostgreSQL's hands, held there."""
    client = await start_ledger(nursery, postgres)
    await submit_all(nursery, client, ["first"], answers)
    await wait_all_tasks_blocked()
    assert postgres.batches == [["first"]]
    return client


async def test_submissions_gather_behind_a_commit_in_flight(mock_clock: MockClock) -> None:
    postgres = HeldPostgres()
    answers: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        client = await first_in_flight(nursery, postgres, answers)
        # While "first" commits, five more come in one by one.
        later = [f"n{i}" for i in range(5)]
        for nonce in later:
            await submit_all(nursery, client, [nonce], answers)
            await wait_all_tasks_blocked()
        assert len(postgres.batches) == 1, "the second committer commits nothing yet"
        mock_clock.jump(LINGER_S)
        await wait_all_tasks_blocked()
        assert postgres.batches == [["first"], later], "the five went together, in order"
        for done in postgres.release:
            done.set()
        await wait_all_tasks_blocked()
        assert sorted(answers) == sorted(["first", *later])
        nursery.cancel_scope.cancel()


async def test_a_gathered_batch_goes_as_soon_as_the_commit_before_it_is_done(
    mock_clock: MockClock,
) -> None:
    postgres = HeldPostgres()
    answers: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        client = await first_in_flight(nursery, postgres, answers)
        for nonce in ("second", "third"):  # one by one: tasks started together run in any order
            await submit_all(nursery, client, [nonce], answers)
            await wait_all_tasks_blocked()
        assert postgres.batches == [["first"]]
        gathering_since = trio.current_time()
        postgres.release[0].set()  # PostgreSQL is free again, well within the linger
        await wait_all_tasks_blocked()
        assert postgres.batches == [["first"], ["second", "third"]]
        assert trio.current_time() == gathering_since, "it did not wait out the linger"
        postgres.release[1].set()
        await wait_all_tasks_blocked()
        assert sorted(answers) == ["first", "second", "third"]
        nursery.cancel_scope.cancel()


async def test_a_batch_holds_at_most_batch_max(mock_clock: MockClock) -> None:
    postgres = HeldPostgres()
    answers: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        client = await start_ledger(nursery, postgres, batch_max=3)
        await submit_all(nursery, client, ["first"], answers)
        await wait_all_tasks_blocked()
        await submit_all(nursery, client, [f"n{i}" for i in range(5)], answers)
        await wait_all_tasks_blocked()
        # The lingering committer filled its batch and went without waiting out the linger.
        assert [len(b) for b in postgres.batches] == [1, 3]
        postgres.release[0].set()
        await wait_all_tasks_blocked()
        # The first committer, free again while the other still commits, gathers the rest.
        assert [len(b) for b in postgres.batches] == [1, 3]
        mock_clock.jump(LINGER_S)
        await wait_all_tasks_blocked()
        assert [len(b) for b in postgres.batches] == [1, 3, 2]
        for done in postgres.release:
            done.set()
        await wait_all_tasks_blocked()
        assert len(answers) == 6
        nursery.cancel_scope.cancel()


class Expired:
    """A reply whose requester has stopped waiting (see actors.reply.expired)."""

    expired = True

    def __call__(self, value: Any) -> None:
        raise AssertionError("an expired submission must not be answered")


async def test_a_submission_past_its_deadline_is_not_committed(mock_clock: MockClock) -> None:
    postgres = HeldPostgres()
    answers: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        client = await start_ledger(nursery, postgres)
        client.submit_nowait(submission("late"), Expired())
        await wait_all_tasks_blocked()
        assert postgres.batches == []
        await submit_all(nursery, client, ["on-time"], answers)
        await wait_all_tasks_blocked()
        assert postgres.batches == [["on-time"]]
        postgres.release[0].set()
        await wait_all_tasks_blocked()
        assert list(answers) == ["on-time"]
        nursery.cancel_scope.cancel()
