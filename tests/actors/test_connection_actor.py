"""A connection actor that has ended — here, crashed — ignores what still reaches it.

Heartbeats come from the listener's one task for all sockets, and a
submission's answer from whichever actor finishes it: both can reach an actor
after it ended (the listener drops it from its set a moment later). The
socket and the rest of the node are stand-ins; the actor over real sockets is
tested in ``tests/server/test_ws.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors.connection import ConnectionActor, ConnectionContext
from config import Settings
from protocol.errors import Unavailable


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


class Fanout:
    def forget(self, watcher: Any, board_id: str | None = None) -> None:
        pass


async def test_an_ended_actor_ignores_heartbeats_and_late_answers(
    offline_settings: Settings,
) -> None:
    settings = offline_settings.replace(ws_heartbeat_s=1.0)
    frames = Frames()
    counted: list[str] = []
    actor = ConnectionActor(
        BrokenSocket(),
        frames,
        ConnectionContext(
            settings=settings,
            node_id="n",
            auth=None,  # type: ignore[arg-type]
            score_path=None,  # type: ignore[arg-type]
            fanout=Fanout(),  # type: ignore[arg-type]
            board=lambda board_id: None,
            count_submission=counted.append,
        ),
        remote="10.0.0.1",
        user_agent=None,
    )
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
