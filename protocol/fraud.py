"""Fraud risk: five factors, one weighted noisy-OR, one decision.

The fraud actor gathers what is known about a score submission into
:class:`Signals` (one Redis round trip) and calls :func:`assess`, which
scores five factors, each in ``[0, 1]``:

- ``frequency`` — submissions in the last :data:`FREQUENCY_WINDOW_S` from this
  user, this IP and this device, each against its own soft limit;
- ``increment`` — the delta against its action type's bounds and against the
  user's own recent deltas (a robust z-score);
- ``timing`` — inter-arrival regularity no human shows, and bursts;
- ``identity`` — many accounts on one IP or device, one account on many IPs;
- ``velocity`` — the user's points per minute against recent players'.

They combine as ``risk = 1 - prod(1 - weight * factor)``, so one strong factor
alone can block and several moderate ones add up. ``risk >= block_threshold``
is a "block" (refused, 403), ``risk >= flag_threshold`` a "flag" (allowed and
logged), anything lower an "allow". ``docs/fraud.md`` draws every curve and
explains the defaults.

Everything here is pure: the clock is ``Signals.now`` and nothing is stored,
except in :class:`PopulationSketch`, a bounded in-memory ring the caller owns.

Error handling: the constructors of :class:`Signals`, :class:`FraudParams`
and :class:`PopulationStats` raise :class:`ValueError` naming the first bad
field; :func:`assess` never raises for any that were constructed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import struct
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Any, Final, Literal

#: The five factors, in the order they are reported.
FACTORS: Final = ("frequency", "increment", "timing", "identity", "velocity")
#: The most earlier submissions of one user that :class:`Signals` carries (the newest).
HISTORY_MAX: Final = 64
#: The window the frequency factor counts submissions in, in seconds.
FREQUENCY_WINDOW_S: Final = 60.0
#: The window ``ip_users``, ``device_users`` and ``user_ips`` are counted in, in seconds.
IDENTITY_WINDOW_S: Final = 3600.0
#: The largest ``|time|`` a signal may carry: unix seconds or a monotonic clock, never more.
MAX_ABS_TIME_S: Final = 1e12

Decision = Literal["allow", "flag", "block"]

# The constant in the robust z-score: 0.6745 * (x - median) / MAD is about
# (x - mean) / sd for normally distributed data.
_Z_SCALE: Final = 0.6745
# Beyond any cut-off; keeps z-scores finite, so the log row stays valid JSON.
_Z_CAP: Final = 1e9
# Decimal places of the risk, the factors and the logged measures.
_PLACES: Final = 4
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# What _plainly_valid() takes for granted: the sequences the actor passes, and
# packers of n signed 64-bit integers (a Signals has 8 integer fields and at
# most HISTORY_MAX deltas).
_PLAIN_SEQUENCES: Final = frozenset((list, tuple))
_INT64_PACKERS: Final = tuple(struct.Struct(f"{n}q") for n in range(8 + HISTORY_MAX + 1))


@dataclass(frozen=True, slots=True)
class FraudParams:
    """The weights, thresholds and per-factor knobs of :func:`assess`.

    Every field has a default that suits a typical game; ``docs/fraud.md``
    ("Tuning") says when to change which. Each factor rises linearly from 0 at
    its ``*_start`` to 1 at its ``*_end``. Raises :class:`ValueError` naming
    the first field that is out of range or inconsistent with another.
    """

    #: Risk at or above this is a "flag": the submission is allowed and logged.
    flag_threshold: float = 0.5
    #: Risk at or above this is a "block": the submission is refused with 403.
    block_threshold: float = 0.8

    #: How much a factor at 1 adds to the risk on its own, each in [0, 1]. A
    #: factor whose weight is at least ``block_threshold`` can block alone.
    frequency_weight: float = 0.9
    increment_weight: float = 0.9
    timing_weight: float = 0.9
    identity_weight: float = 0.85
    velocity_weight: float = 0.6

    #: Soft limits on submissions per :data:`FREQUENCY_WINDOW_S`, this one
    #: included: the frequency factor is 0 up to the limit and 1 at twice it.
    #: The user's count comes from at most :data:`HISTORY_MAX` earlier
    #: submissions, so the user limit is at most ``HISTORY_MAX // 2``.
    frequency_user_limit: int = 30
    frequency_ip_limit: int = 120
    frequency_device_limit: int = 40

    #: The top ``increment_top_fraction`` of an action type's delta range is
    #: worth a look: the score rises over the band just below it and is
    #: ``increment_top_score`` within it (a cheater choosing deltas picks the
    #: largest allowed; with the default weight that alone is a flag, not a block).
    increment_top_fraction: float = 0.1
    increment_top_score: float = 0.6
    #: The user's own deltas count once there are this many earlier ones.
    increment_min_history: int = 5
    #: The robust z-score of the delta against the user's own deltas where the
    #: factor leaves 0 and where it reaches 1.
    increment_z_start: float = 3.5
    increment_z_end: float = 8.0
    #: The MAD used is at least this fraction of the median's magnitude, and at
    #: least ``increment_mad_floor`` points, so a constant history is no division
    #: by zero and a player who always scores 100 may score 130.
    increment_mad_floor_ratio: float = 0.3
    increment_mad_floor: float = 1.0

    #: Regularity is measured over the last ``timing_max_intervals``
    #: inter-arrival intervals (earlier submissions up to this one) once there
    #: are ``timing_min_intervals``. With n < max intervals the score is scaled
    #: by n / max: eight intervals of a human can look regular by chance, sixteen
    #: hardly ever do.
    timing_min_intervals: int = 7
    timing_max_intervals: int = 12
    #: The coefficient of variation (sd / mean) of those intervals where the
    #: factor leaves 0 (below ``start``) and reaches 1 (at or below ``end``).
    #: Honest players' CV is well above 0.3; a timer loop's is near 0.
    timing_cv_start: float = 0.2
    timing_cv_end: float = 0.1
    #: Submissions within the last ``timing_burst_window_s``, this one included:
    #: 0 up to ``timing_burst_start``, 1 at ``timing_burst_end``.
    timing_burst_window_s: float = 2.0
    timing_burst_start: int = 5
    timing_burst_end: int = 10

    #: Distinct users on this IP within :data:`IDENTITY_WINDOW_S`: NAT and
    #: cafés make a few normal.
    identity_ip_users_start: int = 5
    identity_ip_users_end: int = 20
    #: Distinct users on this device: a shared family tablet makes two normal.
    identity_device_users_start: int = 2
    identity_device_users_end: int = 6
    #: Distinct IPs this user used: Wi-Fi to mobile and back makes a few normal.
    identity_user_ips_start: int = 4
    identity_user_ips_end: int = 10

    #: The window :func:`user_velocity` measures points per minute over.
    velocity_window_s: float = 300.0
    #: The user's velocity counts once they have this many earlier submissions.
    velocity_min_history: int = 5
    #: The robust z-score of the user's velocity against the population's where
    #: the factor leaves 0 and where it reaches 1.
    velocity_z_start: float = 3.5
    velocity_z_end: float = 12.0
    #: The population's MAD used is at least this fraction of its median, and
    #: at least ``velocity_mad_floor`` points per minute.
    velocity_mad_floor_ratio: float = 0.25
    velocity_mad_floor: float = 1.0

    def __post_init__(self) -> None:
        _check_fraction(self, "flag_threshold", "block_threshold")
        if not self.flag_threshold < self.block_threshold:
            raise ValueError(
                f"flag_threshold ({self.flag_threshold}) must be below block_threshold "
                f"({self.block_threshold})"
            )
        _check_fraction(self, *(f"{name}_weight" for name in FACTORS))
        _check_fraction(self, "increment_top_score")
        _check_count(
            self,
            "frequency_user_limit",
            "frequency_ip_limit",
            "frequency_device_limit",
            "increment_min_history",
            "timing_min_intervals",
            "timing_max_intervals",
            "timing_burst_start",
            "identity_ip_users_start",
            "identity_device_users_start",
            "identity_user_ips_start",
            "velocity_min_history",
        )
        _check_positive(
            self,
            "increment_mad_floor",
            "timing_burst_window_s",
            "velocity_window_s",
            "velocity_mad_floor",
        )
        _check_finite(self, "increment_mad_floor_ratio", "velocity_mad_floor_ratio")
        for name in ("increment_mad_floor_ratio", "velocity_mad_floor_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0 < self.increment_top_fraction <= 1:
            raise ValueError(
                f"increment_top_fraction must be in (0, 1], not {self.increment_top_fraction}"
            )
        for prefix in (
            "increment_z",
            "timing_burst",
            "identity_ip_users",
            "identity_device_users",
            "identity_user_ips",
            "velocity_z",
        ):
            _check_rising(self, f"{prefix}_start", f"{prefix}_end")
        _check_rising(self, "timing_min_intervals", "timing_max_intervals", equal_ok=True)
        if not 0 <= self.timing_cv_end < self.timing_cv_start < math.inf:
            raise ValueError(
                "expected 0 <= timing_cv_end < timing_cv_start (the factor rises as the CV "
                f"falls), not timing_cv_end={self.timing_cv_end}, "
                f"timing_cv_start={self.timing_cv_start}"
            )
        # The counts below come from at most HISTORY_MAX earlier submissions.
        if 2 * self.frequency_user_limit > HISTORY_MAX:
            raise ValueError(
                f"frequency_user_limit must be at most {HISTORY_MAX // 2}: the factor reaches "
                f"1 at twice the limit, and only the last {HISTORY_MAX} submissions are known"
            )
        for name in ("timing_max_intervals", "timing_burst_end"):
            if getattr(self, name) > HISTORY_MAX:
                raise ValueError(
                    f"{name} must be at most {HISTORY_MAX}, the number of earlier "
                    f"submissions known, not {getattr(self, name)}"
                )

    @property
    def weights(self) -> Mapping[str, float]:
        """Each factor's weight, by name, in :data:`FACTORS` order."""
        return MappingProxyType(_weights(self))


