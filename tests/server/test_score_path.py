"""The score path end to end, against real Redis and PostgreSQL."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import trio
import trio_asyncio

from config import Settings
from protocol import action_token
from server.stores.pg_store import open_postgres
from tests.api import Player
from tests.harness import node_api


async def pg_rows(dsn: str, query: str, *args: object) -> list[dict[str, object]]:
    async with trio_asyncio.open_loop(), open_postgres(dsn, min_size=1, max_size=1) as pg:
        return await pg.fetch(query, *args)


def redis_flushall(url: str) -> None:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(16).startswith(b"+OK")


async def test_the_seed_data_flow(settings: Settings, database: str) -> None:
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        token = await api.mint(ann, 250)

        bad_jwt = await api.http.post(
            "/v1/scores/update",
            json={"action_token": token},
            headers={"Authorization": "Bearer not.a.jwt"},
        )
        assert bad_jwt.status_code == 401
        assert bad_jwt.json()["error"]["code"] == "token_malformed"

        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        bad_token = await api.submit(ann, forged)
        assert bad_token.status_code == 400
        assert bad_token.json()["error"]["code"] == "action_token_bad_signature"

        ok = await api.http.post(
            "/v1/scores/update",
            json={"action_token": token},
            headers=ann.auth | {"User-Agent": "podium-test/1.0"},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "leaderboard": "global",
            "user_id": ann.user_id,
            "old_score": 0,
            "new_score": 250,
            "rank": 1,
        }

        reused = await api.submit(ann, token)
        assert reused.status_code == 409
        assert reused.json()["error"]["code"] == "action_token_used"

        bob = await api.player("bob")
        await api.score(bob, 400)
        second = await api.score(ann, 100)
        assert (second["old_score"], second["new_score"], second["rank"]) == (250, 350, 2)

        rows = await pg_rows(
            database,
            "SELECT h.*, host(h.ip_address) AS ip FROM score_history h "
            "WHERE user_id = $1 ORDER BY id",
            ann.user_id,
        )
        first = rows[0]
        assert first["leaderboard_id"] == "global"
        assert (first["score_increment"], first["old_score"], first["new_score"]) == (250, 0, 250)
        assert first["action_type"] == "score"
        assert first["action_token_hash"] == hashlib.sha256(token.encode()).digest()
        assert first["ip"] == "127.0.0.1"
        assert first["user_agent"] == "podium-test/1.0"
        assert first["created_at"] is not None
        users = await pg_rows(
            database, "SELECT current_score FROM users WHERE id = $1", ann.user_id
        )
        assert users[0]["current_score"] == 350

        # Redis's ranking agrees with PostgreSQL's records.
        top = await api.top(limit=10)
        records = await pg_rows(
            database,
            "SELECT user_id::text AS user_id, score FROM leaderboard_records "
            "WHERE leaderboard_id = 'global' ORDER BY score DESC, reached_at",
        )
        assert [(e["user_id"], e["score"]) for e in top["entries"]] == [
            (r["user_id"], r["score"]) for r in records
        ]
        assert [e["username"] for e in top["entries"]] == ["bob", "ann"]

        metrics = (await api.http.get("/metrics")).text
        assert 'podium_score_submissions_total{outcome="ok"} 3.0' in metrics
        assert 'podium_score_submissions_total{outcome="action_token_used"} 1.0' in metrics
        assert 'podium_score_submissions_total{outcome="token_malformed"} 1.0' in metrics
        assert "podium_ledger_committed_total 3.0" in metrics
        assert "podium_submissions_in_flight 0.0" in metrics


async def test_action_token_is_bound_to_its_player_board_and_bounds(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        ann, bob = await api.player(), await api.player()
        stolen = await api.submit(bob, await api.mint(ann, 10))
        assert stolen.status_code == 400
        assert stolen.json()["error"]["code"] == "action_token_wrong_user"

        def mint(**changes: object) -> str:
            fields: dict[str, object] = {
                "user_id": ann.user_id, "leaderboard": "global", "action_type": "score",
                "delta": 5, "kid": settings.action_key_id, "key": settings.action_key,
                "now": time.time(), "ttl_s": 60,
            }  # fmt: skip
            token, _ = action_token.mint(**(fields | changes))  # type: ignore[arg-type]
            return token

        out_of_range = await api.submit(ann, mint(delta=10_001))
        assert out_of_range.status_code == 422
        assert out_of_range.json()["error"]["code"] == "delta_out_of_range"

        missing = await api.submit(ann, mint(leaderboard="no-such-board"))
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "leaderboard_not_found"

        expired = mint(now=time.time() - 600)
        old = await api.submit(ann, expired)
        assert old.status_code == 400
        assert old.json()["error"]["code"] == "action_token_expired"


async def test_requests_with_bad_bodies_get_clear_errors(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        ann = await api.player()
        not_json = await api.http.post(
            "/v1/scores/update", content=b"action_token=x", headers=ann.auth
        )
        assert not_json.status_code == 415
        broken = await api.http.post(
            "/v1/scores/update",
            content=b"{nope",
            headers=ann.auth | {"Content-Type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "malformed_json"
        huge = await api.http.post(
            "/v1/scores/update",
            json={"action_token": "x" * settings.http_max_body_bytes},
            headers=ann.auth,
        )
        assert huge.status_code == 413
        wrong_type = await api.http.post(
            "/v1/scores/update", json={"action_token": 5}, headers=ann.auth
        )
        assert wrong_type.status_code == 400
        no_service_key = await api.http.post("/v1/actions", json={"user_id": ann.user_id})
        assert no_service_key.status_code == 401


async def test_two_nodes_one_token_exactly_one_success(settings: Settings, database: str) -> None:
    other = settings.replace(node_id="test-node-b")
    async with node_api(settings) as (api_a, _, _), node_api(other) as (api_b, _, _):
        ann = await api_a.player()
        token = await api_a.mint(ann, 7)
        statuses: list[int] = []

        async def fire(api_index: int) -> None:
            reply = await (api_a, api_b)[api_index % 2].submit(ann, token)
            statuses.append(reply.status_code)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(fire, i)
        assert sorted(set(statuses)) == [200, 409]
        assert statuses.count(200) == 1
        assert statuses.count(409) == 199
        rows = await pg_rows(
            database, "SELECT count(*) AS n, sum(score_increment) AS s FROM score_history"
        )
        assert (rows[0]["n"], rows[0]["s"]) == (1, 7)
        assert (await api_b.top())["entries"][0]["score"] == 7


async def test_flushall_rebuilds_rankings_and_keeps_nonces_used(
    settings: Settings, database: str, redis_url: str
) -> None:
    async with node_api(settings) as (api, _, _):
        players = [await api.player() for _ in range(5)]
        tokens = []
        for i, player in enumerate(players):
            token = await api.mint(player, 10 * (i + 1))
            tokens.append(token)
            assert (await api.submit(player, token)).status_code == 200
        before = await api.top()
        redis_flushall(redis_url)
        # A replay after the flush: Redis forgot the nonce, PostgreSQL did not.
        replay = await api.submit(players[0], tokens[0])
        assert replay.status_code == 409
        # Scores keep flowing while the node notices and rebuilds.
        await api.score(players[0], 100)
        with trio.fail_after(10):
            while True:
                reply = await api.http.get("/v1/leaderboards/global/top")
                if reply.status_code == 200 and reply.json()["entries"]:
                    after = reply.json()
                    if after["entries"][0]["score"] == 110:
                        break
                await trio.sleep(0.05)
        totals = await pg_rows(
            database,
            "SELECT user_id::text AS user_id, score FROM leaderboard_records "
            "WHERE leaderboard_id = 'global' ORDER BY score DESC",
        )
        assert [(e["user_id"], e["score"]) for e in after["entries"]] == [
            (r["user_id"], r["score"]) for r in totals
        ]
        assert len(before["entries"]) == 5


async def test_ties_rank_whoever_reached_the_score_first(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        first, second, third = [await api.player(n) for n in ("first", "second", "third")]
        await api.score(first, 50)
        await api.score(second, 50)
        await api.score(third, 60)
        entries = (await api.top())["entries"]
        assert [(e["username"], e["rank"]) for e in entries] == [
            ("third", 1),
            ("first", 2),
            ("second", 3),
        ]
        # Ascending boards: lowest first, ties again to the earliest.
        assert (
            await api.create_board("speedrun", sort_order="asc", operator="best")
        ).status_code == 201
        await api.score(second, 90, leaderboard="speedrun")
        await api.score(first, 90, leaderboard="speedrun")
        await api.score(third, 95, leaderboard="speedrun")
        await api.score(third, 120, leaderboard="speedrun")  # worse: best keeps 95
        entries = (await api.top("speedrun"))["entries"]
        assert [(e["username"], e["score"]) for e in entries] == [
            ("second", 90),
            ("first", 90),
            ("third", 95),
        ]


async def test_operators_set_best_and_decr(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        for board, operator in (("level", "set"), ("highscore", "best"), ("lives", "decr")):
            reply = await api.create_board(board, operator=operator)
            assert reply.status_code == 201, reply.text
        ann = await api.player()
        assert (await api.score(ann, 30, leaderboard="level"))["new_score"] == 30
        assert (await api.score(ann, 10, leaderboard="level"))["new_score"] == 10
        assert (await api.score(ann, 30, leaderboard="highscore"))["new_score"] == 30
        assert (await api.score(ann, 10, leaderboard="highscore"))["new_score"] == 30
        assert (await api.score(ann, 3, leaderboard="lives"))["new_score"] == -3
        duplicate = await api.create_board("level")
        assert duplicate.status_code == 409


async def test_reads_top_pages_around_user_and_friends(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        players = [await api.player(f"p{i:02d}") for i in range(12)]
        for i, player in enumerate(players):
            await api.score(player, 100 + i)  # p11 leads with 111
        page1 = await api.top(limit=5)
        assert [e["score"] for e in page1["entries"]] == [111, 110, 109, 108, 107]
        assert [e["rank"] for e in page1["entries"]] == [1, 2, 3, 4, 5]
        page2 = await api.top(limit=5, cursor=page1["next_cursor"])
        assert [e["rank"] for e in page2["entries"]] == [6, 7, 8, 9, 10]
        page3 = await api.top(limit=5, cursor=page2["next_cursor"])
        assert [e["rank"] for e in page3["entries"]] == [11, 12]
        assert page3["next_cursor"] is None

        middle = players[6]  # score 106, rank 6
        around = await api.http.get(f"/v1/leaderboards/global/around/{middle.user_id}?radius=2")
        assert [e["rank"] for e in around.json()["entries"]] == [4, 5, 6, 7, 8]
        one = await api.http.get(f"/v1/leaderboards/global/users/{middle.user_id}")
        assert (one.json()["rank"], one.json()["score"]) == (6, 106)
        friends = await api.http.post(
            "/v1/leaderboards/global/ranks",
            json={"user_ids": [players[0].user_id, players[11].user_id]},
        )
        assert [(e["rank"], e["score"]) for e in friends.json()["entries"]] == [(12, 100), (1, 111)]

        nobody = await api.player()
        missing = await api.http.get(f"/v1/leaderboards/global/users/{nobody.user_id}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_ranked"
        bad_cursor = await api.http.get("/v1/leaderboards/global/top?cursor=%%%")
        assert bad_cursor.status_code == 400
        too_many = await api.http.get("/v1/leaderboards/global/top?limit=1000")
        assert too_many.status_code == 422

        history = await api.http.get(f"/v1/users/{middle.user_id}/history", headers=middle.auth)
        assert [h["new_score"] for h in history.json()["entries"]] == [106]
        someone_else = await api.http.get(
            f"/v1/users/{middle.user_id}/history", headers=players[0].auth
        )
        assert someone_else.status_code == 403


async def test_postgres_down_answers_503_promptly_and_applies_nothing(
    settings: Settings, database: str
) -> None:
    proxy = TcpProxy(database)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        proxied = settings.replace(
            database_url=proxy.dsn, pg_command_timeout_s=1.0, submit_timeout_s=2.0
        )
        async with node_api(proxied) as (api, _, _):
            ann = await api.player()
            token = await api.mint(ann, 5)
            proxy.cut()
            began = trio.current_time()
            reply = await api.submit(ann, token)
            assert reply.status_code == 503
            assert trio.current_time() - began < 3.0
            proxy.restore()
            # Nothing was applied, and the same token still works once the
            # pool has replaced its dead connections (another process: poll).
            with trio.fail_after(10):
                while (retry := await api.submit(ann, token)).status_code == 503:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            assert retry.status_code == 200, retry.text
            assert retry.json()["new_score"] == 5
        nursery.cancel_scope.cancel()


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL whose traffic the test can cut."""

    def __init__(self, dsn: str) -> None:
        head, _, database = dsn.rpartition("/")
        self._target_host, port = head.rsplit("@", 1)[1].split(":")
        self._target_port = int(port)
        self._user = head.split("//", 1)[1].split("@")[0]
        self._database = database
        self._open: set[trio.Nursery] = set()
        self._cut = False
        self.dsn = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.dsn = f"postgresql://{self._user}@127.0.0.1:{port}/{self._database}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self._cut = True
        for nursery in self._open:
            nursery.cancel_scope.cancel()

    def restore(self) -> None:
        self._cut = False

    async def _handle(self, client: trio.SocketStream) -> None:
        if self._cut:
            await client.aclose()
            return
        server = await trio.open_tcp_stream(self._target_host, self._target_port)
        async with client, server, trio.open_nursery() as nursery:
            self._open.add(nursery)
            try:
                nursery.start_soon(self._pump, client, server)
                nursery.start_soon(self._pump, server, client)
            finally:
                pass
        self._open.discard(nursery)

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@pytest.mark.parametrize("path", ["/v1/scores/update", "/scores/update"])
async def test_both_update_paths_work(settings: Settings, path: str) -> None:
    async with node_api(settings) as (api, _, _):
        ann = await api.player()
        reply = await api.http.post(
            path, json={"action_token": await api.mint(ann, 3)}, headers=ann.auth
        )
        assert reply.status_code == 200
        assert reply.json()["new_score"] == 3


