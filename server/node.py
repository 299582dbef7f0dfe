"""One Podium node: the stores, the supervised actors and the listeners, nested.

The nesting *is* the shutdown order::

    trio-asyncio loop
    └── Redis adapter, PostgreSQL adapter (+ migrations)
        └── Supervisor: actors in start order, then the HTTP server, then
            the WebSocket listener — stopped in reverse under one deadline

so the listeners stop taking work first, in-flight work finishes, and the
stores close last.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

from actors.catalog import CatalogActor
from actors.connection import ConnectionContext
from actors.fanout import FanoutActor
from actors.fraud import FraudActor, RateLimit, RateLimiter, policy_from_settings
from actors.ledger import LedgerActor
from actors.ranking import RankingActor, RankingClient
from actors.supervisor import ActorFailed, ChildSpec, RestartWithBackoff, StopNode, Supervisor
from config import Settings
from protocol import action_token
from protocol.action_token import ActionTypeRule
from server.alerts import Webhook
from server.auth import AuthService, keyring_from_settings
from server.fast_http import FastPath
from server.http_app import check_with_timeout, create_app
from server.http_server import HttpServer
from server.metrics import NodeMetrics
from server.migrations import Migration, load_migrations
from server.score_path import ScorePath
from server.stores import aio_loop
from server.stores.pg_store import PostgresStore, open_postgres
from server.stores.redis_store import RedisStore, open_redis
from server.ws_listener import WsListener

log = logging.getLogger(__name__)


async def migrate(database_url: str) -> tuple[int, ...]:
    """Apply pending migrations to ``database_url``; the versions applied now."""
    async with aio_loop.open_loop(), open_postgres(database_url, min_size=1, max_size=1) as pg:
        return await pg.apply_migrations(load_migrations())


#: Figures the actors keep, exported at scrape time: (kind, metric, help, actor, field).
_ACTOR_METRICS: Final = (
    ("counter", "podium_ws_frames", "Leaderboard frames handed to WebSocket outboxes.",
     "fanout", "frames"),
    ("counter", "podium_ws_slow_closed", "WebSockets closed with 4508: their outbox was full.",
     "fanout", "slow_closed"),
    ("counter", "podium_pubsub_reconnects", "Times the pub/sub connection was re-established.",
     "fanout", "reconnects"),
    ("gauge", "podium_ws_watched_boards", "Leaderboards with local WebSocket watchers.",
     "fanout", "boards"),
    ("counter", "podium_ledger_batches", "PostgreSQL transactions the ledger committed.",
     "ledger", "batches"),
    ("counter", "podium_ledger_committed", "Submissions the ledger committed.",
     "ledger", "committed"),
    ("gauge", "podium_ledger_queue", "Submissions waiting for the ledger.",
     "ledger", "queued"),
    ("counter", "podium_ranking_batches", "Redis round trips the ranking actor made.",
     "ranking", "batches"),
    ("counter", "podium_ranking_rebuilds", "Rebuilds of the rankings from PostgreSQL.",
     "ranking", "rebuilds"),
    ("gauge", "podium_ranking_rebuilding", "1 while the rankings are being rebuilt.",
     "ranking", "rebuilding"),
    ("gauge", "podium_ranking_queue", "Requests waiting for the ranking actor.",
     "ranking", "queued"),
    ("gauge", "podium_nonce_releases_held", "Nonce claims to give back, waiting for a batch.",
     "ranking", "releases_held"),
    ("counter", "podium_nonce_releases_dropped",
     "Nonce claims not given back: too many were held (the token reads as used until it expires).",
     "ranking", "releases_dropped"),
    ("counter", "podium_fraud_admitted", "Submissions the fraud actor let through, flags too.",
     "fraud", "admitted"),
    ("counter", "podium_fraud_flagged", "Submissions allowed but logged for review.",
     "fraud", "flagged"),
    ("counter", "podium_fraud_blocked", "Submissions refused as fraud (403 fraud_blocked).",
     "fraud", "blocked"),
    ("counter", "podium_rate_limited", "Submissions refused by a rate limit (429).",
     "fraud", "rate_limited"),
    ("counter", "podium_nonce_reused", "Submissions whose action token was already used (409).",
     "fraud", "nonce_used"),
    ("counter", "podium_fraud_unscored", "Submissions admitted unscored: Redis did not answer.",
     "fraud", "unscored"),
    ("counter", "podium_fraud_shadow_bans", "Players shadow-banned automatically.",
     "fraud", "shadow_bans"),
    ("gauge", "podium_fraud_log_queue", "FRAUD_LOGS rows waiting to be written.",
     "fraud", "log_queue"),
    ("counter", "podium_fraud_alerts_sent", "Fraud alerts the webhook accepted.",
     "fraud", "alerts_sent"),
    ("counter", "podium_fraud_alerts_failed", "Fraud alerts given up after every retry.",
     "fraud", "alerts_failed"),
    ("counter", "podium_fraud_alerts_dropped", "Fraud alerts dropped: the alert queue was full.",
     "fraud", "alerts_dropped"),
)  # fmt: skip


def _statistic(actor: Any, field_name: str) -> float:
    return float(getattr(actor.statistics(), field_name))


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a running node listens."""

    host: str
    http_port: int
    ws_port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/v1/ws"


