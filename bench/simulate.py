"""``scripts/simulate``: honest players and several kinds of cheaters against one node.

A correctness simulator for the fraud defences, not a load test: a few
hundred players at human rates (tens of submissions per second in all).
Each player signs up (``POST /v1/auth/device``), then follows a schedule
drawn in advance from ``--seed``: at each step the game server mints an
action token (``POST /v1/actions`` with the service key) and the player
submits it (``POST /v1/scores/update`` with its JWT), sending
``X-Forwarded-For: <its IP>``, ``X-Device-Id: <its device>`` and a
game-client ``User-Agent``. After the run the simulator reads the fraud
engine's flags (``GET /v1/admin/fraud/cases?event_type=flag``) and prints,
per class: submitted, blocked, flagged, allowed, limited, errors and caught%,
then the overall catch rate, the honest false-positive rates, the precision
and recall of blocks, and honest submission latency.

Usage::

    scripts/simulate                      # private Redis + PostgreSQL + node, 60 s
    scripts/simulate --seconds 30 --honest 100 --seed 7
    scripts/simulate --json > report.json # the JSON report alone on stdout
    scripts/simulate --json out.json      # the table, and the report in out.json
    scripts/simulate --url http://127.0.0.1:8000 --service-key K --admin-token T

By default it starts its own private stores and node exactly as
``scripts/bench http`` does (temporary directory, loopback ports), with
``PODIUM_TRUSTED_PROXIES=127.0.0.1/32`` so the node believes the players'
``X-Forwarded-For`` (left out, with a warning, if the node does not know that
setting yet). ``--node-env PODIUM_X=V`` passes more settings (fraud engine
tuning, rate limits). With ``--url`` it drives a running node instead; that
node must trust 127.0.0.1 (or wherever the simulator runs) as a proxy for the
IPs to mean anything, and its ``global`` board (or ``--leaderboard``) receives
the scores.

The classes (every size is an option; ``0`` leaves a class out). IPs are
drawn for everyone from one pool of 10.x.y.z addresses, and device ids,
usernames and user agents look alike in every class, so nothing but
behaviour tells a cheater from an honest player.

* ``honest`` — human timing: log-normal gaps between actions around a
  per-player median of 1.5-5 s (sigma 0.7: a heavy-ish tail), and with
  probability 5 % a pause of 10-45 s; deltas = the player's skill level
  (log-normal, median 100, within 5-2,000) x log-normal noise (sigma 0.35).
  One device each; one IP each, except that about one in five share a NAT IP
  with 1-3 others.
* ``replay`` — re-submits tokens it has already used (the node should answer
  409). Variants: ``double`` (submits, then resubmits the same token within
  a second or two), ``old`` (replays a random earlier token), ``race`` (sends
  a fresh token twice at the same instant). Only the re-submissions count as
  cheating; each token's first, legitimate use is reported on its own row,
  ``replay:first-use``, which counts as non-cheating traffic (a block there
  is a false positive) but not as honest (it does not enter the honest rates).
* ``forged`` — tokens the node must refuse with 400: ``tampered`` (a real
  token whose delta was rewritten to 10,000, signature kept), ``wrong_key``
  (signed with a guessed secret under the real key id), ``unknown_kid`` (a
  made-up key id), ``stolen`` (another player's real token, with its own
  JWT), ``truncated`` (a real token with its signature cut short).
* ``inflated`` — honest timing, but every delta 9,000-10,000: within bounds,
  far above the population.
* ``bot`` — machine-regular timing: every ``--bot-interval`` seconds (x1,
  x1.5 or x2 per bot) +/- 5 ms, typical deltas.
* ``farm`` — ``--farms`` farms of ``--farm-accounts`` accounts, all of a farm
  on ONE IP; variants alternate ``one-device`` (one X-Device-Id and user agent
  for the whole farm) and ``own-devices``; each account submits modestly
  (gaps around 4-8 s, deltas 30-120 x noise).
* ``jumper`` — plays honestly (gaps around 1.5-3 s, skill 20-150) until 30-50 %
  of the run, then submits deltas 10-50x its normal. The submissions before
  the jump are on their own row, ``jumper:before-jump``, counted like
  ``replay:first-use``.

Outcomes of a submission: *allowed* (200), *blocked* (refused for cheating:
400 with a code starting ``action_token_``, 409, 403 ``fraud_blocked`` or
``user_banned``), *limited* (429; the player then waits ``Retry-After``
and skips what it would have done meanwhile), *errors* (anything else,
including connection errors). *Flagged* counts allowed submissions that the
fraud engine flagged, matched by ``(user_id, metadata.nonce)``; a flag
without a nonce is put on that user's latest unflagged allowed submission.
*Caught* = blocked + flagged. Overall: positive = a cheating submission
(every submission of the cheating classes, except the first-use and
before-jump rows); precision of blocks = blocked cheating / all blocked,
recall = blocked cheating / all cheating (limited and failed submissions
stay in the denominators). If the admin endpoint is missing (404) or refuses
the token, flagged is "n/a" with a warning and caught counts blocks only.
A ``replay`` of a token whose first use the fraud engine blocked (403
``fraud_blocked``: its nonce stays spent) is still a replay; one whose first
use was limited or failed is not made (the step becomes a first use).

Output: progress on stderr; then a table, one row per class (and per
variant where a class has several) with players, submitted, blocked,
flagged, allowed, limited, errors, caught% and the players shadow-banned by
the end (from ``event_type=shadow_ban`` cases), followed by the overall
figures and their targets (caught >= 95 %, honest blocked <= 0.5 %), the
honest submission latency (p50/p99), the simulator's own CPU, and the
node's log levels. ``--json`` gives the same as one JSON object:
``settings``, ``classes`` (each row with ``kind`` cheating/honest/legit,
``codes`` = "STATUS code" counts, ``latency_ms``, ``variants``), ``overall``,
``honest_latency_ms``, ``flags``, ``identity_check`` (whether the IPs and
devices in the fraud cases are the ones the players sent: a node that does
not read X-Forwarded-For or X-Device-Id is called out in ``warnings``),
``simulator``, ``error_samples``, ``warnings`` and, for the private node,
``node_log``, ``node_exit_code`` and ``pids``.

Exit codes: 0 done, 1 the simulation failed (the message says why), 2 bad
usage, 3 ``--strict`` and a target was missed (caught < 95 % or honest
blocked > 0.5 %), 130 interrupted, 143 terminated.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import random
import resource
import secrets
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from bench import http_bench
from bench.common import (
    BenchError,
    bounded,
    fmt,
    node_env,
    percentile,
    round2,
    run_in_temporary_directory,
    sample_error,
    sleep_until,
)
from config.settings import describe
from protocol import action_token
from server.embedded import open_embedded_postgres, open_embedded_redis

# ---------------------------------------------------------------- constants

CLASSES: Final = ("honest", "replay", "forged", "inflated", "bot", "farm", "jumper")
#: Rows of non-cheating submissions made by cheating accounts (see the module doc).
SIDE_ROWS: Final = {"replay": "replay:first-use", "jumper": "jumper:before-jump"}
ROWS: Final = (*CLASSES, *SIDE_ROWS.values())
CHEATING_ROWS: Final = frozenset(CLASSES[1:])

REPLAY_VARIANTS: Final = ("double", "old", "race")
FORGED_VARIANTS: Final = ("tampered", "wrong_key", "unknown_kid", "stolen", "truncated")
FARM_VARIANTS: Final = ("one-device", "own-devices")

ACTION_TYPE: Final = "score"
DELTA_MIN, DELTA_MAX = 1, 10000
TARGET_CAUGHT_PCT: Final = 95.0
TARGET_HONEST_BLOCKED_PCT: Final = 0.5
REQUEST_TIMEOUT_S: Final = 10.0
DRAIN_S: Final = 15.0
MAX_RETRY_AFTER_S: Final = 30.0
MAX_CASE_PAGES: Final = 1000
SETUP_CONCURRENCY: Final = 8
SIGNUP_TRIES: Final = 10
BLOCKING_403: Final = frozenset({"fraud_blocked", "user_banned"})
TRUSTED_PROXIES_ENV: Final = "PODIUM_TRUSTED_PROXIES"

USER_AGENTS: Final = (
    "StarHopper/2.3.1 (Android 14; Pixel 8) okhttp/4.12.0",
    "StarHopper/2.3.1 (Android 13; SM-A536B) okhttp/4.12.0",
    "StarHopper/2.3.0 (iPhone15,3; iOS 17.4) CFNetwork/1494.0.7",
    "StarHopper/2.3.1 (iPhone14,5; iOS 17.5) CFNetwork/1496.0.7",
    "StarHopper/2.2.9 (Windows 10; x64) UnityPlayer/2022.3.21f1",
    "StarHopper/2.3.1 (Android 12; Redmi Note 11) okhttp/4.12.0",
)


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    seconds: float
    seed: int
    honest: int
    replay: int
    forged: int
    inflated: int
    bot: int
    farms: int
    farm_accounts: int
    jumper: int
    bot_interval: float
    leaderboard: str
    settle: float
    strict: bool
    url: str | None
    service_key: str | None
    admin_token: str | None
    node_env: list[tuple[str, str]]
    json: str | None
    keep: bool

    def counts(self) -> dict[str, int]:
        return {
            "honest": self.honest,
            "replay": self.replay,
            "forged": self.forged,
            "inflated": self.inflated,
            "bot": self.bot,
            "farm": self.farms * self.farm_accounts,
            "jumper": self.jumper,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "seed": self.seed,
            "players": self.counts(),
            "farms": self.farms,
            "farm_accounts": self.farm_accounts,
            "bot_interval_s": self.bot_interval,
            "leaderboard": self.leaderboard,
            "settle_s": self.settle,
            "mode": "url" if self.url else "private",
            "url": self.url,
            "node_env": dict(self.node_env),
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/simulate",
        description="Drive honest players and several kinds of cheaters (replayed, forged and "
        "inflated tokens, bots, account farms, sudden jumps) against a Podium node and report, "
        "per class, what was blocked, flagged and allowed. Without --url it starts its own "
        "private Redis, PostgreSQL and node.",
        epilog="Classes and outcomes are described in bench/simulate.py's docstring. "
        "Exit codes: 0 done, 1 failed, 2 usage, 3 --strict and a target missed.",
    )
    add = parser.add_argument
    add(
        "--seconds",
        type=bounded(float, 1, 3600),
        metavar="S",
        default=60.0,
        help="traffic window (60)",
    )
    add("--seed", type=int, default=1, help="seed for every schedule, IP and delta (1)")
    count = bounded(int, 0, 10_000)
    add("--honest", type=count, metavar="N", default=60, help="honest players (60)")
    add("--replay", type=count, metavar="N", default=6, help="players replaying used tokens (6)")
    add("--forged", type=count, metavar="N", default=5, help="players submitting forged tokens (5)")
    add(
        "--inflated",
        type=count,
        metavar="N",
        default=6,
        help="players with deltas 9,000-10,000 (6)",
    )
    add("--bot", type=count, metavar="N", default=3, help="bots with machine-regular timing (3)")
    add("--farms", type=count, metavar="N", default=2, help="account farms, one IP each (2)")
    add(
        "--farm-accounts",
        type=bounded(int, 1, 1000),
        metavar="N",
        default=24,
        help="accounts per farm (24)",
    )
    add(
        "--jumper",
        type=count,
        metavar="N",
        default=5,
        help="players who jump 10-50x after a while (5)",
    )
    add(
        "--bot-interval",
        type=bounded(float, 0.05, 60),
        metavar="S",
        default=0.5,
        help="a bot's base interval in seconds; bots use x1, x1.5, x2 (0.5)",
    )
    add("--leaderboard", default="global", help="the (existing) board to submit to (global)")
    add(
        "--settle",
        type=bounded(float, 0, 60),
        metavar="S",
        default=1.0,
        help="seconds to wait after the traffic before reading the flags (1)",
    )
    add("--strict", action="store_true", help="exit 3 if a detection target is missed")
    add("--url", help="drive the node at this URL instead of starting one")
    add("--service-key", help="with --url: the node's PODIUM_SERVICE_KEY (required)")
    add("--admin-token", help="with --url: PODIUM_ADMIN_TOKEN, to read the flags")
    add(
        "--node-env",
        type=node_env,
        action="append",
        default=[],
        metavar="PODIUM_X=V",
        help="an extra setting for the private node (repeatable), e.g. fraud engine tuning",
    )
    add(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="the report as JSON: alone on stdout (no FILE; progress goes to stderr), "
        "or written to FILE besides the table",
    )
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    parser = build_parser()
    ns = parser.parse_args(list(argv))
    if ns.url is None:
        if ns.service_key or ns.admin_token:
            parser.error("--service-key and --admin-token go with --url")
    else:
        if not ns.service_key:
            parser.error("--url needs --service-key")
        if ns.node_env or ns.keep:
            parser.error("--node-env and --keep are for the private node, not with --url")
        ns.url = ns.url.rstrip("/")
    sizes = (ns.honest, ns.replay, ns.forged, ns.inflated, ns.bot, ns.farms, ns.jumper)
    if not any(sizes):
        parser.error("every class is empty")
    return Options(**vars(ns))


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Event:
    """One step of a player's schedule, ``at`` seconds into the run.

    ``kind``: ``submit`` (mint and submit), ``replay`` (resubmit the used
    token at index ``int(pick * n)``, the newest for ``pick`` >= 1), ``race``
    (mint and submit twice at once) or ``forge``. ``lead`` is how long before
    ``at`` the game server mints the token.
    """

    at: float
    kind: str
    row: str
    delta: int = 0
    pick: float = 1.0
    lead: float = 0.05


@dataclass
class Player:
    index: int
    cls: str
    variant: str
    ip: str
    device: str  # X-Device-Id
    install_id: str  # the device_id of POST /v1/auth/device: one account each
    user_agent: str
    username: str
    events: list[Event]
    user_id: str = ""
    access_token: str = ""
    victim: int | None = None  # forged/stolen: whose tokens it steals
    used: list[tuple[str, str]] = field(default_factory=list)  # (token, nonce) accepted
    resume_at: float = 0.0  # after a 429: skip steps before this monotonic time


def _clamp(delta: float) -> int:
    return max(DELTA_MIN, min(DELTA_MAX, round(delta)))


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


class HumanClock:
    """Gaps between a person's actions: log-normal around ``median``, sometimes a pause."""

    def __init__(
        self, rng: random.Random, median: float, sigma: float = 0.7, pause_p: float = 0.05
    ) -> None:
        self.rng, self.median, self.sigma, self.pause_p = rng, median, sigma, pause_p

    def first(self, seconds: float) -> float:
        return self.rng.uniform(0.0, min(self.median * 1.5, seconds * 0.4))

    def gap(self) -> float:
        gap = max(0.3, _lognormal(self.rng, self.median, self.sigma))
        if self.rng.random() < self.pause_p:
            gap += self.rng.uniform(10.0, 45.0)
        return gap

    def times(self, seconds: float) -> list[float]:
        out: list[float] = []
        t = self.first(seconds)
        while t < seconds:
            out.append(t)
            t += self.gap()
        return out


