"""``scripts/bench profile``: where one node spends its CPU on a score submission.

The other benchmarks say *how much* CPU a node uses; this one says *where*.
It runs a node **in this process**, so a Trio instrument sees every task
step, against private Redis and durable PostgreSQL (as the other benchmarks,
in a temporary directory), with the benchmark node's settings
(:func:`bench.http_bench.node_environ`). A client in a **second thread** —
its own Trio run, so its CPU is not the node's — signs a player in and
submits ``--count`` action tokens one after another over WebSocket
(``--via http``: ``POST /v1/scores/update``), each after the last one's
answer: the low-rate regime, where nothing batches and every submission pays
every stage's fixed cost. ``--in-flight K`` has K players submit side by
side (each one at a time), so the node batches as under load. ``--watch``
adds a spectator of global's top 10, so the fan-out path (pub/sub receive,
frames) runs too.

It prints, per submission, the node thread's CPU (``time.thread_time``, so
other processes' load changes it little) split by Trio task — actors named
by their class — with their steps, the scheduler's passes, and the asyncio
callbacks the trio-asyncio loop ran (by coroutine: Redis pipelines,
PostgreSQL calls, transport reads). The instrument itself costs about 2 µs
per task step. Exit codes: 0 done, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio.events
import contextlib
import dataclasses
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from bench.common import BenchError, add_node_options, bounded, run_in_temporary_directory
from bench.http_bench import HOST, NodeSecrets, mint, node_environ
from config import Settings
from server.client import open_client
from server.embedded import free_port, open_embedded_postgres, open_embedded_redis
from server.node import Node

WARMUP: Final = 30
"""Submissions before the measured ones: caches, prepared statements, loaded scripts."""

TIMEOUT_S: Final = 120.0


@dataclasses.dataclass(frozen=True)
class Options:
    count: int
    in_flight: int
    via: str
    watch: bool
    node_env: list[tuple[str, str]]
    json: Path | None
    keep: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench profile",
        description="Where one node's CPU goes per score submission, by Trio task and by "
        "asyncio callback (a node in this process, a client in another thread).",
    )
    parser.add_argument(
        "--count", type=bounded(int, 10, 100_000), default=500, help="measured submissions (500)"
    )
    parser.add_argument(
        "--in-flight",
        type=bounded(int, 1, 256),
        default=1,
        help="players submitting side by side, each one at a time (1)",
    )
    parser.add_argument("--via", choices=("ws", "http"), default="ws", help="ws (default) or http")
    parser.add_argument("--watch", action="store_true", help="add a spectator of global's top 10")
    add_node_options(parser)
    ns = parser.parse_args(argv)
    return Options(ns.count, ns.in_flight, ns.via, ns.watch, list(ns.node_env), ns.json, ns.keep)


class TaskCpu(trio.abc.Instrument):
    """The node thread's CPU per task step, by task; and the scheduler's passes."""

    def __init__(self) -> None:
        self.on = False
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self.steps: Counter[str] = Counter()
        self.passes = 0
        self._began = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            name = task_label(task)
            self.cpu[name] += time.thread_time() - self._began
            self.steps[name] += 1

    def before_io_wait(self, timeout: float) -> None:
        if self.on:
            self.passes += 1


def task_label(task: trio.lowlevel.Task) -> str:
    """The task's function; for a supervised actor, the actor's ``run``."""
    name = task.name.rsplit(".", 1)[-1]
    if name == "_supervise":
        awaited = getattr(task.coro, "cr_await", None)
        name = getattr(awaited, "__qualname__", name)
    return name


class CallbackCpu:
    """While installed, the CPU of every asyncio callback, by what it runs."""

    def __init__(self) -> None:
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._original: Callable[[Any], Any] | None = None

    def install(self) -> None:
        original = self._original = asyncio.events.Handle._run
        cpu, calls = self.cpu, self.calls

        def timed(handle: asyncio.events.Handle) -> None:
            name = callback_label(handle)  # before: a finished coroutine has no frame
            began = time.thread_time()
            try:
                original(handle)
            finally:
                cpu[name] += time.thread_time() - began
                calls[name] += 1

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def remove(self) -> None:
        if self._original is not None:
            asyncio.events.Handle._run = self._original  # type: ignore[method-assign,assignment]


def callback_label(handle: asyncio.events.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    get_coro = getattr(getattr(callback, "__self__", None), "get_coro", None)
    if get_coro is None:
        return str(getattr(callback, "__qualname__", type(callback).__name__))
    coro = get_coro()
    frame = getattr(coro, "cr_frame", None)
    proc = frame.f_locals.get("proc") if frame is not None else None
    # trio-asyncio runs every call through _call_defer(proc, ...): name the proc.
    inner = getattr(proc, "__qualname__", None)
    return f"task {inner or getattr(coro, '__qualname__', '?')}"


class Client:
    """The submitting client; runs in its own thread and Trio run.

    ``--in-flight K`` players submit side by side, each one at a time (K
    sockets, or K HTTP requests at once): the node batches what arrives
    together, as under load. The client shares the process (and the GIL)
    with the node, so its throughput means nothing; the node's CPU per
    submission and where it goes do.
    """

    def __init__(self, opts: Options, address: Any, secrets_: NodeSecrets) -> None:
        self.opts, self.address, self.secrets = opts, address, secrets_
        self.token = trio.lowlevel.current_trio_token()
        self.wall_s = 0.0
        self.measured = 0

    def run(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        trio.run(self._main, start, stop)

    async def _main(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        opts = self.opts
        per_player = -(-(WARMUP + opts.count) // opts.in_flight)
        async with (
            httpx.AsyncClient(base_url=self.address.http_url, timeout=30) as http,
            contextlib.AsyncExitStack() as stack,
        ):
            loops: list[tuple[Callable[[str], Any], list[str]]] = []
            for i in range(opts.in_flight):
                body = {"device_id": f"bench-profile-{i:04d}"}
                reply = await http.post("/v1/auth/device", json=body)
                if reply.status_code != 200:
                    raise BenchError(f"signing in: {reply.status_code} {reply.text[:200]}")
                player = reply.json()
                tokens = [
                    mint(self.secrets, player["user_id"], 1 + k % 50) for k in range(per_player)
                ]
                loops.append((await self._submitter(http, stack, player), tokens))
            if opts.watch:
                spectator = await stack.enter_async_context(open_client(self.address.ws_url))
                await spectator.subscribe("global", 10)
            warm = -(-WARMUP // opts.in_flight)
            await _side_by_side([(submit, tokens[:warm]) for submit, tokens in loops])
            self.measured = sum(len(tokens[warm:]) for _, tokens in loops)
            await self._in_node(start)
            began = time.monotonic()
            await _side_by_side([(submit, tokens[warm:]) for submit, tokens in loops])
            self.wall_s = time.monotonic() - began
            await self._in_node(stop)

    async def _submitter(
        self, http: httpx.AsyncClient, stack: contextlib.AsyncExitStack, player: dict[str, Any]
    ) -> Callable[[str], Any]:
        """How one player submits a token: over its own WebSocket, or over HTTP."""
        access = player["access_token"]
        if self.opts.via == "http":
            headers = {"Authorization": f"Bearer {access}"}

            async def post(token: str) -> None:
                answer = await http.post(
                    "/v1/scores/update", json={"action_token": token}, headers=headers
                )
                if answer.status_code != 200:
                    raise BenchError(f"submitting: {answer.status_code} {answer.text[:200]}")

            return post
        ws = await stack.enter_async_context(open_client(self.address.ws_url, token=access))

        async def submit(token: str) -> None:
            await ws.submit(token)

        return submit

    async def _in_node(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the node's thread, between its task steps; return once it ran."""
        done = threading.Event()

        def call() -> None:
            fn()
            done.set()

        self.token.run_sync_soon(call)
        await trio.to_thread.run_sync(done.wait)


