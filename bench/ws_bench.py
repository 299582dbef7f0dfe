"""``scripts/bench fanout`` and ``scripts/bench ws-submit``: one node over WebSockets.

The conventions are :mod:`bench.http_bench`'s, and so are most helpers (this
module imports them from there and from :mod:`bench.common`): private Redis
and *durable* PostgreSQL in a temporary directory, one node as a separate
process (``python -m server.cli serve``), load from separate processes (this
module again, as ``python -m bench.ws_bench _load SPEC.json``), CPU seconds
from ``/proc`` at the edges of a measured window, ``--repeat K`` medians,
``--json FILE``. Everything listens on and talks to 127.0.0.1 only; every
wait is bounded, and everything started is stopped at the end, on an error,
or on Ctrl-C.

Modes:

* ``fanout`` — N clients (``--clients``, 1000) spread over P load processes
  (``--procs``, 2), each subscribed to ``global``'s top 10, as spectators
  (or signed in, ``--auth``). The clients are as cheap per frame as we can
  make them (raw frames over trio sockets, :mod:`bench.ws_frames`), since
  they share the cores with the node they measure. A driver in this process
  submits at R per second (``--rate``, 100), paced (open loop), with action
  tokens minted ahead: by default over WebSockets, one signed-in socket per
  climber with acks matched by id (``--via ws``), or over HTTP
  (``--via http``). It submits for T *climbers* (T = ``--top``) that set-up
  lifts above every other player, so every submission shows in the top T.
  The **delivery latency** of a submission to one client is the time that
  client received the first ``update`` reflecting it — the first sequence
  number whose entries give that climber at least the acknowledged score
  (updates are coalesced, so one frame can reflect several submissions) —
  minus the time the driver received its ack (its 200 over HTTP). Both are
  ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on
  Linux), taken once per read on either side. Also reported: update frames
  delivered per second over all clients, frames per CPU-second of the node,
  and the node's RSS before and after the clients connected.
* ``fanout --idle`` — N idle connections (5000; welcome only, no
  subscription) held for ``--seconds``: the node's RSS per connection, its
  CPU while idle (heartbeats), and whether it kept every connection.
* ``ws-submit`` — S sockets (``--sockets``, 64), each signed in as its own
  player, each submitting action tokens (minted ahead, locally, with the
  node's action key, and framed) in a closed loop, one submission in flight
  per socket, all sockets read by one epoll task per load process (lean, as
  the fan-out's watchers; :class:`SubmitLoad`): accepted per second,
  p50/p99 ack latency, CPU. The node's WebSocket rate limit is
  raised out of the way (``--node-env`` can put it back).

The machine's cores are shared by the node, Redis, PostgreSQL, the load
processes and the driver; latencies include the load processes' own
scheduling, which the output says.

Exit codes: 0 done, 1 the benchmark failed (the message says why), 2 bad
usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import resource
import secrets
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import trio

from bench import http_bench, ws_frames
from bench.common import (
    MAX_ERROR_SAMPLES,
    ROOT,
    BenchError,
    add_node_options,
    bounded,
    die_with_parent,
    fmt,
    http_request,
    median,
    percentile,
    read_go,
    round2,
    run_bench,
    sample_error,
    sleep_until,
    split,
)
from bench.common import (
    LoadProcess as BaseLoadProcess,
)
from bench.http_bench import (
    ACTION_KEY_ID,
    ACTION_TYPE,
    DELTA_MAX,
    HOST,
    LEADERBOARD,
    REQUEST_TIMEOUT_S,
    TOKEN_TTL_S,
    NodeProcess,
    NodeSecrets,
    Player,
    cpu_seconds,
    machine_info,
    mint,
    running_node,
    scan_node_log,
    setup_players,
    tree_cpu_seconds,
)
from bench.loadgen import Connection, ConnectionLost
from bench.ws_frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RECV_BYTES,
    Message,
    client_frame,
    close_code,
    close_payload,
    reply_code,
    text_frame,
)
from protocol import action_token
from server.embedded import free_port, open_embedded_postgres, open_embedded_redis

MODES: Final = ("fanout", "ws-submit")
VIAS: Final = ("ws", "http")
LOAD_READY_TIMEOUT_S: Final = 300.0
CONNECT_TIMEOUT_S: Final = 60.0
DRAIN_S: Final = 2.0
SETTLE_S: Final = 1.0
CLOSE_TIMEOUT_S: Final = 5.0
NODE_IDLE_TIMEOUT_S: Final = 30.0
DRIVER_CONNECTIONS: Final = 16
DRIVER_DELTA_MAX: Final = 100
LIFTS: Final = 3  # x DELTA_MAX puts a climber above any seeded player
MAX_TOKEN_POOL: Final = 200_000
MAX_FRAME_BYTES: Final = 1 << 20
# PODIUM_WS_RATE_* for ws-submit and the fanout driver's sockets: measure the node, not the
# limiter (a climber's socket carries rate / top submissions per second).
WIDE_OPEN: Final = "100000"


# ---------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure one Podium node over WebSockets, with private Redis and (durable) "
        "PostgreSQL, load from separate processes.",
    )
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{fanout,ws-submit}")

    def common(sub: argparse.ArgumentParser, *, procs: int, warmup: float) -> None:
        add = sub.add_argument
        add(
            "--seconds",
            type=bounded(float, 0.1, 600),
            default=None,
            help="window (10; with --idle 20, so that the node's heartbeats fall in it)",
        )
        add("--warmup", type=bounded(float, 0, 60), default=warmup, help=f"warm-up ({warmup:g})")
        add("--procs", type=bounded(int, 1, 64), default=procs, help=f"load processes ({procs})")
        add("--repeat", type=bounded(int, 1, 100), default=1, help="runs (1); medians")
        add("--setup-concurrency", type=bounded(int, 1, 256), default=16, help="(16)")
        add_node_options(sub)

    fanout = modes.add_parser(
        "fanout",
        help="N subscribed clients, a paced submitter: delivery latency, frames/s, RSS",
        description="N WebSocket clients watch global's top T while a driver submits at R/s "
        "over WebSockets (or HTTP); delivery latency from ack to each client's first update "
        "reflecting it. With --idle: N idle connections and the node's RSS per connection.",
    )
    add = fanout.add_argument
    add("--clients", type=bounded(int, 1, 100_000), default=None, help="(1000; 5000 with --idle)")
    add("--rate", type=bounded(float, 0.1, 10_000), default=100.0, help="submissions/s (100)")
    add(
        "--top",
        type=bounded(int, 1, 100),
        default=10,
        help="top N watched, and climbers (10); over 10 needs "
        "--node-env PODIUM_RANKING_PUBLISH_TOP_N=N",
    )
    add(
        "--via",
        choices=VIAS,
        default="ws",
        help="how the driver submits: ws, one signed-in socket per climber, acks by id "
        "(default); http, POST /v1/scores/update over keep-alive connections",
    )
    add("--auth", action="store_true", help="clients sign in as players (else spectators)")
    add("--idle", action="store_true", help="idle connections only: RSS per connection")
    add("--connect-concurrency", type=bounded(int, 1, 1000), default=100, help="(100)")
    common(fanout, procs=2, warmup=2.0)

    submit = modes.add_parser(
        "ws-submit",
        help="S signed-in sockets submitting in a closed loop: accepted/s, ack latency, CPU",
    )
    add = submit.add_argument
    add("--sockets", type=bounded(int, 1, 4096), default=64, help="sockets (64)")
    add(
        "--token-rate",
        type=bounded(int, 1, 1_000_000),
        default=3000,
        help="submissions/s per load process to pre-mint tokens for (3000)",
    )
    common(submit, procs=1, warmup=1.0)
    return parser


@dataclass(frozen=True)
class Options:
    mode: str
    seconds: float
    warmup: float
    procs: int
    repeat: int
    setup_concurrency: int
    node_env: list[tuple[str, str]]
    json: Path | None
    keep: bool
    clients: int = 0
    rate: float = 100.0
    top: int = 10
    via: str = "ws"
    auth: bool = False
    idle: bool = False
    connect_concurrency: int = 100
    sockets: int = 64
    token_rate: int = 3000

    @property
    def kind(self) -> str:
        return "idle" if self.mode == "fanout" and self.idle else self.mode

    @property
    def connections(self) -> int:
        return self.sockets if self.mode == "ws-submit" else self.clients

    def as_json(self) -> dict[str, Any]:
        body = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("json", "keep")}
        body["node_env"] = dict(self.node_env)
        body["leaderboard"] = LEADERBOARD
        body["postgres"] = "embedded, durable (fsync=on, synchronous_commit=on)"
        body["redis"] = "embedded, appendonly everysec"
        return body


def parse_options(argv: Sequence[str]) -> Options:
    ns = vars(build_parser().parse_args(list(argv)))
    idle = ns["mode"] == "fanout" and ns["idle"]
    if ns.get("clients") is None and ns["mode"] == "fanout":
        ns["clients"] = 5000 if idle else 1000
    if ns["seconds"] is None:
        ns["seconds"] = 20.0 if idle else 10.0
    return Options(**ns)


# ---------------------------------------------------------------- small helpers


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status; None if it is gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


# ================================================================ load processes
#
# ``python -m bench.ws_bench _load SPEC.json``. Over the pipes, as bench.loadgen:
# the process connects everything, prints ``ready {json}``; the parent writes
# ``go START END`` (time.monotonic() readings); the process measures, then
# prints one JSON line of results and exits.


class _Ready:
    """Counts connections that are up or gave up; set when all have."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.event = trio.Event()
        if total == 0:
            self.event.set()

    def tick(self) -> None:
        self.done += 1
        if self.done >= self.total:
            self.event.set()


