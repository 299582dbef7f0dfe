"""Helpers the benchmarks share (:mod:`bench.http_bench`, :mod:`bench.loadgen`, ws_bench).

Options parsing, the small statistics and formatting of the reports, the
load processes' side of the pipes (``go START END``, dying with the parent),
child processes stopped within a bound, and the ``main`` both benchmarks run:
a temporary directory, SIGTERM/SIGHUP as a clean stop, exit codes 0, 1, 2,
130 and 143.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import trio

ROOT: Final = Path(__file__).resolve().parents[1]
MAX_ERROR_SAMPLES: Final = 8
_PR_SET_PDEATHSIG: Final = 1


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


class Terminated(Exception):
    """SIGTERM or SIGHUP asked us to stop."""


# ---------------------------------------------------------------- options


def bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)``, which must lie in [low, high]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def node_env(text: str) -> tuple[str, str]:
    """An argparse ``type`` for ``--node-env``: ``PODIUM_NAME=VALUE`` as (name, value)."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("PODIUM_"):
        raise argparse.ArgumentTypeError("expected PODIUM_NAME=VALUE")
    return name, value


def add_node_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: ``--node-env``, ``--json``, ``--keep``."""
    add = parser.add_argument
    add(
        "--node-env",
        type=node_env,
        action="append",
        default=[],
        metavar="PODIUM_X=V",
        help="an extra setting for the node (repeatable)",
    )
    add("--json", type=Path, metavar="FILE", help="write every figure to FILE as JSON")
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")


# ---------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of sorted values; None if there are none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None, to 2 places; None if there are none."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def round2(value: float | None) -> float | None:
    """``value`` to 2 places; None stays None."""
    return None if value is None else round(value, 2)


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal whole shares, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def fmt(value: float | None, spec: str = ".1f") -> str:
    """``value`` formatted with ``spec``, or ``-`` for None."""
    return "-" if value is None else format(value, spec)


def sample_error(counter: Counter[str], text: str) -> None:
    """Count an error text; only the first MAX_ERROR_SAMPLES distinct texts are kept."""
    text = " ".join(text.split())[:300]
    if text in counter or len(counter) < MAX_ERROR_SAMPLES:
        counter[text] += 1


# ---------------------------------------------------------------- HTTP/1.1 bytes


def http_request(method: str, path: str, host: str, headers: str = "", body: bytes = b"") -> bytes:
    """The bytes of one HTTP/1.1 request; ``headers`` are whole CRLF-ended lines."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podium-bench\r\n{headers}"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + body


# ---------------------------------------------------------------- time