@dataclass(slots=True)
class NodeServices:
    """What the HTTP and WebSocket edges of one node share."""

    settings: Settings
    node_id: str
    redis: RedisStore
    postgres: PostgresStore
    metrics: NodeMetrics
    migrations: tuple[Migration, ...]
    catalog: CatalogActor
    ranking: RankingClient
    ranking_ready: Callable[[], bool]
    auth: AuthService
    score_path: ScorePath
    limiter: RateLimiter
    action_key: str
    action_rules: dict[str, ActionTypeRule]
    draining: trio.Event = field(default_factory=trio.Event)
    #: The port the WebSocket listener bound (PODIUM_WS_PORT may be 0); set once it has.
    ws_port: int = 0

    async def readiness(self) -> dict[str, str]:
        """Each readiness check's result: "ok" or why not."""

        async def migrations_current() -> str | None:
            state = await self.postgres.migration_status(self.migrations)
            if state.current:
                return None
            return f"pending {list(state.pending)}, mismatched {list(state.mismatched)}"

        checks = {
            "redis": await check_with_timeout(self.redis.ping),
            "postgres": await check_with_timeout(self.postgres.ping),
            "migrations": await check_with_timeout(migrations_current),
        }
        checks["ranking"] = "ok" if self.ranking_ready() else "rebuilding from postgres"
        checks["node"] = "draining" if self.draining.is_set() else "ok"
        return checks