@dataclass
class _Watch:
    """One fan-out client's record: when each frame arrived, and which one it was."""

    times: list[float] = dataclasses.field(default_factory=list)
    frames: list[int] = dataclasses.field(default_factory=list)
    connected: bool = False
    close_code: int | None = None


class WatchLoad:
    """C connections that (optionally) sign in and subscribe, then record every frame.

    Deliberately lean per frame, since the load shares the machine with the
    node: raw frames (:mod:`bench.ws_frames`), no JSON until the end, and
    once a connection is set up, no task of its own. One task, :meth:`pump`,
    waits on an epoll set of every connected socket and, for each socket
    ready, reads it once (``recv`` on the non-blocking socket), takes
    ``time.monotonic()`` and feeds that socket's frame reader. A task per
    socket waiting in ``receive_some`` costs about 2.5 times more CPU per
    frame, and trio-websocket about 10 times (its reader task, an event per
    frame and a channel hand-off). Identical frames — every client gets the
    same encoded update — are stored once.

    Pings are answered at once with a pong carrying their payload (the node
    drops a peer that misses two heartbeats); a close frame is answered and
    its code recorded (1005 if it has none), EOF or a reset records 1006.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.watches = [_Watch() for _ in range(int(spec["clients"]))]
        self.sockets: list[ws_frames.ClientSocket] = []
        self.unique: dict[str | bytes, int] = {}
        self.recording = False
        self.failures: Counter[str] = Counter()
        self.ready = _Ready(len(self.watches))
        # The connected sockets the pump reads, by file descriptor.
        self.poller = select.epoll()
        self.polled: dict[int, tuple[ws_frames.ClientSocket, _Watch]] = {}

    async def _open(self, index: int, limiter: trio.Semaphore) -> ws_frames.ClientSocket:
        spec = self.spec
        async with limiter:
            tokens = spec.get("tokens") or []
            ws = await open_socket(spec["url"], tokens[index] if tokens else None, self.sockets)
            if spec["subscribe"]:
                await ws.send(
                    text_frame(
                        json.dumps(
                            {"type": "subscribe", "leaderboard": spec["board"], "top": spec["top"]}
                        )
                    )
                )
                await _expect(ws, "snapshot")
        return ws

    async def client(self, index: int, limiter: trio.Semaphore) -> None:
        """Set connection ``index`` up, then hand it to :meth:`pump`."""
        watch = self.watches[index]
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                ws = await self._open(index, limiter)
        except SETUP_FAILURES as exc:
            code = getattr(exc, "code", None)
            detail = f" {code}" if code is not None else ""
            sample_error(self.failures, f"{type(exc).__name__}{detail}: {exc}")
            self.ready.tick()
            return
        watch.connected = True
        self.ready.tick()
        # What the set-up read past the snapshot, then the pump.
        messages = list(ws.backlog)
        ws.backlog.clear()
        if self._take(ws, watch, messages, time.monotonic()):
            fd = ws.raw.fileno()
            self.polled[fd] = (ws, watch)
            self.poller.register(fd, select.EPOLLIN)

    async def pump(self) -> None:
        """Read every connected socket until cancelled: one read per ready socket per pass."""
        poll, polled, monotonic = self.poller.poll, self.polled, time.monotonic
        epoll_fd = self.poller.fileno()
        while True:
            await trio.lowlevel.wait_readable(epoll_fd)
            for fd, _ in poll(0):
                ws, watch = polled[fd]
                got = read_ready(ws, self.failures)
                now = monotonic()
                if isinstance(got, int):
                    self._drop(ws, watch, got)
                elif got is not None:
                    self._take(ws, watch, got, now)

    def _take(
        self, ws: ws_frames.ClientSocket, watch: _Watch, messages: list[Message], now: float
    ) -> bool:
        """Record one read's messages, received at ``now``; False if the socket is done."""
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                if self.recording:
                    unique = self.unique
                    number = unique.get(payload)
                    if number is None:
                        number = unique[payload] = len(unique)
                    watch.times.append(now)
                    watch.frames.append(number)
            elif (ended := answer_control(ws, opcode, payload, self.failures)) is not None:
                self._drop(ws, watch, ended)
                return False
        return True

    def _drop(self, ws: ws_frames.ClientSocket, watch: _Watch, code: int) -> None:
        """The connection ended with ``code``: stop polling it and close it."""
        watch.close_code = code
        fd = ws.raw.fileno()
        if self.polled.pop(fd, None) is not None:
            self.poller.unregister(fd)
        ws.abort()

    def result(self, start: float, end: float) -> dict[str, Any]:
        decoded: list[dict[str, Any]] = []
        for raw in self.unique:
            try:
                decoded.append(json.loads(raw))
            except ValueError:
                decoded.append({"type": "unreadable"})
        seqs: dict[int, list[list[Any]]] = {}
        for update in decoded:
            if update.get("type") == "update":
                seqs.setdefault(
                    int(update["seq"]), [[e["user_id"], e["score"]] for e in update["entries"]]
                )
        kinds: Counter[str] = Counter()
        clients: list[list[list[float]]] = []
        for watch in self.watches:
            mine: list[list[float]] = []
            for when, number in zip(watch.times, watch.frames, strict=True):
                got = decoded[number]
                kind = str(got.get("type"))
                if start <= when < end:
                    kinds[kind] += 1
                if kind == "update":
                    mine.append([int(got["seq"]), round(when, 6)])
            if watch.connected:
                clients.append(mine)
        closes = Counter(str(w.close_code) for w in self.watches if w.close_code is not None)
        return {
            "pid": os.getpid(),
            "clients": len(self.watches),
            "connected": sum(w.connected for w in self.watches),
            "failed": sum(not w.connected for w in self.watches),
            "failure_samples": dict(self.failures),
            "closed_early": dict(closes),
            "frames_in_window": dict(kinds),
            "seqs": {str(k): v for k, v in seqs.items()},
            "updates": clients,
        }

    async def close_all(self) -> None:
        """Close every socket with 1000, each waiting for the node's close frame; bounded.

        The pump must have stopped: a socket has one reader.
        """
        await close_polled(self.poller, self.polled, self.sockets)
        self.polled.clear()