@dataclass(frozen=True, slots=True)
class PopulationStats:
    """Recent players' score velocity, points per minute: median, MAD and sample size."""

    median: float
    mad: float
    count: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.median):
            raise ValueError(f"median must be finite, not {self.median}")
        if not 0 <= self.mad < math.inf:
            raise ValueError(f"mad must be finite and not negative, not {self.mad}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1, not {self.count}")


@dataclass(frozen=True, slots=True)
class Signals:
    """What is known about one submission when it is scored.

    Times are seconds on the caller's clock (unix time across nodes), at most
    :data:`MAX_ABS_TIME_S` in magnitude. ``user_times`` and ``user_deltas``
    describe the user's earlier submissions, this one excluded: oldest first,
    at most :data:`HISTORY_MAX` of them (the newest), one delta per time.
    Request counts exclude this submission; identity counts include this
    user, IP and device, so they are at least 1. A submission without a known
    IP or device has nothing to count there: pass 0 requests and 1 user (a
    shared "unknown" key would make every such player one huge crowd).

    Raises :class:`ValueError` naming the first field out of range.
    """

    now: float
    delta: int
    delta_min: int
    delta_max: int
    user_times: Sequence[float]
    user_deltas: Sequence[int]
    ip_requests: int
    device_requests: int
    ip_users: int
    device_users: int
    user_ips: int
    population: PopulationStats | None

    def __post_init__(self) -> None:
        # Nearly every Signals is plainly valid, which this sees at C speed;
        # any other is checked field by field below, to name the first bad one.
        if _plainly_valid(self):
            return
        _check_time("now", self.now)
        for value in self.user_times:
            _check_time("user_times", value)
        for name in ("delta", "delta_min", "delta_max"):
            _check_int64(name, getattr(self, name))
        for value in self.user_deltas:
            _check_int64("user_deltas", value)
        if self.delta_min > self.delta_max:
            raise ValueError(
                f"delta_min ({self.delta_min}) must not be greater than delta_max "
                f"({self.delta_max})"
            )
        if len(self.user_times) != len(self.user_deltas):
            raise ValueError(
                f"user_times and user_deltas must be the same length, not "
                f"{len(self.user_times)} and {len(self.user_deltas)}"
            )
        if len(self.user_times) > HISTORY_MAX:
            raise ValueError(
                f"at most {HISTORY_MAX} earlier submissions, not {len(self.user_times)}"
            )
        for name, low in (
            ("ip_requests", 0),
            ("device_requests", 0),
            ("ip_users", 1),
            ("device_users", 1),
            ("user_ips", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer of at least {low}, not {value!r}")


@dataclass(frozen=True, slots=True)
class Assessment:
    """The risk of one submission, the decision, and what led to it.

    ``factors`` holds every name in :data:`FACTORS` with its score before
    weighting; ``weights`` and the thresholds are the ones used, so
    ``risk = 1 - prod(1 - weights[f] * factors[f])`` and the decision can be
    checked from the assessment alone. ``reasons`` has one sentence per factor
    with a score above 0, in :data:`FACTORS` order; ``measures`` has the
    numbers each factor was computed from. The sentences are written when
    first asked for: most submissions are allowed, and nobody reads theirs.
    """

    risk: float
    factors: Mapping[str, float]
    decision: Decision
    weights: Mapping[str, float]
    flag_threshold: float
    block_threshold: float
    measures: Mapping[str, Mapping[str, float]]
    _reasons: _Reasons = dataclasses.field(repr=False, compare=False)

    @property
    def reasons(self) -> tuple[str, ...]:
        return self._reasons.written()

    def as_json(self) -> dict[str, Any]:
        """The assessment as JSON-ready data: the fraud log row.

        ``{"risk", "decision", "factors", "reasons", "weights", "thresholds",
        "measures"}``. Risk and factors are already rounded to 4 places and the
        measures are rounded here; weights and thresholds are logged as
        configured, so :func:`combine` and :func:`decide` recompute the risk
        and the decision from the row exactly. Every number is finite, so
        ``json.dumps(..., allow_nan=False)`` and a PostgreSQL ``jsonb`` column
        accept it.
        """
        return {
            "risk": self.risk,
            "decision": self.decision,
            "factors": dict(self.factors),
            "reasons": list(self.reasons),
            "weights": dict(self.weights),
            "thresholds": {"flag": self.flag_threshold, "block": self.block_threshold},
            "measures": {
                name: {key: _round(value) for key, value in values.items()}
                for name, values in self.measures.items()
            },
        }


# ---------------------------------------------------------------- scoring


def parse_params(text: str) -> FraudParams:
    """:class:`FraudParams` from ``"name=value,name=value"`` (PODIUM_FRAUD_PARAMS); the
    defaults for every field not named. Raises :class:`ValueError` naming what is wrong."""
    fields = {f.name: f.type for f in dataclasses.fields(FraudParams)}
    values: dict[str, Any] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise ValueError(f"{name!r} is not a fraud parameter (see docs/fraud.md, Tuning)")
        if name in values:
            raise ValueError(f"{name!r} is given twice")
        try:
            values[name] = int(raw) if fields[name] in ("int", int) else float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None
    return FraudParams(**values)


def assess(signals: Signals, params: FraudParams) -> Assessment:
    """Score one submission: every factor, the weighted noisy-OR, the decision.

    Deterministic and pure; never raises for a constructed ``signals`` and
    ``params``. A factor that lacks the data it needs (a short history, no
    population yet) scores 0 and says nothing.
    """
    times, deltas = _chronological(signals.user_times, signals.user_deltas)
    scored = (  # in FACTORS order
        _frequency(signals, params, times),
        _increment(signals, params),
        _timing(signals, params, times),
        _identity(signals, params),
        _velocity(signals, params, times, deltas),
    )
    factors: dict[str, float] = {}
    measures: dict[str, Mapping[str, float]] = {}
    counted: list[tuple[Sequence[float], _Explainer, _Measures]] = []
    for name, explain, (parts, values) in zip(FACTORS, _EXPLAINERS, scored, strict=True):
        # Rounded here, not only in the log row, so the row recomputes the
        # risk and the decision exactly (see combine()).
        factors[name] = score = _round_score(max(parts))
        measures[name] = MappingProxyType(values)
        if score > 0:  # explained only for the factors that count: most have none
            counted.append((parts, explain, values))
    weights = _weights(params)
    risk = combine(factors, weights)
    return Assessment(
        risk=risk,
        factors=MappingProxyType(factors),
        decision=decide(risk, params.flag_threshold, params.block_threshold),
        weights=MappingProxyType(weights),
        flag_threshold=params.flag_threshold,
        block_threshold=params.block_threshold,
        measures=MappingProxyType(measures),
        _reasons=_Reasons(signals, params, counted),
    )


class _Reasons:
    """An assessment's sentences, written on first use (see :attr:`Assessment.reasons`)."""

    __slots__ = ("_counted", "_params", "_signals", "_written")

    def __init__(
        self,
        signals: Signals,
        params: FraudParams,
        counted: list[tuple[Sequence[float], _Explainer, _Measures]],
    ) -> None:
        self._signals = signals
        self._params = params
        self._counted = counted
        self._written: tuple[str, ...] | None = None

    def written(self) -> tuple[str, ...]:
        if self._written is None:
            signals, params = self._signals, self._params
            self._written = tuple(
                _reason(parts, explain(signals, params, values))
                for parts, explain, values in self._counted
            )
            self._counted = []
        return self._written


def combine(factors: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted noisy-OR ``1 - prod(1 - weight * factor)`` over :data:`FACTORS`, to 4 places.

    With the ``factors`` and ``weights`` of a logged :meth:`Assessment.as_json`
    it gives back the logged risk exactly. Raises :class:`KeyError` for a
    missing factor.
    """
    survival = 1.0
    for name in FACTORS:
        survival *= 1.0 - weights[name] * factors[name]
    return round(_clamp01(1.0 - survival), _PLACES)


def decide(risk: float, flag_threshold: float, block_threshold: float) -> Decision:
    """The decision for ``risk``: "block", "flag" or "allow" (thresholds inclusive)."""
    if risk >= block_threshold:
        return "block"
    if risk >= flag_threshold:
        return "flag"
    return "allow"


def user_velocity(
    times: Sequence[float], deltas: Sequence[int], now: float, delta: int, window_s: float
) -> float:
    """Points per minute over the last ``window_s`` seconds, the submission at ``now`` included.

    ``times`` and ``deltas`` are the earlier submissions, as in
    :class:`Signals`; those less than ``window_s`` before ``now`` (or after
    it) count. When ``times`` holds :data:`HISTORY_MAX` submissions and the
    oldest is inside the window, older ones inside it are unknown, so the rate
    is taken over the span since the oldest known, but never less than
    :data:`FREQUENCY_WINDOW_S` (a flood is the frequency factor's business).

    Feed a :class:`PopulationSketch` with this same function and window. The
    velocity factor's measure ``"velocity"`` is this very number (the factor
    measures only with a population and enough history), so after
    :func:`assess` there is no need to compute it again.
    Raises :class:`ValueError` for a window that is not positive or lengths
    that differ.
    """
    if not 0 < window_s < math.inf:
        raise ValueError(f"window_s must be positive and finite, not {window_s}")
    if len(times) != len(deltas):
        raise ValueError(f"{len(times)} times but {len(deltas)} deltas")
    if all(map(operator.le, times, islice(times, 1, None))):  # oldest first, as documented
        return _velocity_in_order(times, deltas, now, delta, window_s)
    inside = [(t, d) for t, d in zip(times, deltas, strict=True) if now - t < window_s]
    span_s = window_s
    if len(times) >= HISTORY_MAX and len(inside) == len(times):
        oldest = min(t for t, _ in inside)
        span_s = min(window_s, max(FREQUENCY_WINDOW_S, now - oldest))
    points = math.fsum(float(d) for _, d in inside) + float(delta)
    return points * 60.0 / span_s


class PopulationSketch:
    """Recent players' velocities on this node: a ring of the last ``size`` observations.

    :meth:`observe` each allowed submission's :func:`user_velocity` (blocked
    and flagged ones would let cheaters drag the median up); :meth:`stats`
    gives their median and MAD, or None while there are fewer than
    ``min_count``. Memory is bounded by ``size``; :meth:`stats` sorts the ring,
    so it caches the answer until the next :meth:`observe`.
    """

    __slots__ = ("_min_count", "_ring", "_stats")

    def __init__(self, size: int = 1024, *, min_count: int = 50) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, not {size!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int):
            raise ValueError(f"min_count must be an integer, not {min_count!r}")
        if not 1 <= min_count <= size:
            raise ValueError(f"min_count must be between 1 and size ({size}), not {min_count}")
        self._ring: deque[float] = deque(maxlen=size)
        self._min_count = min_count
        self._stats: PopulationStats | None = None

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def size(self) -> int:
        """The most observations kept."""
        maxlen = self._ring.maxlen
        assert maxlen is not None
        return maxlen

    def observe(self, velocity: float) -> None:
        """Add one observation, dropping the oldest when full; ignores a non-finite value."""
        if math.isfinite(velocity):
            self._ring.append(float(velocity))
            self._stats = None

    def stats(self) -> PopulationStats | None:
        """Median and MAD of the observations kept; None below ``min_count`` of them."""
        if len(self._ring) < self._min_count:
            return None
        if self._stats is None:
            median, mad = median_mad(self._ring)
            self._stats = PopulationStats(median=median, mad=mad, count=len(self._ring))
        return self._stats


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    """The median of ``values`` and their median absolute deviation from it.

    Raises :class:`ValueError` for no values.
    """
    if not values:
        raise ValueError("the median of no values is undefined")
    median = _median(sorted(values))
    return median, _median(sorted(abs(value - median) for value in values))


def robust_z(value: float, *, median: float, mad: float) -> float:
    """``0.6745 * (value - median) / mad``, clipped to ``±1e9``; ``mad`` must be positive.

    About a normal z-score for normal data, and not dragged by outliers.
    """
    z = _Z_SCALE * (value - median) / mad
    return max(-_Z_CAP, min(_Z_CAP, z)) if not math.isnan(z) else 0.0


# ---------------------------------------------------------------- the factors
#
# Each factor gives the scores of its parts and the measures behind them; it
# scores its worst part. The matching explainer writes one sentence per part
# from those measures, and assess() asks for them only when the factor counts.
# ``times`` and ``deltas`` are the user's history oldest first (_chronological).

_Measures = dict[str, float]
_Scored = tuple[tuple[float, ...], _Measures]


def _frequency(signals: Signals, params: FraudParams, times: Sequence[float]) -> _Scored:
    user = 1 + _count_within(times, signals.now, FREQUENCY_WINDOW_S)
    ip = signals.ip_requests + 1
    device = signals.device_requests + 1
    user_limit = params.frequency_user_limit
    ip_limit = params.frequency_ip_limit
    device_limit = params.frequency_device_limit
    parts = (
        ramp(user, user_limit, 2 * user_limit),
        ramp(ip, ip_limit, 2 * ip_limit),
        ramp(device, device_limit, 2 * device_limit),
    )
    return parts, {"user": user, "ip": ip, "device": device}


def _explain_frequency(signals: Signals, params: FraudParams, measures: _Measures) -> list[str]:
    window = f"{FREQUENCY_WINDOW_S:g} s"
    return [
        f"{measures[key]} submissions in the last {window} from this {what} (limit {limit})"
        for key, what, limit in (
            ("user", "user", params.frequency_user_limit),
            ("ip", "IP", params.frequency_ip_limit),
            ("device", "device", params.frequency_device_limit),
        )
    ]


def _increment(signals: Signals, params: FraudParams) -> _Scored:
    delta = signals.delta
    history = signals.user_deltas
    low, high = signals.delta_min, signals.delta_max
    position = 0.0 if low == high else ramp(delta, low, high)
    top = params.increment_top_fraction
    in_range = params.increment_top_score * ramp(position, 1 - 2 * top, 1 - top)
    measures: _Measures = {"delta": delta, "range_position": position, "history": len(history)}
    if len(history) < params.increment_min_history:
        return (in_range,), measures
    median, mad = _median_mad_of_ints(history)
    floor = max(mad, params.increment_mad_floor_ratio * abs(median), params.increment_mad_floor)
    z = robust_z(float(delta), median=median, mad=floor)
    measures.update(median=median, mad=mad, mad_used=floor, z=z)
    return (in_range, ramp(z, params.increment_z_start, params.increment_z_end)), measures


def _explain_increment(signals: Signals, params: FraudParams, measures: _Measures) -> list[str]:
    delta = signals.delta
    texts = [
        f"delta {delta} is at {measures['range_position']:.0%} of its action type's range "
        f"{signals.delta_min} to {signals.delta_max}"
    ]
    if "z" in measures:
        texts.append(
            f"delta {delta} is {measures['z']:.1f} robust z above this user's median of "
            f"{measures['median']:g} (MAD used {measures['mad_used']:.4g}, "
            f"{len(signals.user_deltas)} submissions)"
        )
    return texts


def _timing(signals: Signals, params: FraudParams, times: Sequence[float]) -> _Scored:
    now = signals.now
    burst = 1 + _count_within(times, now, params.timing_burst_window_s)
    recent = times[-params.timing_max_intervals :]
    if recent and recent[-1] > now:
        # A time after now (another node's clock ahead) counts as now.
        recent = [min(t, now) for t in recent]
    points = [*recent, now]
    intervals = list(map(operator.sub, points[1:], points))  # each later minus earlier
    in_burst = ramp(burst, params.timing_burst_start, params.timing_burst_end)
    measures: _Measures = {"intervals": len(intervals), "burst": burst}
    if len(intervals) < params.timing_min_intervals:
        return (in_burst,), measures
    mean = math.fsum(intervals) / len(intervals)
    cv = _coefficient_of_variation(intervals, mean)
    evidence = len(intervals) / params.timing_max_intervals
    measures.update(mean_interval_s=mean, cv=cv, evidence=evidence)
    return (in_burst, ramp(cv, params.timing_cv_start, params.timing_cv_end) * evidence), measures


def _explain_timing(signals: Signals, params: FraudParams, measures: _Measures) -> list[str]:
    texts = [
        f"{measures['burst']} submissions within {params.timing_burst_window_s:g} s "
        f"(normal up to {params.timing_burst_start})"
    ]
    if "cv" in measures:
        evidence = measures["evidence"]
        counted = "" if evidence == 1 else f", counted at {evidence:.0%} for so few"
        texts.append(
            f"the last {measures['intervals']} intervals are machine-regular: mean "
            f"{measures['mean_interval_s']:.3g} s, CV {measures['cv']:.3f} "
            f"(humans are above 0.3{counted})"
        )
    return texts


def _identity(signals: Signals, params: FraudParams) -> _Scored:
    parts = (
        ramp(signals.ip_users, params.identity_ip_users_start, params.identity_ip_users_end),
        ramp(
            signals.device_users,
            params.identity_device_users_start,
            params.identity_device_users_end,
        ),
        ramp(signals.user_ips, params.identity_user_ips_start, params.identity_user_ips_end),
    )
    measures: _Measures = {
        "ip_users": signals.ip_users,
        "device_users": signals.device_users,
        "user_ips": signals.user_ips,
    }
    return parts, measures


def _explain_identity(signals: Signals, params: FraudParams, measures: _Measures) -> list[str]:
    return [
        f"{count} {what} in the last hour (normal up to {start})"
        for count, start, what in (
            (signals.ip_users, params.identity_ip_users_start, "accounts on this IP"),
            (signals.device_users, params.identity_device_users_start, "accounts on this device"),
            (signals.user_ips, params.identity_user_ips_start, "IPs used by this account"),
        )
    ]


def _velocity(
    signals: Signals, params: FraudParams, times: Sequence[float], deltas: Sequence[int]
) -> _Scored:
    population = signals.population
    if population is None or len(times) < params.velocity_min_history:
        return (0.0,), {}
    velocity = _velocity_in_order(
        times, deltas, signals.now, signals.delta, params.velocity_window_s
    )
    floor = max(
        population.mad,
        params.velocity_mad_floor_ratio * abs(population.median),
        params.velocity_mad_floor,
    )
    z = robust_z(velocity, median=population.median, mad=floor)
    measures: _Measures = {
        "velocity": velocity,
        "median": population.median,
        "mad": population.mad,
        "mad_used": floor,
        "population": population.count,
        "z": z,
    }
    return (ramp(z, params.velocity_z_start, params.velocity_z_end),), measures


def _explain_velocity(signals: Signals, params: FraudParams, measures: _Measures) -> list[str]:
    return [
        f"{measures['velocity']:.4g} points/min over the last {params.velocity_window_s:g} s is "
        f"{measures['z']:.1f} robust z above recent players' median of "
        f"{measures['median']:.4g} (MAD used {measures['mad_used']:.4g}, "
        f"{measures['population']} observations)"
    ]


_Explainer = Callable[[Signals, FraudParams, _Measures], list[str]]

_EXPLAINERS: Final[tuple[_Explainer, ...]] = (
    _explain_frequency,
    _explain_increment,
    _explain_timing,
    _explain_identity,
    _explain_velocity,
)


def _reason(parts: Sequence[float], texts: Sequence[str]) -> str:
    """The sentence of every part above 0, worst first."""
    if len(parts) == 1:
        return texts[0] if parts[0] > 0 else ""
    scored = sorted(
        (part for part in zip(parts, texts, strict=True) if part[0] > 0),
        key=lambda part: -part[0],
    )
    return "; ".join(text for _, text in scored)


# ---------------------------------------------------------------- internals


def ramp(value: float, start: float, end: float) -> float:
    """0 at ``start`` or before it, 1 at ``end`` or beyond, linear between.

    "Before" and "beyond" follow the direction from ``start`` to ``end``, so
    ``ramp(cv, 0.2, 0.1)`` rises as ``cv`` falls. ``start`` and ``end`` must differ.
    """
    share = (value - start) / (end - start)
    if 0.0 < share < 1.0:
        return share
    return 1.0 if share >= 1.0 else 0.0  # and 0 for NaN


def _coefficient_of_variation(intervals: Sequence[float], mean: float) -> float:
    """Population sd / ``mean`` (theirs); 0 when every interval is 0 (all at one instant)."""
    if mean <= 0:
        return 0.0
    variance = math.fsum([(x - mean) ** 2 for x in intervals]) / len(intervals)
    return math.sqrt(variance) / mean


def _chronological(
    times: Sequence[float], deltas: Sequence[int]
) -> tuple[list[float], Sequence[int]]:
    """The history oldest first: as given when it already is (as the actor passes it).

    Otherwise sorted by time, each delta staying with its time. ``times`` hold
    no NaN (as in a :class:`Signals`), so sorting them orders them fully.
    """
    ordered = sorted(times)
    if ordered == list(times):
        return ordered, deltas
    order = sorted(range(len(times)), key=times.__getitem__)
    return [times[i] for i in order], [deltas[i] for i in order]


def _count_within(times: Sequence[float], now: float, window_s: float) -> int:
    """How many of ``times`` (oldest first) are less than ``window_s`` before ``now`` (or after).

    Along the ascending times ``now - t < window_s`` turns true once and stays
    true: bisecting at ``now - window_s`` finds where up to rounding, and the
    test itself settles the last step.
    """
    first = bisect_right(times, now - window_s)
    while first > 0 and now - times[first - 1] < window_s:
        first -= 1
    while first < len(times) and not now - times[first] < window_s:
        first += 1
    return len(times) - first


def _velocity_in_order(
    times: Sequence[float], deltas: Sequence[int], now: float, delta: int, window_s: float
) -> float:
    """:func:`user_velocity` of a history oldest first, with its arguments checked."""
    first = len(times) - _count_within(times, now, window_s)
    span_s = window_s
    if first == 0 and len(times) >= HISTORY_MAX:
        # Every known submission is inside the window: take the span they cover.
        span_s = min(window_s, max(FREQUENCY_WINDOW_S, now - times[0]))
    points = math.fsum(islice(deltas, first, None)) + float(delta)
    return points * 60.0 / span_s


def _median_mad_of_ints(values: Sequence[int]) -> tuple[float, float]:
    """:func:`median_mad` of ``values`` as floats, without converting each one first.

    ``float()`` keeps the order of ints, so the middle of the sorted ints is
    the middle of the sorted floats; and ``int - float`` converts the int just
    as ``float()`` does.
    """
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        median = float(ordered[middle])
    else:
        median = (float(ordered[middle - 1]) + float(ordered[middle])) / 2
    return median, _median_distance(ordered, median)


def _median_distance(ordered: Sequence[int], median: float) -> float:
    """The median of ``abs(value - median)`` over ``ordered`` (ascending, not empty).

    Computing and sorting all 64 distances was half the cost of the increment
    factor, for the one or two in the middle. Read outwards from ``median`` —
    the values below it downwards, the others upwards — the distances are two
    ascending runs, and the sorted distances are their merge; the lower half
    of the merge is the nearest ``low`` below and the nearest rest above, for
    the least ``low`` at which the next one below is no nearer than the last
    one taken above. Bisection finds it with a handful of subtractions. Below
    the median, ``median - value`` is exactly ``abs(value - median)``:
    rounding to nearest is symmetric.
    """
    count = len(ordered)
    half = count // 2
    split = bisect_left(ordered, median)  # ordered[:split] < median <= ordered[split:]
    above = count - split
    # The i-th nearest below is median - ordered[split - 1 - i], above ordered[split + i] - median.
    low, high = max(0, half - above), min(half, split)
    while low < high:
        taken = (low + high) // 2
        if median - ordered[split - 1 - taken] < ordered[split + half - taken - 1] - median:
            low = taken + 1
        else:
            high = taken
    # The lower half is the nearest `low` below and `rest` above; the median is
    # the nearest of what remains (averaged with the last taken for an even count).
    rest = half - low
    following = min(
        median - ordered[split - 1 - low] if low < split else math.inf,
        ordered[split + rest] - median if rest < above else math.inf,
    )
    if count % 2:
        return following
    last = max(
        median - ordered[split - low] if low > 0 else -math.inf,
        ordered[split + rest - 1] - median if rest > 0 else -math.inf,
    )
    return (last + following) / 2


def _weights(params: FraudParams) -> dict[str, float]:
    return {
        "frequency": float(params.frequency_weight),
        "increment": float(params.increment_weight),
        "timing": float(params.timing_weight),
        "identity": float(params.identity_weight),
        "velocity": float(params.velocity_weight),
    }


def _round_score(score: float) -> float:
    """``round(score, 4)``, which leaves 0 and 1 (most scores) as they are, so skip it there."""
    return round(score, _PLACES) if 0 < score < 1 else score


def _median(ordered: Sequence[float]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _clamp01(value: float) -> float:
    """``value`` within [0, 1]; 0 for NaN."""
    return ramp(value, 0.0, 1.0)


def _round(value: float) -> float:
    return round(value, _PLACES) if isinstance(value, float) else value


def _check_time(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    if not -MAX_ABS_TIME_S <= value <= MAX_ABS_TIME_S:
        raise ValueError(f"{name} must be finite seconds within ±{MAX_ABS_TIME_S:g}, not {value}")


def _check_int64(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} must be a signed 64-bit integer, not {value}")


def _plainly_valid(signals: Signals) -> bool:
    """Whether ``signals`` passes every check of :meth:`Signals.__post_init__`, at C speed.

    True only when it does; False is no verdict (the checks then run one by
    one). It asks for more than they do — lists or tuples, float times, every
    integer of exact type ``int`` and within 64 bits — which is what the actor
    passes, and it never raises. Without a NaN the ends of the sorted times
    are the extremes, and a NaN or an infinity makes their sum NaN or
    infinite; packing refuses an integer out of range.
    """
    now, times, deltas = signals.now, signals.user_times, signals.user_deltas
    if not (
        type(now) is float
        and -MAX_ABS_TIME_S <= now <= MAX_ABS_TIME_S
        and type(times) in _PLAIN_SEQUENCES
        and type(deltas) in _PLAIN_SEQUENCES
        and len(times) == len(deltas) <= HISTORY_MAX
    ):
        return False
    if times:
        if list(map(type, times)).count(float) != len(times):
            return False
        ordered = sorted(times)
        if not (
            ordered[0] >= -MAX_ABS_TIME_S
            and ordered[-1] <= MAX_ABS_TIME_S
            and math.isfinite(sum(ordered))
        ):
            return False
    integers = [
        signals.delta,
        signals.delta_min,
        signals.delta_max,
        signals.ip_requests,
        signals.device_requests,
        signals.ip_users,
        signals.device_users,
        signals.user_ips,
        *deltas,
    ]
    if not (
        list(map(type, integers)).count(int) == len(integers)
        and signals.delta_min <= signals.delta_max
        and signals.ip_requests >= 0
        and signals.device_requests >= 0
        and signals.ip_users >= 1
        and signals.device_users >= 1
        and signals.user_ips >= 1
    ):
        return False
    try:
        _INT64_PACKERS[len(integers)].pack(*integers)
    except struct.error:
        return False
    return True


def _check_fraction(params: FraudParams, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, not {value}")


def _check_count(params: FraudParams, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _check_positive(params: FraudParams, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if not 0 < value < math.inf:
            raise ValueError(f"{name} must be positive and finite, not {value}")


def _check_finite(params: FraudParams, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, not {value}")


def _check_rising(params: FraudParams, start: str, end: str, *, equal_ok: bool = False) -> None:
    _check_finite(params, start, end)
    low, high = getattr(params, start), getattr(params, end)
    if not (low <= high if equal_ok else low < high):
        relation = "at most" if equal_ok else "below"
        raise ValueError(f"{start} ({low}) must be {relation} {end} ({high})")
