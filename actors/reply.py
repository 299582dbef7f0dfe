"""How actors answer requests: a reply is a function the actor calls once.

A request to an actor carries a :data:`Reply`, which the actor (or the next
actor it hands the request to) calls with the :class:`outcome.Outcome` of the
request, through :func:`answer`. Calling it never waits, so an actor can
answer a whole batch in one go.

The requester chooses what the reply does. A task that waits for the answer
uses a :class:`OneShot`; the score path passes a function that finishes the
submission where it stands — writing a WebSocket ack, say — with no task
waiting at all (:class:`server.score_path.ScorePath`).

A reply may also say the requester has stopped waiting — an ``expired``
attribute that is true — and then :func:`expired` tells actors to drop the
request before doing its work (the score path's deadline:
:class:`server.score_path.ScorePath`).

*Error handling*: a reply that raises is a bug in the requester, not in the
actor: :func:`answer` logs it and the actor carries on with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import outcome
import trio

log = logging.getLogger(__name__)

Reply = Callable[[outcome.Outcome[Any]], None]


def answer(reply: Reply | None, value: outcome.Outcome[Any]) -> None:
    """Give ``value`` to a requester (``None``: nobody asked for an answer)."""
    if reply is None:
        return
    try:
        reply(value)
    except Exception:
        log.exception("a requester's reply failed")


def expired(reply: Reply | None) -> bool:
    """Whether the requester behind ``reply`` has stopped waiting (see the module doc)."""
    return getattr(reply, "expired", False) is True


class OneShot:
    """A :data:`Reply` a task awaits with :meth:`wait`; the first answer wins, later
    ones are dropped, and so is an answer that comes after the task gave up."""

    __slots__ = ("_value", "_waiter")

    def __init__(self) -> None:
        self._value: outcome.Outcome[Any] | None = None
        self._waiter: trio.lowlevel.Task | None = None

    def __call__(self, value: outcome.Outcome[Any]) -> None:
        if self._value is not None:
            return
        self._value = value
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> Any:
        """The answer's value, or what it raises. A checkpoint, cancellable."""
        if self._value is None:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.checkpoint()
        assert self._value is not None
        return self._value.unwrap()