def read_ready(ws: ws_frames.ClientSocket, failures: Counter[str]) -> list[Message] | int | None:
    """Read a socket epoll said was readable, once: its complete messages (maybe none),
    None if there was nothing after all, or the close code it ended with (1006 for
    EOF or a reset; 1002, what trio-websocket would close with, for a bad frame)."""
    try:
        data = ws.raw.recv(RECV_BYTES)
    except BlockingIOError:
        return None
    except OSError:
        data = b""  # reset: as good as EOF
    if not data:
        return ws_frames.ABNORMAL
    try:
        return ws.reader.feed(data)
    except ws_frames.FrameError as exc:
        sample_error(failures, f"after connecting: FrameError: {exc}")
        return 1002


def answer_control(
    ws: ws_frames.ClientSocket, opcode: int, payload: bytes, failures: Counter[str]
) -> int | None:
    """Answer a ping with a pong and a close with a close frame; the close code the
    socket ended with, or None while it goes on (for any other message too)."""
    if opcode == OP_PING:
        # The node's heartbeat. Nothing else is in flight on the socket but a small
        # frame at most, and a pong is tiny: the socket's send buffer takes it whole.
        if not ws.send_nowait(client_frame(OP_PONG, payload)):
            sample_error(failures, "after connecting: could not send a pong")
            return ws_frames.ABNORMAL
    elif opcode == OP_CLOSE:
        try:
            code = close_code(payload)
        except ws_frames.FrameError:
            code = 1002
        ws.close_sent = ws.close_sent or ws.send_nowait(
            client_frame(OP_CLOSE, close_payload(reply_code(code)))
        )
        return code
    return None


async def close_polled(
    poller: select.epoll, polled: Iterable[int], sockets: Sequence[ws_frames.ClientSocket]
) -> None:
    """Stop polling (``polled``: the registered descriptors) and close ``sockets``."""
    for fd in list(polled):
        poller.unregister(fd)
    trio.lowlevel.notify_closing(poller.fileno())
    poller.close()
    await close_sockets(sockets)


async def close_sockets(sockets: Sequence[ws_frames.ClientSocket]) -> None:
    """Close every socket with 1000, all at once, within CLOSE_TIMEOUT_S; then drop them."""
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for ws in sockets:
                nursery.start_soon(ws.aclose)
    for ws in sockets:
        ws.abort()


#: How setting a socket up can fail: refused, closed, timed out, or an unexpected answer.
SETUP_FAILURES: Final = (
    ws_frames.ConnectionClosed,
    trio.TooSlowError,
    trio.BrokenResourceError,
    OSError,
    ValueError,
    BenchError,
)


async def _next_json(ws: ws_frames.ClientSocket) -> dict[str, Any]:
    """The next message as a JSON object (for setting up only; ``{}`` if it is not one)."""
    _, payload = await ws.message()
    frame = json.loads(payload)
    return frame if isinstance(frame, dict) else {}


async def _expect(ws: ws_frames.ClientSocket, kind: str) -> None:
    """Read set-up messages until one of type ``kind``; an ``error`` or 100 others fail."""
    for _ in range(100):
        frame = await _next_json(ws)
        if frame.get("type") == kind:
            return
        if frame.get("type") == "error":
            raise BenchError(f"{frame.get('code')}: {frame.get('message')}")
    raise BenchError(f"no {kind} in 100 frames")


async def open_socket(
    url: str, token: str | None, opened: list[ws_frames.ClientSocket]
) -> ws_frames.ClientSocket:
    """Connect (appending the socket to ``opened``, so it is closed whatever happens),
    check the welcome, and sign in with ``token`` if there is one."""
    ws = await ws_frames.connect(url, max_message_bytes=MAX_FRAME_BYTES)
    opened.append(ws)
    welcome = await _next_json(ws)
    if welcome.get("type") != "welcome":
        raise BenchError(f"first frame was {welcome.get('type')!r}, not welcome")
    if token is not None:
        await ws.send(text_frame(json.dumps({"type": "auth", "token": token})))
        await _expect(ws, "authed")
    return ws


@dataclass(eq=False)
class _Submitter:
    """One signed-in socket of :class:`SubmitLoad` and its one submission in flight."""

    ws: ws_frames.ClientSocket
    user_id: str
    frames: list[bytes]  # pre-built submit frames, the next one last
    sent: int = 0  # the id of the submission in flight (ids count from 1)
    began: float = 0.0  # perf_counter() when it was sent
    done: bool = False


class SubmitLoad:
    """S signed-in sockets, each submitting its own player's tokens in a closed loop.

    As lean per submission as :class:`WatchLoad` is per frame, since the load
    shares the machine with the node: the tokens are minted and framed
    (masked, with ids 1, 2, ...) before the window, and once the sockets are
    signed in one task, :meth:`pump`, waits on an epoll set of all of them.
    For each socket ready it reads once; an ``ack`` or ``error`` carrying the
    id in flight ends that submission, and the socket's next frame goes out
    at once (the socket's send buffer is empty: it has nothing else in
    flight). A submission unanswered for ``REQUEST_TIMEOUT_S`` counts as
    ``timeout`` and the socket goes on; its answer, if it comes, is ignored.
    Pings are answered with a pong; a close ends that socket.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        users = [(str(u), str(t)) for u, t in spec["users"]]
        self.users = users
        self.random = random.Random(int(spec["seed"]))
        self.per_socket = -(-int(spec["token_budget"]) // max(1, len(users)))
        self.inline = 0
        self.codes: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.warmup = self.late = 0
        self.closes: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.sockets: list[ws_frames.ClientSocket] = []
        self.submitters: dict[int, _Submitter] = {}  # by file descriptor
        self.active = 0  # submitters not done
        self.ready = _Ready(len(users))
        self.poller = select.epoll()
        self.start = self.end = 0.0

    def _mint(self, user_id: str) -> str:
        token, _ = action_token.mint(
            user_id=user_id,
            leaderboard=LEADERBOARD,
            action_type=ACTION_TYPE,
            delta=self.random.randint(1, DELTA_MAX),
            kid=str(self.spec["action_key_id"]),
            key=str(self.spec["action_key"]),
            now=time.time(),
            ttl_s=int(self.spec["token_ttl_s"]),
        )
        return token

    @staticmethod
    def _frame(message_id: int, token: str) -> bytes:
        return text_frame(json.dumps({"type": "submit", "id": message_id, "action_token": token}))

    @property
    def connected(self) -> int:
        return len(self.submitters)

    async def client(self, index: int, limiter: trio.Semaphore) -> None:
        """Sign socket ``index`` in and frame its tokens; the pump takes it from there."""
        user_id, jwt = self.users[index]
        frames = [self._frame(i + 1, self._mint(user_id)) for i in range(self.per_socket)]
        frames.reverse()
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                async with limiter:
                    ws = await open_socket(self.spec["url"], jwt, self.sockets)
        except SETUP_FAILURES as exc:
            sample_error(self.failures, f"{type(exc).__name__}: {exc}")
            self.ready.tick()
            return
        if ws.backlog:
            sample_error(self.failures, "a message before the first submission")
        fd = ws.raw.fileno()
        self.submitters[fd] = _Submitter(ws, user_id, frames)
        self.poller.register(fd, select.EPOLLIN)
        self.ready.tick()

    def _send_next(self, sub: _Submitter) -> None:
        if time.monotonic() >= self.end:
            self._done(sub)  # the window is over: this socket stops
            return
        if sub.frames:
            frame = sub.frames.pop()
        else:
            self.inline += 1
            frame = self._frame(sub.sent + 1, self._mint(sub.user_id))
        sub.sent += 1
        sub.began = time.perf_counter()
        if not sub.ws.send_nowait(frame):
            sample_error(self.failures, "after connecting: a submission did not fit the socket")
            self._drop(sub, ws_frames.ABNORMAL)

    def _answered(self, sub: _Submitter, code: str) -> None:
        elapsed = time.perf_counter() - sub.began
        done = time.monotonic()
        if done < self.start:
            self.warmup += 1
        elif done < self.end:
            self.codes[code] += 1
            if code == "ok":
                self.latencies_ms.append(elapsed * 1000.0)
        else:
            self.late += 1
        self._send_next(sub)

    async def pump(self) -> None:
        """Start every socket's loop, then serve them until every one is done."""
        self.active = len(self.submitters)
        for sub in list(self.submitters.values()):
            self._send_next(sub)
        poll, submitters = self.poller.poll, self.submitters
        epoll_fd = self.poller.fileno()
        while self.active:
            with trio.move_on_after(1.0):
                await trio.lowlevel.wait_readable(epoll_fd)
            for fd, _ in poll(0):
                ready = submitters.get(fd)
                if ready is None:
                    continue
                got = read_ready(ready.ws, self.failures)
                if isinstance(got, int):
                    self._drop(ready, got)
                elif got is not None:
                    self._take(ready, got)
            now = time.perf_counter()
            for sub in list(submitters.values()):
                if not sub.done and now - sub.began > REQUEST_TIMEOUT_S:
                    self._answered(sub, "timeout")

    def _take(self, sub: _Submitter, messages: list[Message]) -> None:
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                answer = json.loads(payload)
                if answer.get("id") != sub.sent or sub.done:
                    continue  # a late answer to a submission counted as a timeout
                kind = answer.get("type")
                self._answered(sub, "ok" if kind == "ack" else str(answer.get("code", kind)))
            elif (ended := answer_control(sub.ws, opcode, payload, self.failures)) is not None:
                self._drop(sub, ended)
                return

    def _drop(self, sub: _Submitter, code: int) -> None:
        """The socket ended with ``code`` before the window was over: stop polling it."""
        if not sub.done:
            self.closes[str(code)] += 1
            self._done(sub)
        fd = sub.ws.raw.fileno()
        if self.submitters.pop(fd, None) is not None:
            self.poller.unregister(fd)
        sub.ws.abort()

    def _done(self, sub: _Submitter) -> None:
        sub.done = True
        self.active -= 1

    async def close_all(self) -> None:
        """Close every socket with 1000 (bounded); the pump must have stopped."""
        await close_polled(self.poller, self.submitters, self.sockets)

    def result(self, connected: int) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "sockets": len(self.users),
            "connected": connected,
            "failure_samples": dict(self.failures),
            "codes": dict(self.codes),
            "latencies_ms": [round(x, 3) for x in self.latencies_ms],
            "warmup_requests": self.warmup,
            "late_requests": self.late,
            "inline_mints": self.inline,
            "closed_early": dict(self.closes),
        }


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def load_async(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "submit":
        sub = SubmitLoad(spec)
        async with trio.open_nursery() as nursery:
            limiter = trio.Semaphore(int(spec.get("connect_concurrency", 64)))
            for i in range(len(sub.users)):
                nursery.start_soon(sub.client, i, limiter)
            with trio.fail_after(LOAD_READY_TIMEOUT_S):
                await sub.ready.event.wait()
        connected = sub.connected
        _say("ready " + json.dumps({"connected": connected}))
        sub.start, sub.end = await read_go("ws_bench load", LOAD_READY_TIMEOUT_S)
        # Every loop stops sending at END; a last answer takes at most REQUEST_TIMEOUT_S.
        with trio.move_on_after(sub.end - time.monotonic() + REQUEST_TIMEOUT_S + 1):
            await sub.pump()
        result = sub.result(connected)
        await sub.close_all()
        return result

    load = WatchLoad(spec)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.pump)
        limiter = trio.Semaphore(int(spec["connect_concurrency"]))
        for i in range(len(load.watches)):
            nursery.start_soon(load.client, i, limiter)
        with trio.fail_after(LOAD_READY_TIMEOUT_S):
            await load.ready.event.wait()
        connected = sum(w.connected for w in load.watches)
        _say("ready " + json.dumps({"connected": connected}))
        start, end = await read_go("ws_bench load", LOAD_READY_TIMEOUT_S)
        load.recording = True
        await sleep_until(end + float(spec["drain_s"]))
        load.recording = False
        result = load.result(start, end)
        nursery.cancel_scope.cancel()  # the pump stops before the closing handshakes
    await load.close_all()
    return result