def _lead(rng: random.Random) -> float:
    return rng.uniform(0.03, 0.15)


def _skill(rng: random.Random) -> float:
    return min(2000.0, max(5.0, _lognormal(rng, 100.0, 0.8)))


def _normal_delta(rng: random.Random, level: float) -> int:
    return _clamp(_lognormal(rng, level, 0.35))


def plan_honest(rng: random.Random, seconds: float, row: str = "honest") -> list[Event]:
    level = _skill(rng)
    clock = HumanClock(rng, rng.uniform(1.5, 5.0))
    return [
        Event(t, "submit", row, _normal_delta(rng, level), lead=_lead(rng))
        for t in clock.times(seconds)
    ]


def plan_inflated(rng: random.Random, seconds: float) -> list[Event]:
    clock = HumanClock(rng, rng.uniform(1.5, 4.0))
    return [
        Event(t, "submit", "inflated", rng.randint(9000, DELTA_MAX), lead=_lead(rng))
        for t in clock.times(seconds)
    ]


def plan_bot(rng: random.Random, seconds: float, interval: float) -> list[Event]:
    level = _skill(rng)
    events = []
    t = rng.uniform(0.0, interval)
    while t < seconds:
        at = max(0.0, t + rng.uniform(-0.005, 0.005))
        events.append(Event(at, "submit", "bot", _normal_delta(rng, level), lead=0.05))
        t += interval
    return events


