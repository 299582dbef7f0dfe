"""The fraud actor: admits or refuses each submission before it is committed.

Every submission the score path takes goes here first
(:meth:`FraudClient.submit_nowait`). The actor takes whatever admissions are
waiting and decides them all from **one** call
of ``lua/admit.lua`` (in the ranking actor's pipeline, the node's only way to
Redis), which for each submission, atomically,

1. turns a used nonce away (409; a nonce is consumed once across all nodes);
2. checks the player's and the client IP's rate limits (GCRA): over either →
   429 with ``Retry-After``, nothing spent, so the same token may be retried;
3. spends them, claims the nonce, and reads and updates what the fraud
   engine knows about the player, the IP and the device; the actor then
   scores it with the pure model of :mod:`protocol.fraud`: **allow**, **flag**
   (allowed, logged) or **block** (403 ``fraud_blocked``; the nonce stays
   spent, nothing reaches the ledger or the ranking).

Admitted submissions go straight on to the ledger actor, which answers them
(and hands them on to the ranking actor); the refused are answered here. So
a submission passes through the actors with nobody waiting between stages.

Flags and blocks are written to FRAUD_LOGS in batches with the factor
breakdown, update the player's rolling risk profile in Redis, and — for
blocks — count towards an automatic **shadow ban** after
``fraud_shadow_ban_blocks`` within ``fraud_shadow_ban_window_s``. Alerts go
to an optional webhook from a bounded queue; a slow or failing webhook never
slows a submission (alerts beyond the queue are dropped and counted).

*Error handling*: if Redis cannot answer, submissions are admitted without
rate limits or fraud scores (PostgreSQL still refuses a reused nonce) and
the outage is counted: a leaderboard that stops taking scores because its
fraud signals are unreachable would punish every honest player.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import outcome
import trio

from actors import ranking
from actors.ledger import LedgerClient
from actors.ranking import RankingClient
from actors.reply import Reply, answer, expired
from protocol import fraud
from protocol.errors import RateLimited, Unavailable
from protocol.leaderboards import Submission
from server.stores.redis_store import Command, CommandError, Script

if TYPE_CHECKING:
    from server.stores.pg_store import PostgresStore

log = logging.getLogger(__name__)

_MAX_BATCH: Final = 500
_LOG_BATCH: Final = 500
#: The most players remembered per IP or device.
_SOURCE_USERS_MAX: Final = 1000
#: Recent velocities remembered per action type, and action types remembered.
_POPULATION_SIZE: Final = 2048
_POPULATIONS_MAX: Final = 64
_POPULATION_REFRESH_S: Final = 1.0
_RETRY_BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0)

T = TypeVar("T")

Decision = Literal["admitted", "nonce_used", "rate_limited", "blocked"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A GCRA limit: ``per_s`` on average, ``burst`` at once above it."""

    per_s: float
    burst: int

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.per_s


@dataclass(frozen=True, slots=True)
class FraudPolicy:
    """How the actor decides and acts, from settings (see :func:`policy_from_settings`)."""

    enabled: bool
    params: fraud.FraudParams
    user_limit: RateLimit
    ip_limit: RateLimit
    shadow_ban_blocks: int
    shadow_ban_window_s: float


@dataclass(frozen=True, slots=True)
class Admission:
    """One submission, as far as admission needs to know it."""

    user_id: str
    ip: str | None
    device: str | None
    leaderboard: str
    action_type: str
    delta: int
    delta_min: int
    delta_max: int
    nonce: str
    nonce_ttl_s: int
    #: What the nonce is claimed with: this attempt's own, so only it can give it back.
    claim: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The actor's answer: ``decision``, and for ``rate_limited`` how long to wait."""

    decision: Decision
    retry_after_s: float = 0.0
    assessment: fraud.Assessment | None = None


@dataclass(frozen=True, slots=True)
class FraudStatistics:
    admitted: int
    flagged: int
    blocked: int
    rate_limited: int
    nonce_used: int
    unscored: int
    shadow_bans: int
    log_queue: int
    alerts_sent: int
    alerts_failed: int
    alerts_dropped: int


@dataclass(slots=True)
class _Counters:
    admitted: int = 0
    flagged: int = 0
    blocked: int = 0
    rate_limited: int = 0
    nonce_used: int = 0
    unscored: int = 0
    shadow_bans: int = 0
    alerts_sent: int = 0
    alerts_failed: int = 0
    alerts_dropped: int = 0


