"""The connection actor with stand-ins for its socket and the rest of the node.

A connection actor that has ended — here, crashed — ignores what still reaches it.

Heartbeats come from the listener's one task for all sockets, and a
submission's answer from whichever actor finishes it: both can reach an actor
after it ended (the listener drops it from its set a moment later). The
socket and the rest of the node are stand-ins; the actor over real sockets is
tested in ``tests/server/test_ws.py``.

Its flood rule, on a clock the test drives: a client that keeps going over
the rate limit is closed, one that overshoots a little is only refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from actors.connection import FLOOD_LIMIT, ConnectionActor, ConnectionContext
from config import Settings
from protocol.errors import Unavailable
from protocol.frames import MessageSink
from protocol.messages import CloseCode


class BrokenSocket:
    async def get_message(self) -> str:
        raise RuntimeError("a bug while reading")

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


class Frames:
    last_received = 0.0

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_nowait(self, frame: bytes) -> bool:
        self.written.append(frame)
        return True

    async def run_flusher(self) -> None:
        await trio.sleep_forever()

    async def flush(self) -> None:
        pass

    def discard_queued(self) -> None:
        pass

    def deliver_to(self, sink: MessageSink | None) -> None:
        self.sink = sink


class Fanout:
    def forget(self, watcher: Any, board_id: str | None = None) -> None:
        pass


def offline_actor(
    socket: Any,
    frames: Frames,
    settings: Settings,
    *,
    count_submission: Callable[[str], None] = lambda code: None,
    clock: Callable[[], float] = time.monotonic,
) -> ConnectionActor:
    """An actor on ``socket`` with no auth, score path or fan-out behind it."""
    return ConnectionActor(
        socket,
        frames,
        ConnectionContext(
            settings=settings,
            node_id="n",
            auth=None,  # type: ignore[arg-type]
            score_path=None,  # type: ignore[arg-type]
            fanout=Fanout(),  # type: ignore[arg-type]
            board=lambda board_id: None,
            count_submission=count_submission,
        ),
        remote="10.0.0.1",
        user_agent=None,
        clock=clock,
    )


async def test_an_ended_actor_ignores_heartbeats_and_late_answers(
    offline_settings: Settings,
) -> None:
    settings = offline_settings.replace(ws_heartbeat_s=1.0)
    frames = Frames()
    counted: list[str] = []
    actor = offline_actor(BrokenSocket(), frames, settings, count_submission=counted.append)
    with pytest.raises(ExceptionGroup) as failed:
        await actor.run()
    assert failed.group_contains(RuntimeError, match="a bug while reading")
    written = len(frames.written)  # the welcome
    later = trio.current_time() + 100
    for step in range(5):  # far past two missed heartbeats
        actor.heartbeat(later + step)
    actor._submitted("c1", Unavailable("late", code="commit_timeout"))
    assert len(frames.written) == written, "nothing is sent by an actor that has ended"
    assert counted == ["commit_timeout"]


class QuietSocket:
    """A peer that sends nothing through trio-websocket (all comes via the sink)."""

    async def get_message(self) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


class FailingFrames(Frames):
    """Frames whose first write after the welcome fails: a bug on the send path."""

    writes = 0

    def write_nowait(self, frame: bytes) -> bool:
        self.writes += 1
        if self.writes == 2:
            raise RuntimeError("a bug while answering")
        return super().write_nowait(frame)


async def test_a_failure_in_the_transports_reader_task_ends_only_the_actor(
    offline_settings: Settings,
) -> None:
    frames = FailingFrames()
    actor = offline_actor(QuietSocket(), frames, offline_settings)
    with pytest.raises(ExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            assert frames.sink is not None
            # The transport's reader task hands a message over; the sink never raises...
            await frames.sink('{"type": "ping", "id": 1}')
            # ...and drops what comes after the failure.
            frames.written.clear()
            await frames.sink('{"type": "ping", "id": 2}')
            assert frames.written == []
    # The actor's run() raised it, for the listener to log and close with 1011.
    assert failed.group_contains(RuntimeError, match="a bug while answering")


class ScriptedSocket:
    """A client sending ``count`` pings, one every ``interval_s`` on the actor's clock."""

    def __init__(self, clock: FakeClock, *, count: int, interval_s: float) -> None:
        self._clock = clock
        self._left = count
        self._interval_s = interval_s
        self.closed: list[int] = []

    async def get_message(self) -> str:
        if self._left == 0:
            await trio.sleep_forever()
        self._left -= 1
        self._clock.now += self._interval_s
        return '{"type": "ping"}'

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed.append(code)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def answers_to_pings(settings: Settings, *, count: int, rate_per_s: float) -> list[str]:
    """What a client sending ``count`` pings at ``rate_per_s`` hears, and how it ends."""
    clock = FakeClock()
    socket = ScriptedSocket(clock, count=count, interval_s=1 / rate_per_s)
    frames = Frames()
    actor = offline_actor(socket, frames, settings, clock=clock)
    with trio.move_on_after(5):  # the script ends in a fraction of that (autojump clock)
        await actor.run()
    heard = [json.loads(frame[2:] if frame[1] < 126 else frame[4:]) for frame in frames.written]
    return [m.get("code", m["type"]) for m in heard[1:]] + [f"close {c}" for c in socket.closed]


async def test_a_client_twice_over_the_limit_is_closed_as_flooding(
    offline_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    # Half its messages still get through, so refusals never come 50 in a
    # row; they come at 50 a second, ten times what the allowance refills.
    settings = offline_settings.replace(ws_rate_per_s=50.0, ws_rate_burst=100)
    heard = await answers_to_pings(settings, count=1000, rate_per_s=100.0)
    assert heard[-2:] == ["flooding", f"close {CloseCode.POLICY}"]
    # The allowance, plus its refill over the 1.1 s it took to use it up.
    assert FLOOD_LIMIT <= heard.count("rate_limited") <= FLOOD_LIMIT + 6
    assert heard.count("pong") > FLOOD_LIMIT, "many messages got through between refusals"
    # The burst (100), then about 1.1 s of alternating: refused 50 + 5/s.
    assert len(heard) < 400


async def test_a_client_slightly_over_the_limit_is_only_refused(
    offline_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    # 4 a second over the limit: refusals within the allowance's refill.
    settings = offline_settings.replace(ws_rate_per_s=50.0, ws_rate_burst=100)
    heard = await answers_to_pings(settings, count=3000, rate_per_s=54.0)
    assert "flooding" not in heard and not any(h.startswith("close") for h in heard)
    assert heard.count("rate_limited") > 2 * FLOOD_LIMIT, "refused, over a minute, many times"
    assert len(heard) == 3000