async def sleep_until(when: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``when`` (at once if it has)."""
    await trio.sleep(max(0.0, when - time.monotonic()))


# ---------------------------------------------------------------- processes


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file; empty if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def die_with_parent() -> None:
    """SIGKILL this process if the parent goes away (Linux); we hold no state worth saving."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:
        os._exit(1)


async def read_go(who: str, timeout_s: float) -> tuple[float, float]:
    """In a load process: read the parent's ``go START END`` from stdin."""
    with trio.fail_after(timeout_s):
        line: str = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    words = line.split()
    if len(words) != 3 or words[0] != "go":
        raise SystemExit(f"{who}: expected 'go START END', got {line!r}")
    return float(words[1]), float(words[2])


async def wait_process(popen: subprocess.Popen[Any]) -> int:
    """Wait for a child without blocking Trio."""
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (OSError, AttributeError):
        pidfd = -1
    try:
        while popen.poll() is None:
            if pidfd >= 0:
                await trio.lowlevel.wait_readable(pidfd)
            else:
                await trio.sleep(0.05)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return popen.returncode


async def stop_process(popen: subprocess.Popen[Any], sig: int, timeout_s: float) -> int:
    """Send ``sig``, wait up to ``timeout_s``, then SIGKILL; shielded from cancellation."""
    with trio.CancelScope(shield=True):
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
            with trio.move_on_after(timeout_s):
                await wait_process(popen)
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                with trio.move_on_after(10):
                    await wait_process(popen)
    return popen.returncode if popen.returncode is not None else -9


class LoadProcess:
    """One ``python -m MODULE [ARG] SPEC.json`` load child, spoken to over its pipes.

    The spec is written to ``ROOT_DIR/load/NAME.json`` and the child's stderr
    to ``NAME.log`` beside it.
    """

    def __init__(
        self,
        root: Path,
        spec: dict[str, Any],
        name: str,
        env: dict[str, str],
        command: Sequence[str],
    ) -> None:
        spec_path = root / "load" / f"{name}.json"
        spec_path.parent.mkdir(exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        self.log_path = spec_path.with_suffix(".log")
        with open(self.log_path, "ab") as log:
            self.popen: subprocess.Popen[str] = subprocess.Popen(
                [sys.executable, "-m", *command, str(spec_path)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )

    async def readline(self, what: str, timeout_s: float) -> str:
        """The child's next line; BenchError if none comes within ``timeout_s``."""
        stdout = self.popen.stdout
        assert stdout is not None
        with trio.move_on_after(timeout_s):
            line: str = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
            if line:
                return line
        raise BenchError(
            f"a load process gave no {what} (exit code {self.popen.poll()}); "
            f"log {self.log_path}:\n{tail(self.log_path)}"
        )

    def send(self, line: str) -> None:
        """Write ``line`` to the child's stdin."""
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(line)
            stdin.flush()
        except OSError as exc:
            raise BenchError(f"a load process went away: {exc}") from exc

    async def close(self) -> None:
        """Close stdin, stop the child (SIGKILL after 5 s), close stdout."""
        with contextlib.suppress(OSError):
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        await stop_process(self.popen, signal.SIGKILL, 5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


# ---------------------------------------------------------------- main


class KeepOption(Protocol):
    """What :func:`run_in_temporary_directory` needs of a tool's options."""

    @property
    def keep(self) -> bool: ...


class BenchOptions(KeepOption, Protocol):
    """What :func:`run_bench` needs of a benchmark's options."""

    @property
    def json(self) -> Path | None: ...


OptionsT = TypeVar("OptionsT", bound=BenchOptions)
KeepT = TypeVar("KeepT", bound=KeepOption)
Bench = Callable[[OptionsT, Path], Awaitable[dict[str, Any]]]


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``, exception groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


async def until_terminated(
    bench: Callable[[KeepT, Path], Awaitable[dict[str, Any]]], opts: KeepT, root: Path
) -> dict[str, Any]:
    """``await bench(opts, root)``, cancelled by SIGTERM or SIGHUP (then Terminated)."""
    terminated: list[bool] = []

    async def watch(cancel: Callable[[], None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                terminated.append(True)
                cancel()
                return

    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope.cancel)
        result = await bench(opts, root)
        nursery.cancel_scope.cancel()
    if terminated:
        raise Terminated
    return result


def print_report(report: dict[str, Any], summary: str) -> None:
    """The summary, then what the node logged above info and how it exited."""
    print()
    print(summary)
    log = report["node_log"]
    bad = {k: v for k, v in log["levels"].items() if k not in ("info", "debug")}
    print(
        f"node log: {log['lines']} lines"
        + (", " + ", ".join(f"{v} {k}" for k, v in sorted(bad.items())) if bad else ", no warnings")
        + f"; node exit code {report['node_exit_code']}"
    )
    for line in log["notable"][:5]:
        print(f"  {line}")


def run_in_temporary_directory(
    bench: Callable[[KeepT, Path], Awaitable[dict[str, Any]]],
    opts: KeepT,
    *,
    prefix: str,
    name: str,
) -> dict[str, Any] | int:
    """``bench(opts, root)`` in a fresh temporary directory, stopped by SIGTERM or SIGHUP;
    its report, or the exit code if it did not finish: 1 after a :class:`BenchError`
    (said on stderr as ``name: error: ...``), 130 or 143 when stopped early. The
    directory is removed unless ``opts.keep``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        report: dict[str, Any] = trio.run(until_terminated, bench, opts, root)
        return report
    except BaseException as exc:
        found = list(leaves(exc))
        if any(isinstance(leaf, BenchError) for leaf in found):
            for leaf in found:
                if isinstance(leaf, BenchError):
                    print(f"{name}: error: {leaf}", file=sys.stderr)
            return 1
        if found and all(isinstance(leaf, KeyboardInterrupt | Terminated) for leaf in found):
            print(f"{name}: stopped early; everything started was stopped", file=sys.stderr)
            return 130 if isinstance(found[0], KeyboardInterrupt) else 143
        raise
    finally:
        if opts.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_bench(
    bench: Bench[OptionsT],
    opts: OptionsT,
    *,
    needs: str,
    prefix: str,
    summary: Callable[[Any], str],
) -> int:
    """Run ``bench`` in a fresh temporary directory and report; the exit code.

    ``needs`` says what Linux is needed for; ``prefix`` names the directory;
    ``summary`` turns the report's ``summary`` into text.
    """
    if sys.platform != "linux":
        print(f"bench: needs Linux ({needs})", file=sys.stderr)
        return 2
    report = run_in_temporary_directory(bench, opts, prefix=prefix, name="bench")
    if isinstance(report, int):
        return report
    print_report(report, summary(report["summary"]))
    if opts.json is not None:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {opts.json}")
    return 0
