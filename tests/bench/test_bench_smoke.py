"""``scripts/bench http`` end to end, in a tiny configuration: it runs, reports and cleans up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env["PYTHONPATH"] = str(ROOT)
    argv = [
        sys.executable, "-m", "bench.http_bench", "http",
        "--users", "20",
        "--seconds", "0.5",
        "--warmup", "0.2",
        "--concurrency", "4",
        "--read-concurrency", "4",
        "--phases", "submit,top,around",
        "--token-rate", "2000",
        "--json", str(out),
    ]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    elapsed = time.monotonic() - began
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert elapsed < 60, f"took {elapsed:.0f} s\n{report}"

    for phase in ("submit", "top", "around"):
        assert re.search(rf"^{phase}\s+c=4\s+run 1/1\s+ok/s\s+[0-9.]+", done.stdout, re.M), report
    assert "DURABLE" in done.stdout and "nproc" in done.stdout, report

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
    assert [pid for pid in pids if _alive(pid)] == [], report


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
