"""Hidden users (banned, shadow-banned): off every board for others, their own score intact.

Against the real Redis and PostgreSQL the harness starts.
"""

from __future__ import annotations

import trio
import trio_asyncio

from config import Settings
from server.node import Node, NodeServices
from server.stores.pg_store import open_postgres
from tests.api import Api
from tests.harness import node_api
from tests.server.test_score_path import redis_flushall


def _ids(top: dict[str, object]) -> list[str]:
    entries = top["entries"]
    assert isinstance(entries, list)
    return [entry["user_id"] for entry in entries]


async def _own(api: Api, user_id: str) -> dict[str, object]:
    reply = await api.http.get(f"/v1/leaderboards/global/users/{user_id}")
    assert reply.status_code == 200, reply.text
    data: dict[str, object] = reply.json()
    return {"rank": data["rank"], "score": data["score"]}


def _services(node: Node) -> NodeServices:
    assert node.services is not None
    return node.services


async def _set_status(dsn: str, user_id: str, status: str) -> None:
    async with trio_asyncio.open_loop(), open_postgres(dsn, min_size=1, max_size=1) as pg:
        await pg.execute("UPDATE users SET status = $2 WHERE id = $1", user_id, status)


async def test_a_hidden_user_leaves_every_board_but_still_sees_their_own_score(
    settings: Settings, database: str
) -> None:
    async with node_api(settings) as (api, node, _):
        ranking = _services(node).ranking
        ann, bob, cat = await api.player("ann"), await api.player("bob"), await api.player("cat")
        assert (await api.create_board("arena")).status_code == 201
        await api.score(ann, 300)
        await api.score(bob, 500)
        await api.score(cat, 100)
        await api.score(bob, 7, leaderboard="arena")
        assert _ids(await api.top()) == [bob.user_id, ann.user_id, cat.user_id]

        await ranking.set_hidden(bob.user_id, True)
        assert _ids(await api.top()) == [ann.user_id, cat.user_id]
        assert _ids(await api.top("arena")) == []
        # The rank bob's score would have, so nothing looks different to him.
        assert await _own(api, bob.user_id) == {"rank": 1, "score": 500}

        # Hidden users still commit; their record keeps growing out of sight, and
        # their ack shows the rank their score would have.
        ack = await api.score(bob, 50)
        assert (ack["new_score"], ack["rank"]) == (550, 1)
        await api.score(ann, 1)
        assert _ids(await api.top()) == [ann.user_id, cat.user_id]
        assert await _own(api, bob.user_id) == {"rank": 1, "score": 550}
        await ranking.set_hidden(bob.user_id, True)  # idempotent
        assert await _own(api, bob.user_id) == {"rank": 1, "score": 550}

        await ranking.set_hidden(bob.user_id, False)
        top = await api.top()
        assert _ids(top) == [bob.user_id, ann.user_id, cat.user_id]
        assert top["entries"][0]["score"] == 550
        assert _ids(await api.top("arena")) == [bob.user_id]


async def test_rebuilds_keep_hidden_users_hidden(settings: Settings, database: str) -> None:
    async with node_api(settings) as (api, node, _):
        services = _services(node)
        ann, bob = await api.player("ann"), await api.player("bob")
        await api.score(ann, 10)
        await api.score(bob, 20)
        await _set_status(database, bob.user_id, "shadow_banned")
        # A one-board rebuild reads the status from PostgreSQL.
        board = services.catalog.board("global")
        assert board is not None
        assert await services.ranking.rebuild_board(board) == 2
        assert _ids(await api.top()) == [ann.user_id]
        assert await _own(api, bob.user_id) == {"rank": 1, "score": 20}

        # So does the full rebuild after Redis loses everything.
        assert settings.redis_url is not None
        redis_flushall(settings.redis_url)
        # Poll as a client would: reads answer 503 until the rebuild is done.
        with trio.fail_after(15):
            while (await api.http.get("/v1/leaderboards/global/top")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert _ids(await api.top()) == [ann.user_id]
        assert await _own(api, bob.user_id) == {"rank": 1, "score": 20}
