"""The supervisor: start actors in order, restart or fail them by policy, stop in reverse.

A node is a list of :class:`ChildSpec` — store-facing actors first, the
listeners last. :meth:`Supervisor.run` starts each child and waits until it
reports ready (``task_status.started()``) before starting the next, so a
listener never accepts work that an actor behind it cannot take yet.

*Shutdown*: :meth:`Supervisor.stop_nowait` (the node calls it on SIGINT or
SIGTERM) stops the children in **reverse** start order under one deadline,
``graceful_timeout_s`` from the moment the stop began. A child whose actor
has a ``drain_nowait()`` method is asked to finish in-flight work and return;
it is cancelled if it is still running at the deadline. Other children are
cancelled at once.

*Error handling*: an actor that raises, or returns while nobody asked it to
stop, has *failed*. Its :class:`RestartWithBackoff` policy restarts it from a
fresh instance after an exponential backoff, unless it has already failed
``max_restarts`` times within ``window_s`` — then, as with the
:class:`StopNode` policy, the supervisor logs one line saying which actor
failed and why, stops every other child in reverse order, and :meth:`run`
raises :class:`ActorFailed`. Nothing fails silently.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import trio

log = logging.getLogger(__name__)


@runtime_checkable
class Actor(Protocol):
    """A long-lived task that owns its state. The constructor does no I/O."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None:
        """Never returns unless cancelled or drained; calls ``started()`` when ready."""


@runtime_checkable
class Drainable(Protocol):
    """An actor that can stop gracefully: take no new work, finish what it has."""

    def drain_nowait(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RestartWithBackoff:
    """Restart a failed actor after ``initial_backoff_s * 2**n`` (capped), where
    ``n`` counts its failures within the last ``window_s``; stop the node once
    that count exceeds ``max_restarts``."""

    max_restarts: int = 5
    window_s: float = 60.0
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def backoff_s(self, recent_failures: int) -> float:
        exponent = max(0, recent_failures - 1)
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0**exponent)


@dataclass(frozen=True, slots=True)
class StopNode:
    """A failure of this actor stops the node."""


RestartPolicy = RestartWithBackoff | StopNode


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to make and supervise one actor. ``make`` is called for each (re)start."""

    name: str
    make: Callable[[], Actor]
    policy: RestartPolicy


class ChildState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ChildStatistics:
    name: str
    state: ChildState
    restarts: int


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    children: tuple[ChildStatistics, ...]


class ActorFailed(Exception):
    """An actor failed beyond its policy; the node stopped because of it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"actor {name!r} failed: {reason}")
        self.name = name
        self.reason = reason


class _StartedRecorder:
    """Forwards the first ``started()`` to the real task status, once ever."""

    def __init__(self, target: trio.TaskStatus[Any], child: _Child) -> None:
        self._target = target
        self._child = child

    def started(self, value: Any = None) -> None:
        self._child.state = ChildState.RUNNING
        self._child.started_value = value
        if not self._child.started:
            self._child.started = True
            self._target.started(value)


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state = ChildState.STARTING
        self.launched = False
        self.started = False
        self.stopping = False
        self.restarts = 0
        self.failures: deque[float] = deque()
        self.actor: Actor | None = None
        self.started_value: Any = None
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class Supervisor:
    """Runs a fixed list of children; see the module docstring."""

    def __init__(self, children: Sequence[ChildSpec], *, graceful_timeout_s: float) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._children = [_Child(spec) for spec in children]
        self._graceful_timeout_s = graceful_timeout_s
        self._stop_requested = trio.Event()
        self._failure: ActorFailed | None = None

    def stop_nowait(self) -> None:
        """Begin the graceful shutdown; :meth:`run` returns when it is done."""
        self._stop_requested.set()

    def actor(self, name: str) -> Actor | None:
        """The current instance of the child ``name`` (None while it is restarting)."""
        return self._child(name).actor

    def started_value(self, name: str) -> Any:
        """What the current instance of child ``name`` passed to ``started()``."""
        return self._child(name).started_value

    def _child(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise KeyError(name)

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            children=tuple(
                ChildStatistics(name=c.spec.name, state=c.state, restarts=c.restarts)
                for c in self._children
            )
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child in order, run until stopped, then stop them in reverse.

        Calls ``started()`` once every child is ready. Raises
        :class:`ActorFailed` if the node stopped because an actor failed.
        """
        async with trio.open_nursery() as nursery:
            for child in self._children:
                child.launched = True
                await nursery.start(self._supervise, child)
                if self._stop_requested.is_set():
                    break
            else:
                task_status.started()
            await self._stop_requested.wait()
            await self._shutdown()
        if self._failure is not None:
            raise self._failure

    async def _shutdown(self) -> None:
        deadline = trio.current_time() + self._graceful_timeout_s
        log.info(
            "stopping children in reverse order",
            extra={"graceful_timeout_s": self._graceful_timeout_s},
        )
        for child in reversed(self._children):
            if not child.launched:
                continue
            child.stopping = True
            if child.state is ChildState.RUNNING and isinstance(child.actor, Drainable):
                child.state = ChildState.STOPPING
                child.actor.drain_nowait()
                child.scope.deadline = min(child.scope.deadline, deadline)
            else:
                child.scope.cancel()
            await child.done.wait()
            log.info("child stopped", extra={"actor": child.spec.name})

    async def _supervise(self, child: _Child, *, task_status: trio.TaskStatus[None]) -> None:
        status = _StartedRecorder(task_status, child)
        try:
            with child.scope:
                while True:
                    child.state = ChildState.STARTING
                    child.actor = child.spec.make()
                    try:
                        await child.actor.run(task_status=status)
                    except Exception as exc:
                        reason = f"{type(exc).__name__}: {exc}"
                        error: BaseException | None = exc
                    else:
                        if child.stopping:
                            return
                        reason, error = "returned without being asked to stop", None
                    child.actor = None
                    delay = self._after_failure(child, reason, error)
                    if delay is None:
                        return
                    child.state = ChildState.BACKOFF
                    await trio.sleep(delay)
                    child.restarts += 1
        finally:
            if child.state is not ChildState.FAILED:
                child.state = ChildState.STOPPED
            if not child.started:
                # Let run() go on (and notice the stop) instead of waiting forever.
                child.started = True
                task_status.started()
            child.done.set()

    def _after_failure(
        self, child: _Child, reason: str, error: BaseException | None
    ) -> float | None:
        """Apply the child's policy: the backoff before a restart, or None to stop the node."""
        policy = child.spec.policy
        if isinstance(policy, RestartWithBackoff):
            now = trio.current_time()
            child.failures.append(now)
            while child.failures and child.failures[0] <= now - policy.window_s:
                child.failures.popleft()
            if len(child.failures) <= policy.max_restarts:
                delay = policy.backoff_s(len(child.failures))
                log.error(
                    "actor failed; restarting after backoff",
                    extra={
                        "actor": child.spec.name,
                        "reason": reason,
                        "backoff_s": round(delay, 3),
                        "failures_in_window": len(child.failures),
                    },
                    exc_info=error,
                )
                return delay
            why = (
                f"{reason} ({len(child.failures)} failures within "
                f"{_fmt_seconds(policy.window_s)}, limit {policy.max_restarts})"
            )
        else:
            why = reason
        child.state = ChildState.FAILED
        if self._failure is None:
            self._failure = ActorFailed(child.spec.name, why)
        log.critical(
            f"stopping node: actor {child.spec.name!r} failed: {why}",
            extra={"actor": child.spec.name},
            exc_info=error,
        )
        self._stop_requested.set()
        return None


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g} s" if math.isfinite(seconds) else "ever"