def plan_farm(rng: random.Random, seconds: float) -> list[Event]:
    level = rng.uniform(30.0, 120.0)
    clock = HumanClock(rng, rng.uniform(4.0, 8.0), sigma=0.5, pause_p=0.0)
    return [
        Event(t, "submit", "farm", _normal_delta(rng, level), lead=_lead(rng))
        for t in clock.times(seconds)
    ]


def plan_jumper(rng: random.Random, seconds: float) -> list[Event]:
    level = rng.uniform(20.0, 150.0)
    jump_at = seconds * rng.uniform(0.3, 0.5)
    clock = HumanClock(rng, rng.uniform(1.5, 3.0), sigma=0.5, pause_p=0.0)
    times = clock.times(seconds)
    # At least one submission on each side of the jump, if the run has room.
    if not any(t < jump_at for t in times):
        times.insert(0, jump_at * 0.5)
    if not any(t >= jump_at for t in times) and jump_at + 0.5 < seconds:
        times.append(jump_at + 0.5)
    events = []
    for t in times:
        if t < jump_at:
            events.append(Event(t, "submit", SIDE_ROWS["jumper"], _normal_delta(rng, level)))
        else:
            jump = _normal_delta(rng, level) * rng.uniform(10.0, 50.0)
            events.append(Event(t, "submit", "jumper", _clamp(jump), lead=_lead(rng)))
    return events


def plan_replay(rng: random.Random, seconds: float, variant: str) -> list[Event]:
    level = _skill(rng)
    clock = HumanClock(rng, rng.uniform(1.5, 3.5), sigma=0.6, pause_p=0.0)
    origin = SIDE_ROWS["replay"]
    events: list[Event] = []
    for n, t in enumerate(clock.times(seconds)):
        delta = _normal_delta(rng, level)
        if variant == "double":
            events.append(Event(t, "submit", origin, delta, lead=_lead(rng)))
            events.append(Event(t + rng.uniform(0.2, 1.5), "replay", "replay", delta, lead=0.0))
            if rng.random() < 0.3:
                events.append(Event(t + rng.uniform(1.6, 3.0), "replay", "replay", delta, lead=0.0))
        elif variant == "old":
            if n == 0 or rng.random() < 0.35:
                events.append(Event(t, "submit", origin, delta, lead=_lead(rng)))
            else:
                events.append(Event(t, "replay", "replay", delta, rng.random(), lead=0.0))
        else:  # race
            if n == 0 or rng.random() < 0.6:
                events.append(Event(t, "race", "replay", delta, lead=_lead(rng)))
            else:
                events.append(Event(t, "replay", "replay", delta, rng.random(), lead=0.0))
    events.sort(key=lambda e: e.at)
    return [e for e in events if e.at < seconds]


def plan_forged(rng: random.Random, seconds: float) -> list[Event]:
    level = _skill(rng)
    clock = HumanClock(rng, rng.uniform(1.5, 4.0), sigma=0.6, pause_p=0.0)
    return [
        Event(t, "forge", "forged", _normal_delta(rng, level), lead=_lead(rng))
        for t in clock.times(seconds)
    ]


def _hex(*parts: object, length: int = 16) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:length]


