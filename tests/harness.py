"""The test harness: real Redis and PostgreSQL for the whole session, a clean database per test.

The servers are started by the same code as ``podium dev``
(:mod:`server.embedded`), on free ports, in a temporary directory. They run
under a Trio loop in a dedicated thread that lives for the whole session:
Linux ties the servers' parent-death signal to the thread that spawned them,
so if pytest is killed they go with it.

PostgreSQL gets a template database migrated once; each test that asks for
a database gets a fresh ``CREATE DATABASE ... TEMPLATE`` copy (a file copy,
tens of milliseconds) so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import outcome
import trio
import trio_asyncio

from config import Settings
from server.embedded import open_embedded_postgres, open_embedded_redis
from server.migrations import load_migrations
from server.node import Node, NodeAddress
from server.stores.pg_store import create_database, drop_database, open_postgres
from tests.api import Api

T = TypeVar("T")
Request = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], trio.MemorySendChannel[Any]]

TEMPLATE_DATABASE = "podium_template"


@dataclass(frozen=True)
class ServiceUrls:
    redis_url: str
    admin_dsn: str
    dsn_prefix: str

    def dsn_for(self, database: str) -> str:
        return f"{self.dsn_prefix}/{database}"


class TestServices:
    """Real Redis and PostgreSQL, owned by a background thread; see the module docstring."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, root: Path) -> None:
        self._root = root
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._urls: ServiceUrls | None = None
        self._requests: trio.MemorySendChannel[Request] | None = None
        self._names = itertools.count()
        self._thread = threading.Thread(target=self._main, name="test-services", daemon=True)

    @property
    def urls(self) -> ServiceUrls:
        assert self._urls is not None
        return self._urls

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("test services failed to start") from self._error

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=60)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the services' Trio loop (inside trio-asyncio); return its result."""
        assert self._token is not None

        async def submit() -> T:
            assert self._requests is not None
            reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[T]](1)
            await self._requests.send((fn, args, reply_send))
            return (await reply_receive.receive()).unwrap()

        return trio.from_thread.run(submit, trio_token=self._token)

    def new_database(self) -> tuple[str, str]:
        """A fresh migrated database: (name, dsn)."""
        name = f"test_{next(self._names)}"
        create = partial(create_database, template=TEMPLATE_DATABASE)
        self.call(create, self.urls.admin_dsn, name)
        return name, self.urls.dsn_for(name)

    def empty_database(self) -> tuple[str, str]:
        """A fresh database without Podium's schema: (name, dsn)."""
        name = f"empty_{next(self._names)}"
        self.call(create_database, self.urls.admin_dsn, name)
        return name, self.urls.dsn_for(name)

    def drop_database(self, name: str) -> None:
        self.call(drop_database, self.urls.admin_dsn, name)

    def flush_redis(self) -> None:
        """FLUSHALL, spoken directly so the adapter needs no such command."""
        host, port = self.urls.redis_url.removeprefix("redis://").split("/")[0].split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(16).startswith(b"+OK")

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with (
            trio_asyncio.open_loop(),
            open_embedded_redis(self._root / "redis", persist=False) as redis,
            open_embedded_postgres(self._root / "postgres", durable=False) as postgres,
        ):
            await create_database(postgres.dsn_for("postgres"), TEMPLATE_DATABASE)
            async with open_postgres(
                postgres.dsn_for(TEMPLATE_DATABASE), min_size=1, max_size=1
            ) as pg:
                await pg.apply_migrations(load_migrations())
            self._urls = ServiceUrls(
                redis_url=redis.url,
                admin_dsn=postgres.dsn_for("postgres"),
                dsn_prefix=postgres.dsn_for("").rstrip("/"),
            )
            requests_send, requests_receive = trio.open_memory_channel[Request](0)
            self._requests = requests_send
            async with trio.open_nursery() as nursery:
                # Spawned here, so it runs inside trio-asyncio's loop context.
                nursery.start_soon(self._worker, requests_receive)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    @staticmethod
    async def _worker(requests: trio.MemoryReceiveChannel[Request]) -> None:
        async for fn, args, reply in requests:
            await reply.send(await outcome.acapture(fn, *args))


@contextlib.asynccontextmanager
async def running_node(settings: Settings) -> AsyncIterator[tuple[Node, NodeAddress]]:
    """A node started in this test's Trio run, stopped gracefully at the end."""
    node = Node(settings)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(node.run)
        try:
            yield node, address
        finally:
            node.stop_nowait()


@contextlib.asynccontextmanager
async def node_api(settings: Settings) -> AsyncIterator[tuple[Api, Node, NodeAddress]]:
    """A running node and an API client for it."""
    async with (
        running_node(settings) as (node, address),
        httpx.AsyncClient(base_url=address.http_url, timeout=30) as http,
    ):
        yield Api(http, settings), node, address
