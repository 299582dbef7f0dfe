"""The fraud engine and rate limits on the score path, against real Redis and PostgreSQL.

The per-factor behaviour is tested on the pure model (tests/protocol/test_fraud.py);
here: what a decision does. Blocked submissions never reach the ledger or the
ranking, flagged ones do, both are logged with their factors, repeated blocks
shadow-ban, alerts reach the webhook, and rate limits answer 429.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from typing import Any

import trio

from config import Settings
from tests.api import Api, Player
from tests.harness import node_api
from tests.server.test_score_path import pg_rows

#: Only the frequency factor counts, so the test knows which submission trips it.
FREQUENCY_ONLY = "increment_weight=0,timing_weight=0,identity_weight=0,velocity_weight=0"


def fraud_on(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, fraud_enabled=True, fraud_params=FREQUENCY_ONLY, **changes)


async def submit_many(api: Api, player: Player, count: int, delta: int = 10) -> list[int]:
    statuses = []
    for _ in range(count):
        reply = await api.submit(player, await api.mint(player, delta))
        statuses.append(reply.status_code)
        if reply.status_code == 403:
            assert reply.json()["error"]["code"] == "fraud_blocked"
    return statuses


async def wait_for_rows(dsn: str, query: str, *args: object, count: int) -> list[dict[str, Any]]:
    """Poll PostgreSQL until ``query`` returns ``count`` rows: the log writer is another task
    on the node, and PostgreSQL tells nobody when a row lands."""
    with trio.fail_after(10):
        while len(rows := await pg_rows(dsn, query, *args)) < count:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return rows


async def test_blocked_submissions_never_reach_the_ledger_and_flagged_ones_do(
    settings: Settings, database: str
) -> None:
    settings = fraud_on(settings, fraud_shadow_ban_blocks=0)
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        statuses = await submit_many(api, ann, 64)
        accepted = statuses.count(200)
        blocked = statuses.count(403)
        assert set(statuses) == {200, 403}
        # 30 a minute is the soft limit: nothing before it is even flagged, and
        # once blocking starts the frequency only grows.
        assert statuses[:30] == [200] * 30
        assert blocked >= 3 and statuses[-blocked:] == [403] * blocked

        history = await pg_rows(
            database, "SELECT count(*) AS n FROM score_history WHERE user_id = $1", ann.user_id
        )
        nonces = await pg_rows(
            database, "SELECT count(*) AS n FROM used_nonces WHERE user_id = $1", ann.user_id
        )
        assert history[0]["n"] == nonces[0]["n"] == accepted
        top = await api.top()
        assert top["entries"][0]["score"] == 10 * accepted

        blocks = await wait_for_rows(
            database,
            "SELECT risk_score, metadata FROM fraud_logs WHERE user_id = $1 "
            "AND event_type = 'block' ORDER BY id",
            ann.user_id,
            count=blocked,
        )
        flags = await pg_rows(
            database,
            "SELECT risk_score, metadata FROM fraud_logs WHERE user_id = $1 "
            "AND event_type = 'flag'",
            ann.user_id,
        )
        assert flags, "the submissions between the flag and block thresholds were flagged"
        for row in blocks + flags:
            metadata = json.loads(row["metadata"])
            assessment = metadata["assessment"]
            # Explainable from the row alone: the factors, the reasons, the submission.
            assert assessment["factors"]["frequency"] > 0
            assert any("60 s" in reason for reason in assessment["reasons"])
            assert float(row["risk_score"]) == assessment["risk"]
            assert metadata["leaderboard"] == "global" and metadata["delta"] == 10
        assert all(json.loads(r["metadata"])["assessment"]["decision"] == "block" for r in blocks)


async def test_a_blocked_token_stays_spent(settings: Settings, database: str) -> None:
    settings = fraud_on(settings, fraud_shadow_ban_blocks=0)
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        await submit_many(api, ann, 60)
        token = await api.mint(ann, 10)
        assert (await api.submit(ann, token)).status_code == 403
        again = await api.submit(ann, token)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "action_token_used"


async def test_repeated_blocks_shadow_ban_the_player(settings: Settings, database: str) -> None:
    settings = fraud_on(settings, fraud_shadow_ban_blocks=3)
    async with node_api(settings) as (api, _, _):
        ann, bob = await api.player("ann"), await api.player("bob")
        await api.score(bob, 5)
        statuses = await submit_many(api, ann, 62)
        assert statuses.count(403) >= 3
        await wait_for_rows(
            database,
            "SELECT 1 FROM users WHERE id = $1 AND status = 'shadow_banned'",
            ann.user_id,
            count=1,
        )
        shadow = await wait_for_rows(
            database,
            "SELECT metadata FROM fraud_logs WHERE user_id = $1 AND event_type = 'shadow_ban'",
            ann.user_id,
            count=1,
        )
        assert "blocked submissions" in json.loads(shadow[0]["metadata"])["reason"]
        audit = await pg_rows(
            database,
            "SELECT actor FROM audit_log WHERE action = 'user.shadow_ban' AND target = $1",
            ann.user_id,
        )
        assert audit == [{"actor": "fraud-engine"}]
        # Nobody else sees ann; ann still sees her own score.
        # The ban lands after the 403 is sent; poll the board as a client would.
        with trio.fail_after(5):
            while [e["user_id"] for e in (await api.top())["entries"]] != [bob.user_id]:  # noqa: ASYNC110
                await trio.sleep(0.02)
        own = await api.http.get(f"/v1/leaderboards/global/users/{ann.user_id}")
        assert own.status_code == 200
        assert own.json()["score"] == 10 * statuses.count(200)


async def _webhook_server(
    received: trio.MemorySendChannel[dict[str, Any]], *, task_status: trio.TaskStatus[int]
) -> None:
    """A minimal HTTP endpoint: each POST's JSON body goes to ``received``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
        await received.send(json.loads(body))
        await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        task_status.started(port)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def test_blocks_are_alerted_to_the_webhook(settings: Settings, database: str) -> None:
    send, receive = trio.open_memory_channel[dict[str, Any]](100)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_webhook_server, send)
        settings = fraud_on(
            settings, fraud_shadow_ban_blocks=0, fraud_webhook_url=f"http://127.0.0.1:{port}/hook"
        )
        async with node_api(settings) as (api, _, _):
            ann = await api.player("ann")
            statuses = await submit_many(api, ann, 60)
            assert 403 in statuses
            with trio.fail_after(10):
                alert = await receive.receive()
        nursery.cancel_scope.cancel()
    assert alert["event"] == "fraud_blocked"
    assert alert["user_id"] == ann.user_id
    assert alert["source"] == "podium" and alert["node_id"] == "test-node"
    assert alert["assessment"]["decision"] == "block"