class _IpPool:
    """Distinct 10.x.y.z addresses in a seeded order."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._taken: set[str] = set()

    def take(self) -> str:
        while True:
            ip = (
                f"10.{self._rng.randint(0, 255)}.{self._rng.randint(0, 255)}."
                f"{self._rng.randint(1, 254)}"
            )
            if ip not in self._taken:
                self._taken.add(ip)
                return ip


def plan_players(opts: Options, run_id: str) -> list[Player]:
    """Every player and its schedule; the same ``--seed`` gives the same plan."""
    seed, seconds = opts.seed, opts.seconds
    ips = _IpPool(random.Random(f"{seed}:ip"))
    players: list[Player] = []

    def add(cls: str, variant: str, events: list[Event], rng: random.Random, **kw: Any) -> Player:
        i = len(players)
        player = Player(
            index=i,
            cls=cls,
            variant=variant,
            ip=kw.get("ip") or ips.take(),
            device=kw.get("device") or _hex(run_id, seed, i, "device"),
            install_id=f"sim-{_hex(run_id, seed, i, 'install', length=24)}",
            user_agent=kw.get("user_agent") or rng.choice(USER_AGENTS),
            username=f"p_{_hex(run_id, seed, i, 'name', length=12)}",
            events=events,
        )
        players.append(player)
        return player

    def rng_for(cls: str, i: int) -> random.Random:
        return random.Random(f"{seed}:{cls}:{i}")

    honest = []
    for i in range(opts.honest):
        rng = rng_for("honest", i)
        honest.append(add("honest", "", plan_honest(rng, seconds), rng))
    # About one in five honest players share a NAT IP with 1-3 others.
    nat_rng = random.Random(f"{seed}:nat")
    shuffled = nat_rng.sample(honest, len(honest))
    sharing = shuffled[: len(honest) // 5]
    while len(sharing) >= 2:
        size = min(len(sharing), nat_rng.randint(2, 4))
        group, sharing = sharing[:size], sharing[size:]
        for member in group[1:]:
            member.ip = group[0].ip
    for i in range(opts.replay):
        rng = rng_for("replay", i)
        variant = REPLAY_VARIANTS[i % len(REPLAY_VARIANTS)]
        add("replay", variant, plan_replay(rng, seconds, variant), rng)
    forgers = []
    for i in range(opts.forged):
        rng = rng_for("forged", i)
        variant = FORGED_VARIANTS[i % len(FORGED_VARIANTS)]
        forgers.append(add("forged", variant, plan_forged(rng, seconds), rng))
    for i in range(opts.inflated):
        rng = rng_for("inflated", i)
        add("inflated", "", plan_inflated(rng, seconds), rng)
    for i in range(opts.bot):
        rng = rng_for("bot", i)
        interval = opts.bot_interval * (1.0, 1.5, 2.0)[i % 3]
        add("bot", f"{interval:g}s", plan_bot(rng, seconds, interval), rng)
    for f in range(opts.farms):
        variant = FARM_VARIANTS[f % len(FARM_VARIANTS)]
        farm_rng = rng_for("farm", f)
        farm_ip = ips.take()
        shared_device = _hex(run_id, seed, "farm", f, "device")
        shared_agent = farm_rng.choice(USER_AGENTS)
        for a in range(opts.farm_accounts):
            rng = rng_for(f"farm{f}", a)
            one = variant == "one-device"
            add(
                "farm",
                variant,
                plan_farm(rng, seconds),
                rng,
                ip=farm_ip,
                device=shared_device if one else None,
                user_agent=shared_agent if one else None,
            )
    for i in range(opts.jumper):
        rng = rng_for("jumper", i)
        add("jumper", "", plan_jumper(rng, seconds), rng)
    # A stolen token belongs to another player: another forger, else anyone else.
    for forger in forgers:
        others = [p for p in forgers if p is not forger] or [p for p in players if p is not forger]
        forger.victim = others[0].index if others else None
    return players


# ---------------------------------------------------------------- token surgery


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_fields(token: str) -> list[str]:
    """The seven payload fields of a well-formed token (see docs/action-tokens.md)."""
    return _unb64(token.split(".")[2]).decode("utf-8").split("\n")


def token_nonce(token: str) -> str:
    try:
        return token_fields(token)[4]
    except (IndexError, ValueError):
        return ""


def tamper_delta(token: str, delta: int) -> str:
    """``token`` with its delta rewritten and the signature kept."""
    tag, kid, payload, sig = token.split(".")
    fields = _unb64(payload).decode("utf-8").split("\n")
    fields[3] = str(delta)
    return ".".join([tag, kid, _b64("\n".join(fields).encode("utf-8")), sig])


def sign_locally(user_id: str, leaderboard: str, delta: int, *, kid: str, key: str) -> str:
    """A well-formed token signed with ``key`` under ``kid``: a forgery unless the key is real."""
    now = int(time.time())
    claims = action_token.ActionClaims(
        user_id=user_id,
        leaderboard=leaderboard,
        action_type=ACTION_TYPE,
        delta=delta,
        nonce=action_token.new_nonce(),
        issued_at=now,
        expires_at=now + 300,
    )
    return action_token.sign(claims, kid=kid, key=key)


# ---------------------------------------------------------------- the run


@dataclass
class Record:
    """One submission and what became of it."""

    row: str
    variant: str
    player: int
    user_id: str
    nonce: str
    status: int  # 0: no HTTP answer
    code: str
    outcome: str  # allowed, blocked, limited, error
    latency_ms: float | None
    flagged: bool = False


def classify(status: int, code: str) -> str:
    """allowed, blocked (refused for cheating), limited (429) or error."""
    if status == 200:
        return "allowed"
    if status == 429:
        return "limited"
    if status == 409 or (status == 400 and code.startswith("action_token_")):
        return "blocked"
    if status == 403 and code in BLOCKING_403:
        return "blocked"
    return "error"


def _spent(record: Record) -> bool:
    """Whether the submission used up its token: accepted, or blocked by the fraud engine
    (whose nonce stays spent); a replay of it should then get 409."""
    return record.outcome == "allowed" or (record.status == 403 and record.code == "fraud_blocked")


def _retry_after(reply: httpx.Response) -> float:
    try:
        return max(0.0, float(reply.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


class Simulation:
    def __init__(
        self,
        opts: Options,
        url: str,
        service_key: str,
        players: list[Player],
    ) -> None:
        self.opts = opts
        self.url = url
        self.service_key = service_key
        self.players = players
        self.records: list[Record] = []
        self.requests = 0
        self.mint_errors = 0
        self.signup_refused = 0
        self.error_samples: Counter[str] = Counter()
        self.kid = ""
        self.start = 0.0
        self.end = 0.0
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        # The players' side, as seen through a proxy (the simulator) and the game server's.
        self.http = httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits)
        self.game = httpx.AsyncClient(
            base_url=url,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            headers={"Authorization": f"Bearer {service_key}"},
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.http.aclose()
            await self.game.aclose()

    def _player_headers(self, player: Player) -> dict[str, str]:
        return {
            "X-Forwarded-For": player.ip,
            "X-Device-Id": player.device,
            "User-Agent": player.user_agent,
        }

    # ---- set-up

    async def sign_up(self) -> None:
        pending = iter(self.players)

        async def worker() -> None:
            for player in pending:
                body = {"device_id": player.install_id, "username": player.username}
                for _ in range(SIGNUP_TRIES):
                    reply = await self.http.post(
                        "/v1/auth/device", json=body, headers=self._player_headers(player)
                    )
                    if reply.status_code != 429:
                        break
                    await trio.sleep(min(5.0, _retry_after(reply)))
                if reply.status_code == 429:
                    self.signup_refused += 1
                    continue
                if reply.status_code != 200:
                    raise BenchError(
                        f"POST /v1/auth/device: {reply.status_code} {reply.text[:300]}"
                    )
                data = reply.json()
                player.user_id, player.access_token = data["user_id"], data["access_token"]

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(SETUP_CONCURRENCY):
                    nursery.start_soon(worker)
        except* (httpx.HTTPError, ValueError, KeyError) as group:
            raise BenchError(f"signing up the players failed: {group.exceptions[0]!r}") from None
        # Players the node would not let sign up (rate limits) sit the run out.
        self.players[:] = [p for p in self.players if p.user_id]
        if not self.players:
            raise BenchError("no player could sign up")

    async def learn_kid(self) -> None:
        """The key id tokens are signed under, as any player can read it off a token."""
        first = self.players[0]
        minted = await self.mint(first.user_id, 1)
        if minted is None:
            raise BenchError(
                f"POST /v1/actions failed: {', '.join(self.error_samples) or 'no answer'}"
            )
        self.kid = minted[0].split(".")[1]

    # ---- requests

    async def mint(self, user_id: str, delta: int) -> tuple[str, str] | None:
        """The game server mints a token: (token, nonce), or None (counted) if it failed."""
        body = {
            "user_id": user_id,
            "leaderboard": self.opts.leaderboard,
            "action_type": ACTION_TYPE,
            "delta": delta,
        }
        self.requests += 1
        try:
            reply = await self.game.post("/v1/actions", json=body)
        except httpx.HTTPError as exc:
            self.mint_errors += 1
            sample_error(self.error_samples, f"mint: {type(exc).__name__}: {exc}")
            return None
        if reply.status_code != 200:
            self.mint_errors += 1
            sample_error(self.error_samples, f"mint: {reply.status_code} {reply.text[:200]}")
            return None
        data = reply.json()
        token = str(data["action_token"])
        return token, str(data.get("nonce") or token_nonce(token))

    async def submit(
        self, player: Player, token: str, nonce: str, row: str, variant: str = ""
    ) -> Record:
        headers = self._player_headers(player)
        headers["Authorization"] = f"Bearer {player.access_token}"
        variant = variant or player.variant
        self.requests += 1
        began = time.perf_counter()
        try:
            reply = await self.http.post(
                "/v1/scores/update", json={"action_token": token}, headers=headers
            )
        except httpx.HTTPError as exc:
            sample_error(self.error_samples, f"submit: {type(exc).__name__}: {exc}")
            record = Record(row, variant, player.index, player.user_id, nonce, 0, "", "error", None)
            self.records.append(record)
            return record
        latency_ms = (time.perf_counter() - began) * 1000.0
        code = ""
        if reply.status_code != 200:
            with contextlib.suppress(ValueError, AttributeError):
                code = str(reply.json()["error"]["code"])
            if not code:
                code = "?"
        outcome = classify(reply.status_code, code)
        if outcome == "limited":
            player.resume_at = time.monotonic() + min(MAX_RETRY_AFTER_S, _retry_after(reply))
        elif outcome == "error":
            sample_error(self.error_samples, f"{reply.status_code} {code}: {reply.text[:200]}")
        record = Record(
            row,
            variant,
            player.index,
            player.user_id,
            nonce,
            reply.status_code,
            code,
            outcome,
            latency_ms,
        )
        self.records.append(record)
        return record

    # ---- players

    async def run(self) -> None:
        self.start = time.monotonic() + 0.5
        self.end = self.start + self.opts.seconds
        with trio.move_on_after(self.opts.seconds + 0.5 + DRAIN_S):
            async with trio.open_nursery() as nursery:
                for player in self.players:
                    nursery.start_soon(self.play, player)

    async def play(self, player: Player) -> None:
        for event in player.events:
            at = self.start + event.at
            if at >= self.end:
                return
            if at < player.resume_at:
                continue  # told to back off: a client skips what it would have done
            await sleep_until(at - event.lead)
            if event.kind == "submit":
                minted = await self.mint(player.user_id, event.delta)
                if minted is not None:
                    await sleep_until(at)
                    record = await self.submit(player, *minted, event.row)
                    if _spent(record):
                        player.used.append(minted)
            elif event.kind == "replay":
                await self.replay(player, event)
            elif event.kind == "race":
                await self.race(player, event, at)
            else:
                await self.forge(player, event, at)

    async def replay(self, player: Player, event: Event) -> None:
        if not player.used:  # nothing accepted yet: play it straight
            minted = await self.mint(player.user_id, event.delta)
            if minted is not None:
                record = await self.submit(player, *minted, SIDE_ROWS["replay"])
                if _spent(record):
                    player.used.append(minted)
            return
        index = min(len(player.used) - 1, int(event.pick * len(player.used)))
        token, nonce = player.used[index]
        await self.submit(player, token, nonce, "replay")

    async def race(self, player: Player, event: Event, at: float) -> None:
        """The same fresh token twice at once: one is its first use, the other a replay."""
        minted = await self.mint(player.user_id, event.delta)
        if minted is None:
            return
        token, nonce = minted
        records: list[Record] = []

        async def one() -> None:
            records.append(await self.submit(player, token, nonce, "replay", "race"))

        await sleep_until(at)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
        # The accepted one (else the one not refused as used) was the token's first use.
        first = next(
            (r for r in records if r.outcome == "allowed"),
            next((r for r in records if r.status != 409), records[0]),
        )
        first.row = SIDE_ROWS["replay"]
        if _spent(first):
            player.used.append(minted)

    def _victim(self, player: Player) -> Player:
        """Whose token a ``stolen`` forger submits: its planned victim, else anyone else."""
        for other in self.players:
            if other.index == player.victim:
                return other
        return next((p for p in self.players if p is not player), player)

    async def forge(self, player: Player, event: Event, at: float) -> None:
        board = self.opts.leaderboard
        variant = player.variant
        if variant in ("tampered", "truncated"):
            minted = await self.mint(player.user_id, event.delta)
            if minted is None:
                return
            token = minted[0]
            if variant == "tampered":
                token = tamper_delta(token, DELTA_MAX if event.delta != DELTA_MAX else 9999)
            else:
                token = token[:-1]
        elif variant == "stolen":
            minted = await self.mint(self._victim(player).user_id, event.delta)
            if minted is None:
                return
            token = minted[0]
        elif variant == "wrong_key":
            delta = _clamp(event.delta * 20)
            token = sign_locally(
                player.user_id, board, delta, kid=self.kid, key=secrets.token_urlsafe(24)
            )
        else:  # unknown_kid
            kid = "k" + secrets.token_hex(3)
            while kid == self.kid:
                kid = "k" + secrets.token_hex(3)
            delta = _clamp(event.delta * 20)
            token = sign_locally(
                player.user_id, board, delta, kid=kid, key=secrets.token_urlsafe(24)
            )
        await sleep_until(at)
        await self.submit(player, token, token_nonce(token), "forged")


# ---------------------------------------------------------------- flags


@dataclass
class Flags:
    available: bool
    cases: int = 0
    matched: int = 0
    by_user: int = 0
    on_blocked: int = 0
    foreign: int = 0
    unplaced: int = 0
    note: str = ""


async def fetch_cases(
    url: str, admin_token: str | None, event_type: str, since: float
) -> tuple[list[dict[str, Any]] | None, str]:
    """The fraud cases of ``event_type`` from the admin API, or None and why not.

    Cases come newest first; paging stops at the first created before
    ``since`` (unix time), so a long-lived node's history is not read.
    """
    if not admin_token:
        return None, "no --admin-token: fraud cases cannot be read"
    cases: list[dict[str, Any]] = []
    cursor: str | None = None
    seen: set[str] = set()
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        for _ in range(MAX_CASE_PAGES):
            params = {"event_type": event_type, "limit": "200"}
            if cursor:
                params["cursor"] = cursor
            try:
                reply = await http.get("/v1/admin/fraud/cases", params=params, headers=headers)
            except httpx.HTTPError as exc:
                return None, f"GET /v1/admin/fraud/cases failed: {type(exc).__name__}: {exc}"
            if reply.status_code != 200:
                what = {404: "not there (no fraud engine yet?)", 401: "refused the admin token"}
                return None, (
                    f"GET /v1/admin/fraud/cases answered {reply.status_code}"
                    f" ({what.get(reply.status_code, reply.text[:120])})"
                )
            try:
                data = reply.json()
                page = data["cases"]
                cursor = data.get("next_cursor")
            except (ValueError, KeyError, TypeError):
                return None, "GET /v1/admin/fraud/cases: unexpected reply " + reply.text[:120]
            fresh = [c for c in page if isinstance(c, dict) and _created(c) >= since]
            cases += fresh
            if not cursor or cursor in seen or len(fresh) < len(page):
                break
            seen.add(cursor)
        else:
            return cases, f"stopped after {MAX_CASE_PAGES} pages of cases"
    return cases, ""


def identity_check(cases: Iterable[dict[str, Any]], players: list[Player]) -> dict[str, Any]:
    """Did the node see the IP and device each player sent? From the cases' metadata.

    A case records the client IP and device the fraud engine used; if they
    are not the player's X-Forwarded-For and X-Device-Id, the node is not
    reading those headers and its IP and device signals are meaningless here.
    """
    by_user = {p.user_id: p for p in players}
    agents = set(USER_AGENTS)
    checked = ip_other = device_agent = device_other = 0
    seen_ips: Counter[str] = Counter()
    for case in cases:
        player = by_user.get(str(case.get("user_id")))
        metadata = case.get("metadata")
        if player is None or not isinstance(metadata, dict):
            continue
        ip, device = metadata.get("ip"), metadata.get("device")
        if ip is None and device is None:
            continue
        checked += 1
        if ip is not None and str(ip) != player.ip:
            ip_other += 1
            seen_ips[str(ip)] += 1
        if device is not None and str(device) != player.device:
            if str(device) in agents:
                device_agent += 1
            else:
                device_other += 1
    warnings = []
    if ip_other:
        common = ", ".join(ip for ip, _ in seen_ips.most_common(3))
        warnings.append(
            f"{ip_other} of {checked} fraud cases record a client IP other than the player's "
            f"X-Forwarded-For (e.g. {common}): the node is not taking the client IP from "
            "X-Forwarded-For, so its per-IP signals see the players on too few addresses"
        )
    if device_agent:
        warnings.append(
            f"{device_agent} of {checked} fraud cases record the User-Agent as the device: "
            "the node is not reading X-Device-Id, so players with the same client look like "
            "one device"
        )
    return {
        "cases_checked": checked,
        "ip_not_forwarded": ip_other,
        "device_is_user_agent": device_agent,
        "device_other": device_other,
        "ips_seen_instead": dict(seen_ips.most_common(5)),
        "warnings": warnings,
    }


def _created(case: dict[str, Any]) -> float:
    """A case's created_at as unix time; +inf if it has none we can read (keep it)."""
    try:
        return dt.datetime.fromisoformat(str(case["created_at"])).timestamp()
    except (KeyError, ValueError):
        return math.inf


