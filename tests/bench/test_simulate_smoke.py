"""``scripts/simulate``: the plan is deterministic, the report adds up, and a tiny run works.

The end-to-end test checks the mechanics only (every class submits, replays
get 409, forgeries get 400, the numbers add up, the JSON parses, nothing is
left running), not how well the fraud engine detects: that is what the
simulator is for.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest

from bench import simulate
from bench.simulate import Flags, Record
from protocol import action_token
from protocol.errors import BadRequest
from tests.bench.smoke import alive, run_module

FORGED_CODES = {
    "tampered": "400 action_token_bad_signature",
    "wrong_key": "400 action_token_bad_signature",
    "unknown_kid": "400 action_token_unknown_key",
    "stolen": "400 action_token_wrong_user",
    "truncated": "400 action_token_malformed",
}


def options(*argv: str) -> simulate.Options:
    return simulate.parse_options(list(argv))


def schedule(players: list[simulate.Player]) -> list[Any]:
    return [(p.cls, p.variant, p.ip, p.user_agent, p.events) for p in players]


# ---------------------------------------------------------------- the plan, no node


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    opts = options("--seconds", "20", "--seed", "5")
    first = simulate.plan_players(opts, "run1")
    assert schedule(first) == schedule(simulate.plan_players(opts, "run2"))
    other = simulate.plan_players(options("--seconds", "20", "--seed", "6"), "run1")
    assert schedule(first) != schedule(other)
    # Identities are per run, so repeated runs against one node do not collide.
    assert {p.install_id for p in first}.isdisjoint(
        p.install_id for p in simulate.plan_players(opts, "run2")
    )


def test_plan_shapes() -> None:
    opts = options("--seconds", "30", "--farms", "2", "--farm-accounts", "21", "--honest", "40")
    players = simulate.plan_players(opts, "r")
    by_cls: dict[str, list[simulate.Player]] = {}
    for p in players:
        by_cls.setdefault(p.cls, []).append(p)
    assert {cls: len(ps) for cls, ps in by_cls.items()} == opts.counts()
    assert len({p.install_id for p in players}) == len(players)  # one account each

    farms = by_cls["farm"]
    farm_ips = {p.ip for p in farms}
    assert len(farm_ips) == 2  # one IP per farm...
    one_device = [p for p in farms if p.variant == "one-device"]
    assert len({p.device for p in one_device}) == 1  # ...and one device in that variant
    own = [p for p in farms if p.variant == "own-devices"]
    assert len({p.device for p in own}) == len(own)

    honest = by_cls["honest"]
    ip_sizes = [sum(1 for q in honest if q.ip == p.ip) for p in honest]
    assert max(ip_sizes) <= 4 and ip_sizes.count(1) >= len(honest) // 2  # a few NATs
    assert max(ip_sizes) >= 2
    assert farm_ips.isdisjoint(p.ip for p in honest)
    assert len({p.device for p in honest}) == len(honest)

    deltas = sorted(e.delta for p in honest for e in p.events)
    assert all(simulate.DELTA_MIN <= d <= simulate.DELTA_MAX for d in deltas)
    assert deltas[len(deltas) // 2] < 500 and deltas[int(len(deltas) * 0.99)] < 9000
    assert all(e.delta >= 9000 for p in by_cls["inflated"] for e in p.events)

    for bot in by_cls["bot"]:
        times = [e.at for e in bot.events]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        interval = float(bot.variant.rstrip("s"))
        assert gaps and all(abs(g - interval) <= 0.0101 for g in gaps)

    for jumper in by_cls["jumper"]:
        rows = [e.row for e in jumper.events]
        assert rows[0] == "jumper:before-jump" and rows[-1] == "jumper"
        assert rows == sorted(rows, key=lambda r: r == "jumper")  # one switch
        normal = max(e.delta for e in jumper.events if e.row != "jumper")
        jumped = [e.delta for e in jumper.events if e.row == "jumper"]
        assert min(jumped) > normal

    assert {p.variant for p in by_cls["forged"]} == set(simulate.FORGED_VARIANTS)
    assert {p.variant for p in by_cls["replay"]} == set(simulate.REPLAY_VARIANTS)
    for p in players:
        assert all(0 <= e.at < opts.seconds for e in p.events)
        assert [e.at for e in p.events] == sorted(e.at for e in p.events)


def test_forgeries_are_refused_by_the_verifier() -> None:
    key, kid = "k" * 24, "k1"
    user = "7d3c9a52-1f0e-4b6a-9c2d-5e8f01a2b3c4"
    token, claims = action_token.mint(
        user_id=user,
        leaderboard="global",
        action_type="score",
        delta=50,
        kid=kid,
        key=key,
        now=time.time(),
        ttl_s=300,
    )
    assert simulate.token_nonce(token) == claims.nonce

    def code(forged: str) -> str:
        with pytest.raises(BadRequest) as refused:
            action_token.verify(forged, keys={kid: key}, now=time.time(), max_lifetime_s=3600)
        return refused.value.code

    tampered = simulate.tamper_delta(token, 10000)
    assert simulate.token_fields(tampered)[3] == "10000"
    assert code(tampered) == action_token.BAD_SIGNATURE
    assert code(token[:-1]) == action_token.MALFORMED
    guessed = simulate.sign_locally(user, "global", 9000, kid=kid, key="guessed-key-guessed")
    assert code(guessed) == action_token.BAD_SIGNATURE
    made_up = simulate.sign_locally(user, "global", 9000, kid="k77", key="guessed-key-guessed")
    assert code(made_up) == action_token.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (200, "", "allowed"),
        (400, "action_token_bad_signature", "blocked"),
        (400, "action_type_unknown", "error"),
        (409, "action_token_used", "blocked"),
        (403, "fraud_blocked", "blocked"),
        (403, "forbidden", "error"),
        (429, "rate_limited", "limited"),
        (401, "unauthorized", "error"),
        (503, "commit_timeout", "error"),
        (0, "", "error"),
    ],
)
def test_classify(status: int, code: str, outcome: str) -> None:
    assert simulate.classify(status, code) == outcome


def _record(row: str, outcome: str, user: str, nonce: str) -> Record:
    status = {"allowed": 200, "blocked": 403, "limited": 429, "error": 503}[outcome]
    code = "fraud_blocked" if outcome == "blocked" else ""
    return Record(row, "", 0, user, nonce, status, code, outcome, 1.0)


def test_report_arithmetic_and_flags() -> None:
    opts = options(
        *("--seconds", "5", "--honest", "1", "--bot", "1", "--jumper", "1"),
        *("--replay", "0", "--forged", "0", "--inflated", "0", "--farms", "0"),
    )
    players = simulate.plan_players(opts, "r")
    assert [p.cls for p in players] == ["honest", "bot", "jumper"]
    for p, uid in zip(players, ("u-h", "u-b", "u-j"), strict=True):
        p.user_id = uid
    records = [
        *(_record("honest", "allowed", "u-h", f"h{i}") for i in range(8)),
        _record("honest", "blocked", "u-h", "h8"),
        _record("honest", "limited", "u-h", "h9"),
        *(_record("bot", "blocked", "u-b", f"b{i}") for i in range(3)),
        *(_record("bot", "allowed", "u-b", f"b{i}") for i in range(3, 6)),
        _record("jumper:before-jump", "blocked", "u-j", "j0"),
        _record("jumper", "allowed", "u-j", "j1"),
        _record("jumper", "error", "u-j", "j2"),
    ]
    cases = [
        {"user_id": "u-b", "event_type": "flag", "metadata": {"nonce": "b3"}},
        {"user_id": "u-b", "event_type": "flag", "metadata": {"nonce": "b3"}},  # same one
        {"user_id": "u-b", "event_type": "flag", "metadata": {"nonce": "b0"}},  # was blocked
        {"user_id": "u-h", "event_type": "flag", "metadata": {"nonce": "h2"}},
        {"user_id": "u-j", "event_type": "flag", "metadata": {}},  # no nonce: latest allowed
        {"user_id": "someone-else", "event_type": "flag", "metadata": {"nonce": "x"}},
    ]
    flags = simulate.apply_flags(records, players, cases, "")
    assert (flags.matched, flags.by_user, flags.on_blocked, flags.foreign) == (2, 1, 1, 1)
    report = simulate.build_report(opts, players, records, flags, {}, {"u-b"})
    rows = report["classes"]
    expected = {
        "players": 1,
        "submitted": 10,
        "blocked": 1,
        "flagged": 1,
        "allowed": 8,
        "limited": 1,
        "errors": 0,
        "caught": 2,
        "caught_pct": 20.0,
        "shadow_banned_players": 0,
    }
    assert {k: rows["honest"][k] for k in expected} == expected
    assert (rows["bot"]["caught"], rows["bot"]["shadow_banned_players"]) == (4, 1)
    assert rows["jumper"]["flagged"] == 1 and rows["jumper:before-jump"]["kind"] == "legit"
    overall = report["overall"]
    # Cheating: 6 bot + 2 jumper; caught 3 blocked + 1 flagged (bot) + 1 flagged (jumper).
    assert (overall["cheating_submitted"], overall["cheating_caught"]) == (8, 5)
    assert overall["cheating_caught_pct"] == 62.5
    # Blocks: 3 bot (cheating), 1 honest, 1 before the jump: precision 3/5, recall 3/8.
    assert (overall["block_precision_pct"], overall["block_recall_pct"]) == (60.0, 37.5)
    assert (overall["honest_blocked_pct"], overall["honest_flagged_pct"]) == (10.0, 10.0)
    assert overall["targets"]["honest_blocked_met"] is False
    text = simulate.format_report(report)
    assert "precision 60.00 %" in text and "recall 37.50 %" in text

    # Without the admin API: flagged is n/a, caught is blocks only, and it says so.
    none = simulate.build_report(opts, players, records, Flags(False, note="404"), {}, None)
    assert none["classes"]["bot"]["flagged"] is None
    assert none["overall"]["cheating_caught"] == 3
    assert any("n/a" in w for w in none["warnings"])
    assert " n/a " in simulate.format_report(none)


# ---------------------------------------------------------------- a tiny run, with a node


def _adds_up(name: str, row: dict[str, Any]) -> None:
    parts = row["blocked"] + row["allowed"] + row["limited"] + row["errors"]
    assert parts == row["submitted"], (name, row)
    assert sum(row["codes"].values()) == row["submitted"], (name, row)
    flagged = row["flagged"] or 0
    assert flagged <= row["allowed"] and row["caught"] == row["blocked"] + flagged, (name, row)


@pytest.mark.slow
def test_simulate_tiny_run() -> None:
    args = [
        "--seconds", "8", "--seed", "3", "--settle", "0.5",
        "--honest", "4", "--replay", "3", "--forged", "5", "--inflated", "1",
        "--bot", "1", "--farms", "2", "--farm-accounts", "3", "--jumper", "1",
        "--json",
    ]  # fmt: skip
    log = run_module("bench.simulate", *args, timeout_s=120, within_s=60)
    report = json.loads(log)  # --json: the report alone on stdout

    assert report["settings"]["seed"] == 3 and report["settings"]["mode"] == "private"
    rows = report["classes"]
    for cls in simulate.CLASSES:
        assert rows[cls]["submitted"] > 0, (cls, log)
    for name, row in rows.items():
        _adds_up(name, row)
        for variant, sub in row.get("variants", {}).items():
            _adds_up(f"{name}/{variant}", sub)
        assert row["errors"] == 0, (name, row, report["error_samples"])
    assert report["simulator"]["mint_errors"] == 0, report["error_samples"]

    # Replays are refused as used; every kind of forgery with its 400.
    assert rows["replay"]["codes"] == {"409 action_token_used": rows["replay"]["submitted"]}
    assert rows["replay"]["blocked"] == rows["replay"]["submitted"]
    assert rows["replay:first-use"]["submitted"] > 0
    forged = rows["forged"]["variants"]
    assert set(forged) == set(FORGED_CODES)
    for variant, expected in FORGED_CODES.items():
        assert forged[variant]["codes"] == {expected: forged[variant]["submitted"]}, variant
    assert rows["forged"]["blocked"] == rows["forged"]["submitted"]
    assert set(rows["farm"]["variants"]) == {"one-device", "own-devices"}

    overall = report["overall"]
    cheating = sum(r["submitted"] for n, r in rows.items() if r["kind"] == "cheating")
    assert overall["cheating_submitted"] == cheating
    assert overall["honest_submitted"] == rows["honest"]["submitted"]
    blocked = sum(r["blocked"] for r in rows.values())
    blocked_cheating = sum(r["blocked"] for r in rows.values() if r["kind"] == "cheating")
    assert (overall["blocked"], overall["blocked_cheating"]) == (blocked, blocked_cheating)
    assert overall["block_recall_pct"] == round(100 * blocked_cheating / cheating, 2)
    assert report["honest_latency_ms"]["p50"] is not None

    # Flags: counted, or n/a with a warning when the admin API cannot tell.
    if report["flags"]["available"]:
        assert all(isinstance(r["flagged"], int) for r in rows.values())
    else:
        assert all(r["flagged"] is None for r in rows.values())
        assert any("flagged is n/a" in w for w in report["warnings"])

    # The table prints from the same report.
    table = simulate.format_report(report)
    for name in rows:
        assert f"\n{name} " in table, table

    assert report["node_exit_code"] == 0, log
    assert [pid for pid in report["pids"].values() if alive(pid)] == [], log
