"""The supervisor's start order, reverse shutdown under a deadline, and failure policies.

Every test runs on Trio's autojump clock: backoffs and deadlines are
measured in virtual seconds, so the assertions are exact and nothing sleeps.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from actors.supervisor import (
    ActorFailed,
    ChildSpec,
    ChildState,
    RestartWithBackoff,
    StopNode,
    Supervisor,
)

Events = list[tuple[float, str]]


class Recorder:
    """Records (virtual time, event) pairs from every actor in a test."""

    def __init__(self) -> None:
        self.events: Events = []

    def __call__(self, event: str) -> None:
        self.events.append((trio.current_time(), event))

    def named(self, suffix: str) -> list[str]:
        return [event for _, event in self.events if event.endswith(suffix)]


class Worker:
    """Takes ``start_s`` to get ready, then runs until cancelled."""

    def __init__(self, name: str, record: Recorder, *, start_s: float = 1.0) -> None:
        self.name = name
        self.record = record
        self.start_s = start_s

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.record(f"{self.name} starting")
        await trio.sleep(self.start_s)
        self.record(f"{self.name} ready")
        task_status.started(self.name)
        try:
            await trio.sleep_forever()
        finally:
            self.record(f"{self.name} stopped")


class Drainer(Worker):
    """Finishes ``drain_s`` of in-flight work after drain_nowait(), then returns."""

    def __init__(self, name: str, record: Recorder, *, drain_s: float) -> None:
        super().__init__(name, record)
        self.drain_s = drain_s
        self._drain = trio.Event()

    def drain_nowait(self) -> None:
        self.record(f"{self.name} draining")
        self._drain.set()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self._drain.wait()
            await trio.sleep(self.drain_s)
            self.record(f"{self.name} drained")
        finally:
            self.record(f"{self.name} stopped")


class Crasher:
    """Fails ``fail_s`` after it becomes ready."""

    def __init__(self, record: Recorder, *, fail_s: float = 0.0) -> None:
        self.record = record
        self.fail_s = fail_s

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.record("crasher started")
        task_status.started()
        await trio.sleep(self.fail_s)
        raise RuntimeError("boom")


def spec(name: str, make: Callable[[], Any], policy: Any = None) -> ChildSpec:
    return ChildSpec(name, make, policy or RestartWithBackoff())


async def test_children_start_in_order_each_after_the_previous_is_ready(
    autojump_clock: MockClock,
) -> None:
    record = Recorder()
    supervisor = Supervisor(
        [spec(n, partial(Worker, n, record)) for n in ("store", "actor", "listener")],
        graceful_timeout_s=5,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert trio.current_time() == pytest.approx(3.0)
        assert [e for _, e in record.events] == [
            "store starting", "store ready",
            "actor starting", "actor ready",
            "listener starting", "listener ready",
        ]  # fmt: skip
        assert supervisor.started_value("actor") == "actor"
        supervisor.stop_nowait()
    assert record.named("stopped") == ["listener stopped", "actor stopped", "store stopped"]


async def test_shutdown_drains_in_reverse_and_cancels_at_the_deadline(
    autojump_clock: MockClock,
) -> None:
    record = Recorder()
    supervisor = Supervisor(
        [
            spec("ledger", lambda: Drainer("ledger", record, drain_s=2.0)),
            spec("stubborn", lambda: Drainer("stubborn", record, drain_s=100.0)),
            spec("http", lambda: Drainer("http", record, drain_s=1.0)),
        ],
        graceful_timeout_s=10.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        began = trio.current_time()
        supervisor.stop_nowait()
    elapsed = {event: t - began for t, event in record.events}
    # Reverse order: http drains first and finishes its in-flight second.
    assert elapsed["http draining"] == pytest.approx(0.0)
    assert elapsed["http drained"] == pytest.approx(1.0)
    # The stubborn one is cut off at the shared deadline, not after its 100 s.
    assert elapsed["stubborn draining"] == pytest.approx(1.0)
    assert "stubborn drained" not in elapsed
    assert elapsed["stubborn stopped"] == pytest.approx(10.0)
    # The ledger is asked last and past the deadline, so it is cancelled at once.
    assert elapsed["ledger draining"] == pytest.approx(10.0)
    assert elapsed["ledger stopped"] == pytest.approx(10.0)
    assert record.named("draining") == ["http draining", "stubborn draining", "ledger draining"]
    assert trio.current_time() - began == pytest.approx(10.0)


async def test_failed_actor_restarts_with_exponential_backoff(autojump_clock: MockClock) -> None:
    record = Recorder()
    policy = RestartWithBackoff(
        max_restarts=10, window_s=1000, initial_backoff_s=0.5, max_backoff_s=3.0
    )
    supervisor = Supervisor(
        [spec("flaky", lambda: Crasher(record, fail_s=1.0), policy)], graceful_timeout_s=5
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(20)
        stats = supervisor.statistics().children[0]
        supervisor.stop_nowait()
    starts = [t for t, e in record.events if e == "crasher started"]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    # Each gap is 1 s of running plus a backoff of 0.5, 1, 2, then capped at 3.
    assert gaps[:6] == [1.5, 2.0, 3.0, 4.0, 4.0, 4.0]
    assert stats.restarts == len(starts) - 1
    assert stats.state in (ChildState.RUNNING, ChildState.BACKOFF)


async def test_too_many_failures_stop_the_node_in_reverse_order(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    record = Recorder()
    policy = RestartWithBackoff(max_restarts=3, window_s=60, initial_backoff_s=0.1)
    supervisor = Supervisor(
        [
            spec("store", lambda: Worker("store", record)),
            spec("flaky", lambda: Crasher(record), policy),
            spec("listener", lambda: Worker("listener", record)),
        ],
        graceful_timeout_s=5,
    )
    with caplog.at_level(logging.INFO), pytest.raises(ActorFailed) as failed:
        await supervisor.run()
    assert failed.value.name == "flaky"
    assert "4 failures within 60 s, limit 3" in str(failed.value)
    assert len(record.named("crasher started")) == 4
    assert record.named("stopped") == ["listener stopped", "store stopped"]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert critical[0].getMessage().startswith("stopping node: actor 'flaky' failed")
    assert supervisor.statistics().children[1].state is ChildState.FAILED


async def test_failures_outside_the_window_are_forgotten(autojump_clock: MockClock) -> None:
    record = Recorder()
    # Fails every 10 s; only 2 fit in a 15 s window, under the limit of 2.
    policy = RestartWithBackoff(max_restarts=2, window_s=15, initial_backoff_s=0.1)
    supervisor = Supervisor(
        [spec("slow-flaky", lambda: Crasher(record, fail_s=10.0), policy)], graceful_timeout_s=5
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(100)
        supervisor.stop_nowait()
    assert len(record.named("crasher started")) >= 9


async def test_stop_node_policy_fails_on_the_first_error(autojump_clock: MockClock) -> None:
    record = Recorder()
    supervisor = Supervisor(
        [
            spec("store", lambda: Worker("store", record)),
            spec("listener", lambda: Crasher(record, fail_s=2.0), StopNode()),
        ],
        graceful_timeout_s=5,
    )
    with pytest.raises(ActorFailed, match="'listener' failed: RuntimeError: boom"):
        await supervisor.run()
    assert len(record.named("crasher started")) == 1
    assert record.named("stopped") == ["store stopped"]


async def test_an_actor_that_returns_unasked_has_failed(autojump_clock: MockClock) -> None:
    class Quitter:
        async def run(self, *, task_status: trio.TaskStatus[Any]) -> None:
            task_status.started()

    supervisor = Supervisor([spec("quitter", Quitter, StopNode())], graceful_timeout_s=5)
    with pytest.raises(ActorFailed, match="returned without being asked to stop"):
        await supervisor.run()


async def test_failure_during_start_up_stops_before_later_children_start(
    autojump_clock: MockClock,
) -> None:
    record = Recorder()

    class BrokenAtStart:
        async def run(self, *, task_status: trio.TaskStatus[Any]) -> None:
            raise OSError("port in use")

    supervisor = Supervisor(
        [
            spec("store", lambda: Worker("store", record)),
            spec("http", BrokenAtStart, StopNode()),
            spec("ws", lambda: Worker("ws", record)),
        ],
        graceful_timeout_s=5,
    )
    with pytest.raises(ActorFailed, match="OSError: port in use"):
        await supervisor.run()
    assert record.named("starting") == ["store starting"]
    assert record.named("stopped") == ["store stopped"]


def test_child_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([spec("a", object), spec("a", object)], graceful_timeout_s=1)


def test_backoff_doubles_and_caps() -> None:
    policy = RestartWithBackoff(initial_backoff_s=0.1, max_backoff_s=0.5)
    assert [policy.backoff_s(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