def apply_flags(
    records: list[Record], players: list[Player], cases: list[dict[str, Any]] | None, note: str
) -> Flags:
    """Mark the flagged submissions; see the module doc for how a flag finds its submission."""
    if cases is None:
        return Flags(available=False, note=note)
    flags = Flags(available=True, cases=len(cases), note=note)
    ours = {p.user_id for p in players}
    allowed: dict[tuple[str, str], Record] = {}
    blocked: set[tuple[str, str]] = set()
    for record in records:
        key = (record.user_id, record.nonce)
        if record.outcome == "allowed":
            allowed.setdefault(key, record)
        elif record.outcome == "blocked":
            blocked.add(key)
    nonceless: Counter[str] = Counter()
    for case in cases:
        if str(case.get("event_type", "flag")) != "flag":
            continue
        user_id = str(case.get("user_id") or "")
        if user_id not in ours:
            flags.foreign += 1
            continue
        metadata = case.get("metadata")
        nonce = str(metadata.get("nonce") or "") if isinstance(metadata, dict) else ""
        hit = allowed.get((user_id, nonce)) if nonce else None
        if hit is not None:
            if not hit.flagged:
                hit.flagged = True
                flags.matched += 1
        elif nonce and (user_id, nonce) in blocked:
            flags.on_blocked += 1
        else:
            nonceless[user_id] += 1
    for user_id, count in nonceless.items():
        mine = [r for r in records if r.user_id == user_id and r.outcome == "allowed"]
        for record in reversed(mine):
            if count == 0:
                break
            if not record.flagged:
                record.flagged = True
                flags.by_user += 1
                count -= 1
        flags.unplaced += count
    return flags


