"""A whole node in-process against the real Redis and PostgreSQL of the test harness."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from config import Settings
from protocol.messages import CloseCode
from server.embedded import free_port
from tests.harness import running_node


async def test_health_ready_and_metrics(settings: Settings) -> None:
    async with (
        running_node(settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url) as http,
    ):
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "node_id": "test-node"}

        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "checks": {
                "redis": "ok",
                "postgres": "ok",
                "migrations": "ok",
                "ranking": "ok",
                "node": "ok",
            },
        }

        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert "process_resident_memory_bytes" in text
        assert 'podium_info{node_id="test-node"' in text
        assert "podium_ready 1.0" in text
        assert 'podium_actor_up{actor="ws"} 1.0' in text


async def test_unknown_routes_and_methods_get_the_error_body(settings: Settings) -> None:
    async with (
        running_node(settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url) as http,
    ):
        missing = await http.get("/v1/nothing-here")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        wrong_method = await http.post("/healthz")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        huge = await http.post("/healthz", content=b"x" * (settings.http_max_body_bytes + 1))
        assert huge.status_code in (405, 413)
        assert "error" in huge.json()


async def test_readyz_reports_an_unreachable_redis(settings: Settings) -> None:
    dead_redis = settings.replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5
    )
    async with (
        running_node(dead_redis) as (_, address),
        httpx.AsyncClient(base_url=address.http_url) as http,
    ):
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["redis"] != "ok"
        assert body["error"]["code"] == "not_ready"
        assert "redis" in body["error"]["message"]


async def test_readyz_reports_pending_migrations(settings: Settings, empty_database: str) -> None:
    unmigrated = settings.replace(database_url=empty_database, migrate_on_start=False)
    async with (
        running_node(unmigrated) as (_, address),
        httpx.AsyncClient(base_url=address.http_url) as http,
    ):
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["migrations"].startswith("pending [1")


async def test_websocket_welcome_ping_and_bad_frames(settings: Settings) -> None:
    async with running_node(settings) as (_, address), open_websocket_url(address.ws_url) as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome == {
            "type": "welcome",
            "protocol": 1,
            "node_id": "test-node",
            "heartbeat_s": settings.ws_heartbeat_s,
        }
        await ws.send_message(json.dumps({"type": "ping", "id": "p1"}))
        assert json.loads(await ws.get_message()) == {"type": "pong", "id": "p1"}
        await ws.send_message("{oops")
        assert json.loads(await ws.get_message())["code"] == "malformed_json"
        await ws.send_message(b"\x00\x01")
        assert json.loads(await ws.get_message())["code"] == "binary_not_supported"
        # Still usable after bad frames.
        await ws.send_message(json.dumps({"type": "ping", "id": 2}))
        assert json.loads(await ws.get_message()) == {"type": "pong", "id": 2}


async def test_oversize_websocket_message_closes_with_4008(settings: Settings) -> None:
    async with running_node(settings) as (_, address), open_websocket_url(address.ws_url) as ws:
        await ws.get_message()
        await ws.send_message("x" * (settings.ws_max_message_bytes + 1))
        assert json.loads(await ws.get_message())["code"] == "message_too_large"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == CloseCode.POLICY


async def test_websocket_on_another_path_is_refused(settings: Settings) -> None:
    async with running_node(settings) as (_, address):
        url = address.ws_url.replace("/v1/ws", "/elsewhere")
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url):
                pass
        assert rejected.value.status_code == 404


async def test_stopping_the_node_closes_websockets_with_4503(settings: Settings) -> None:
    async with running_node(settings) as (node, address), open_websocket_url(address.ws_url) as ws:
        await ws.get_message()
        began = trio.current_time()
        node.stop_nowait()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == CloseCode.DRAINING
        assert trio.current_time() - began < settings.graceful_timeout_s


async def test_connection_limit_refuses_with_503(settings: Settings) -> None:
    one = settings.replace(ws_max_connections=1)
    async with running_node(one) as (_, address), open_websocket_url(address.ws_url) as first:
        await first.get_message()
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(address.ws_url):
                pass
        assert rejected.value.status_code == 503