def load_main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.ws_bench _load SPEC.json", file=sys.stderr)
        return 2
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    raise_nofile_limit()
    spec = json.loads(Path(argv[0]).read_text())
    result = trio.run(load_async, spec)
    _say(json.dumps(result, separators=(",", ":")))
    return 0


# ================================================================ the parent


class LoadProcess(BaseLoadProcess):
    """One ``python -m bench.ws_bench _load`` child."""

    def __init__(self, root: Path, spec: dict[str, Any], name: str, env: dict[str, str]) -> None:
        super().__init__(root, spec, name, env, ("bench.ws_bench", "_load"))

    async def ready(self) -> dict[str, Any]:
        line = await self.readline("ready", LOAD_READY_TIMEOUT_S)
        word, _, rest = line.partition(" ")
        if word != "ready":
            raise BenchError(f"a load process did not start: {line[:200]!r}; log {self.log_path}")
        ready: dict[str, Any] = json.loads(rest)
        return ready


@dataclass
class Ctx:
    opts: Options
    root: Path
    node: NodeProcess
    redis_pid: int
    postgres_pid: int
    http_port: int
    ws_url: str
    secrets: NodeSecrets
    child_env: dict[str, str]
    climbers: list[Player] = dataclasses.field(default_factory=list)
    players: list[Player] = dataclasses.field(default_factory=list)


def _sample_cpu(ctx: Ctx, loads: list[LoadProcess]) -> dict[str, float]:
    return {
        "node": tree_cpu_seconds(ctx.node.pid),
        "redis": tree_cpu_seconds(ctx.redis_pid),
        "postgres": tree_cpu_seconds(ctx.postgres_pid),
        "load": sum(cpu_seconds(load.popen.pid) for load in loads),
        "driver": cpu_seconds(os.getpid()),
    }


