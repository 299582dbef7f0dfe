"""kill -9 of a node in the middle of a stream of submissions loses and doubles nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio

from config import Settings
from protocol import action_token
from server.stores.pg_store import open_postgres
from tests.api import Api, Player

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow

SUBMISSIONS = 2000
PLAYERS = 20
CONCURRENCY = 32


class NodeProcess:
    """``podium serve`` as a child process, on free ports."""

    def __init__(self, settings: Settings) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
        env |= settings.to_environ() | {
            "PODIUM_HTTP_PORT": "0",
            "PODIUM_WS_PORT": "0",
            "PODIUM_LOG_FORMAT": "json",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = ""

    async def wait_ready(self) -> str:
        def read() -> str:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                record = json.loads(line)
                if record["msg"] == "node ready":
                    return str(record["http"])
            raise AssertionError("the node exited before it was ready")

        with trio.fail_after(60):
            self.url = await trio.to_thread.run_sync(read)
        # Keep draining its log so the node never blocks on a full pipe.
        trio.lowlevel.spawn_system_task(trio.to_thread.run_sync, self._drain)
        return self.url

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass


async def test_kill_9_during_submissions_loses_nothing_and_counts_nothing_twice(
    settings: Settings, database: str
) -> None:
    node = NodeProcess(settings)
    try:
        url = await node.wait_ready()
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            api = Api(http, settings)
            players = [await api.player() for _ in range(PLAYERS)]
        tokens = [_mint(settings, players[i % PLAYERS], 1 + i % 50) for i in range(SUBMISSIONS)]
        acked: dict[str, dict[str, object]] = {}
        unanswered: list[tuple[Player, str]] = []

        async def fire(http: httpx.AsyncClient, queue: trio.MemoryReceiveChannel[int]) -> None:
            async for i in queue:
                player, token = players[i % PLAYERS], tokens[i]
                try:
                    reply = await http.post(
                        "/v1/scores/update", json={"action_token": token}, headers=player.auth
                    )
                except httpx.TransportError:
                    unanswered.append((player, token))
                    continue
                if reply.status_code == 200:
                    acked[token] = reply.json()
                else:
                    unanswered.append((player, token))

        send, receive = trio.open_memory_channel[int](0)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http, trio.open_nursery() as n:
            for _ in range(CONCURRENCY):
                n.start_soon(fire, http, receive.clone())
            async with send:
                for i in range(SUBMISSIONS):
                    if i == SUBMISSIONS // 2:
                        node.process.send_signal(signal.SIGKILL)
                    await send.send(i)
        node.process.wait()
        assert 0 < len(acked) < SUBMISSIONS, "the kill should land mid-stream"

        # Restart; every unanswered submission is retried with its own token.
        node = NodeProcess(settings)
        url = await node.wait_ready()
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            retried: list[int] = []
            for player, token in unanswered:
                reply = await http.post(
                    "/v1/scores/update", json={"action_token": token}, headers=player.auth
                )
                retried.append(reply.status_code)
                if reply.status_code == 200:
                    acked[token] = reply.json()
            assert set(retried) <= {200, 409}
            top = (await http.get("/v1/leaderboards/global/top?limit=100")).json()["entries"]
    finally:
        node.process.kill()
        node.process.wait()

    async with trio_asyncio.open_loop(), open_postgres(database, min_size=1, max_size=1) as pg:
        history = await pg.fetch(
            "SELECT action_token_hash, user_id::text AS user_id, score_increment FROM score_history"
        )
        records = await pg.fetch(
            "SELECT user_id::text AS user_id, score FROM leaderboard_records "
            "WHERE leaderboard_id = 'global'"
        )
        nonces = await pg.fetch("SELECT count(*) AS n FROM used_nonces")
    hashes = [bytes(row["action_token_hash"]) for row in history]
    # Nothing counted twice: one history row per token, one nonce per row.
    assert len(hashes) == len(set(hashes)) == nonces[0]["n"]
    # Every acknowledged submission is in the history.
    assert {hashlib.sha256(t.encode()).digest() for t in acked} <= set(hashes)
    # Each total is exactly the sum of its history, and the ranking agrees.
    sums: dict[str, int] = {}
    for row in history:
        sums[row["user_id"]] = sums.get(row["user_id"], 0) + row["score_increment"]
    assert {r["user_id"]: r["score"] for r in records} == sums
    assert {e["user_id"]: e["score"] for e in top} == sums


def _mint(settings: Settings, player: Player, delta: int) -> str:
    assert settings.action_key is not None
    token, _ = action_token.mint(
        user_id=player.user_id,
        leaderboard="global",
        action_type="score",
        delta=delta,
        kid=settings.action_key_id,
        key=settings.action_key,
        now=time.time(),
        ttl_s=600,
    )
    return token
