"""``scripts/bench http``: what one node sustains over HTTP, and what it costs in CPU.

The benchmark starts its own Redis and PostgreSQL (:mod:`server.embedded`,
in a temporary directory; PostgreSQL *durable*, so every commit pays a real
fsync), then one node as a separate process (``python -m server.cli serve``),
and waits for ``/readyz``. Set-up, not timed: N users through
``POST /v1/auth/device``, each given one score so every read has data.

Then each phase runs a closed loop from separate load processes
(:mod:`bench.loadgen`): C keep-alive connections, each sending its next
request as soon as the last response arrived. After a warm-up, a measured
window counts the responses by status and records every latency; the CPU
seconds of the node, Redis and PostgreSQL (the postmaster and all its
children) and the load processes are read from ``/proc`` at the window's
edges. Phases:

* ``submit`` — ``POST /v1/scores/update`` with action tokens minted ahead
  (locally, with the node's action key), at each ``--concurrency``;
* ``top`` — ``GET /v1/leaderboards/global/top?limit=10`` at ``--read-concurrency``;
* ``around`` — ``GET /v1/leaderboards/global/around/{user}?radius=5`` likewise.

Only 200 counts as accepted. ``--repeat K`` runs the whole plan K times and
the summary gives each figure's median (non-200 counts are totals).
Everything listens on and talks to 127.0.0.1 only; every wait is bounded,
and everything started is stopped at the end, on an error, or on Ctrl-C.

Exit codes: 0 done, 1 the benchmark failed (the message says why), 2 bad
usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from bench.common import (
    ROOT,
    BenchError,
    LoadProcess,
    add_node_options,
    bounded,
    fmt,
    median,
    percentile,
    round2,
    run_bench,
    sleep_until,
    split,
    stop_process,
    tail,
)
from protocol import action_token
from server.embedded import free_port, open_embedded_postgres, open_embedded_redis

HOST: Final = "127.0.0.1"
LEADERBOARD: Final = "global"
ACTION_TYPE: Final = "score"
DELTA_MIN, DELTA_MAX = 1, 10000
ACTION_KEY_ID: Final = "bench"
TOKEN_TTL_S: Final = 3000  # under the node's 3600 s lifetime cap; outlives any run we allow
MAX_TOKEN_POOL: Final = 200_000
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

NODE_READY_TIMEOUT_S: Final = 120.0
NODE_STOP_TIMEOUT_S: Final = 30.0
LOAD_READY_TIMEOUT_S: Final = 180.0
LOAD_DRAIN_S: Final = 15.0
REQUEST_TIMEOUT_S: Final = 30.0

PHASES: Final = ("submit", "top", "around")
LOADGEN: Final = ("bench.loadgen",)


# ---------------------------------------------------------------- options


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(not 1 <= v <= 4096 for v in values):
        raise argparse.ArgumentTypeError("each concurrency must be from 1 to 4096")
    return values


def _phase_list(text: str) -> list[str]:
    phases = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if not phases or unknown:
        raise argparse.ArgumentTypeError(f"phases are a comma-separated subset of {PHASES}")
    return phases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench http",
        description="Measure one Podium node over HTTP: score submissions and leaderboard reads, "
        "with private Redis and (durable) PostgreSQL, load from separate processes.",
    )
    add = parser.add_argument
    add("--users", type=bounded(int, 1, 1_000_000), default=2000, help="players (default 2000)")
    add("--seconds", type=bounded(float, 0.1, 600), default=10.0, help="measured window (10)")
    add("--warmup", type=bounded(float, 0, 60), default=1.0, help="warm-up per phase (1)")
    add(
        "--concurrency",
        type=_int_list,
        default=[16, 64, 256],
        help="connections for the submit phase, comma-separated (16,64,256)",
    )
    add(
        "--read-concurrency",
        type=bounded(int, 1, 4096),
        default=64,
        help="connections for the top and around phases (64)",
    )
    add("--phases", type=_phase_list, default=list(PHASES), help="submit,top,around (all)")
    add("--repeat", type=bounded(int, 1, 100), default=1, help="runs of each phase (1)")
    add("--procs", type=bounded(int, 1, 64), default=1, help="load processes (1)")
    add(
        "--token-rate",
        type=bounded(int, 1, 1_000_000),
        default=3000,
        help="submissions/s per load process to pre-mint tokens for; beyond it they are "
        "minted inline and counted (3000)",
    )
    add("--setup-concurrency", type=bounded(int, 1, 256), default=16, help="set-up clients (16)")
    add_node_options(parser)
    return parser


@dataclass(frozen=True)
class Options:
    users: int
    seconds: float
    warmup: float
    concurrency: list[int]
    read_concurrency: int
    phases: list[str]
    repeat: int
    procs: int
    token_rate: int
    setup_concurrency: int
    node_env: list[tuple[str, str]]
    json: Path | None
    keep: bool

    def plan(self) -> list[tuple[str, int]]:
        steps: list[tuple[str, int]] = []
        for phase in self.phases:
            clients = self.concurrency if phase == "submit" else [self.read_concurrency]
            steps += [(phase, c) for c in clients]
        return steps

    def as_json(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "seconds": self.seconds,
            "warmup": self.warmup,
            "concurrency": self.concurrency,
            "read_concurrency": self.read_concurrency,
            "phases": self.phases,
            "repeat": self.repeat,
            "procs": self.procs,
            "token_rate": self.token_rate,
            "node_env": dict(self.node_env),
            "leaderboard": LEADERBOARD,
            "action_type": ACTION_TYPE,
            "delta": [DELTA_MIN, DELTA_MAX],
            "top_limit": 10,
            "around_radius": 5,
            "postgres": "embedded, durable (fsync=on, synchronous_commit=on)",
            "redis": "embedded, appendonly everysec",
        }


def parse_options(argv: Sequence[str]) -> Options:
    args = list(argv)
    if args and args[0] == "http":
        args = args[1:]
    ns = build_parser().parse_args(args)
    return Options(**vars(ns))


# ---------------------------------------------------------------- processes and CPU


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """utime+stime of ``pid`` (plus its waited-for children's with ``reaped``); 0 if gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After ")": [0] state, ... [11] utime, [12] stime, [13] cutime, [14] cstime.
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from /proc/PID/task/*/children; bounded."""
    found: list[int] = []
    queue = [pid]
    while queue and len(found) < 100_000:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its whole tree: live descendants, plus those already reaped.

    A descendant that exits between two readings moves its time into the
    parent's cutime/cstime, so differences of two readings stay right.
    """
    return cpu_seconds(pid, reaped=True) + sum(cpu_seconds(p) for p in descendants(pid))


def _parent_death_signal(signum: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def set_pdeathsig() -> None:  # in the child, before exec
        if libc.prctl(1, int(signum), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            os._exit(127)
        if os.getppid() == 1:
            os._exit(0)

    return set_pdeathsig


# ---------------------------------------------------------------- the node


@dataclass
class NodeSecrets:
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    service_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    action_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


class NodeProcess:
    """``python -m server.cli serve`` in its own session, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], log_path: Path, http_port: int) -> None:
        self.log_path = log_path
        self.url = f"http://{HOST}:{http_port}"
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal(signal.SIGTERM)
                if sys.platform == "linux"
                else None,
            )
        self.pid = self.popen.pid
        self.exit_code: int | None = None

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(
                f"the node exited with code {self.popen.returncode}; "
                f"log {self.log_path}:\n{tail(self.log_path)}"
            )

    async def wait_ready(self) -> None:
        with trio.move_on_after(NODE_READY_TIMEOUT_S) as scope:
            async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
                while True:
                    self.check_alive()
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get("/readyz")).status_code == 200:
                            return
                    await trio.sleep(0.1)
        if scope.cancelled_caught:
            raise BenchError(
                f"the node was not ready after {NODE_READY_TIMEOUT_S:.0f} s; "
                f"log {self.log_path}:\n{tail(self.log_path)}"
            )

    async def stop(self) -> int:
        self.exit_code = await stop_process(self.popen, signal.SIGTERM, NODE_STOP_TIMEOUT_S)
        return self.exit_code


def scan_node_log(path: Path) -> dict[str, Any]:
    """Counts of the node's log lines by level, and the first few errors and warnings."""
    levels: Counter[str] = Counter()
    notable: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
            level = str(record.get("level", "?"))
            text = f"{level}: {record.get('logger', '')}: {record.get('msg', '')}"
            if record.get("exc"):
                text += " | " + str(record["exc"]).strip().splitlines()[-1]
        except (ValueError, AttributeError):
            level = "unstructured"
            text = line
        levels[level] += 1
        if level != "info" and level != "debug" and len(notable) < 10:
            notable.append(text[:400])
    return {"lines": len(lines), "levels": dict(levels), "notable": notable}


# ---------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Player:
    user_id: str
    access_token: str


def mint(secrets_: NodeSecrets, user_id: str, delta: int) -> str:
    token, _ = action_token.mint(
        user_id=user_id,
        leaderboard=LEADERBOARD,
        action_type=ACTION_TYPE,
        delta=delta,
        kid=ACTION_KEY_ID,
        key=secrets_.action_key,
        now=time.time(),
        ttl_s=TOKEN_TTL_S,
    )
    return token


async def _each(count: int, workers: int, job: Callable[[int], Any]) -> None:
    """Run ``await job(i)`` for i in range(count) with at most ``workers`` at once."""
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await job(i)

    async with trio.open_nursery() as nursery:
        for _ in range(min(workers, count)):
            nursery.start_soon(worker)


async def setup_players(
    url: str, opts: Options, secrets_: NodeSecrets, run_id: str
) -> list[Player]:
    """Create the users, and give each one score (so reads have data); not timed."""
    players: list[Player | None] = [None] * opts.users
    limits = httpx.Limits(max_connections=opts.setup_concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:

        async def create(i: int) -> None:
            body = {"device_id": f"bench-{run_id}-{i:07d}", "username": f"bench_{i}"}
            reply = await http.post("/v1/auth/device", json=body)
            if reply.status_code != 200:
                raise BenchError(f"POST /v1/auth/device: {reply.status_code} {reply.text[:300]}")
            data = reply.json()
            players[i] = Player(data["user_id"], data["access_token"])

        began = time.monotonic()
        await _each(opts.users, opts.setup_concurrency, create)
        made = [p for p in players if p is not None]
        created_s = time.monotonic() - began

        async def seed(i: int) -> None:
            player = made[i]
            reply = await http.post(
                "/v1/scores/update",
                json={"action_token": mint(secrets_, player.user_id, 1 + i % DELTA_MAX)},
                headers={"Authorization": f"Bearer {player.access_token}"},
            )
            if reply.status_code != 200:
                raise BenchError(f"seeding a score: {reply.status_code} {reply.text[:300]}")

        began = time.monotonic()
        await _each(len(made), opts.setup_concurrency, seed)
        seeded_s = time.monotonic() - began
    print(
        f"setup     {len(made)} users in {created_s:.1f} s, one score each in {seeded_s:.1f} s "
        "(not timed)",
        flush=True,
    )
    return made


# ---------------------------------------------------------------- one phase


@dataclass
class Ctx:
    opts: Options
    root: Path
    node: NodeProcess
    redis_pid: int
    postgres_pid: int
    http_port: int
    secrets: NodeSecrets
    players: list[Player]
    child_env: dict[str, str]


def _sample_cpu(ctx: Ctx, loads: list[LoadProcess]) -> dict[str, float]:
    return {
        "node": tree_cpu_seconds(ctx.node.pid),
        "redis": tree_cpu_seconds(ctx.redis_pid),
        "postgres": tree_cpu_seconds(ctx.postgres_pid),
        "load": sum(cpu_seconds(load.popen.pid) for load in loads),
    }


async def run_phase(ctx: Ctx, kind: str, clients: int, run: int) -> dict[str, Any]:
    opts = ctx.opts
    ctx.node.check_alive()
    procs = min(opts.procs, clients, len(ctx.players))
    budget = min(MAX_TOKEN_POOL, math.ceil(opts.token_rate * (opts.warmup + opts.seconds)))
    loads: list[LoadProcess] = []
    try:
        for p, conns in enumerate(split(clients, procs)):
            spec = {
                "host": HOST,
                "port": ctx.http_port,
                "kind": kind,
                "concurrency": conns,
                "users": [[pl.user_id, pl.access_token] for pl in ctx.players[p::procs]],
                "leaderboard": LEADERBOARD,
                "action_type": ACTION_TYPE,
                "delta_min": DELTA_MIN,
                "delta_max": DELTA_MAX,
                "action_key": ctx.secrets.action_key,
                "action_key_id": ACTION_KEY_ID,
                "token_ttl_s": TOKEN_TTL_S,
                "token_budget": budget if kind == "submit" else 0,
                "drain_s": LOAD_DRAIN_S,
                "seed": run * 1000 + p,
            }
            loads.append(
                LoadProcess(
                    ctx.root, spec, f"{kind}-c{clients}-r{run}-p{p}", ctx.child_env, LOADGEN
                )
            )
        for load in loads:
            if (await load.readline("ready", LOAD_READY_TIMEOUT_S)).strip() != "ready":
                raise BenchError(f"a load process did not start; log {load.log_path}")
        ctx.node.check_alive()
        start = time.monotonic() + 0.05 + opts.warmup
        end = start + opts.seconds
        for load in loads:
            load.send(f"go {start!r} {end!r}\n")
        await sleep_until(start)
        cpu_before, wall_before = _sample_cpu(ctx, loads), time.monotonic()
        await sleep_until(end)
        cpu_after, wall_after = _sample_cpu(ctx, loads), time.monotonic()
        results = [json.loads(await load.readline("result", LOAD_DRAIN_S + 30)) for load in loads]
    finally:
        for load in loads:
            await load.close()
    ctx.node.check_alive()
    return _figures(
        opts, kind, clients, run, results, cpu_before, cpu_after, wall_after - wall_before
    )


def _figures(
    opts: Options,
    kind: str,
    clients: int,
    run: int,
    results: list[dict[str, Any]],
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    cpu_window_s: float,
) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    totals: Counter[str] = Counter()
    samples: Counter[str] = Counter()
    for result in results:
        statuses.update({k: int(v) for k, v in result["statuses"].items()})
        latencies += result["latencies_ms"]
        for key in ("warmup_requests", "late_requests", "conn_errors", "reconnects"):
            totals[key] += int(result[key])
        totals["inline_mints"] += int(result["inline_mints"])
        samples.update(result["error_samples"])
    latencies.sort()
    accepted = statuses.get("200", 0)
    cpu = {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_before}
    servers_cpu = cpu["node"] + cpu["redis"] + cpu["postgres"]

    def per(cpu_s: float) -> float | None:
        return round(accepted / cpu_s, 1) if cpu_s > 0 else None

    return {
        "phase": kind,
        "clients": clients,
        "run": run,
        "window_s": opts.seconds,
        "cpu_window_s": round(cpu_window_s, 3),
        "requests": sum(statuses.values()),
        "accepted": accepted,
        "accepted_per_s": round(accepted / opts.seconds, 1),
        "statuses": dict(sorted(statuses.items())),
        "non_200": {k: v for k, v in sorted(statuses.items()) if k != "200"},
        "latency_ms": {
            "p50": round2(percentile(latencies, 0.50)),
            "p99": round2(percentile(latencies, 0.99)),
            "max": round2(latencies[-1] if latencies else None),
        },
        "cpu_s": cpu,
        "cpu_percent": {k: round(100 * v / cpu_window_s, 1) for k, v in cpu.items()},
        "per_node_cpu_s": per(cpu["node"]),
        "per_cpu_s": per(servers_cpu),
        **dict(totals),
        "load_pids": [int(result["pid"]) for result in results],
        "error_samples": dict(samples.most_common(8)),
    }


# ---------------------------------------------------------------- output


def _statuses_text(non_200: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in non_200.items()) or "none"


def phase_line(fig: dict[str, Any], repeat: int) -> str:
    lat, cpu = fig["latency_ms"], fig["cpu_s"]
    line = (
        f"{fig['phase']:<7} c={fig['clients']:<4} run {fig['run']}/{repeat}  "
        f"ok/s {fig['accepted_per_s']:>8.1f}  non-200 {_statuses_text(fig['non_200'])}  "
        f"p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])} ms  "
        f"cpu-s node {cpu['node']:.2f} redis {cpu['redis']:.2f} pg {cpu['postgres']:.2f} "
        f"load {cpu['load']:.2f} /{fig['cpu_window_s']:.1f}s  "
        f"ok/node-cpu-s {fmt(fig['per_node_cpu_s'], '.0f')}  "
        f"ok/cpu-s(node+redis+pg) {fmt(fig['per_cpu_s'], '.0f')}"
    )
    extras = [
        f"{name} {fig[name]}"
        for name in ("conn_errors", "reconnects", "inline_mints")
        if fig.get(name)
    ]
    if extras:
        line += "\n          (" + ", ".join(extras) + ")"
    for sample, count in list(fig["error_samples"].items())[:3]:
        line += f"\n          {count} x {sample}"
    return line


def summarise(runs: list[dict[str, Any]], plan: list[tuple[str, int]]) -> list[dict[str, Any]]:
    rows = []
    for phase, clients in plan:
        mine = [r for r in runs if r["phase"] == phase and r["clients"] == clients]
        if not mine:
            continue
        non_200: Counter[str] = Counter()
        for r in mine:
            non_200.update(r["non_200"])
        rows.append(
            {
                "phase": phase,
                "clients": clients,
                "runs": len(mine),
                "accepted_per_s": median([r["accepted_per_s"] for r in mine]),
                "non_200": dict(sorted(non_200.items())),
                "latency_ms": {
                    q: median([r["latency_ms"][q] for r in mine]) for q in ("p50", "p99", "max")
                },
                "cpu_percent": {
                    k: median([r["cpu_percent"][k] for r in mine])
                    for k in ("node", "redis", "postgres", "load")
                },
                "per_node_cpu_s": median([r["per_node_cpu_s"] for r in mine]),
                "per_cpu_s": median([r["per_cpu_s"] for r in mine]),
                "conn_errors": sum(r.get("conn_errors", 0) for r in mine),
            }
        )
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'phase':<7} {'clients':>7} {'runs':>4} {'ok/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'node%':>6} {'redis%':>6} {'pg%':>6} {'load%':>6} "
        f"{'ok/node-cpu-s':>13} {'ok/cpu-s':>8}  non-200"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        lat, cpu = r["latency_ms"], r["cpu_percent"]
        out.append(
            f"{r['phase']:<7} {r['clients']:>7} {r['runs']:>4} {fmt(r['accepted_per_s']):>8} "
            f"{fmt(lat['p50']):>7} {fmt(lat['p99']):>7} {fmt(lat['max']):>7} "
            f"{fmt(cpu['node'], '.0f'):>6} {fmt(cpu['redis'], '.0f'):>6} "
            f"{fmt(cpu['postgres'], '.0f'):>6} {fmt(cpu['load'], '.0f'):>6} "
            f"{fmt(r['per_node_cpu_s'], '.0f'):>13} {fmt(r['per_cpu_s'], '.0f'):>8}  "
            f"{_statuses_text(r['non_200'])}"
        )
    out.append(
        "ok/s: 200 responses per second of the window; cpu%: 100 = one core over the window; "
        "ok/cpu-s counts node+redis+pg CPU; medians over runs (non-200: totals)"
    )
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "commit": commit,
    }


def header(opts: Options, machine: dict[str, Any]) -> str:
    extra = " ".join(f"{k}={v}" for k, v in opts.node_env) or "defaults"
    return "\n".join(
        [
            "Podium HTTP benchmark",
            f"machine   nproc {machine['nproc']} ({machine['cpu_model'] or 'cpu model unknown'}), "
            f"Linux {machine['kernel']}, {machine['implementation']} {machine['python']}, "
            f"commit {machine['commit'] or '?'}",
            f"node      1 process: python -m server.cli serve, log level warning, settings {extra}",
            "postgres  embedded, DURABLE (fsync=on, synchronous_commit=on): commits pay real fsync",
            "redis     embedded, appendonly everysec",
            f"load      {opts.procs} process(es), closed loop, HTTP/1.1 keep-alive, raw trio "
            "sockets, 127.0.0.1 only",
            f"settings  users {opts.users}, warm-up {opts.warmup:g} s, window {opts.seconds:g} s, "
            f"repeat {opts.repeat}, submit concurrency {','.join(map(str, opts.concurrency))}, "
            f"read concurrency {opts.read_concurrency}, phases {','.join(opts.phases)}",
        ]
    )


# ---------------------------------------------------------------- main


#: The load is one machine playing thousands of players from 127.0.0.1 in a closed
#: loop with deltas drawn uniformly from the whole allowed range: a cheater on every
#: count the fraud engine has. So rate limits are lifted and every factor weighs
#: nothing; the fraud actor still gathers every signal and scores every submission
#: (its cost is measured), it only never says no. `--node-env
#: PODIUM_FRAUD_ENABLED=false` measures the node without it.
ONE_MACHINE_MANY_PLAYERS: Final = {
    "PODIUM_FRAUD_PARAMS": "frequency_weight=0,increment_weight=0,timing_weight=0,"
    "identity_weight=0,velocity_weight=0",
    "PODIUM_RATE_USER_PER_S": "100000",
    "PODIUM_RATE_USER_BURST": "1000000",
    "PODIUM_RATE_IP_PER_S": "100000",
    "PODIUM_RATE_IP_BURST": "1000000",
    "PODIUM_RATE_SERVICE_PER_S": "1000000",
    "PODIUM_RATE_SERVICE_BURST": "10000000",
}


def node_environ(
    root: Path,
    redis_url: str,
    database_url: str,
    secrets_: NodeSecrets,
    http_port: int,
    ws_port: int,
    *,
    load_test: bool = True,
) -> dict[str, str]:
    """The PODIUM_* settings of a benchmark node; ``load_test`` adds
    :data:`ONE_MACHINE_MANY_PLAYERS`."""
    env = {
        "PODIUM_BIND_HOST": HOST,
        "PODIUM_HTTP_PORT": str(http_port),
        "PODIUM_WS_PORT": str(ws_port),
        "PODIUM_REDIS_URL": redis_url,
        "PODIUM_DATABASE_URL": database_url,
        "PODIUM_DATA_DIR": str(root / "node-data"),
        "PODIUM_JWT_SECRET": secrets_.jwt_secret,
        "PODIUM_SERVICE_KEY": secrets_.service_key,
        "PODIUM_ACTION_KEY": secrets_.action_key,
        "PODIUM_ACTION_KEY_ID": ACTION_KEY_ID,
        "PODIUM_ADMIN_TOKEN": secrets_.admin_token,
        "PODIUM_JWT_ACCESS_TTL_S": "86400",
        "PODIUM_LOG_LEVEL": "warning",
        "PODIUM_NODE_ID": "bench-node",
        "PODIUM_GRACEFUL_TIMEOUT_S": "5",
    }
    if load_test:
        env |= ONE_MACHINE_MANY_PLAYERS
    return env


@contextlib.asynccontextmanager
async def running_node(
    opts: Options,
    root: Path,
    redis_url: str,
    database_url: str,
    secrets_: NodeSecrets,
    *,
    load_test: bool = True,
) -> AsyncIterator[tuple[NodeProcess, int]]:
    """A node for the benchmarks; ``load_test`` lifts what stops one machine
    posing as many players (:data:`ONE_MACHINE_MANY_PLAYERS`)."""
    http_port, ws_port = free_port(HOST), free_port(HOST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env |= {"PYTHONPATH": str(ROOT)}
    env |= node_environ(
        root, redis_url, database_url, secrets_, http_port, ws_port, load_test=load_test
    )
    env |= dict(opts.node_env)
    node = NodeProcess(env, root / "node.log", http_port)
    try:
        yield node, http_port
    finally:
        code = await node.stop()
        if code not in (0, 130):
            print(f"note: the node exited with code {code}", flush=True)


async def bench(opts: Options, root: Path) -> dict[str, Any]:
    machine = machine_info()
    print(header(opts, machine), flush=True)
    secrets_ = NodeSecrets()
    began = time.monotonic()
    async with (
        open_embedded_redis(root / "redis", persist=True) as redis,
        open_embedded_postgres(root / "postgres", durable=True) as postgres,
        running_node(opts, root, redis.url, postgres.dsn, secrets_) as (node, http_port),
    ):
        await node.wait_ready()
        print(
            f"ready     node pid {node.pid} on {node.url}, redis pid {redis.pid}, "
            f"postgres pid {postgres.pid} ({time.monotonic() - began:.1f} s)",
            flush=True,
        )
        run_id = secrets.token_hex(4)
        players = await setup_players(node.url, opts, secrets_, run_id)
        ctx = Ctx(
            opts=opts,
            root=root,
            node=node,
            redis_pid=redis.pid,
            postgres_pid=postgres.pid,
            http_port=http_port,
            secrets=secrets_,
            players=players,
            child_env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        runs: list[dict[str, Any]] = []
        for run in range(1, opts.repeat + 1):
            for kind, clients in opts.plan():
                figures = await run_phase(ctx, kind, clients, run)
                print(phase_line(figures, opts.repeat), flush=True)
                runs.append(figures)
    node_log = scan_node_log(root / "node.log")
    return {
        "machine": machine,
        "settings": opts.as_json(),
        "runs": runs,
        "summary": summarise(runs, opts.plan()),
        "node_log": node_log,
        "node_exit_code": node.exit_code,
        "pids": {"node": node.pid, "redis": redis.pid, "postgres": postgres.pid},
    }


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    return run_bench(
        bench, opts, needs="/proc for CPU figures", prefix="podium-bench-", summary=summary_table
    )


if __name__ == "__main__":
    sys.exit(main())