async def profile(opts: Options, root: Path) -> dict[str, Any]:
    secrets_ = NodeSecrets()
    async with (
        open_embedded_redis(root / "redis", persist=True) as redis,
        open_embedded_postgres(root / "postgres", durable=True) as postgres,
    ):
        env = node_environ(
            root,
            redis.url,
            postgres.dsn,
            secrets_,
            free_port(HOST),
            free_port(HOST),
        )
        # The client's socket would hit the per-socket message limit at full speed.
        env |= {"PODIUM_WS_RATE_PER_S": "100000", "PODIUM_WS_RATE_BURST": "100000"}
        env |= dict(opts.node_env)
        node = Node(Settings.from_sources(env))
        tasks, callbacks = TaskCpu(), CallbackCpu()
        trio.lowlevel.add_instrument(tasks)
        window: dict[str, float] = {}

        def start() -> None:
            callbacks.install()
            tasks.on = True
            window["cpu"] = time.thread_time()

        def stop() -> None:
            window["cpu"] = time.thread_time() - window["cpu"]
            tasks.on = False
            callbacks.remove()

        async with trio.open_nursery() as nursery:
            address = await nursery.start(node.run)
            client = Client(opts, address, secrets_)
            with trio.fail_after(TIMEOUT_S + opts.count * 0.5):
                await trio.to_thread.run_sync(client.run, start, stop)
            node.stop_nowait()
    n = client.measured
    return {
        "count": n,
        "in_flight": opts.in_flight,
        "via": opts.via,
        "watch": opts.watch,
        "wall_ms_per_submission": round(client.wall_s / n * 1000, 3),
        "node_cpu_ms_per_submission": round(window["cpu"] / n * 1000, 3),
        "scheduler_passes_per_submission": round(tasks.passes / n, 1),
        "tasks": {
            k: {"cpu_ms": round(v / n * 1000, 3), "steps": round(tasks.steps[k] / n, 2)}
            for k, v in sorted(tasks.cpu.items(), key=lambda kv: -kv[1])
        },
        "asyncio_callbacks": {
            k: {"cpu_ms": round(v / n * 1000, 3), "calls": round(callbacks.calls[k] / n, 2)}
            for k, v in sorted(callbacks.cpu.items(), key=lambda kv: -kv[1])
        },
    }


