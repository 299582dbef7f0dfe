"""What the benchmark smoke tests share: run a bench module as a program; check leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]


def run_module(module: str, *args: str, timeout_s: float, within_s: float | None = None) -> str:
    """``python -m module args`` from the repository, without the caller's PODIUM_* settings;
    its stdout. Fails the test unless it exits 0 (and, given ``within_s``, in that time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env["PYTHONPATH"] = str(ROOT)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    elapsed = time.monotonic() - began
    log = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, log
    if within_s is not None:
        assert elapsed < within_s, f"took {elapsed:.0f} s\n{log}"
    return done.stdout


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