async def test_concurrent_identical_reads_all_get_the_answer(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        await api.score(ann, 5)
        replies: list[tuple[int, object]] = []

        async def read() -> None:
            reply = await api.http.get("/v1/leaderboards/global/top?limit=10")
            replies.append((reply.status_code, reply.json()))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(read)
        assert {status for status, _ in replies} == {200}
        assert all(body == replies[0][1] for _, body in replies)


async def test_concurrent_first_scores_of_a_new_player_all_count(
    settings: Settings, database: str
) -> None:
    async with node_api(settings) as (api, _, _):
        for round_ in range(5):
            newcomer = await api.player(f"newcomer{round_}")
            tokens = [await api.mint(newcomer, d) for d in (1, 2, 3, 4, 5, 6)]
            statuses: list[int] = []

            async def fire(
                token: str, player: Player = newcomer, seen: list[int] = statuses
            ) -> None:
                seen.append((await api.submit(player, token)).status_code)

            async with trio.open_nursery() as nursery:
                for token in tokens:
                    nursery.start_soon(fire, token)
            assert statuses == [200] * 6
            rows = await pg_rows(
                database,
                "SELECT score, version FROM leaderboard_records WHERE user_id = $1",
                newcomer.user_id,
            )
            assert rows == [{"score": 21, "version": 6}]