# ---------------------------------------------------------------- the report


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _latency(records: Iterable[Record]) -> dict[str, float | None]:
    values = sorted(r.latency_ms for r in records if r.latency_ms is not None)
    return {"p50": round2(percentile(values, 0.50)), "p99": round2(percentile(values, 0.99))}


def row_figures(
    records: list[Record],
    user_ids: set[str],
    flags_available: bool,
    shadow_banned: set[str] | None,
) -> dict[str, Any]:
    """One row of the table: ``records`` made by the players ``user_ids``."""
    outcomes = Counter(r.outcome for r in records)
    flagged = sum(1 for r in records if r.flagged and r.outcome == "allowed")
    blocked = outcomes["blocked"]
    caught = blocked + (flagged if flags_available else 0)
    return {
        "players": len(user_ids),
        "submitted": len(records),
        "blocked": blocked,
        "flagged": flagged if flags_available else None,
        "allowed": outcomes["allowed"],
        "limited": outcomes["limited"],
        "errors": outcomes["error"],
        "caught": caught,
        "caught_pct": _pct(caught, len(records)),
        "codes": dict(sorted(Counter(f"{r.status} {r.code}".strip() for r in records).items())),
        "latency_ms": _latency(records),
        "shadow_banned_players": None if shadow_banned is None else len(user_ids & shadow_banned),
    }