@dataclass(slots=True)
class _Pending:
    admission: Admission
    submission: Submission
    reply: Reply


@dataclass(frozen=True, slots=True)
class FraudLogRow:
    """One FRAUD_LOGS row: explains a decision on its own."""

    user_id: str | None
    event_type: Literal["flag", "block", "shadow_ban"]
    risk: float
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Event:
    """A flag or block, for the risk profile (and maybe a shadow ban)."""

    user_id: str
    decision: Literal["flag", "block"]
    risk: float
    at: float


class Keys(ranking.Keys):
    """Redis keys of the fraud engine; each player's, IP's and device's share a hash tag.

    The nonce keys are the ranking actor's: it releases what admission claims.
    """

    def user(self, user_id: str, part: str) -> str:
        return f"{self.prefix}:u:{{{user_id}}}:{part}"

    def source(self, kind: str, source: str, part: str) -> str:
        return f"{self.prefix}:{kind}:{{{source}}}:{part}"

    def service(self) -> str:
        return f"{self.prefix}:svc:rate"


async def receive_batch(channel: trio.MemoryReceiveChannel[T], most: int) -> list[T]:
    """Wait for one item, then take whatever else is already waiting, up to ``most``."""
    batch = [await channel.receive()]
    while len(batch) < most:
        try:
            batch.append(channel.receive_nowait())
        except trio.WouldBlock:
            break
    return batch


# One struct per history length: (t_ms, delta) pairs of signed 64-bit big-endian integers.
_HISTORIES: Final = tuple(struct.Struct(f">{2 * n}q") for n in range(fraud.HISTORY_MAX + 1))