class Node:
    """A Podium node against the given Redis and PostgreSQL.

    ``settings.redis_url`` and ``settings.database_url`` must be set (``podium
    dev`` fills them in with embedded servers).
    """

    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None or settings.database_url is None:
            raise ValueError("a node needs redis_url and database_url")
        if settings.jwt_secret is None and settings.jwt_algorithm == "HS256":
            raise ValueError("a node needs jwt_secret (or an RS256/ES256 key)")
        if settings.action_key is None:
            raise ValueError("a node needs action_key")
        self.settings = settings
        self.node_id = settings.node_id or default_node_id()
        self.metrics = NodeMetrics(self.node_id)
        self._stop = trio.Event()
        self._draining = trio.Event()
        self._supervisor: Supervisor | None = None
        #: What the edges share, once :meth:`run` has made it (tests and tools reach in here).
        self.services: NodeServices | None = None
        self.metrics.watch_supervisor(
            lambda: self._supervisor.statistics() if self._supervisor else None
        )

    def stop_nowait(self) -> None:
        """Begin a graceful stop; :meth:`run` returns when it is done."""
        self._stop.set()
        self._draining.set()
        if self._supervisor is not None:
            self._supervisor.stop_nowait()

    async def run(
        self, *, task_status: trio.TaskStatus[NodeAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the node until :meth:`stop_nowait`; ``started()`` gives its address.

        Raises :class:`actors.supervisor.ActorFailed` if an actor failed beyond
        its policy, :class:`protocol.errors.Unavailable` if PostgreSQL cannot be
        reached at start, :class:`server.migrations.MigrationError` if the
        database's migrations disagree with the code.
        """
        settings = self.settings
        assert settings.redis_url is not None and settings.database_url is not None
        migrations = load_migrations()
        async with (
            aio_loop.open_loop(),
            open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis,
            open_postgres(
                settings.database_url,
                min_size=settings.pg_pool_min_size,
                max_size=settings.pg_pool_max_size,
                command_timeout_s=settings.pg_command_timeout_s,
            ) as postgres,
        ):
            if settings.migrate_on_start:
                applied = await postgres.apply_migrations(migrations)
                log.info("migrations checked", extra={"applied_now": list(applied)})
            restart = RestartWithBackoff(
                max_restarts=settings.actor_restart_max,
                window_s=settings.actor_restart_window_s,
                initial_backoff_s=settings.actor_backoff_initial_s,
                max_backoff_s=settings.actor_backoff_max_s,
            )
            # Actors are made once and re-run after a failure, so that their
            # inboxes (and the clients holding them) survive a restart.
            catalog = CatalogActor(postgres, poll_s=settings.revocation_poll_s)
            ranking_client, ranking_inbox = RankingActor.open_inbox(
                settings.ranking_queue_size, timeout_s=settings.submit_timeout_s
            )
            ranking = RankingActor(
                redis=redis,
                postgres=postgres,
                boards=catalog.boards,
                key_prefix=settings.redis_key_prefix,
                publish_top_n=settings.ranking_publish_top_n,
                inbox=ranking_inbox,
                node_id=self.node_id,
            )
            ledger_client, ledger_inbox = LedgerActor.open_inbox(settings.ledger_queue_size)
            ledger = LedgerActor(
                postgres=postgres,
                ranking=ranking_client,
                batch_max=settings.ledger_batch_max,
                linger_s=settings.ledger_linger_s,
                inbox=ledger_inbox,
            )
            fraud_client, fraud_inbox = FraudActor.open_inbox(settings.fraud_queue_size)
            fraud = FraudActor(
                policy=policy_from_settings(settings),
                ranking=ranking_client,
                ledger=ledger_client,
                postgres=postgres,
                key_prefix=settings.redis_key_prefix,
                inbox=fraud_inbox,
                queue_size=settings.fraud_queue_size,
                node_id=self.node_id,
                webhook=(
                    Webhook(settings.fraud_webhook_url, node_id=self.node_id)
                    if settings.fraud_webhook_url
                    else None
                ),
                webhook_retries=settings.fraud_webhook_retries,
            )
            fanout = FanoutActor(
                redis=redis,
                ranking=ranking_client,
                board=catalog.board,
                key_prefix=settings.redis_key_prefix,
                tick_s=settings.ws_tick_s,
            )
            self._export_statistics(ledger, ranking, fanout, fraud)
            assert settings.action_key is not None
            services = NodeServices(
                settings=settings,
                node_id=self.node_id,
                redis=redis,
                postgres=postgres,
                metrics=self.metrics,
                migrations=migrations,
                catalog=catalog,
                ranking=ranking_client,
                ranking_ready=lambda: not ranking.rebuilding,
                auth=AuthService(
                    settings,
                    keyring=keyring_from_settings(settings),
                    postgres=postgres,
                    catalog=catalog,
                ),
                score_path=ScorePath(
                    settings, catalog=catalog, ranking=ranking_client, fraud=fraud_client
                ),
                limiter=RateLimiter(
                    ranking_client,
                    key_prefix=settings.redis_key_prefix,
                    ip_limit=RateLimit(settings.rate_ip_per_s, settings.rate_ip_burst),
                    service_limit=RateLimit(
                        settings.rate_service_per_s, settings.rate_service_burst
                    ),
                ),
                action_key=settings.action_key,
                action_rules=action_token.parse_action_types(settings.action_types),
                draining=self._draining,
            )
            self.metrics.gauge_from(
                "podium_submissions_in_flight",
                "Score submissions started and not yet answered.",
                lambda: services.score_path.in_flight,
            )
            listener = WsListener(
                ConnectionContext(
                    settings=settings,
                    node_id=self.node_id,
                    auth=services.auth,
                    score_path=services.score_path,
                    fanout=fanout,
                    board=catalog.board,
                    count_submission=lambda outcome: self.metrics.submissions_total.labels(
                        outcome
                    ).inc(),
                ),
                metrics=self.metrics,
            )
            catalog.watch_revocations(listener.session_revoked)
            self.services = services
            app = create_app(services)
            asgi = FastPath(
                app, app.extensions["podium.v1"], max_body_bytes=settings.http_max_body_bytes
            )
            self._supervisor = Supervisor(
                [
                    ChildSpec("catalog", lambda: catalog, restart),
                    ChildSpec("ranking", lambda: ranking, restart),
                    ChildSpec("fraud", lambda: fraud, restart),
                    ChildSpec("ledger", lambda: ledger, restart),
                    # Times out submissions the actors above have not finished.
                    ChildSpec("score-path", lambda: services.score_path, restart),
                    ChildSpec("fanout", lambda: fanout, restart),
                    ChildSpec("http", lambda: HttpServer(asgi, settings), restart),
                    # Without the listener the node is deaf to its clients:
                    # fail loudly rather than limp along.
                    ChildSpec("ws", lambda: listener, StopNode()),
                ],
                graceful_timeout_s=settings.graceful_timeout_s,
            )
            if self._stop.is_set():
                return
            failures: list[ActorFailed] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(self._supervise, self._supervisor, failures)
                address = NodeAddress(
                    host=settings.bind_host,
                    http_port=self._supervisor.started_value("http"),
                    ws_port=self._supervisor.started_value("ws"),
                )
                services.ws_port = address.ws_port
                log.info(
                    "node ready",
                    extra={"node_id": self.node_id, "http": address.http_url, "ws": address.ws_url},
                )
                task_status.started(address)
                await self._stop.wait()
            log.info("node stopped", extra={"node_id": self.node_id})
            if failures:
                raise failures[0]

    def _export_statistics(
        self, ledger: LedgerActor, ranking: RankingActor, fanout: FanoutActor, fraud: FraudActor
    ) -> None:
        actors = {"ledger": ledger, "ranking": ranking, "fanout": fanout, "fraud": fraud}
        for kind, name, doc, actor, field_name in _ACTOR_METRICS:
            read = partial(_statistic, actors[actor], field_name)
            export = self.metrics.counter_from if kind == "counter" else self.metrics.gauge_from
            export(name, doc, read)

    async def _supervise(
        self,
        supervisor: Supervisor,
        failures: list[ActorFailed],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Run the supervisor; a failure after start-up is kept for :meth:`run` to raise
        once the node has stopped, a failure during start-up propagates at once."""
        ready = False

        class _Status:
            def started(self, value: None = None) -> None:
                nonlocal ready
                ready = True
                task_status.started()

        try:
            await supervisor.run(task_status=_Status())
        except ActorFailed as exc:
            if not ready:
                raise
            failures.append(exc)
        finally:
            self.stop_nowait()