async def _side_by_side(loops: list[tuple[Callable[[str], Any], list[str]]]) -> None:
    """Each (submit, tokens): submit the tokens one after another; all loops at once."""

    async def one(submit: Callable[[str], Any], tokens: list[str]) -> None:
        for token in tokens:
            await submit(token)

    async with trio.open_nursery() as nursery:
        for submit, tokens in loops:
            nursery.start_soon(one, submit, tokens)


def report_text(report: dict[str, Any]) -> str:
    lines = [
        f"profile   {report['count']} submissions over {report['via']}"
        f"{' with a spectator' if report['watch'] else ''}, "
        f"{report['in_flight']} player(s) side by side, each one at a time",
        f"per submission: node CPU {report['node_cpu_ms_per_submission']:.3f} ms, "
        f"wall {report['wall_ms_per_submission']:.3f} ms, "
        f"{report['scheduler_passes_per_submission']} scheduler passes",
        "",
        "  CPU ms  steps  Trio task (node thread; the rest is the scheduler itself)",
    ]
    lines += [
        f"{row['cpu_ms']:8.3f} {row['steps']:6.2f}  {name}" for name, row in report["tasks"].items()
    ]
    lines += ["", "  CPU ms  calls  asyncio callback (inside the trio-asyncio loop's task above)"]
    lines += [
        f"{row['cpu_ms']:8.3f} {row['calls']:6.2f}  {name}"
        for name, row in list(report["asyncio_callbacks"].items())[:20]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is not threading.main_thread():
        print("bench profile: run it as a program", file=sys.stderr)
        return 2
    report = run_in_temporary_directory(profile, opts, prefix="podium-profile-", name="profile")
    if isinstance(report, int):
        return report
    print(report_text(report), flush=True)
    if opts.json is not None:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
