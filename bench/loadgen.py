"""A closed-loop HTTP/1.1 load generator: one process, C keep-alive connections.

Run by :mod:`bench.http_bench` as ``python -m bench.loadgen SPEC.json``; it is
not meant for people. The conversation over the pipes:

1. The process reads the spec (target, kind of request, users, secrets),
   builds its request bytes ahead of time (action tokens minted locally with
   the node's action key), opens its connections and prints ``ready``.
2. The parent writes ``go START END``: two ``time.monotonic()`` readings
   (CLOCK_MONOTONIC, the same clock in every process on Linux). Each
   connection at once starts a closed loop: send one request, read the whole
   response, send the next. Responses that complete before START are
   warm-up; those that complete in [START, END) are measured; no request is
   sent at or after END.
3. The process prints one JSON line of results and exits.

The client is deliberately minimal and fast: raw trio sockets, request bytes
built in advance, a response parser that reads the status line, the
``Content-Length`` (or chunked framing) and ``Connection: close`` — nothing
else. A connection the server closes (hypercorn does so after
``keep_alive_max_requests``) is reopened and counted.

Bounds: every connection runs under one deadline (END plus the drain time);
the response head is capped at 64 KiB, a body at 16 MiB; error samples and
the token pool are capped; the process exits if its parent goes away.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from bench.common import die_with_parent, http_request, read_go, sample_error
from protocol import action_token

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
RECV_BYTES: Final = 65536
READY_TIMEOUT_S: Final = 300.0

KINDS: Final = ("submit", "top", "around")


class ConnectionLost(Exception):
    """The server closed the connection, or sent something we cannot frame."""


@dataclass(frozen=True)
class Spec:
    """What one load process does; written as JSON by the parent."""

    host: str
    port: int
    kind: str
    concurrency: int
    users: list[tuple[str, str]]  # (user_id, access JWT)
    leaderboard: str = "global"
    action_type: str = "score"
    delta_min: int = 1
    delta_max: int = 10000
    action_key: str = ""
    action_key_id: str = "k1"
    token_ttl_s: int = 3000
    token_budget: int = 0
    top_limit: int = 10
    around_radius: int = 5
    drain_s: float = 15.0
    seed: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        fields = dict(data)
        fields["users"] = [(str(u), str(t)) for u, t in data["users"]]
        spec = cls(**fields)
        if spec.kind not in KINDS:
            raise ValueError(f"unknown kind {spec.kind!r}; expected one of {KINDS}")
        if spec.concurrency < 1 or not spec.users:
            raise ValueError("need at least one connection and one user")
        return spec


# ---------------------------------------------------------------- requests


class SubmitRequests:
    """``POST /v1/scores/update`` requests for a rotation of users, each with a fresh token.

    ``pool`` requests are built ahead; past them (a faster node than the
    budget assumed) tokens are minted inline and counted in ``inline``.
    """

    def __init__(self, spec: Spec, users: list[tuple[str, str]], pool: int, seed: int) -> None:
        self._spec = spec
        self._users = users
        self._host = f"{spec.host}:{spec.port}"
        self._random = random.Random(seed)
        self._count = 0
        self.inline = 0
        self._pool = [self._build() for _ in range(pool)]
        self._pool.reverse()  # pop() from the end hands them out in order

    def _build(self) -> bytes:
        spec = self._spec
        user_id, jwt = self._users[self._count % len(self._users)]
        self._count += 1
        token, _ = action_token.mint(
            user_id=user_id,
            leaderboard=spec.leaderboard,
            action_type=spec.action_type,
            delta=self._random.randint(spec.delta_min, spec.delta_max),
            kid=spec.action_key_id,
            key=spec.action_key,
            now=time.time(),
            ttl_s=spec.token_ttl_s,
        )
        body = b'{"action_token":"' + token.encode("ascii") + b'"}'
        return http_request(
            "POST", "/v1/scores/update", self._host, f"Authorization: Bearer {jwt}\r\n", body
        )

    def __call__(self) -> bytes:
        if self._pool:
            return self._pool.pop()
        self.inline += 1
        return self._build()


class CycleRequests:
    """The same few requests, round and round."""

    def __init__(self, requests: list[bytes]) -> None:
        self._requests = requests
        self._next = 0
        self.inline = 0

    def __call__(self) -> bytes:
        request = self._requests[self._next]
        self._next = (self._next + 1) % len(self._requests)
        return request


def request_sources(spec: Spec) -> list[SubmitRequests | CycleRequests]:
    """One request source per connection; connection i takes users i, i+C, i+2C, ..."""
    host = f"{spec.host}:{spec.port}"
    count = spec.concurrency
    sources: list[SubmitRequests | CycleRequests] = []
    pool = -(-spec.token_budget // count) if spec.kind == "submit" else 0
    for i in range(count):
        users = spec.users[i::count] or [spec.users[i % len(spec.users)]]
        if spec.kind == "submit":
            sources.append(SubmitRequests(spec, users, pool, spec.seed * 100_003 + i))
        elif spec.kind == "top":
            path = f"/v1/leaderboards/{spec.leaderboard}/top?limit={spec.top_limit}"
            sources.append(CycleRequests([http_request("GET", path, host)]))
        else:
            sources.append(
                CycleRequests(
                    [
                        http_request(
                            "GET",
                            f"/v1/leaderboards/{spec.leaderboard}/around/{user_id}"
                            f"?radius={spec.around_radius}",
                            host,
                        )
                        for user_id, _ in users
                    ]
                )
            )
    return sources


# ---------------------------------------------------------------- the client


class Connection:
    """One HTTP/1.1 keep-alive connection on a raw trio socket."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._sock: trio.socket.SocketType | None = None
        self._buf = bytearray()

    async def open(self) -> None:
        self.close()
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            await sock.connect(self._address)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buf.clear()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _fill(self) -> None:
        assert self._sock is not None
        chunk = await self._sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionLost("closed by the server")
        self._buf += chunk

    async def _exactly(self, size: int) -> bytes:
        if size > MAX_BODY_BYTES:
            raise ConnectionLost(f"body of {size} bytes is over the cap")
        while len(self._buf) < size:
            await self._fill()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    async def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ConnectionLost("line too long")
            await self._fill()
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        for _ in range(1_000_000):
            size = int(self._line_text(await self._line()).split(";", 1)[0], 16)
            if size == 0:
                while await self._line():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise ConnectionLost("chunked body over the cap")
            parts.append(await self._exactly(size))
            await self._exactly(2)  # the CRLF after each chunk
        raise ConnectionLost("too many chunks")

    @staticmethod
    def _line_text(line: bytes) -> str:
        return line.decode("latin-1").strip()

    async def request(self, data: bytes) -> tuple[int, bool, bytes]:
        """Send ``data``; return (status, server will close, body)."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        view = memoryview(data)
        while view:
            sent = await sock.send(view)
            view = view[sent:]
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise ConnectionLost("response head over the cap")
            await self._fill()
            buf = self._buf
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ConnectionLost(f"bad status line {lines[0][:80]!r}") from None
        length: int | None = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                close = "close" in value.lower()
        if chunked:
            body = await self._chunked()
        elif length is not None:
            body = await self._exactly(length)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # delimited by the end of the connection
            close = True
            try:
                for _ in range(MAX_BODY_BYTES // RECV_BYTES + 1):
                    await self._fill()
            except ConnectionLost:
                pass
            body = bytes(self._buf[:MAX_BODY_BYTES])
            self._buf.clear()
        return status, close, body


# ---------------------------------------------------------------- the run


class LoadRun:
    """C connections, each in a closed loop over its request source."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.sources = request_sources(spec)
        self.connections = [Connection(spec.host, spec.port) for _ in range(spec.concurrency)]
        self.start = self.end = 0.0
        self.statuses: Counter[int] = Counter()
        self.latencies_ms: list[float] = []
        self.warmup = 0
        self.late = 0
        self.conn_errors = 0
        self.reconnects = 0
        self.samples: Counter[str] = Counter()

    async def open_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for connection in self.connections:
                nursery.start_soon(connection.open)

    async def run(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        with trio.move_on_after(max(0.0, end - time.monotonic()) + self.spec.drain_s):
            async with trio.open_nursery() as nursery:
                for connection, source in zip(self.connections, self.sources, strict=True):
                    nursery.start_soon(self._loop, connection, source)
        for connection in self.connections:
            connection.close()

    async def _loop(self, connection: Connection, next_request: Callable[[], bytes]) -> None:
        monotonic, perf_counter = time.monotonic, time.perf_counter
        start, end = self.start, self.end
        latencies, statuses = self.latencies_ms, self.statuses
        while monotonic() < end:
            data = next_request()
            began = perf_counter()
            try:
                status, close, body = await connection.request(data)
            except (OSError, ConnectionLost, ValueError) as exc:
                self.conn_errors += 1
                sample_error(self.samples, f"connection error: {type(exc).__name__}: {exc}")
                await self._reopen(connection)
                continue
            elapsed = perf_counter() - began
            done = monotonic()
            if done < start:
                self.warmup += 1
            elif done < end:
                statuses[status] += 1
                latencies.append(elapsed * 1000.0)
                if status != 200:
                    sample_error(self.samples, f"{status}: {body[:200].decode('utf-8', 'replace')}")
            else:
                self.late += 1
            if close:
                self.reconnects += 1
                await self._reopen(connection)

    async def _reopen(self, connection: Connection) -> None:
        """Reconnect, backing off a little while the server refuses; bounded by the deadline."""
        delay = 0.01
        while time.monotonic() < self.end:
            try:
                await connection.open()
                return
            except OSError as exc:
                self.conn_errors += 1
                sample_error(self.samples, f"reconnect failed: {exc}")
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def result(self, inline_mints: int) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "kind": self.spec.kind,
            "concurrency": self.spec.concurrency,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "latencies_ms": [round(x, 3) for x in self.latencies_ms],
            "warmup_requests": self.warmup,
            "late_requests": self.late,
            "conn_errors": self.conn_errors,
            "reconnects": self.reconnects,
            "inline_mints": inline_mints,
            "error_samples": dict(self.samples),
        }


async def main_async(spec: Spec) -> dict[str, Any]:
    run = LoadRun(spec)
    with trio.fail_after(60):
        await run.open_all()
    print("ready", flush=True)
    await run.run(*await read_go("loadgen", READY_TIMEOUT_S))
    return run.result(sum(source.inline for source in run.sources))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.loadgen SPEC.json", file=sys.stderr)
        return 2
    die_with_parent()
    # Quiet on Ctrl-C from a terminal: the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = Spec.from_json(json.loads(Path(args[0]).read_text()))
    result = trio.run(main_async, spec)
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
