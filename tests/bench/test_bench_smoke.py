"""``scripts/bench http`` end to end, in a tiny configuration: it runs, reports and cleans up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.bench.smoke import alive, run_module

pytestmark = pytest.mark.slow

RUN_KEYS = {
    "phase",
    "clients",
    "run",
    "window_s",
    "requests",
    "accepted",
    "accepted_per_s",
    "statuses",
    "non_200",
    "latency_ms",
    "cpu_s",
    "cpu_percent",
    "per_node_cpu_s",
    "per_cpu_s",
    "error_samples",
}


def test_http_bench_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [
        "http",
        "--users", "20",
        "--seconds", "0.5",
        "--warmup", "0.2",
        "--concurrency", "4",
        "--read-concurrency", "4",
        "--phases", "submit,top,around",
        "--token-rate", "2000",
        "--json", str(out),
    ]  # fmt: skip
    report = run_module("bench.http_bench", *args, timeout_s=90, within_s=60)

    for phase in ("submit", "top", "around"):
        assert re.search(rf"^{phase}\s+c=4\s+run 1/1\s+ok/s\s+[0-9.]+", report, re.M), report
    assert "DURABLE" in report and "nproc" in report, report

    figures = json.loads(out.read_text())
    assert {"machine", "settings", "runs", "summary", "node_log"} <= figures.keys()
    assert figures["machine"]["nproc"] >= 1 and figures["machine"]["python"]
    runs = {r["phase"]: r for r in figures["runs"]}
    assert runs.keys() == {"submit", "top", "around"}
    for run in runs.values():
        assert run.keys() >= RUN_KEYS, run.keys()
        assert run["latency_ms"].keys() == {"p50", "p99", "max"}
        assert run["cpu_s"].keys() == {"node", "redis", "postgres", "load"}
        assert run["accepted"] > 0, report
        # Every phase is all 200s: the node never answers the benchmark with an error.
        assert run["non_200"] == {}, report
        assert run["conn_errors"] == 0, report

    submit = runs["submit"]
    assert submit["cpu_s"]["node"] > 0
    assert submit["per_node_cpu_s"] is not None and submit["per_cpu_s"] is not None
    assert [(row["phase"], row["clients"]) for row in figures["summary"]] == [
        ("submit", 4),
        ("top", 4),
        ("around", 4),
    ]

    # Nothing left behind: the node, the servers and the load processes are gone.
    pids = [*figures["pids"].values(), *(p for r in figures["runs"] for p in r["load_pids"])]
    assert len(pids) == 6
    assert [pid for pid in pids if alive(pid)] == [], report
