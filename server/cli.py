"""The ``podium`` command line.

Exit codes: 0 done, 1 the node failed (the last log line says why), 2 bad
usage or a bad setting (one line on stderr naming it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from actors.supervisor import ActorFailed
from config import Settings, SettingsError, describe
from protocol import action_token
from protocol.errors import Unavailable
from server.embedded import EmbeddedServiceError, open_embedded_postgres, open_embedded_redis
from server.logs import configure_logging
from server.migrations import MigrationError
from server.node import Node, NodeAddress, migrate

log = logging.getLogger("podium")

#: The secrets ``podium dev`` generates when unset, and keeps in the data dir.
DEV_SECRETS = ("jwt_secret", "service_key", "action_key", "admin_token")
SECRETS_FILE = "secrets.json"

_FAILURES = (ActorFailed, Unavailable, MigrationError, EmbeddedServiceError)


class UsageError(Exception):
    """A command cannot run as asked; exit code 2."""


# ---------------------------------------------------------------- parser


def _settings_epilog() -> str:
    lines = ["settings (environment variables; a TOML file given with --config uses the names"]
    lines.append("in brackets as keys; the environment wins):")
    for info in describe():
        secret = ", secret" if info.secret else ""
        lines.append(
            f"  {info.env:<32} [{info.name}] {info.description} "
            f"(default {info.default_repr}{secret})"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podium",
        description="Podium: a real-time leaderboard server for games.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_settings_epilog(),
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file of settings (see below)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "dev",
        help="run one node with embedded Redis and PostgreSQL under the data dir",
        description="Run one node for development. Redis and PostgreSQL are started privately "
        "under PODIUM_DATA_DIR (unless PODIUM_REDIS_URL / PODIUM_DATABASE_URL are set) and "
        "keep their data across restarts; missing secrets are generated once and kept in "
        f"PODIUM_DATA_DIR/{SECRETS_FILE}. Ctrl-C stops the node, then the servers.",
    )
    commands.add_parser(
        "serve",
        help="run one node against PODIUM_REDIS_URL and PODIUM_DATABASE_URL",
        description="Run one production node. Needs PODIUM_REDIS_URL, PODIUM_DATABASE_URL and "
        "every secret. SIGTERM or SIGINT drains it gracefully; a second one stops it at once.",
    )
    commands.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description="Apply the pending migrations to PODIUM_DATABASE_URL, in order, under a "
        "lock (safe while nodes start). Nodes also migrate at start unless "
        "PODIUM_MIGRATE_ON_START=false.",
    )
    mint = commands.add_parser(
        "mint-action-token",
        help="mint a signed one-time action token (what a game server does)",
        description="Print an action token for USER_ID, signed with PODIUM_ACTION_KEY (or, if "
        f"unset, the key podium dev keeps in PODIUM_DATA_DIR/{SECRETS_FILE}). The format is in "
        "docs/action-tokens.md.",
    )
    mint.add_argument("--user-id", required=True, help="the player's user id (a UUID)")
    mint.add_argument("--delta", required=True, type=int, help="the score delta")
    mint.add_argument("--leaderboard", default="global", help="default: global")
    mint.add_argument("--action-type", default="score", help="default: score")
    mint.add_argument(
        "--ttl",
        type=int,
        default=None,
        help="lifetime in seconds (default PODIUM_ACTION_TOKEN_TTL_S)",
    )
    mint.add_argument("--json", action="store_true", help="print token, claims and expiry as JSON")
    commands.add_parser(
        "config",
        help="print the effective settings (secrets redacted) as TOML",
        description="Print the settings this command line would run with, as TOML that "
        "--config accepts; secrets are shown as ***.",
    )
    return parser


# ---------------------------------------------------------------- commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podium`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_sources(os.environ, args.config)
        if args.command == "mint-action-token":
            return cmd_mint(settings, args)
        handler: Callable[[Settings], int] = {
            "dev": cmd_dev,
            "serve": cmd_serve,
            "migrate": cmd_migrate,
            "config": cmd_config,
        }[args.command]
        return handler(settings)
    except (SettingsError, UsageError) as exc:
        print(f"podium: error: {exc}", file=sys.stderr)
        return 2


def cmd_config(settings: Settings) -> int:
    sys.stdout.write(settings.to_toml())
    return 0


def cmd_serve(settings: Settings) -> int:
    missing = [
        info.env
        for info in describe()
        if info.name in ("redis_url", "database_url", *DEV_SECRETS)
        and getattr(settings, info.name) is None
    ]
    if missing:
        raise UsageError(f"podium serve needs {', '.join(missing)} (podium dev makes its own)")
    return _run(settings, embedded=False)


def cmd_dev(settings: Settings) -> int:
    settings = with_dev_secrets(settings).replace(dev_mode=True)
    return _run(settings, embedded=True)


def cmd_migrate(settings: Settings) -> int:
    if settings.database_url is None:
        raise UsageError("PODIUM_DATABASE_URL is not set (podium dev migrates its own database)")
    configure_logging(settings.log_level, settings.log_format)
    database_url = settings.database_url

    try:
        applied = trio.run(migrate, database_url)
    except BaseException as exc:
        return _exit_code(exc)
    print(f"applied {len(applied)} migration(s): {list(applied)}" if applied else "up to date")
    return 0


def cmd_mint(settings: Settings, args: argparse.Namespace) -> int:
    if settings.action_key is None:
        if not (settings.data_dir / SECRETS_FILE).exists():
            raise UsageError("PODIUM_ACTION_KEY is not set (and no podium dev secrets were found)")
        settings = with_dev_secrets(settings)
    assert settings.action_key is not None
    try:
        token, claims = action_token.mint(
            user_id=args.user_id,
            leaderboard=args.leaderboard,
            action_type=args.action_type,
            delta=args.delta,
            kid=settings.action_key_id,
            key=settings.action_key,
            now=time.time(),
            ttl_s=args.ttl if args.ttl is not None else settings.action_token_ttl_s,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({"action_token": token, **dataclasses.asdict(claims)}))
    else:
        print(token)
    return 0


def with_dev_secrets(settings: Settings) -> Settings:
    """Fill unset secrets from ``data_dir/secrets.json``, generating missing ones once."""
    path = settings.data_dir / SECRETS_FILE
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from exc
    changed = False
    for name in DEV_SECRETS:
        if not isinstance(stored.get(name), str):
            stored[name] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=2)
    return settings.replace(
        **{name: stored[name] for name in DEV_SECRETS if getattr(settings, name) is None}
    )


# ---------------------------------------------------------------- running a node


def _run(settings: Settings, *, embedded: bool) -> int:
    configure_logging(settings.log_level, settings.log_format, node_id=settings.node_id)
    _tune_gc()
    try:
        trio.run(_serve, settings, embedded)
    except BaseException as exc:
        return _exit_code(exc)
    return 0


def _tune_gc() -> None:
    """Make the cyclic GC run less often on a serving node.

    Each request allocates many short-lived container objects; with the
    default thresholds the collector runs every few requests and its older
    generations pause the event loop for milliseconds, which shows up directly
    in p99 latency. Reference counting frees almost everything anyway.
    """
    gc.set_threshold(50_000, 50, 100)


def _exit_code(exc: BaseException) -> int:
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, _FAILURES):
            log.critical(f"podium stopped: {leaf}", extra={"error": type(leaf).__name__})
            return 1
    if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return 130
    raise exc


def _leaves(exc: BaseException) -> Any:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


@contextlib.asynccontextmanager
async def _stores_for(settings: Settings, embedded: bool) -> AsyncIterator[Settings]:
    """``settings`` with Redis and PostgreSQL URLs, starting embedded servers if asked."""
    async with contextlib.AsyncExitStack() as stack:
        if embedded and settings.redis_url is None:
            redis = await stack.enter_async_context(
                open_embedded_redis(settings.data_dir / "redis")
            )
            settings = settings.replace(redis_url=redis.url)
        if embedded and settings.database_url is None:
            postgres = await stack.enter_async_context(
                open_embedded_postgres(settings.data_dir / "postgres")
            )
            settings = settings.replace(database_url=postgres.dsn)
        yield settings


async def _serve(settings: Settings, embedded: bool) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            holder: list[Node] = []

            async def watch_signals() -> None:
                received = 0
                async for signum in signals:
                    received += 1
                    name = signal.Signals(signum).name
                    if received == 1 and holder:
                        log.info("signal received; draining", extra={"signal": name})
                        holder[0].stop_nowait()
                    else:
                        log.warning("signal received; stopping now", extra={"signal": name})
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            async with _stores_for(settings, embedded) as settings:
                node = Node(settings)
                holder.append(node)
                async with trio.open_nursery() as node_nursery:
                    address = await node_nursery.start(node.run)
                    _announce(settings, address, embedded)
            nursery.cancel_scope.cancel()


def _announce(settings: Settings, address: NodeAddress, embedded: bool) -> None:
    if not embedded:
        return
    print(
        "\nPodium dev node ready\n"
        f"  HTTP        {address.http_url}   (/healthz, /readyz, /metrics)\n"
        f"  Live page   {address.http_url}/\n"
        f"  Admin page  {address.http_url}/admin   (sign in with the admin token)\n"
        f"  WebSocket   {address.ws_url}\n"
        f"  Redis       {settings.redis_url}\n"
        f"  PostgreSQL  {settings.database_url}\n"
        f"  Data dir    {settings.data_dir.resolve()}\n"
        f"  Admin token {settings.admin_token}\n"
        f"  Service key {settings.service_key}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
