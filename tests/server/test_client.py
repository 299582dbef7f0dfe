"""server.client against a whole node in-process, with the real Redis and PostgreSQL."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

from config import Settings
from protocol.messages import CloseCode
from server.client import (
    ClientError,
    ConnectionClosed,
    ConnectionRefused,
    PodiumClient,
    open_client,
)
from tests.api import Api, Player
from tests.harness import node_api, running_node

# Every test is bounded: a protocol bug shows up as a failure, never a hang.
LIMIT_S = 15


async def next_of(client: PodiumClient, kind: str, **fields: Any) -> dict[str, Any]:
    """The next event of type ``kind`` whose fields match; others are skipped."""
    while True:
        event = await client.next_event()
        if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
            return event


async def test_welcome_and_ping(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with running_node(settings) as (_, address), open_client(address.ws_url) as client:
            assert client.welcome == {
                "type": "welcome",
                "protocol": 1,
                "node_id": "test-node",
                "heartbeat_s": settings.ws_heartbeat_s,
            }
            assert client.node_id == "test-node"
            assert client.user_id is None
            round_trip = await client.ping()
            assert 0 < round_trip < 5
            # Pings in flight together are matched by id.
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(client.ping)
            stats = client.statistics()
            assert stats.requests_in_flight == 0 and stats.events_dropped == 0
        assert client.closed is not None and client.closed.by_client


async def test_refused_handshakes(settings: Settings) -> None:
    browsers = settings.replace(ws_allowed_origins="https://game.example")
    with trio.fail_after(LIMIT_S):
        async with running_node(browsers) as (_, address):
            with pytest.raises(ConnectionRefused) as wrong_path:
                async with open_client(address.ws_url.replace("/v1/ws", "/v2/ws")):
                    pass
            assert wrong_path.value.status_code == 404
            assert wrong_path.value.code == "not_found"

            with pytest.raises(ConnectionRefused) as other_site:
                async with open_client(address.ws_url, origin="https://evil.example"):
                    pass
            assert other_site.value.status_code == 403
            assert other_site.value.code == "origin_not_allowed"

            async with open_client(address.ws_url, origin="https://game.example") as client:
                await client.ping()


async def test_full_node_refuses_with_503(settings: Settings) -> None:
    one = settings.replace(ws_max_connections=1)
    with trio.fail_after(LIMIT_S):
        async with running_node(one) as (_, address), open_client(address.ws_url):
            with pytest.raises(ConnectionRefused) as full:
                async with open_client(address.ws_url):
                    pass
            assert full.value.status_code == 503


async def test_auth_and_a_bad_token(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with node_api(settings) as (api, _, address):
            ann = await api.player("ann")
            async with open_client(address.ws_url) as client:
                assert await client.auth(ann.access_token) == ann.user_id
                assert client.user_id == ann.user_id
                with pytest.raises(ClientError) as again:
                    await client.auth(ann.access_token)
                assert again.value.code == "already_authed"

            async with open_client(address.ws_url, token=ann.access_token) as client:
                assert client.user_id == ann.user_id

            async with open_client(address.ws_url) as client:
                with pytest.raises(ClientError) as refused:
                    await client.auth("not.a.jwt")
                assert refused.value.code == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    await client.ping()
                assert closed.value.code == CloseCode.UNAUTHORIZED
                assert closed.value.error is not None
                assert closed.value.error.code == "unauthorized"
                assert not closed.value.should_reconnect

            with pytest.raises(ClientError) as at_open:
                async with open_client(address.ws_url, token="not.a.jwt"):
                    pass
            assert at_open.value.code == "unauthorized"


async def test_subscribe_submit_update_and_me(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with node_api(settings) as (api, _, address):
            ann, bob = await api.player("ann"), await api.player("bob")
            await api.score(bob, 100)
            async with (
                open_client(address.ws_url) as spectator,
                open_client(address.ws_url, token=ann.access_token) as player,
            ):
                watched = await spectator.subscribe("global", top=5)
                assert watched["type"] == "snapshot" and watched["leaderboard"] == "global"
                assert [e["user_id"] for e in watched["entries"]] == [bob.user_id]
                assert watched["me"] is None

                mine = await player.subscribe("global", top=5)
                assert mine["me"] is None  # ann has no score yet
                assert player.subscriptions == {"global": 5}

                ack = await player.submit(await api.mint(ann, 250), id="first")
                assert ack == {
                    "type": "ack",
                    "id": "first",
                    "leaderboard": "global",
                    "old_score": 0,
                    "new_score": 250,
                    "rank": 1,
                }

                update = await next_of(spectator, "update")
                assert update["seq"] > watched["seq"]
                assert [(e["rank"], e["user_id"], e["score"]) for e in update["entries"]] == [
                    (1, ann.user_id, 250),
                    (2, bob.user_id, 100),
                ]
                assert update["entries"][0]["username"] == "ann"
                me = await next_of(player, "me")
                assert me == {"type": "me", "leaderboard": "global", "rank": 1, "score": 250}

                await spectator.unsubscribe("global")
                assert spectator.subscriptions == {}
                with pytest.raises(ClientError) as twice:
                    await spectator.unsubscribe("global")
                assert twice.value.code == "not_subscribed"


async def test_concurrent_submits_are_matched_by_id(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with node_api(settings) as (api, _, address):
            ann = await api.player("ann")
            await api.score(ann, 100)
            tokens = [await api.mint(ann, delta) for delta in (1, 2, 3, 4, 5, 6)]
            acks: dict[str, dict[str, Any]] = {}
            async with open_client(address.ws_url, token=ann.access_token) as client:

                async def submit(i: int) -> None:
                    acks[f"c{i}"] = dict(await client.submit(tokens[i], id=f"c{i}"))

                async with trio.open_nursery() as nursery:
                    for i in range(len(tokens)):
                        nursery.start_soon(submit, i)

                # Each reply went to its own request: c{i} carried delta i + 1.
                assert {key: ack["id"] for key, ack in acks.items()} == {k: k for k in acks}
                for i in range(len(tokens)):
                    assert acks[f"c{i}"]["new_score"] - acks[f"c{i}"]["old_score"] == i + 1
                # Applied one after another, in whatever order they were committed.
                chain = sorted((ack["old_score"], ack["new_score"]) for ack in acks.values())
                assert chain[0][0] == 100 and chain[-1][1] == 121
                assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))

                with pytest.raises(ClientError) as replay:
                    await client.submit(tokens[0], id=7)
                assert replay.value.code == "action_token_used"
                assert replay.value.id == 7
                # The socket is still good after a refused submission.
                await client.ping()


async def test_submit_needs_auth_and_a_token_for_this_user(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with node_api(settings) as (api, _, address):
            ann, bob = await api.player("ann"), await api.player("bob")
            async with open_client(address.ws_url) as client:
                with pytest.raises(ClientError) as anonymous:
                    await client.submit(await api.mint(ann, 5))
                assert anonymous.value.code == "auth_required"
                await client.auth(ann.access_token)
                with pytest.raises(ClientError) as wrong_user:
                    await client.submit(await api.mint(bob, 5))
                assert wrong_user.value.code == "action_token_wrong_user"


async def test_spectators_can_be_turned_off(settings: Settings) -> None:
    members_only = settings.replace(ws_allow_spectators=False)
    with trio.fail_after(LIMIT_S):
        async with node_api(members_only) as (api, _, address):
            ann = await api.player("ann")
            async with open_client(address.ws_url) as client:
                with pytest.raises(ClientError) as refused:
                    await client.subscribe("global")
                assert refused.value.code == "auth_required"
                await client.auth(ann.access_token)
                snapshot = await client.subscribe("global")
                assert snapshot["leaderboard"] == "global"


async def test_subscription_errors(settings: Settings) -> None:
    two = settings.replace(ws_max_subscriptions=2)
    with trio.fail_after(LIMIT_S):
        async with node_api(two) as (api, _, address):
            for board in ("a", "b", "c"):
                assert (await api.create_board(board)).status_code == 201
            async with open_client(address.ws_url) as client:
                with pytest.raises(ClientError) as missing:
                    await client.subscribe("no-such-board")
                assert missing.value.code == "leaderboard_not_found"
                with pytest.raises(ClientError) as bad:
                    await client.subscribe("Not A Board")
                assert bad.value.code == "bad_message"
                with pytest.raises(ClientError) as too_big:
                    await client.subscribe("global", top=10_000)
                assert too_big.value.code == "bad_message"
                await client.subscribe("a")
                await client.subscribe("b")
                await client.subscribe("b", top=3)  # the same board again is no new one
                with pytest.raises(ClientError) as too_many:
                    await client.subscribe("c")
                assert too_many.value.code == "too_many_subscriptions"
                assert client.subscriptions == {"a": 10, "b": 3}


async def test_bad_frames_become_events_and_oversize_closes_with_4008(
    settings: Settings,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with (
            running_node(settings) as (_, address),
            open_client(address.ws_url, max_events=2) as client,
        ):
            for _ in range(3):
                await client.send_frame("{oops")
            await client.ping()  # answered after the three errors: they are all queued
            assert client.statistics().events_dropped == 1
            assert (await client.next_event())["code"] == "malformed_json"
            assert client.next_event_nowait()["code"] == "malformed_json"
            with pytest.raises(trio.WouldBlock):
                client.next_event_nowait()

            await client.send_frame("x" * (settings.ws_max_message_bytes + 1))
            error = await client.next_event()
            assert error["type"] == "error" and error["code"] == "message_too_large"
            with pytest.raises(ConnectionClosed) as closed:
                await client.next_event()
            assert closed.value.code == CloseCode.POLICY
            assert closed.value.error is not None
            assert closed.value.error.code == "message_too_large"
            assert not closed.value.should_reconnect
            with pytest.raises(ConnectionClosed):
                await client.ping()


async def test_rate_limit_then_flooding_closes_with_4008(settings: Settings) -> None:
    strict = settings.replace(ws_rate_per_s=1, ws_rate_burst=2)
    with trio.fail_after(LIMIT_S):
        async with running_node(strict) as (_, address), open_client(address.ws_url) as client:
            await client.ping()
            await client.ping()
            with pytest.raises(ClientError) as limited:
                await client.ping()
            assert limited.value.code == "rate_limited"
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(200):
                    await client.send_frame('{"type":"ping"}')
                async for _ in client.events():
                    pass
            assert closed.value.code == CloseCode.POLICY
            assert closed.value.error is not None
            assert closed.value.error.code == "flooding"


async def test_heartbeats_are_answered_while_nobody_reads(settings: Settings) -> None:
    quick = settings.replace(ws_heartbeat_s=1.0)
    with trio.fail_after(LIMIT_S):
        async with running_node(quick) as (_, address), open_client(address.ws_url) as client:
            # Three heartbeats go by; the reader task answers each ping.
            await trio.sleep(3.5)
            assert client.closed is None
            await client.ping()


async def test_draining_node_closes_with_4503(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with running_node(settings) as (node, address), open_client(address.ws_url) as client:
            await client.subscribe("global")
            node.stop_nowait()
            with pytest.raises(ConnectionClosed) as closed:
                async for _ in client.events():
                    pass
            assert closed.value.code == CloseCode.DRAINING
            assert closed.value.should_reconnect
            assert not closed.value.by_client


async def test_logout_closes_the_socket_with_4001(settings: Settings) -> None:
    with trio.fail_after(LIMIT_S):
        async with node_api(settings) as (api, _, address):
            ann: Player = await api.player("ann")
            async with open_client(address.ws_url, token=ann.access_token) as client:
                await logout(api, ann)
                with pytest.raises(ConnectionClosed) as closed:
                    async for _ in client.events():
                        pass
                assert closed.value.code == CloseCode.UNAUTHORIZED


async def logout(api: Api, player: Player) -> None:
    reply = await api.http.post("/v1/auth/logout", headers=player.auth)
    assert reply.status_code == 200, reply.text