def build_report(
    opts: Options,
    players: list[Player],
    records: list[Record],
    flags: Flags,
    extra: dict[str, Any],
    shadow_banned: set[str] | None = None,
) -> dict[str, Any]:
    """Every figure, as a JSON-able dict (also what the table is printed from).

    ``shadow_banned``: the user ids the fraud engine shadow-banned (None: unknown).
    """
    available = flags.available
    by_row: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_row[record.row].append(record)
    players_by_row: dict[str, set[str]] = defaultdict(set)
    for player in players:
        players_by_row[player.cls].add(player.user_id)
    for side in SIDE_ROWS.values():
        players_by_row[side] = {r.user_id for r in by_row[side]}
    rows: dict[str, Any] = {}
    for row in ROWS:
        if not by_row[row] and not players_by_row[row]:
            continue
        figures = row_figures(by_row[row], players_by_row[row], available, shadow_banned)
        figures["kind"] = (
            "cheating" if row in CHEATING_ROWS else "honest" if row == "honest" else "legit"
        )
        variants: dict[str, list[Record]] = defaultdict(list)
        for record in by_row[row]:
            if record.variant:
                variants[record.variant].append(record)
        if row in CHEATING_ROWS and (len(variants) > 1 or (variants and row == "bot")):
            figures["variants"] = {
                name: row_figures(
                    variants[name],
                    {p.user_id for p in players if p.cls == row and p.variant == name},
                    available,
                    shadow_banned,
                )
                for name in sorted(variants)
            }
        rows[row] = figures

    cheating = [r for r in records if r.row in CHEATING_ROWS]
    honest = by_row["honest"]
    blocked_all = sum(1 for r in records if r.outcome == "blocked")
    blocked_cheating = sum(1 for r in cheating if r.outcome == "blocked")
    caught = sum(1 for r in cheating if r.outcome == "blocked" or (available and r.flagged))
    honest_blocked = sum(1 for r in honest if r.outcome == "blocked")
    honest_flagged = sum(1 for r in honest if r.flagged) if available else None
    caught_pct = _pct(caught, len(cheating))
    cheaters = {p.user_id for p in players if p.cls != "honest"}
    honest_blocked_pct = _pct(honest_blocked, len(honest))
    overall = {
        "cheating_submitted": len(cheating),
        "cheating_caught": caught,
        "cheating_caught_pct": caught_pct,
        "cheating_caught_counts_flags": available,
        "honest_submitted": len(honest),
        "honest_blocked": honest_blocked,
        "honest_blocked_pct": honest_blocked_pct,
        "honest_flagged": honest_flagged,
        "honest_flagged_pct": _pct(honest_flagged, len(honest))
        if honest_flagged is not None
        else None,
        "blocked": blocked_all,
        "blocked_cheating": blocked_cheating,
        "block_precision_pct": _pct(blocked_cheating, blocked_all),
        "block_recall_pct": _pct(blocked_cheating, len(cheating)),
        "honest_players": len(players_by_row["honest"]),
        "honest_players_shadow_banned": None
        if shadow_banned is None
        else len(players_by_row["honest"] & shadow_banned),
        "cheating_players": len(cheaters),
        "cheating_players_shadow_banned": None
        if shadow_banned is None
        else len(cheaters & shadow_banned),
        "targets": {
            "cheating_caught_pct_min": TARGET_CAUGHT_PCT,
            "honest_blocked_pct_max": TARGET_HONEST_BLOCKED_PCT,
            "cheating_caught_met": caught_pct is not None and caught_pct >= TARGET_CAUGHT_PCT,
            "honest_blocked_met": honest_blocked_pct is None
            or honest_blocked_pct <= TARGET_HONEST_BLOCKED_PCT,
        },
    }
    double_spends = sum(1 for r in by_row["replay"] if r.outcome == "allowed")
    warnings = list(extra.pop("warnings", []))
    if not available:
        warnings.append(f"flagged is n/a: {flags.note}")
    elif flags.note:
        warnings.append(flags.note)
    if double_spends:
        warnings.append(f"{double_spends} replayed token(s) were ACCEPTED again (double spend)")
    return {
        "settings": opts.as_json(),
        "classes": rows,
        "overall": overall,
        "honest_latency_ms": _latency(honest),
        "flags": {
            "available": available,
            "cases": flags.cases,
            "matched_by_nonce": flags.matched,
            "placed_by_user": flags.by_user,
            "on_blocked_submissions": flags.on_blocked,
            "other_users": flags.foreign,
            "unplaced": flags.unplaced,
        },
        **extra,
        "warnings": warnings,
    }