def _redis_exists(url: str, key: str) -> bool:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"*2\r\n$6\r\nEXISTS\r\n${len(key)}\r\n{key}\r\n".encode())
        return sock.recv(16).startswith(b":1")


async def test_rate_limits_answer_429_and_give_the_token_back(
    settings: Settings, database: str
) -> None:
    settings = dataclasses.replace(settings, rate_user_per_s=0.01, rate_user_burst=2)
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        assert await submit_many(api, ann, 2) == [200, 200]
        minted = await api.http.post(
            "/v1/actions",
            json={"user_id": ann.user_id, "leaderboard": "global", "delta": 1},
            headers={"Authorization": f"Bearer {settings.service_key}"},
        )
        token, nonce = minted.json()["action_token"], minted.json()["nonce"]
        limited = await api.submit(ann, token)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 101
        # The nonce was given back: the same token may be retried later.
        assert settings.redis_url is not None
        assert not _redis_exists(settings.redis_url, f"podium:nonce:{nonce}")
        history = await pg_rows(
            database, "SELECT count(*) AS n FROM score_history WHERE user_id = $1", ann.user_id
        )
        assert history[0]["n"] == 2


async def test_per_ip_limits_follow_the_forwarded_address_from_trusted_proxies(
    settings: Settings, database: str
) -> None:
    settings = dataclasses.replace(
        settings, rate_ip_per_s=0.01, rate_ip_burst=2, trusted_proxies="127.0.0.1/32"
    )
    async with node_api(settings) as (api, _, _):

        async def sign_in(ip: str) -> int:
            reply = await api.http.post(
                "/v1/auth/device",
                json={"device_id": f"device-{ip}-0001"},
                headers={"X-Forwarded-For": ip},
            )
            return reply.status_code

        assert [await sign_in("198.51.100.1") for _ in range(3)] == [200, 200, 429]
        # Another client behind the same proxy has its own budget.
        assert await sign_in("198.51.100.2") == 200


async def test_minting_is_rate_limited_per_service_key(settings: Settings, database: str) -> None:
    settings = dataclasses.replace(settings, rate_service_per_s=0.01, rate_service_burst=3)
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        replies = [
            await api.http.post(
                "/v1/actions",
                json={"user_id": ann.user_id, "delta": 1},
                headers={"Authorization": f"Bearer {settings.service_key}"},
            )
            for _ in range(4)
        ]
        assert [r.status_code for r in replies] == [200, 200, 200, 429]
        assert replies[-1].json()["error"]["code"] == "rate_limited"
        assert "Retry-After" in replies[-1].headers


async def test_without_redis_submissions_are_admitted_unscored(
    settings: Settings, database: str
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    settings = fraud_on(settings, redis_url=dead, redis_timeout_s=0.5)
    async with node_api(settings) as (api, _, _):
        ann = await api.player("ann")
        reply = await api.submit(ann, await api.mint(ann, 10))
        # Committed in PostgreSQL (the truth); the rank is unknown until Redis is back.
        assert reply.status_code == 200, reply.text
        assert (reply.json()["new_score"], reply.json()["rank"]) == (10, None)
        metrics = (await api.http.get("/metrics")).text
        assert "podium_fraud_unscored_total 1.0" in metrics


async def test_websocket_submissions_share_the_forwarded_address_limits(
    settings: Settings, database: str
) -> None:
    from tests.server.test_ws import receive, send, signed_in, socket

    settings = dataclasses.replace(
        settings, rate_ip_per_s=0.01, rate_ip_burst=1, trusted_proxies="127.0.0.1/32"
    )
    async with node_api(settings) as (api, _, address):
        # Signed in from addresses of their own: each has one request to spend.
        api.http.headers["X-Forwarded-For"] = "198.51.100.10"
        ann = await api.player("ann")
        api.http.headers["X-Forwarded-For"] = "198.51.100.11"
        bob = await api.player("bob")

        async def submit(ws: Any, player: Player, msg_id: str) -> dict[str, Any]:
            await send(ws, type="submit", id=msg_id, action_token=await api.mint(player, 5))
            return await receive(ws, "ack", "error")

        async with (
            socket(address.ws_url, extra_headers=[(b"X-Forwarded-For", b"198.51.100.1")]) as one,
            socket(address.ws_url, extra_headers=[(b"X-Forwarded-For", b"198.51.100.2")]) as two,
        ):
            await signed_in(one, ann)
            await signed_in(two, bob)
            assert (await submit(one, ann, "a1"))["type"] == "ack"
            assert (await submit(two, bob, "b1"))["type"] == "ack"
            limited = await submit(one, ann, "a2")
            assert (limited["type"], limited["code"], limited["id"]) == (
                "error",
                "rate_limited",
                "a2",
            )
