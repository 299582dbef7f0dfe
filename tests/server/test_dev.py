"""``podium dev`` as a user runs it: ready, stopped by Ctrl-C or kill -9, restarted on its data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio

from server.embedded import wait_for_exit
from server.stores.pg_store import open_postgres

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


class DevNode:
    """One ``podium dev`` process and what its banner announced."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
        env |= {
            "PODIUM_DATA_DIR": str(data_dir),
            "PODIUM_HTTP_PORT": "0",
            "PODIUM_WS_PORT": "0",
            "PODIUM_GRACEFUL_TIMEOUT_S": "5",
        }
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "dev"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.banner: dict[str, str] = {}

    async def wait_ready(self) -> None:
        def read_banner() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                match = re.match(r"\s+(HTTP|PostgreSQL|Admin token)\s+(\S+)", line)
                if match:
                    self.banner[match[1]] = match[2]
                if line.startswith("Press Ctrl-C"):
                    return
            raise AssertionError("podium dev exited before it was ready")

        with trio.fail_after(60):
            await trio.to_thread.run_sync(read_banner)

    def server_pids(self) -> list[int]:
        """PIDs of the node's child processes (the embedded servers)."""
        children: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            children += [int(p) for p in (task / "children").read_text().split()]
        return children

    async def stop(self, how: signal.Signals) -> int:
        """Send ``how``; return the exit code once the node and its servers are gone."""
        servers = self.server_pids()
        self.process.send_signal(how)
        with trio.fail_after(30):
            code = await trio.to_thread.run_sync(self.process.wait)
            for pid in servers:
                await wait_for_exit(pid)
        return code


async def user_count(dsn: str, username: str) -> int:
    async with trio_asyncio.open_loop(), open_postgres(dsn, min_size=1, max_size=1) as pg:
        rows = await pg.fetch("SELECT count(*) AS n FROM users WHERE username = $1", username)
        return int(rows[0]["n"])


async def test_dev_node_lifecycle(tmp_path: Path) -> None:
    data_dir = tmp_path / "podium-data"
    log = tmp_path / "node.log"

    # First start: ready, with servers of its own and generated secrets.
    node = DevNode(data_dir, log)
    try:
        await node.wait_ready()
        async with httpx.AsyncClient(base_url=node.banner["HTTP"]) as http:
            assert (await http.get("/readyz")).status_code == 200
        assert len(node.server_pids()) == 2
        secrets = json.loads((data_dir / "secrets.json").read_text())
        assert node.banner["Admin token"] == secrets["admin_token"]
        assert oct((data_dir / "secrets.json").stat().st_mode & 0o777) == "0o600"
        async with (
            trio_asyncio.open_loop(),
            open_postgres(node.banner["PostgreSQL"], min_size=1, max_size=1) as pg,
        ):
            await pg.execute("INSERT INTO users (username) VALUES ('survivor')")

        # Ctrl-C: a clean exit, and the servers go with it.
        assert await node.stop(signal.SIGINT) == 0
    finally:
        node.process.kill()
        node.process.wait()

    # Second start: the same data and secrets; then kill -9 leaves nothing behind.
    node = DevNode(data_dir, log)
    try:
        await node.wait_ready()
        assert node.banner["Admin token"] == secrets["admin_token"]
        assert await user_count(node.banner["PostgreSQL"], "survivor") == 1
        assert await node.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        node.process.kill()
        node.process.wait()

    # Third start after the kill: PostgreSQL recovers and the data is there.
    node = DevNode(data_dir, log)
    try:
        await node.wait_ready()
        assert await user_count(node.banner["PostgreSQL"], "survivor") == 1
        assert await node.stop(signal.SIGTERM) == 0
    finally:
        node.process.kill()
        node.process.wait()
    text = log.read_text()
    assert '"msg": "node ready"' in text
    assert "Traceback" not in text