def history_fields(history: str) -> tuple[int, ...]:
    """A player's history as ``lua/admit.lua`` keeps it — 32 hex digits per submission,
    oldest first — as flat ``(t_ms, delta, t_ms, delta, ...)``: the newest
    :data:`protocol.fraud.HISTORY_MAX`, should more be held.

    Unpacked in two C calls (about 3 µs for 64): Lua parsing a text history cost
    Redis more than all else the script does, and Python splitting one and
    parsing 128 integers cost the node 15 µs.
    """
    raw = bytes.fromhex(history)
    count = min(len(raw) // 16, fraud.HISTORY_MAX)
    return _HISTORIES[count].unpack_from(raw, len(raw) - 16 * count)


def device_key(device: str) -> str:
    """A short, fixed-size name for a device identifier (a header the client chose)."""
    return hashlib.blake2b(device.encode("utf-8", "replace"), digest_size=10).hexdigest()


def gcra(key: str, limit: RateLimit, now_s: float) -> Script:
    """The command spending one request of ``limit`` on ``key`` (answer: 0 or ms to wait)."""
    return Script("gcra", [key], [int(now_s * 1000), f"{limit.interval_ms:.3f}", limit.burst])


def source_seen(keys: Keys, kind: str, source: str, user_id: str, now_s: float) -> Script:
    """The command noting a request of ``user_id`` from an IP (``kind`` "ip") or a device
    ("dev"); its answer: [requests in the last minute before this one, players seen there]."""
    if kind == "dev":
        source = device_key(source)
    now_ms = int(now_s * 1000)
    window_ms = int(fraud.FREQUENCY_WINDOW_S * 1000)
    window, into = divmod(now_ms, window_ms)
    return Script(
        "fraud_source",
        [
            keys.source(kind, source, f"n:{window}"),
            keys.source(kind, source, f"n:{window - 1}"),
            keys.source(kind, source, "users"),
        ],
        [
            now_ms,
            f"{into / window_ms:.4f}",
            window_ms,
            user_id,
            int(fraud.IDENTITY_WINDOW_S * 1000),
            _SOURCE_USERS_MAX,
        ],
    )


class FraudActor:
    """See the module docstring. Reach it through :class:`FraudClient`."""

    def __init__(
        self,
        *,
        policy: FraudPolicy,
        ranking: RankingClient,
        ledger: LedgerClient,
        postgres: PostgresStore,
        key_prefix: str,
        inbox: trio.MemoryReceiveChannel[Any],
        queue_size: int,
        node_id: str,
        webhook: Callable[[dict[str, Any]], Any] | None = None,
        webhook_retries: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._ranking = ranking
        self._ledger = ledger
        self._postgres = postgres
        self._keys = Keys(key_prefix)
        self._receive: trio.MemoryReceiveChannel[_Pending] = inbox
        self._node_id = node_id
        self._clock = clock
        self._webhook = webhook
        self._webhook_retries = webhook_retries
        # Per action type: kills and points do not share a normal.
        self._populations: dict[str, fraud.PopulationSketch] = {}
        # A population's median and MAD, recomputed at most every _POPULATION_REFRESH_S:
        # sorting 2,048 velocities per submission would cost more than all else.
        self._population_stats: dict[str, tuple[float, fraud.PopulationStats | None]] = {}
        self._logs_send, self._logs_receive = trio.open_memory_channel[FraudLogRow](queue_size)
        self._events_send, self._events_receive = trio.open_memory_channel[_Event](queue_size)
        self._alerts_send, self._alerts_receive = trio.open_memory_channel[dict[str, Any]](
            min(queue_size, 1000)
        )
        self._shadow_banned: set[str] = set()
        self._counters = _Counters()

    @staticmethod
    def open_inbox(queue_size: int) -> tuple[FraudClient, trio.MemoryReceiveChannel[Any]]:
        """The actor's inbox, made apart from it so it survives restarts: (client, inbox)."""
        send, receive = trio.open_memory_channel[_Pending](queue_size)
        return FraudClient(send), receive

    def statistics(self) -> FraudStatistics:
        c = self._counters
        return FraudStatistics(
            admitted=c.admitted,
            flagged=c.flagged,
            blocked=c.blocked,
            rate_limited=c.rate_limited,
            nonce_used=c.nonce_used,
            unscored=c.unscored,
            shadow_bans=c.shadow_bans,
            log_queue=self._logs_receive.statistics().current_buffer_used,
            alerts_sent=c.alerts_sent,
            alerts_failed=c.alerts_failed,
            alerts_dropped=c.alerts_dropped,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve admissions until cancelled; logs, profiles and alerts run beside them."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_logs)
            nursery.start_soon(self._update_profiles)
            if self._webhook is not None:
                nursery.start_soon(self._send_alerts)
            task_status.started()
            while True:
                batch = await receive_batch(self._receive, _MAX_BATCH)
                # Past their deadline (answered 503 "retry"): claim nothing for them.
                batch = [pending for pending in batch if not expired(pending.reply)]
                if batch:
                    await self._admit(batch)

    # ---- admission: one round trip per batch

    def _admit_script(self, batch: list[_Pending], now: float) -> Script:
        """One ``lua/admit.lua`` call for the whole batch."""
        keys, policy = self._keys, self._policy
        window_ms = int(fraud.FREQUENCY_WINDOW_S * 1000)
        now_ms = int(now * 1000)
        window, into = divmod(now_ms, window_ms)
        script_keys: list[str] = []
        args: list[str | int | float | bytes] = [
            now_ms,
            f"{policy.user_limit.interval_ms:.3f}",
            policy.user_limit.burst,
            f"{policy.ip_limit.interval_ms:.3f}",
            policy.ip_limit.burst,
            "1" if policy.enabled else "0",
            fraud.HISTORY_MAX,
            int(fraud.IDENTITY_WINDOW_S * 1000),
            window_ms,
            f"{into / window_ms:.4f}",
            _SOURCE_USERS_MAX,
        ]
        for pending in batch:
            admission = pending.admission
            user = admission.user_id
            ip = admission.ip or "-"
            device = device_key(admission.device) if admission.device else "-"
            script_keys += [
                keys.nonce(admission.nonce),
                keys.user(user, "rate"),
                keys.source("ip", ip, "rate"),
                keys.user(user, f"hx:{admission.action_type}"),
                keys.user(user, "ips"),
                keys.source("ip", ip, f"n:{window}"),
                keys.source("ip", ip, f"n:{window - 1}"),
                keys.source("ip", ip, "users"),
                keys.source("dev", device, f"n:{window}"),
                keys.source("dev", device, f"n:{window - 1}"),
                keys.source("dev", device, "users"),
            ]
            args += [
                max(1, admission.nonce_ttl_s),
                admission.delta,
                admission.ip or "",
                user,
                "1" if admission.device else "0",
                admission.claim,
            ]
        return Script("admit", script_keys, args)

    async def _admit(self, batch: list[_Pending]) -> None:
        now = self._clock()
        try:
            (results,) = await self._ranking.run([self._admit_script(batch, now)])
            if isinstance(results, CommandError):
                log.error("admitting submissions failed: %s", results.message)
                raise Unavailable(results.message)
        except Unavailable as exc:
            log.warning(
                "fraud signals unavailable; admitting without them", extra={"error": exc.message}
            )
            for pending in batch:
                self._counters.unscored += 1
                self._counters.admitted += 1
                self._decided(pending, Verdict("admitted"))
            return
        for pending, result in zip(batch, results, strict=True):
            self._decided(pending, self._judge(pending.admission, result, now))

    def _decided(self, pending: _Pending, verdict: Verdict) -> None:
        """Hand an admitted submission to the ledger, which answers it; answer the rest."""
        if verdict.decision != "admitted":
            answer(pending.reply, outcome.Value(verdict))
            return
        try:
            self._ledger.submit_nowait(pending.submission, pending.reply)
        except Unavailable as exc:
            answer(pending.reply, outcome.Error(exc))

    def _judge(self, admission: Admission, result: list[Any], now: float) -> Verdict:
        counters = self._counters
        status, wait_ms, history, user_ips, ip_recent, ip_users, dev_recent, dev_users = result
        if status == 1:
            counters.nonce_used += 1
            return Verdict("nonce_used")
        if status == 2:
            counters.rate_limited += 1
            return Verdict("rate_limited", retry_after_s=int(wait_ms) / 1000.0)
        if not self._policy.enabled:
            counters.admitted += 1
            return Verdict("admitted")
        fields = history_fields(history)
        # Milliseconds to seconds. int / int rounds the exact quotient once, just as
        # at / 1000.0 does for every time a Signals takes (below 2**53 ms), and costs
        # a third less: int / float goes through int's refusal to float's division.
        times = [at / 1000 for at in fields[0::2]]
        deltas = fields[1::2]
        signals = fraud.Signals(
            now=now,
            delta=admission.delta,
            delta_min=admission.delta_min,
            delta_max=admission.delta_max,
            user_times=times,
            user_deltas=deltas,
            ip_requests=int(ip_recent),
            device_requests=int(dev_recent),
            ip_users=max(1, int(ip_users)),
            device_users=max(1, int(dev_users)),
            user_ips=max(1, int(user_ips)),
            population=self._population_now(admission.action_type, now),
        )
        assessment = fraud.assess(signals, self._policy.params)
        if assessment.decision == "allow":
            # Only allowed submissions shape the normal, so cheaters cannot drag it up.
            self._population(admission.action_type).observe(
                self._user_velocity(signals, assessment)
            )
            counters.admitted += 1
            return Verdict("admitted", assessment=assessment)
        self._record(admission, assessment, now)
        if assessment.decision == "flag":
            counters.flagged += 1
            counters.admitted += 1
            return Verdict("admitted", assessment=assessment)
        counters.blocked += 1
        return Verdict("blocked", assessment=assessment)

    def _user_velocity(self, signals: fraud.Signals, assessment: fraud.Assessment) -> float:
        """The :func:`fraud.user_velocity` of ``signals`` over the policy's window.

        The velocity factor measured just that when it had a population and
        history enough; only otherwise is it computed here.
        """
        measured = assessment.measures["velocity"].get("velocity")
        if measured is not None:
            return measured
        return fraud.user_velocity(
            signals.user_times,
            signals.user_deltas,
            signals.now,
            signals.delta,
            self._policy.params.velocity_window_s,
        )

    def _population(self, action_type: str) -> fraud.PopulationSketch:
        sketch = self._populations.get(action_type)
        if sketch is None:
            if len(self._populations) >= _POPULATIONS_MAX:
                oldest = next(iter(self._populations))
                del self._populations[oldest]
                self._population_stats.pop(oldest, None)
            sketch = self._populations[action_type] = fraud.PopulationSketch(_POPULATION_SIZE)
        return sketch

    def _population_now(self, action_type: str, now: float) -> fraud.PopulationStats | None:
        held = self._population_stats.get(action_type)
        if held is None or not 0 <= now - held[0] < _POPULATION_REFRESH_S:
            held = (now, self._population(action_type).stats())
            self._population_stats[action_type] = held
        return held[1]

    # ---- after a flag or block: the log row, the risk profile, the alert

    def _record(self, admission: Admission, assessment: fraud.Assessment, now: float) -> None:
        decision = assessment.decision
        assert decision in ("flag", "block")
        row = FraudLogRow(
            user_id=admission.user_id,
            event_type=decision,
            risk=assessment.risk,
            metadata={
                "assessment": assessment.as_json(),
                "leaderboard": admission.leaderboard,
                "action_type": admission.action_type,
                "delta": admission.delta,
                "nonce": admission.nonce,
                "ip": admission.ip,
                "device": admission.device,
                "node": self._node_id,
                "at": now,
            },
        )
        self._log_nowait(row)
        try:
            self._events_send.send_nowait(_Event(admission.user_id, decision, assessment.risk, now))
        except trio.WouldBlock:
            log.warning("risk profile queue full; profile not updated")
        if decision == "block":
            log.warning(
                "submission blocked as fraud",
                extra={
                    "user_id": admission.user_id,
                    "risk": round(assessment.risk, 4),
                    "reasons": list(assessment.reasons),
                },
            )
            self._alert_nowait({"event": "fraud_blocked", **row.metadata, "user_id": row.user_id})

    def _log_nowait(self, row: FraudLogRow) -> None:
        try:
            self._logs_send.send_nowait(row)
        except trio.WouldBlock:
            # The queue is PODIUM_FRAUD_QUEUE_SIZE rows: PostgreSQL has been down a while.
            log.error("fraud log queue full; a decision is only in this log line: %s", row)

    def _alert_nowait(self, alert: dict[str, Any]) -> None:
        if self._webhook is None:
            return
        try:
            self._alerts_send.send_nowait(alert)
        except trio.WouldBlock:
            self._counters.alerts_dropped += 1

    async def _write_logs(self) -> None:
        while True:
            rows = await receive_batch(self._logs_receive, _LOG_BATCH)
            for backoff in (*_RETRY_BACKOFF_S, None):
                try:
                    await self._postgres.insert_fraud_logs(rows)
                    break
                except Unavailable as exc:
                    if backoff is None:
                        log.error("fraud logs dropped", extra={"rows": len(rows)})
                        break
                    log.warning("fraud logs not written yet", extra={"error": exc.message})
                    await trio.sleep(backoff)

    async def _update_profiles(self) -> None:
        policy = self._policy
        window_ms = int(policy.shadow_ban_window_s * 1000)
        while True:
            events = await receive_batch(self._events_receive, _LOG_BATCH)
            commands: list[Command] = [
                Script(
                    "risk_profile",
                    [self._keys.user(e.user_id, "risk"), self._keys.user(e.user_id, "blocks")],
                    [int(e.at * 1000), e.decision, f"{e.risk:.4f}", window_ms],
                )
                for e in events
            ]
            try:
                counts = await self._ranking.run(commands)
            except Unavailable as exc:
                log.warning("risk profiles not updated", extra={"error": exc.message})
                continue
            for event, blocks in zip(events, counts, strict=True):
                if (
                    event.decision == "block"
                    and policy.shadow_ban_blocks > 0
                    and isinstance(blocks, int)
                    and blocks >= policy.shadow_ban_blocks
                    and event.user_id not in self._shadow_banned
                ):
                    await self._shadow_ban(event.user_id, blocks)

    async def _shadow_ban(self, user_id: str, blocks: int) -> None:
        policy = self._policy
        reason = (
            f"{blocks} blocked submissions within {policy.shadow_ban_window_s:g} s "
            f"(limit {policy.shadow_ban_blocks})"
        )
        try:
            changed = await self._postgres.auto_shadow_ban(user_id, reason=reason)
            self._shadow_banned.add(user_id)
            if changed:
                await self._ranking.set_hidden(user_id, True)
        except Unavailable as exc:
            log.warning("shadow ban postponed", extra={"user_id": user_id, "error": exc.message})
            return
        if changed:
            self._counters.shadow_bans += 1
            log.warning("player shadow-banned", extra={"user_id": user_id, "reason": reason})
            self._alert_nowait({"event": "shadow_ban", "user_id": user_id, "reason": reason})

    async def _send_alerts(self) -> None:
        assert self._webhook is not None
        while True:
            alert = await self._alerts_receive.receive()
            for attempt in range(self._webhook_retries + 1):
                try:
                    await self._webhook(alert)
                except Exception as exc:
                    if attempt == self._webhook_retries:
                        self._counters.alerts_failed += 1
                        log.warning("fraud alert not delivered", extra={"error": repr(exc)})
                    else:
                        await trio.sleep(_RETRY_BACKOFF_S[min(attempt, 3)])
                else:
                    self._counters.alerts_sent += 1
                    break


@dataclass(slots=True)
class FraudClient:
    """How the score path hands submissions to the fraud actor."""

    _inbox: trio.MemorySendChannel[_Pending]

    def submit_nowait(self, admission: Admission, submission: Submission, reply: Reply) -> None:
        """Admit ``admission`` — claim its nonce, spend the rate limits, score the risk —
        and if admitted hand ``submission`` to the ledger.

        ``reply`` gets the refusing :class:`Verdict` (nonce used, rate limited,
        blocked), or the ledger's answer (see
        :meth:`actors.ledger.LedgerClient.submit_nowait`). Raises
        :class:`Unavailable` at once if the actor's queue is full.
        """
        try:
            self._inbox.send_nowait(_Pending(admission, submission, reply))
        except trio.WouldBlock:
            raise Unavailable(
                "too many score submissions are waiting; retry shortly", code="overloaded"
            ) from None


def policy_from_settings(settings: Any) -> FraudPolicy:
    """The :class:`FraudPolicy` that ``settings`` (a :class:`config.Settings`) describe."""
    params = dataclasses.replace(
        fraud.parse_params(settings.fraud_params),
        flag_threshold=settings.fraud_flag_threshold,
        block_threshold=settings.fraud_block_threshold,
    )
    return FraudPolicy(
        enabled=settings.fraud_enabled,
        params=params,
        user_limit=RateLimit(settings.rate_user_per_s, settings.rate_user_burst),
        ip_limit=RateLimit(settings.rate_ip_per_s, settings.rate_ip_burst),
        shadow_ban_blocks=settings.fraud_shadow_ban_blocks,
        shadow_ban_window_s=settings.fraud_shadow_ban_window_s,
    )


class RateLimiter:
    """Rate limits off the score path: sign-ins per client IP, minting per service key.

    Spends one request of a GCRA limit in Redis (through the ranking actor's
    pipeline) and raises :class:`RateLimited` when over it. If Redis cannot
    answer, the request passes: a limiter must not take the service down.
    """

    def __init__(
        self,
        ranking: RankingClient,
        *,
        key_prefix: str,
        ip_limit: RateLimit,
        service_limit: RateLimit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ranking = ranking
        self._keys = Keys(key_prefix)
        self._ip_limit = ip_limit
        self._service_limit = service_limit
        self._clock = clock

    async def check_ip(self, ip: str | None) -> None:
        """Spend one of ``ip``'s requests (sign-ins share the IP's score-submission limit)."""
        if ip:
            await self._spend(self._keys.source("ip", ip, "rate"), self._ip_limit, "this address")

    def note_sign_in_nowait(self, user_id: str, *, ip: str | None, device: str | None) -> None:
        """Remember that ``user_id`` signed in from ``ip`` and ``device``: an account farm
        shows on its IP from its sign-ups, before its first score (best effort)."""
        now = self._clock()
        commands = [
            source_seen(self._keys, kind, source, user_id, now)
            for kind, source in (("ip", ip), ("dev", device))
            if source
        ]
        if commands:
            self._ranking.run_nowait(commands)

    async def check_service(self) -> None:
        """Spend one of the game servers' action-token mints."""
        await self._spend(self._keys.service(), self._service_limit, "the service key")

    async def _spend(self, key: str, limit: RateLimit, who: str) -> None:
        try:
            (wait_ms,) = await self._ranking.run([gcra(key, limit, self._clock())])
        except Unavailable:
            return
        if isinstance(wait_ms, int) and wait_ms > 0:
            raise RateLimited(
                f"too many requests from {who}; retry in {wait_ms / 1000:.1f} s",
                retry_after_s=wait_ms / 1000,
                code="rate_limited",
            )