async def node_ws_connections(ctx: Ctx, http: httpx.AsyncClient) -> float | None:
    with contextlib.suppress(httpx.HTTPError):
        text = (await http.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith("podium_ws_connections "):
                return float(line.split()[1])
    return None


async def wait_node_idle(ctx: Ctx) -> None:
    """Until the node holds no WebSocket (the last run's closes are processed); bounded."""
    async with httpx.AsyncClient(base_url=ctx.node.url, timeout=5) as http:
        with trio.move_on_after(NODE_IDLE_TIMEOUT_S):
            for _ in range(int(NODE_IDLE_TIMEOUT_S / 0.2)):
                if (await node_ws_connections(ctx, http)) in (0.0, None):
                    return
                await trio.sleep(0.2)


@contextlib.asynccontextmanager
async def started_loads(
    ctx: Ctx, specs: list[dict[str, Any]], name: str
) -> AsyncIterator[list[LoadProcess]]:
    loads: list[LoadProcess] = []
    try:
        for p, spec in enumerate(specs):
            loads.append(LoadProcess(ctx.root, spec, f"{name}-p{p}", ctx.child_env))
        yield loads
    finally:
        for load in loads:
            await load.close()


# ---------------------------------------------------------------- set-up


async def lift_climbers(ctx: Ctx) -> None:
    """Give each climber LIFTS x DELTA_MAX, above any seeded player (not timed)."""
    async with httpx.AsyncClient(base_url=ctx.node.url, timeout=REQUEST_TIMEOUT_S) as http:
        for climber in ctx.climbers:
            for _ in range(LIFTS):
                reply = await http.post(
                    "/v1/scores/update",
                    json={"action_token": mint(ctx.secrets, climber.user_id, DELTA_MAX)},
                    headers={"Authorization": f"Bearer {climber.access_token}"},
                )
                if reply.status_code != 200:
                    raise BenchError(f"lifting a climber: {reply.status_code} {reply.text[:300]}")


async def players(ctx: Ctx, count: int) -> list[Player]:
    http_opts = dataclasses.replace(
        http_bench.parse_options([]), users=count, setup_concurrency=ctx.opts.setup_concurrency
    )
    return await setup_players(ctx.node.url, http_opts, ctx.secrets, secrets.token_hex(4))


# ---------------------------------------------------------------- the driver


@dataclass
class Submission:
    user_id: str
    scheduled: float
    sent: float = 0.0
    acked: float = 0.0
    #: 200 for an ack (or HTTP 200); an HTTP status, or over a WebSocket the error's code;
    #: 0 while unanswered.
    status: int | str = 0
    new_score: int | None = None


T = TypeVar("T")


async def paced(
    items: Sequence[T], begin: float, end: float, rate: float
) -> AsyncIterator[tuple[int, T]]:
    """(k, item k) at ``begin + k / rate`` (monotonic clock), until ``end``: open-loop pacing."""
    for k, item in enumerate(items):
        when = begin + k / rate
        if when >= end:
            return
        await sleep_until(when)
        yield k, item


class HttpDriver:
    """Submits at ``rate`` per second over HTTP, paced (open loop), for the climbers.

    DRIVER_CONNECTIONS keep-alive connections; each submission takes one from
    the pool for its request and puts it back.
    """

    def __init__(self, ctx: Ctx, count: int) -> None:
        self.ctx = ctx
        self.rate = ctx.opts.rate
        host = f"{HOST}:{ctx.http_port}"
        rng = random.Random(7)
        self.requests: list[tuple[str, bytes]] = []
        for i in range(count):
            climber = ctx.climbers[i % len(ctx.climbers)]
            token = mint(ctx.secrets, climber.user_id, rng.randint(1, DRIVER_DELTA_MAX))
            body = b'{"action_token":"' + token.encode("ascii") + b'"}'
            self.requests.append(
                (
                    climber.user_id,
                    http_request(
                        "POST",
                        "/v1/scores/update",
                        host,
                        f"Authorization: Bearer {climber.access_token}\r\n",
                        body,
                    ),
                )
            )
        self.submissions: list[Submission] = []
        self.errors: Counter[str] = Counter()
        self._pool = trio.open_memory_channel[Connection](DRIVER_CONNECTIONS)

    async def connect(self) -> None:
        """Open the pool's connections (before the run, so no submission waits for them)."""
        for _ in range(DRIVER_CONNECTIONS):
            connection = Connection(HOST, self.ctx.http_port)
            await connection.open()
            self._pool[0].send_nowait(connection)

    async def run(self, begin: float, end: float) -> None:
        pool_send, pool_receive = self._pool
        deadline = end + DRAIN_S + REQUEST_TIMEOUT_S
        with trio.move_on_after(max(0.0, deadline - time.monotonic())):
            async with trio.open_nursery() as nursery:
                async for k, (user_id, request) in paced(self.requests, begin, end, self.rate):
                    submission = Submission(user_id, begin + k / self.rate)
                    self.submissions.append(submission)
                    nursery.start_soon(self._one, submission, request, pool_send, pool_receive)
        while True:
            try:
                pool_receive.receive_nowait().close()
            except trio.WouldBlock:
                break

    async def _one(
        self,
        submission: Submission,
        request: bytes,
        pool_send: trio.MemorySendChannel[Connection],
        pool_receive: trio.MemoryReceiveChannel[Connection],
    ) -> None:
        connection = await pool_receive.receive()
        try:
            submission.sent = time.monotonic()
            status, close, body = await connection.request(request)
            submission.acked = time.monotonic()
            submission.status = status
            if status == 200:
                submission.new_score = int(json.loads(body)["new_score"])
            else:
                sample_error(self.errors, f"{status}: {body[:200].decode('utf-8', 'replace')}")
            if close:
                await connection.open()
        except (OSError, ConnectionLost, ValueError) as exc:
            sample_error(self.errors, f"connection error: {type(exc).__name__}: {exc}")
            with contextlib.suppress(OSError):
                await connection.open()
        finally:
            pool_send.send_nowait(connection)


class WsDriver:
    """Submits at ``rate`` per second over WebSockets, paced (open loop), for the climbers.

    This is how the fan-out issue defines delivery latency: from the *ack* of
    a submission — the WebSocket reply — to each client's frame. One socket
    per climber, signed in with the climber's access token; submission k goes
    on climber k mod T's socket with id k, its frame built (and masked) ahead,
    and is sent from a task of its own, so a socket can have several in
    flight. A reader per socket takes ``time.monotonic()`` once per read, as
    the watch clients do, and matches each ``ack`` or ``error`` to its
    submission by id.
    """

    def __init__(self, ctx: Ctx, count: int) -> None:
        self.ctx = ctx
        self.rate = ctx.opts.rate
        rng = random.Random(7)
        # (socket index, user id, frame); the same tokens as HttpDriver's.
        self.requests: list[tuple[int, str, bytes]] = []
        for i in range(count):
            index = i % len(ctx.climbers)
            climber = ctx.climbers[index]
            token = mint(ctx.secrets, climber.user_id, rng.randint(1, DRIVER_DELTA_MAX))
            body = {"type": "submit", "id": i, "action_token": token}
            self.requests.append(
                (index, climber.user_id, text_frame(json.dumps(body, separators=(",", ":"))))
            )
        self.submissions: list[Submission] = []
        self.errors: Counter[str] = Counter()
        self.sockets: list[ws_frames.ClientSocket] = []
        # Per socket, the submissions sent and not yet answered, by id.
        self._waiting: list[dict[int, Submission]] = [{} for _ in ctx.climbers]
        self._unanswered = 0
        self._paced = False
        self._settled = trio.Event()

    async def connect(self) -> None:
        """Open and sign in every climber's socket (before the run, untimed)."""
        url = self.ctx.ws_url
        for climber in self.ctx.climbers:
            try:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    await open_socket(url, climber.access_token, self.sockets)
            except SETUP_FAILURES as exc:
                await self.aclose()
                raise BenchError(
                    f"the driver could not connect and sign in a climber: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    async def run(self, begin: float, end: float) -> None:
        deadline = end + DRAIN_S + REQUEST_TIMEOUT_S
        try:
            async with trio.open_nursery() as readers:
                for index, ws in enumerate(self.sockets):
                    readers.start_soon(self._read, index, ws)
                with trio.move_on_after(max(0.0, deadline - time.monotonic())):
                    async with trio.open_nursery() as senders:
                        async for k, (index, user_id, frame) in paced(
                            self.requests, begin, end, self.rate
                        ):
                            submission = Submission(user_id, begin + k / self.rate)
                            self.submissions.append(submission)
                            self._waiting[index][k] = submission
                            self._unanswered += 1
                            senders.start_soon(self._send, index, k, submission, frame)
                    self._paced = True
                    if self._unanswered:
                        await self._settled.wait()
                readers.cancel_scope.cancel()  # a socket has one reader: stop it before closing
        finally:
            await self.aclose()

    async def _send(self, index: int, k: int, submission: Submission, frame: bytes) -> None:
        submission.sent = time.monotonic()
        try:
            await self.sockets[index].send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            sample_error(self.errors, f"connection error: {type(exc).__name__}: {exc}")
            if self._waiting[index].pop(k, None) is not None:
                self._answered()

    def _answered(self, count: int = 1) -> None:
        self._unanswered -= count
        if self._paced and not self._unanswered:
            self._settled.set()

    async def _read(self, index: int, ws: ws_frames.ClientSocket) -> None:
        code = await self._read_until_closed(ws, self._waiting[index])
        waiting = self._waiting[index]
        if waiting:
            sample_error(self.errors, f"a driver socket closed with {code}, submissions unanswered")
            count = len(waiting)
            waiting.clear()
            self._answered(count)

    async def _read_until_closed(
        self, ws: ws_frames.ClientSocket, waiting: dict[int, Submission]
    ) -> int:
        """Read replies until the connection ends; its close code (1006 without a close frame)."""
        monotonic = time.monotonic
        messages = list(ws.backlog)
        ws.backlog.clear()
        now = monotonic()
        try:
            while True:
                for opcode, payload in messages:
                    if opcode == OP_TEXT:
                        self._reply(waiting, payload, now)
                    elif opcode == OP_PING:
                        await ws.send(client_frame(OP_PONG, payload))
                    elif opcode == OP_CLOSE:
                        code = close_code(payload)
                        await ws.answer_close(code)
                        return code
                data = await ws.stream.receive_some(RECV_BYTES)
                now = monotonic()
                if not data:
                    break
                messages = ws.reader.feed(data)
        except (trio.BrokenResourceError, ws_frames.FrameError) as exc:
            sample_error(self.errors, f"connection error: {type(exc).__name__}: {exc}")
        ws.abort()
        return ws_frames.ABNORMAL

    def _reply(self, waiting: dict[int, Submission], payload: bytes, now: float) -> None:
        try:
            reply = json.loads(payload)
            kind, msg_id = reply.get("type"), reply.get("id")
        except (ValueError, AttributeError):
            sample_error(self.errors, f"unreadable frame: {payload[:200]!r}")
            return
        submission = waiting.pop(msg_id, None) if isinstance(msg_id, int) else None
        if submission is None:
            if kind == "error":  # one that answers no submission (an id-less rate_limited)
                sample_error(self.errors, f"{reply.get('code')}: {reply.get('message')}")
            return
        submission.acked = now
        if kind == "ack":
            submission.status = 200
            submission.new_score = int(reply["new_score"])
        else:
            submission.status = str(reply.get("code", kind))
            sample_error(self.errors, f"{submission.status}: {reply.get('message')}")
        self._answered()

    async def aclose(self) -> None:
        """Close every socket with 1000 (the readers have stopped); bounded."""
        await close_sockets(self.sockets)


# ---------------------------------------------------------------- fanout


def delivery_latencies(
    submissions: list[Submission], results: list[dict[str, Any]], start: float, end: float
) -> tuple[list[float], dict[str, int]]:
    """Every (submission acked in [start, end), client) delivery latency in ms, and counts.

    A submission is reflected by the first seq whose entries give its user at
    least its new score; for each client, its delivery is the first frame that
    client received with that seq or a later one.
    """
    seqs: dict[int, dict[str, int]] = {}
    for result in results:
        for seq, entries in result["seqs"].items():
            seqs.setdefault(int(seq), {str(u): int(s) for u, s in entries})
    ordered = sorted(seqs)
    clients: list[tuple[list[int], list[float]]] = []
    regressions = 0
    for result in results:
        for frames in result["updates"]:
            got_seqs = [int(seq) for seq, _ in frames]
            regressions += sum(1 for a, b in itertools.pairwise(got_seqs) if b <= a)
            clients.append((got_seqs, [float(t) for _, t in frames]))

    measured = [s for s in submissions if s.status == 200 and start <= s.acked < end]
    first_seq: dict[tuple[str, int], int | None] = {}
    latencies: list[float] = []
    counts = Counter(
        {"submissions": len(measured), "never_reflected": 0, "missed": 0, "negative": 0}
    )
    # Per client, the arrival of the first frame at or after a seq, cached per seq.
    arrival: list[dict[int, float | None]] = [{} for _ in clients]
    for s in measured:
        assert s.new_score is not None
        key = (s.user_id, s.new_score)
        if key not in first_seq:
            first_seq[key] = next(
                (q for q in ordered if seqs[q].get(s.user_id, -(2**62)) >= s.new_score), None
            )
        target = first_seq[key]
        if target is None:
            counts["never_reflected"] += 1
            continue
        for (got_seqs, times), cache in zip(clients, arrival, strict=True):
            if target not in cache:
                i = bisect.bisect_left(got_seqs, target)
                cache[target] = times[i] if i < len(times) else None
            when = cache[target]
            if when is None:
                counts["missed"] += 1
                continue
            latency = (when - s.acked) * 1000.0
            counts["negative"] += latency < 0
            latencies.append(latency)
    counts["seq_regressions"] = regressions
    latencies.sort()
    return latencies, dict(counts)


async def run_fanout(ctx: Ctx, run: int) -> dict[str, Any]:
    opts = ctx.opts
    ctx.node.check_alive()
    await wait_node_idle(ctx)
    procs = min(opts.procs, opts.clients)
    rss_before = rss_kib(ctx.node.pid)
    tokens = [p.access_token for p in ctx.players]
    specs = []
    for p, count in enumerate(split(opts.clients, procs)):
        first = sum(split(opts.clients, procs)[:p])
        specs.append(
            {
                "kind": "idle" if opts.idle else "fanout",
                "url": ctx.ws_url,
                "clients": count,
                "subscribe": not opts.idle,
                "board": LEADERBOARD,
                "top": opts.top,
                "tokens": tokens[first : first + count] if opts.auth else [],
                "connect_concurrency": max(1, opts.connect_concurrency // procs),
                "drain_s": DRAIN_S,
            }
        )
    driver: WsDriver | HttpDriver | None = None
    if not opts.idle:
        count = min(MAX_TOKEN_POOL, math.ceil(opts.rate * (opts.warmup + opts.seconds)) + 1)
        driver = WsDriver(ctx, count) if opts.via == "ws" else HttpDriver(ctx, count)
    began = time.monotonic()
    async with started_loads(ctx, specs, f"{opts.kind}-r{run}") as loads:
        readies = [await load.ready() for load in loads]
        connect_s = time.monotonic() - began
        connected = sum(int(r["connected"]) for r in readies)
        ctx.node.check_alive()
        await trio.sleep(SETTLE_S)
        rss_connected = rss_kib(ctx.node.pid)
        if driver is not None:
            await driver.connect()
        start = time.monotonic() + 0.05 + opts.warmup
        end = start + opts.seconds
        for load in loads:
            load.send(f"go {start!r} {end!r}\n")
        async with trio.open_nursery() as nursery:
            if driver is not None:
                nursery.start_soon(driver.run, start - opts.warmup, end)
            await sleep_until(start)
            cpu_before, wall_before = _sample_cpu(ctx, loads), time.monotonic()
            await sleep_until(end)
            cpu_after, wall_after = _sample_cpu(ctx, loads), time.monotonic()
            rss_end = rss_kib(ctx.node.pid)
        results = [
            json.loads(await load.readline("result", DRAIN_S + CLOSE_TIMEOUT_S + 60))
            for load in loads
        ]
        load_pids = [load.popen.pid for load in loads]
    ctx.node.check_alive()
    cpu = {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_before}
    window = wall_after - wall_before
    failures: Counter[str] = Counter()
    closed_early: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for result in results:
        failures.update(result["failure_samples"])
        closed_early.update(result["closed_early"])
        kinds.update(result["frames_in_window"])
    per_conn = None
    if rss_before is not None and rss_connected is not None and connected:
        per_conn = round((rss_connected - rss_before) / connected, 2)
    figures: dict[str, Any] = {
        "phase": opts.kind,
        "clients": opts.clients,
        "run": run,
        "window_s": opts.seconds,
        "cpu_window_s": round(window, 3),
        "connected": connected,
        "refused": opts.clients - connected,
        "connect_s": round(connect_s, 2),
        "failure_samples": dict(failures.most_common(MAX_ERROR_SAMPLES)),
        "closed_early": dict(closed_early),
        "rss_kib": {"before": rss_before, "connected": rss_connected, "end": rss_end},
        "rss_kib_per_connection": per_conn,
        "cpu_s": cpu,
        "cpu_percent": {k: round(100 * v / window, 1) for k, v in cpu.items()},
        "load_pids": load_pids,
    }
    if driver is None:
        return figures
    latencies, counts = delivery_latencies(driver.submissions, results, start, end)
    frames = kinds.get("update", 0)
    submitted = [s for s in driver.submissions if start <= s.acked < end]
    statuses = Counter(str(s.status) for s in submitted)
    lateness = sorted(max(0.0, s.sent - s.scheduled) * 1000 for s in driver.submissions if s.sent)
    figures |= {
        "via": opts.via,
        "rate": opts.rate,
        "top": opts.top,
        "auth": opts.auth,
        "submissions": len(submitted),
        "submissions_per_s": round(statuses.get("200", 0) / opts.seconds, 1),
        "non_200": {k: v for k, v in sorted(statuses.items()) if k != "200"},
        "driver_errors": dict(driver.errors),
        "driver_late_ms_p99": round2(percentile(lateness, 0.99)),
        "delivery_ms": {
            "p50": round2(percentile(latencies, 0.50)),
            "p99": round2(percentile(latencies, 0.99)),
            "max": round2(latencies[-1] if latencies else None),
        },
        "deliveries": len(latencies),
        **counts,
        "frames": frames,
        "me_frames": kinds.get("me", 0),
        "frames_per_s": round(frames / opts.seconds, 1),
        # 1 / PODIUM_WS_TICK_S at most; lower when the tick falls behind.
        "frames_per_client_per_s": (
            round(frames / opts.seconds / connected, 2) if connected else None
        ),
        "frames_per_node_cpu_s": round(frames / cpu["node"], 1) if cpu["node"] > 0 else None,
    }
    return figures


# ---------------------------------------------------------------- ws-submit


async def run_ws_submit(ctx: Ctx, run: int) -> dict[str, Any]:
    opts = ctx.opts
    ctx.node.check_alive()
    await wait_node_idle(ctx)
    procs = min(opts.procs, opts.sockets)
    budget = min(MAX_TOKEN_POOL, math.ceil(opts.token_rate * (opts.warmup + opts.seconds)))
    specs = []
    first = 0
    for p, count in enumerate(split(opts.sockets, procs)):
        mine = ctx.players[first : first + count]
        first += count
        specs.append(
            {
                "kind": "submit",
                "url": ctx.ws_url,
                "users": [[pl.user_id, pl.access_token] for pl in mine],
                "action_key": ctx.secrets.action_key,
                "action_key_id": ACTION_KEY_ID,
                "token_ttl_s": TOKEN_TTL_S,
                "token_budget": budget,
                "seed": run * 1000 + p,
            }
        )
    async with started_loads(ctx, specs, f"ws-submit-r{run}") as loads:
        readies = [await load.ready() for load in loads]
        connected = sum(int(r["connected"]) for r in readies)
        ctx.node.check_alive()
        start = time.monotonic() + 0.05 + opts.warmup
        end = start + opts.seconds
        for load in loads:
            load.send(f"go {start!r} {end!r}\n")
        await sleep_until(start)
        cpu_before, wall_before = _sample_cpu(ctx, loads), time.monotonic()
        await sleep_until(end)
        cpu_after, wall_after = _sample_cpu(ctx, loads), time.monotonic()
        results = [
            json.loads(await load.readline("result", REQUEST_TIMEOUT_S + CLOSE_TIMEOUT_S + 60))
            for load in loads
        ]
        load_pids = [load.popen.pid for load in loads]
    ctx.node.check_alive()
    codes: Counter[str] = Counter()
    closed_early: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    totals: Counter[str] = Counter()
    for result in results:
        codes.update(result["codes"])
        closed_early.update(result["closed_early"])
        failures.update(result["failure_samples"])
        latencies += result["latencies_ms"]
        for key in ("warmup_requests", "late_requests", "inline_mints"):
            totals[key] += int(result[key])
    latencies.sort()
    accepted = codes.get("ok", 0)
    cpu = {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_before}
    window = wall_after - wall_before
    servers = cpu["node"] + cpu["redis"] + cpu["postgres"]
    return {
        "phase": "ws-submit",
        "clients": opts.sockets,
        "run": run,
        "window_s": opts.seconds,
        "cpu_window_s": round(window, 3),
        "connected": connected,
        "failure_samples": dict(failures.most_common(MAX_ERROR_SAMPLES)),
        "requests": sum(codes.values()),
        "accepted": accepted,
        "accepted_per_s": round(accepted / opts.seconds, 1),
        "errors": {k: v for k, v in sorted(codes.items()) if k != "ok"},
        "closed_early": dict(closed_early),
        "latency_ms": {
            "p50": round2(percentile(latencies, 0.50)),
            "p99": round2(percentile(latencies, 0.99)),
            "max": round2(latencies[-1] if latencies else None),
        },
        "cpu_s": cpu,
        "cpu_percent": {k: round(100 * v / window, 1) for k, v in cpu.items()},
        "per_node_cpu_s": round(accepted / cpu["node"], 1) if cpu["node"] > 0 else None,
        "per_cpu_s": round(accepted / servers, 1) if servers > 0 else None,
        **dict(totals),
        "load_pids": load_pids,
    }


# ---------------------------------------------------------------- output


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _codes_text(codes: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in codes.items()) or "none"


def run_line(fig: dict[str, Any], repeat: int) -> str:
    cpu, rss = fig["cpu_s"], fig.get("rss_kib", {})
    head = f"{fig['phase']:<9} n={fig['clients']:<5} run {fig['run']}/{repeat}  "
    cpu_text = (
        f"cpu-s node {cpu['node']:.2f} redis {cpu['redis']:.2f} pg {cpu['postgres']:.2f} "
        f"load {cpu['load']:.2f} driver {cpu['driver']:.2f} /{fig['cpu_window_s']:.1f}s"
    )
    if fig["phase"] == "ws-submit":
        lat = fig["latency_ms"]
        line = (
            head + f"connected {fig['connected']}/{fig['clients']}  "
            f"ok/s {fig['accepted_per_s']:>8.1f}  errors {_codes_text(fig['errors'])}  "
            f"p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])} ms  "
            f"{cpu_text}  ok/node-cpu-s {fmt(fig['per_node_cpu_s'], '.0f')}  "
            f"ok/cpu-s(node+redis+pg) {fmt(fig['per_cpu_s'], '.0f')}"
        )
    else:
        rss_text = (
            f"rss node {_mib(rss['before'])} -> {_mib(rss['connected'])} MiB "
            f"({fmt(fig['rss_kib_per_connection'])} KiB/conn)"
        )
        line = head + f"connected {fig['connected']}/{fig['clients']} in {fig['connect_s']} s  "
        if fig["phase"] == "idle":
            line += (
                f"{rss_text}  held {fig['window_s']:g} s, closed by the node "
                f"{sum(fig['closed_early'].values())}  node cpu {fig['cpu_percent']['node']}%"
            )
        else:
            d = fig["delivery_ms"]
            line += (
                f"submits/s {fig['submissions_per_s']} (non-200 {_codes_text(fig['non_200'])})  "
                f"delivery p50 {fmt(d['p50'])} p99 {fmt(d['p99'])} max {fmt(d['max'])} ms  "
                f"frames/s {fig['frames_per_s']:.0f} "
                f"({fmt(fig['frames_per_client_per_s'], '.2f')} per client)  "
                f"frames/node-cpu-s {fmt(fig['frames_per_node_cpu_s'], '.0f')}  "
                f"{rss_text}\n          {cpu_text}  deliveries {fig['deliveries']}, "
                f"missed {fig['missed']}, never reflected {fig['never_reflected']}, "
                f"before the ack {fig['negative']}, seq regressions {fig['seq_regressions']}"
            )
    extras = []
    if fig.get("closed_early") and fig["phase"] != "idle":
        extras.append(f"closed by the node: {_codes_text(fig['closed_early'])}")
    for name in ("inline_mints", "driver_errors"):
        if fig.get(name):
            extras.append(f"{name} {fig[name]}")
    if extras:
        line += "\n          (" + "; ".join(extras) + ")"
    for sample, count in list(fig.get("failure_samples", {}).items())[:3]:
        line += f"\n          {count} x {sample}"
    return line


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs."""
    if not runs:
        return {}
    first = runs[0]
    row: dict[str, Any] = {"phase": first["phase"], "clients": first["clients"], "runs": len(runs)}
    scalar = [
        "connected",
        "accepted_per_s",
        "per_node_cpu_s",
        "per_cpu_s",
        "submissions_per_s",
        "frames_per_s",
        "frames_per_client_per_s",
        "frames_per_node_cpu_s",
        "rss_kib_per_connection",
        "deliveries",
    ]
    for key in scalar:
        if key in first:
            row[key] = median([r[key] for r in runs])
    for group in ("latency_ms", "delivery_ms", "cpu_percent", "rss_kib"):
        if group in first:
            row[group] = {k: median([r[group][k] for r in runs]) for k in first[group]}
    for key in ("errors", "non_200", "closed_early"):
        if key in first:
            total: Counter[str] = Counter()
            for r in runs:
                total.update(r[key])
            row[key] = dict(total)
    return row


def summary_text(row: dict[str, Any]) -> str:
    if not row:
        return ""
    cpu = row["cpu_percent"]
    cpu_text = (
        f"cpu% node {fmt(cpu['node'], '.0f')} redis {fmt(cpu['redis'], '.0f')} "
        f"pg {fmt(cpu['postgres'], '.0f')} load {fmt(cpu['load'], '.0f')} "
        f"driver {fmt(cpu['driver'], '.0f')}"
    )
    head = f"summary ({row['runs']} run(s), medians): {row['phase']} n={row['clients']}"
    if row["phase"] == "ws-submit":
        lat = row["latency_ms"]
        body = (
            f"ok/s {fmt(row['accepted_per_s'])}  ack p50 {fmt(lat['p50'])} ms "
            f"p99 {fmt(lat['p99'])} ms  {cpu_text}  ok/node-cpu-s "
            f"{fmt(row['per_node_cpu_s'], '.0f')}  ok/cpu-s {fmt(row['per_cpu_s'], '.0f')}  "
            f"errors {_codes_text(row['errors'])}"
        )
    elif row["phase"] == "idle":
        rss = row["rss_kib"]
        body = (
            f"connected {fmt(row['connected'], '.0f')}  rss {_mib(rss['before'])} -> "
            f"{_mib(rss['connected'])} MiB = {fmt(row['rss_kib_per_connection'])} KiB/conn  "
            f"{cpu_text}"
        )
    else:
        d = row["delivery_ms"]
        body = (
            f"delivery p50 {fmt(d['p50'])} ms p99 {fmt(d['p99'])} ms  "
            f"frames/s {fmt(row['frames_per_s'], '.0f')}  frames/node-cpu-s "
            f"{fmt(row['frames_per_node_cpu_s'], '.0f')}  rss/conn "
            f"{fmt(row['rss_kib_per_connection'])} KiB  {cpu_text}"
        )
    return head + "\n  " + body + "\n  cpu%: 100 = one core over the window"


def header(opts: Options, machine: dict[str, Any], nofile: tuple[int, int]) -> str:
    extra = " ".join(f"{k}={v}" for k, v in opts.node_env) or "defaults"
    nproc = machine["nproc"]
    driver: list[str] = []
    if opts.mode == "ws-submit":
        load = (
            f"{opts.procs} process(es), {opts.sockets} signed-in sockets, closed loop, "
            "raw frames (bench/ws_frames.py) read by one epoll task per process, "
            f"127.0.0.1 only; WS rate limit raised to {WIDE_OPEN}/s"
        )
        what = "Podium WebSocket benchmark: ws-submit"
    elif opts.idle:
        load = (
            f"{opts.procs} process(es), {opts.clients} idle connections (welcome only), "
            f"held {opts.seconds:g} s; the node pings each every PODIUM_WS_HEARTBEAT_S (15 s)"
        )
        what = "Podium WebSocket benchmark: fanout --idle"
    else:
        who = "signed-in players" if opts.auth else "spectators"
        load = (
            f"{opts.procs} process(es), {opts.clients} {who} on {LEADERBOARD} top {opts.top}, "
            "raw frames (bench/ws_frames.py) read by one epoll task per process, 127.0.0.1 only"
        )
        if opts.via == "ws":
            via = (
                "WebSocket (--via ws): one signed-in socket per climber, submits matched to "
                f"acks by id; WS rate limit raised to {WIDE_OPEN}/s"
            )
        else:
            via = (
                f"HTTP (--via http): POST /v1/scores/update over {DRIVER_CONNECTIONS} "
                "keep-alive connections"
            )
        driver = [
            f"driver    {via}",
            f"          {opts.rate:g}/s paced (open loop) for {opts.top} climbers, in this "
            "process; delivery latency counts from the ack (the reply to the submission)",
        ]
        what = "Podium WebSocket benchmark: fanout"
    return "\n".join(
        [
            what,
            f"machine   nproc {nproc} ({machine['cpu_model'] or 'cpu model unknown'}), "
            f"Linux {machine['kernel']}, {machine['implementation']} {machine['python']}, "
            f"commit {machine['commit'] or '?'}; open files {nofile[0]}",
            f"          the node, Redis, PostgreSQL, the load processes and the driver share "
            f"these {nproc} cores: latencies include the load side's own scheduling",
            f"node      1 process: python -m server.cli serve, log level warning, settings {extra}",
            "postgres  embedded, DURABLE (fsync=on, synchronous_commit=on): commits pay real fsync",
            "redis     embedded, appendonly everysec",
            f"load      {load}",
            *driver,
            f"settings  warm-up {opts.warmup:g} s, window {opts.seconds:g} s, repeat {opts.repeat}",
        ]
    )


# ---------------------------------------------------------------- main


def node_settings(opts: Options, ws_port: int) -> list[tuple[str, str]]:
    env = [("PODIUM_WS_PORT", str(ws_port))]
    if opts.connections > 9000:
        env.append(("PODIUM_WS_MAX_CONNECTIONS", str(opts.connections + 1000)))
    if opts.mode == "ws-submit" or _ws_driver(opts):
        env += [("PODIUM_WS_RATE_PER_S", WIDE_OPEN), ("PODIUM_WS_RATE_BURST", WIDE_OPEN)]
    return env + list(opts.node_env)


def _ws_driver(opts: Options) -> bool:
    return opts.mode == "fanout" and not opts.idle and opts.via == "ws"


async def bench(opts: Options, root: Path) -> dict[str, Any]:
    machine = machine_info()
    nofile = raise_nofile_limit()
    print(header(opts, machine, nofile), flush=True)
    secrets_ = NodeSecrets()
    ws_port = free_port(HOST)
    http_opts = dataclasses.replace(
        http_bench.parse_options([]), node_env=node_settings(opts, ws_port)
    )
    began = time.monotonic()
    async with (
        open_embedded_redis(root / "redis", persist=True) as redis,
        open_embedded_postgres(root / "postgres", durable=True) as postgres,
        running_node(http_opts, root, redis.url, postgres.dsn, secrets_) as (node, http_port),
    ):
        await node.wait_ready()
        ws_url = f"ws://{HOST}:{ws_port}/v1/ws"
        print(
            f"ready     node pid {node.pid} on {node.url} and {ws_url}, redis pid {redis.pid}, "
            f"postgres pid {postgres.pid} ({time.monotonic() - began:.1f} s)",
            flush=True,
        )
        ctx = Ctx(
            opts=opts,
            root=root,
            node=node,
            redis_pid=redis.pid,
            postgres_pid=postgres.pid,
            http_port=http_port,
            ws_url=ws_url,
            secrets=secrets_,
            child_env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if opts.mode == "ws-submit":
            ctx.players = await players(ctx, opts.sockets)
        elif not opts.idle:
            # One set-up call: http_bench names its players bench_0, bench_1, ...
            made = await players(ctx, opts.top + (opts.clients if opts.auth else 0))
            ctx.climbers, ctx.players = made[: opts.top], made[opts.top :]
            await lift_climbers(ctx)
        runs: list[dict[str, Any]] = []
        for run in range(1, opts.repeat + 1):
            if opts.mode == "ws-submit":
                figures = await run_ws_submit(ctx, run)
            else:
                figures = await run_fanout(ctx, run)
            print(run_line(figures, opts.repeat), flush=True)
            runs.append(figures)
    return {
        "machine": machine,
        "settings": opts.as_json(),
        "open_files_limit": nofile[0],
        "runs": runs,
        "summary": summarise(runs),
        "node_log": scan_node_log(root / "node.log"),
        "node_exit_code": node.exit_code,
        "pids": {"node": node.pid, "redis": redis.pid, "postgres": postgres.pid},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "_load":
        return load_main(args[1:])
    opts = parse_options(args)
    return run_bench(
        bench,
        opts,
        needs="/proc for CPU and RSS figures",
        prefix="podium-wsbench-",
        summary=summary_text,
    )


if __name__ == "__main__":
    sys.exit(main())
