"""``scripts/bench profile`` end to end, tiny: it runs, and its figures add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.smoke import run_module

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("via", ["ws", "http"])
def test_profile_tiny_run(tmp_path: Path, via: str) -> None:
    out = tmp_path / "profile.json"
    # One at a time with a spectator over WebSocket; four players side by side over HTTP.
    mode = ["--watch"] if via == "ws" else ["--in-flight", "4"]
    args = ["--count", "20", "--via", via, "--json", str(out), *mode]
    report = run_module("bench.profile", *args, timeout_s=120)
    assert f"20 submissions over {via}" in report, report

    figures = json.loads(out.read_text())
    assert figures["count"] == 20 and figures["in_flight"] == (1 if via == "ws" else 4)
    node_ms = figures["node_cpu_ms_per_submission"]
    assert node_ms > 0
    tasks = figures["tasks"]
    # The work really is seen: the score path's actors and the asyncio side all ran...
    assert {"FraudActor.run", "RankingActor.run", "_committer", "_main_loop"} <= tasks.keys()
    assert any("RedisStore._pipeline_aio" in name for name in figures["asyncio_callbacks"])
    assert any("PostgresStore._apply_scores_aio" in name for name in figures["asyncio_callbacks"])
    if via == "ws":
        assert "Subscription._deliver_aio" in " ".join(figures["asyncio_callbacks"])
    # ...and no task is counted beyond the node thread's CPU for the window.
    assert sum(row["cpu_ms"] for row in tasks.values()) <= node_ms * 1.05
