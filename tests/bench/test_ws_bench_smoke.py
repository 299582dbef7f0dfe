"""``scripts/bench fanout`` and ``ws-submit`` end to end, tiny: they run, report and clean up."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.bench.smoke import alive, run_module

pytestmark = pytest.mark.slow


def run_bench(tmp_path: Path, name: str, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / f"{name}.json"
    report = run_module("bench.ws_bench", *args, "--json", str(out), timeout_s=90, within_s=30)
    assert "DURABLE" in report and "nproc" in report, report
    figures: dict[str, Any] = json.loads(out.read_text())
    assert {"machine", "settings", "runs", "summary", "node_log", "pids"} <= figures.keys()
    assert figures["node_exit_code"] == 0, report
    # Nothing left behind: the node, the servers and the load processes are gone.
    pids = [*figures["pids"].values(), *(p for r in figures["runs"] for p in r["load_pids"])]
    assert [pid for pid in pids if alive(pid)] == [], report
    return figures, report


def test_fanout_tiny_run(tmp_path: Path) -> None:
    figures, report = run_bench(
        tmp_path, "fanout",
        "fanout", "--clients", "12", "--procs", "2", "--rate", "20", "--top", "5",
        "--seconds", "1.5", "--warmup", "0.5", "--repeat", "2",
    )  # fmt: skip
    assert re.search(r"^fanout\s+n=12\s+run 2/2\s+connected 12/12", report, re.M), report
    assert re.search(r"^driver\s+WebSocket \(--via ws\)", report, re.M), report
    assert len(figures["runs"]) == 2
    for run in figures["runs"]:
        assert run["via"] == "ws" and run["driver_errors"] == {}, report
        assert run["connected"] == 12 and run["refused"] == 0, report
        assert run["submissions"] > 0 and run["non_200"] == {}, report
        # Every measured submission reached every client, in order, after its ack
        # and within a few ticks (0.1 s each).
        assert run["deliveries"] == 12 * run["submissions"], report
        assert run["missed"] == 0 and run["never_reflected"] == 0, report
        assert run["seq_regressions"] == 0, report
        delivery = run["delivery_ms"]
        assert 0 < delivery["p50"] <= delivery["p99"] <= delivery["max"] < 2000, report
        # About one frame per tick per client while the board changes.
        assert 12 * 3 <= run["frames_per_s"] <= 12 * 25, report
        assert run["frames_per_node_cpu_s"] > 0
        assert run["cpu_s"].keys() == {"node", "redis", "postgres", "load", "driver"}
        assert run["rss_kib"]["before"] > 0 and run["rss_kib"]["connected"] > 0
        assert run["closed_early"] == {}, report
    summary = figures["summary"]
    assert summary["runs"] == 2 and summary["delivery_ms"]["p50"] is not None


def test_fanout_tiny_run_via_http(tmp_path: Path) -> None:
    figures, report = run_bench(
        tmp_path, "fanout-http",
        "fanout", "--via", "http", "--clients", "4", "--procs", "1", "--rate", "20",
        "--top", "3", "--seconds", "1", "--warmup", "0.3",
    )  # fmt: skip
    assert re.search(r"^driver\s+HTTP \(--via http\)", report, re.M), report
    (run,) = figures["runs"]
    assert run["via"] == "http" and run["connected"] == 4, report
    assert run["submissions"] > 0 and run["non_200"] == {} and run["driver_errors"] == {}, report
    assert run["deliveries"] == 4 * run["submissions"] and run["missed"] == 0, report
    assert run["delivery_ms"]["p99"] is not None and run["closed_early"] == {}, report


def test_fanout_idle_tiny_run(tmp_path: Path) -> None:
    figures, report = run_bench(
        tmp_path, "idle", "fanout", "--idle", "--clients", "200", "--seconds", "1"
    )
    (run,) = figures["runs"]
    assert run["phase"] == "idle" and run["connected"] == 200, report
    assert run["closed_early"] == {}, report
    # A connection costs the node something, and not a megabyte.
    per_connection = run["rss_kib_per_connection"]
    assert per_connection is not None and 0 < per_connection < 1024, report
    assert "delivery_ms" not in run


def test_ws_submit_tiny_run(tmp_path: Path) -> None:
    figures, report = run_bench(
        tmp_path, "submit",
        "ws-submit", "--sockets", "4", "--seconds", "1", "--warmup", "0.3",
        "--token-rate", "2000",
    )  # fmt: skip
    assert re.search(r"^ws-submit\s+n=4\s+run 1/1\s+connected 4/4\s+ok/s\s+[0-9.]+", report, re.M)
    (run,) = figures["runs"]
    assert run["accepted"] > 0 and run["errors"] == {}, report
    assert run["closed_early"] == {} and run["failure_samples"] == {}, report
    latency = run["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"], report
    assert run["cpu_s"]["node"] > 0 and run["per_node_cpu_s"] is not None
    assert figures["summary"]["accepted_per_s"] == run["accepted_per_s"]