def _cell(value: Any, spec: str = "d") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    out = [
        f"Podium traffic simulator: {s['seconds']:g} s, seed {s['seed']}, "
        f"{sum(s['players'].values())} players, {s['mode']} node {report.get('node_url', '')}",
        "",
    ]
    head = (
        f"{'class':<22} {'players':>7} {'submitted':>9} {'blocked':>8} {'flagged':>8} "
        f"{'allowed':>8} {'limited':>8} {'errors':>7} {'caught%':>8} {'shadow-banned':>13}"
    )
    out += [head, "-" * len(head)]

    def line(name: str, r: dict[str, Any]) -> str:
        return (
            f"{name:<22} {r['players']:>7} {r['submitted']:>9} {r['blocked']:>8} "
            f"{_cell(r['flagged']):>8} {r['allowed']:>8} {r['limited']:>8} {r['errors']:>7} "
            f"{fmt(r['caught_pct']):>8} {_cell(r['shadow_banned_players']):>13}"
        )

    side = False
    for name, r in report["classes"].items():
        if r["kind"] == "legit" and not side:
            out.append("  not cheating, by cheating accounts (not in the honest rates):")
            side = True
        out.append(line(name, r))
        for variant, v in r.get("variants", {}).items():
            out.append(line(f"  {variant}", v))
    o = report["overall"]
    t = o["targets"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    caught_what = "blocked+flagged" if o["cheating_caught_counts_flags"] else "blocked only"
    out += [
        "",
        f"cheating submissions caught  {o['cheating_caught']}/{o['cheating_submitted']} "
        f"= {fmt(o['cheating_caught_pct'], '.2f')} % ({caught_what}; "
        f"target >= {t['cheating_caught_pct_min']:g} %: {verdict(t['cheating_caught_met'])})",
        f"honest submissions blocked   {o['honest_blocked']}/{o['honest_submitted']} "
        f"= {fmt(o['honest_blocked_pct'], '.2f')} % "
        f"(target <= {t['honest_blocked_pct_max']:g} %: {verdict(t['honest_blocked_met'])})",
        "honest submissions flagged   "
        + (
            f"{o['honest_flagged']}/{o['honest_submitted']} = "
            f"{fmt(o['honest_flagged_pct'], '.2f')} %"
            if o["honest_flagged"] is not None
            else "n/a"
        ),
        f"blocks                       precision {fmt(o['block_precision_pct'], '.2f')} %, "
        f"recall {fmt(o['block_recall_pct'], '.2f')} % "
        f"({o['blocked_cheating']} of {o['blocked']} blocks were of cheating submissions)",
        "shadow-banned players        "
        + (
            f"honest {o['honest_players_shadow_banned']}/{o['honest_players']}, "
            f"cheating {o['cheating_players_shadow_banned']}/{o['cheating_players']}"
            if o["honest_players_shadow_banned"] is not None
            else "n/a"
        ),
        f"honest submission latency    p50 {fmt(report['honest_latency_ms']['p50'], '.1f')} ms, "
        f"p99 {fmt(report['honest_latency_ms']['p99'], '.1f')} ms",
    ]
    sim = report.get("simulator", {})
    if sim:
        out.append(
            f"simulator                    {sim['requests']} requests in {sim['window_s']:.1f} s, "
            f"{sim['cpu_s']:.1f} CPU-s ({fmt(sim['cpu_percent'], '.0f')} % of a core)"
            + (f", {sim['mint_errors']} failed mints" if sim["mint_errors"] else "")
        )
    node_log = report.get("node_log")
    if node_log:
        bad = {k: v for k, v in node_log["levels"].items() if k not in ("info", "debug")}
        out.append(
            f"node log                     {node_log['lines']} lines"
            + (
                ", " + ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
                if bad
                else ", no warnings"
            )
            + f"; node exit code {report.get('node_exit_code')}"
        )
        out += [f"  {text}" for text in dict.fromkeys(node_log["notable"])][:5]
    for sample, count in report.get("error_samples", {}).items():
        out.append(f"error sample: {count} x {sample}")
    out += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(out)


# ---------------------------------------------------------------- main


async def simulate(
    opts: Options, url: str, service_key: str, admin_token: str | None, warnings: list[str]
) -> dict[str, Any]:
    """Sign up, run the traffic, read the flags; the report without node details."""

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    run_id = secrets.token_hex(4)
    players = plan_players(opts, run_id)
    sim = Simulation(opts, url, service_key, players)
    since = time.time() - 60.0  # cases older than the run (with room for clock skew) are not ours
    try:
        began = time.monotonic()
        await sim.sign_up()
        await sim.learn_kid()
        planned = sum(len(p.events) for p in players)
        log(
            f"setup     {len(players)} players signed up in {time.monotonic() - began:.1f} s; "
            f"{planned} steps planned over {opts.seconds:g} s"
        )
        cpu_before, wall_before = _own_cpu_s(), time.monotonic()
        sim.requests = 0
        await sim.run()
        cpu_s, window_s = _own_cpu_s() - cpu_before, time.monotonic() - wall_before
        log(f"traffic   {len(sim.records)} submissions in {window_s:.1f} s")
    finally:
        await sim.aclose()
    await trio.sleep(opts.settle)
    cases, note = await fetch_cases(url, admin_token, "flag", since)
    flags = apply_flags(sim.records, players, cases, note)
    bans, _ = await fetch_cases(url, admin_token, "shadow_ban", since)
    shadow_banned = None if bans is None else {str(c.get("user_id")) for c in bans}
    blocks, _ = await fetch_cases(url, admin_token, "block", since)
    identity = identity_check([*(cases or []), *(blocks or [])], players)
    warnings += identity.pop("warnings")
    if opts.url and not identity["cases_checked"]:
        warnings.append(
            "no fraud case to check that the node saw the players' X-Forwarded-For and "
            "X-Device-Id: it must trust this host as a proxy (PODIUM_TRUSTED_PROXIES)"
        )
    if sim.signup_refused:
        warnings.append(f"{sim.signup_refused} player(s) could not sign up (429) and sat out")
    extra: dict[str, Any] = {
        "node_url": url,
        "simulator": {
            "window_s": round(window_s, 2),
            "cpu_s": round(cpu_s, 2),
            "cpu_percent": round(100 * cpu_s / window_s, 1) if window_s > 0 else None,
            "requests": sim.requests,
            "mint_errors": sim.mint_errors,
        },
        "error_samples": dict(sim.error_samples.most_common(8)),
        "identity_check": identity,
        "warnings": warnings,
    }
    return build_report(opts, players, sim.records, flags, extra, shadow_banned)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def node_knows(env_name: str) -> bool:
    """Whether this checkout's node has the setting (an unknown PODIUM_* stops it at start)."""
    return any(info.env == env_name for info in describe())


async def run_private(opts: Options, root: Path) -> dict[str, Any]:
    """Private Redis + PostgreSQL + node, as ``scripts/bench http`` starts them."""
    warnings: list[str] = []
    node_env = list(opts.node_env)
    if any(name == TRUSTED_PROXIES_ENV for name, _ in node_env):
        pass
    elif node_knows(TRUSTED_PROXIES_ENV):
        node_env.insert(0, (TRUSTED_PROXIES_ENV, "127.0.0.1/32"))
    else:
        warnings.append(
            f"the node has no {TRUSTED_PROXIES_ENV} setting yet: X-Forwarded-For is ignored "
            "and every player appears to come from 127.0.0.1"
        )
    secrets_ = http_bench.NodeSecrets()
    node_opts = dataclasses.replace(http_bench.parse_options([]), node_env=node_env)
    began = time.monotonic()
    async with (
        open_embedded_redis(root / "redis", persist=True) as redis,
        open_embedded_postgres(root / "postgres", durable=True) as postgres,
        # The node as deployed: every fraud factor and rate limit at its default.
        http_bench.running_node(
            node_opts, root, redis.url, postgres.dsn, secrets_, load_test=False
        ) as (node, _),
    ):
        await node.wait_ready()
        print(
            f"ready     node pid {node.pid} on {node.url} ({time.monotonic() - began:.1f} s); "
            + (" ".join(f"{k}={v}" for k, v in node_env) or "default settings"),
            file=sys.stderr,
            flush=True,
        )
        report = await simulate(
            opts, node.url, secrets_.service_key, secrets_.admin_token, warnings
        )
        node.check_alive()
    report["node_log"] = http_bench.scan_node_log(root / "node.log")
    report["node_exit_code"] = node.exit_code
    report["pids"] = {"node": node.pid, "redis": redis.pid, "postgres": postgres.pid}
    return report


async def run_url(opts: Options, root: Path) -> dict[str, Any]:
    assert opts.url is not None and opts.service_key is not None
    async with httpx.AsyncClient(base_url=opts.url, timeout=5) as http:
        try:
            ready = await http.get("/readyz")
        except httpx.HTTPError as exc:
            raise BenchError(f"{opts.url}: {type(exc).__name__}: {exc}") from exc
    if ready.status_code != 200:
        raise BenchError(f"{opts.url}/readyz answered {ready.status_code}: {ready.text[:200]}")
    return await simulate(opts, opts.url, opts.service_key, opts.admin_token, [])


async def run(opts: Options, root: Path) -> dict[str, Any]:
    """The whole simulation: against ``--url``, or a private node under ``root``."""
    return await (run_url if opts.url else run_private)(opts, root)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    if sys.platform != "linux" and opts.url is None:
        print("simulate: the private node needs Linux (use --url)", file=sys.stderr)
        return 2
    report = run_in_temporary_directory(run, opts, prefix="podium-simulate-", name="simulate")
    if isinstance(report, int):
        return report
    text = json.dumps(report, indent=2) + "\n"
    if opts.json == "-":
        sys.stdout.write(text)
        for warning in report["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(format_report(report))
        if opts.json is not None:
            Path(opts.json).write_text(text)
            print(f"wrote {opts.json}")
    sys.stdout.flush()
    targets = report["overall"]["targets"]
    if opts.strict and not (targets["cheating_caught_met"] and targets["honest_blocked_met"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
