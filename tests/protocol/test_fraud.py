"""The fraud risk model, sans-IO: synchronous, no sleeps, every time chosen by the test.

Each factor has a sweep showing its documented curve (0 up to its start,
rising, 1 from its end) and the decision it leads to on its own; the honest
players below are simulated with human timing, stable deltas and ordinary
networks, and must never be blocked and only rarely flagged.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.fraud import (
    FACTORS,
    FREQUENCY_WINDOW_S,
    HISTORY_MAX,
    MAX_ABS_TIME_S,
    Assessment,
    FraudParams,
    PopulationSketch,
    PopulationStats,
    Signals,
    assess,
    combine,
    decide,
    median_mad,
    ramp,
    robust_z,
    user_velocity,
)

DOCS_PATH = Path(__file__).parents[2] / "docs" / "fraud.md"

NOW = 1_700_000_000.0
PARAMS = FraudParams()
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# A first submission from a quiet network: nothing to say about it.
QUIET = Signals(
    now=NOW,
    delta=100,
    delta_min=1,
    delta_max=10_000,
    user_times=(),
    user_deltas=(),
    ip_requests=0,
    device_requests=0,
    ip_users=1,
    device_users=1,
    user_ips=1,
    population=None,
)
# A spread of ordinary deltas: median 100, MAD 10.
NORMAL_DELTAS = (80, 90, 95, 100, 100, 105, 110, 120, 90, 100, 110)


def signals(**changes: Any) -> Signals:
    return replace(QUIET, **changes)


def times_ending_at_now(intervals: Sequence[float]) -> list[float]:
    """Earlier submission times, oldest first, whose intervals (with NOW last) are ``intervals``."""
    times = []
    t = NOW
    for gap in reversed(intervals):
        t -= gap
        times.append(t)
    return times[::-1]


def human_intervals(
    count: int, *, seed: int, median_s: float = 8.0, cv: float = 0.6
) -> list[float]:
    rng = random.Random(seed)
    sigma = math.sqrt(math.log(1 + cv * cv))
    return [median_s * math.exp(rng.gauss(0, sigma)) for _ in range(count)]


def with_history(intervals: Sequence[float], deltas: Sequence[int], **changes: Any) -> Signals:
    """Signals whose earlier submissions have these intervals and deltas (cycled)."""
    times = times_ending_at_now(intervals)
    cycled = [deltas[i % len(deltas)] for i in range(len(times))]
    return signals(user_times=times, user_deltas=cycled, **changes)


def only(assessment: Assessment, name: str) -> None:
    """Assert that ``name`` is the only factor above 0, so it decided alone."""
    assert {n for n, score in assessment.factors.items() if score > 0} == {name}


def nondecreasing(values: Sequence[float]) -> bool:
    return all(a <= b for a, b in pairwise(values))


# ---------------------------------------------------------------- frequency


@pytest.mark.parametrize(
    ("source", "limit"),
    [("ip", PARAMS.frequency_ip_limit), ("device", PARAMS.frequency_device_limit)],
)
def test_frequency_per_ip_and_device_rises_from_the_limit_to_twice_it(
    source: str, limit: int
) -> None:
    scores = []
    for earlier in range(0, 3 * limit):
        result = assess(signals(**{f"{source}_requests": earlier}), PARAMS)
        count = earlier + 1  # this submission counts too
        expected = min(1.0, max(0.0, (count - limit) / limit))
        assert result.factors["frequency"] == pytest.approx(expected, abs=1e-4)
        scores.append(result.factors["frequency"])
    assert nondecreasing(scores)
    assert scores[limit - 1] == 0  # at the limit
    assert scores[limit] > 0  # one over
    assert scores[2 * limit - 1] == 1  # twice the limit


def test_frequency_per_user_counts_the_last_minute_of_history() -> None:
    limit = PARAMS.frequency_user_limit
    scores = []
    for earlier in range(0, HISTORY_MAX + 1):
        # Spread unevenly over the last minute.
        times = [NOW - 59.0 * (i + 1) ** 1.3 / (earlier + 1) ** 1.3 for i in range(earlier)][::-1]
        result = assess(signals(user_times=times, user_deltas=[100] * earlier), PARAMS)
        scores.append(result.factors["frequency"])
        assert result.measures["frequency"]["user"] == earlier + 1
    assert nondecreasing(scores)
    assert scores[limit - 1] == 0
    assert scores[limit] > 0
    assert scores[2 * limit - 1] == 1


def test_frequency_ignores_submissions_a_minute_old_or_older() -> None:
    times = [NOW - FREQUENCY_WINDOW_S - 5.0 + i * 0.01 for i in range(HISTORY_MAX - 1)]
    times.append(NOW - FREQUENCY_WINDOW_S)  # exactly a window ago: out
    result = assess(signals(user_times=times, user_deltas=[100] * HISTORY_MAX), PARAMS)
    assert result.measures["frequency"]["user"] == 1
    assert result.factors["frequency"] == 0


def test_frequency_takes_the_worst_source_and_names_every_one_over() -> None:
    result = assess(signals(ip_requests=179, device_requests=49), PARAMS)
    assert result.factors["frequency"] == 0.5  # IP: 180 of 120, device: 50 of 40 is 0.25
    (reason,) = result.reasons
    assert reason == (
        "180 submissions in the last 60 s from this IP (limit 120); "
        "50 submissions in the last 60 s from this device (limit 40)"
    )


def test_a_flood_three_times_the_limit_blocks_on_its_own() -> None:
    for source, limit in (("ip", 120), ("device", 40)):
        result = assess(signals(**{f"{source}_requests": 3 * limit - 1}), PARAMS)
        only(result, "frequency")
        assert result.decision == "block"
        assert result.risk == PARAMS.frequency_weight


def test_frequency_stays_zero_for_a_normal_pace() -> None:
    intervals = human_intervals(30, seed=1, median_s=4.0)
    result = assess(with_history(intervals, NORMAL_DELTAS, ip_requests=40), PARAMS)
    assert result.factors["frequency"] == 0


# ---------------------------------------------------------------- increment


def test_increment_at_the_top_of_the_range_is_flagged_for_review() -> None:
    scores = []
    for delta in range(1, 10_001, 37):
        scores.append(assess(signals(delta=delta), PARAMS).factors["increment"])
    assert nondecreasing(scores)
    assert all(score == 0 for score in scores[: int(len(scores) * 0.79)])
    assert assess(signals(delta=8_500), PARAMS).decision == "allow"
    assert assess(signals(delta=9_001), PARAMS).factors["increment"] == PARAMS.increment_top_score
    top = assess(signals(delta=10_000), PARAMS)
    assert top.factors["increment"] == PARAMS.increment_top_score
    # Worth a look, never a block on its own: an honest player earns the maximum too.
    assert top.decision == "flag"
    assert top.reasons == ("delta 10000 is at 100% of its action type's range 1 to 10000",)


def test_increment_against_history_follows_the_robust_z_score() -> None:
    history = NORMAL_DELTAS * 2
    median, mad = median_mad(history)
    assert (median, mad) == (100, 10)
    mad_used = max(mad, PARAMS.increment_mad_floor_ratio * median)  # 30: the floor
    scores = []
    for delta in range(50, 800, 5):
        result = assess(with_history([30.0] * len(history), history, delta=delta), PARAMS)
        z = 0.6745 * (delta - median) / mad_used
        expected = min(1.0, max(0.0, (z - 3.5) / (8.0 - 3.5)))
        assert result.factors["increment"] == pytest.approx(expected, abs=1e-4)
        assert result.measures["increment"]["z"] == pytest.approx(z)
        scores.append(result.factors["increment"])
    assert nondecreasing(scores)
    assert scores[0] == 0 and scores[-1] == 1


def test_a_jump_to_ten_times_the_usual_delta_blocks_on_its_own() -> None:
    intervals = human_intervals(len(NORMAL_DELTAS), seed=2)
    result = assess(with_history(intervals, NORMAL_DELTAS, delta=1000), PARAMS)
    only(result, "increment")
    assert result.factors["increment"] == 1
    assert result.decision == "block"
    assert result.reasons[0].startswith("delta 1000 is 20.2 robust z above this user's median")


def test_a_constant_history_uses_the_mad_floor() -> None:
    history = [100] * 10
    for delta, expected in ((100, 0.0), (130, 0.0), (1000, 1.0)):
        result = assess(with_history([60.0] * 10, history, delta=delta), PARAMS)
        assert result.factors["increment"] == expected
        assert result.measures["increment"]["mad"] == 0
        assert result.measures["increment"]["mad_used"] == 30
    # A history of zeros falls back on the absolute floor of one point.
    result = assess(with_history([60.0] * 10, [0] * 10, delta=9, delta_min=0), PARAMS)
    assert result.measures["increment"]["z"] == pytest.approx(0.6745 * 9)


def test_increment_needs_enough_history_and_ignores_drops() -> None:
    short = with_history([30.0] * 4, [100] * 4, delta=1000)
    assert assess(short, PARAMS).factors["increment"] == 0
    assert "z" not in assess(short, PARAMS).measures["increment"]
    drop = with_history([30.0] * 10, [5000] * 10, delta=1)
    assert assess(drop, PARAMS).factors["increment"] == 0


def test_ordinary_deltas_stay_zero() -> None:
    intervals = human_intervals(len(NORMAL_DELTAS) * 3, seed=9)
    for delta in range(60, 201):
        result = assess(with_history(intervals, NORMAL_DELTAS, delta=delta), PARAMS)
        assert result.factors["increment"] == 0, delta


def test_a_single_value_range_is_not_the_top_of_anything() -> None:
    result = assess(signals(delta=5, delta_min=5, delta_max=5), PARAMS)
    assert result.factors["increment"] == 0


# ---------------------------------------------------------------- timing


def alternating(cv: float, count: int = 16, mean_s: float = 5.0) -> list[float]:
    """``count`` intervals alternating around ``mean_s`` whose CV is exactly ``cv``."""
    return [mean_s * (1 + cv if i % 2 else 1 - cv) for i in range(count)]


def test_timing_rises_as_the_intervals_grow_regular() -> None:
    scores = []
    for step in range(0, 51):
        cv = step / 100
        result = assess(with_history(alternating(cv), NORMAL_DELTAS), PARAMS)
        assert result.measures["timing"]["cv"] == pytest.approx(cv)
        assert result.factors["timing"] == pytest.approx(ramp(cv, 0.2, 0.1), abs=1e-4)
        scores.append(result.factors["timing"])
    assert nondecreasing(scores[::-1])
    assert scores[10] == 1  # CV 0.1
    assert scores[20] == 0  # CV 0.2
    assert all(score == 0 for score in scores[20:])


def test_a_machine_regular_bot_blocks_on_its_own_once_enough_history_exists() -> None:
    rng = random.Random(3)
    jittered = [5.0 + rng.uniform(-0.05, 0.05) for _ in range(40)]
    decisions = []
    for known in range(1, 41):
        result = assess(with_history(jittered[-known:], NORMAL_DELTAS), PARAMS)
        decisions.append(result.decision)
        if known < PARAMS.timing_min_intervals:
            assert result.factors["timing"] == 0
    # Counted at n / 12 below 12 intervals: allowed at first, flagged from 7
    # intervals (the 8th submission), blocked from 11 (the 12th).
    assert decisions[:6] == ["allow"] * 6
    assert decisions[6:10] == ["flag"] * 4
    assert decisions[10:] == ["block"] * 30
    result = assess(with_history(jittered, NORMAL_DELTAS), PARAMS)
    only(result, "timing")
    assert result.reasons[0].startswith("the last 12 intervals are machine-regular: mean 5")


def test_timing_looks_at_the_last_intervals_only() -> None:
    rng = random.Random(4)
    intervals = human_intervals(40, seed=4) + [7.0 + rng.uniform(-0.1, 0.1) for _ in range(16)]
    assert assess(with_history(intervals, NORMAL_DELTAS), PARAMS).factors["timing"] == 1


def test_bursts_rise_from_five_to_ten_within_two_seconds() -> None:
    scores = []
    for count in range(1, 16):
        # count - 1 earlier submissions within the last 1.9 s, unevenly spaced.
        times = [NOW - 1.9 * ((i + 1) / count) ** 2 for i in range(count - 1)][::-1]
        result = assess(signals(user_times=times, user_deltas=[100] * len(times)), PARAMS)
        assert result.measures["timing"]["burst"] == count
        scores.append(result.factors["timing"])
    assert nondecreasing(scores)
    assert scores[4] == 0  # five
    assert scores[5] > 0  # six
    assert scores[9] == 1  # ten
    burst = assess(signals(user_times=[NOW - 1.0] * 9, user_deltas=[100] * 9), PARAMS)
    assert burst.decision == "block"
    assert "10 submissions within 2 s (normal up to 5)" in burst.reasons[0]


def test_equal_timestamps_are_a_burst_and_perfectly_regular() -> None:
    result = assess(signals(user_times=[NOW] * 20, user_deltas=[100] * 20), PARAMS)
    assert result.measures["timing"]["cv"] == 0
    assert result.factors["timing"] == 1


def test_human_timing_stays_low() -> None:
    scores = []
    for seed in range(50):
        intervals = human_intervals(HISTORY_MAX, seed=seed, cv=0.5)
        scores.append(assess(with_history(intervals, NORMAL_DELTAS), PARAMS).factors["timing"])
    # Twelve human intervals can look a little regular by chance; never enough to flag.
    assert max(scores) < 0.5
    assert scores.count(0) >= 45


# ---------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("field", "start", "end"),
    [("ip_users", 5, 20), ("device_users", 2, 6), ("user_ips", 4, 10)],
)
def test_identity_rises_from_its_start_to_its_end(field: str, start: int, end: int) -> None:
    scores = [assess(signals(**{field: n}), PARAMS).factors["identity"] for n in range(1, 31)]
    assert nondecreasing(scores)
    assert all(score == 0 for score in scores[:start])
    assert scores[start] > 0
    assert all(score == 1 for score in scores[end - 1 :])
    for n in range(1, 31):
        assert scores[n - 1] == pytest.approx(ramp(n, start, end), abs=1e-4)


def test_a_twenty_account_ip_farm_blocks_on_its_own() -> None:
    result = assess(signals(ip_users=20), PARAMS)
    only(result, "identity")
    assert result.decision == "block"
    assert result.reasons == ("20 accounts on this IP in the last hour (normal up to 5)",)


def test_a_cafe_a_family_tablet_and_a_commuter_stay_zero() -> None:
    result = assess(signals(ip_users=5, device_users=2, user_ips=4), PARAMS)
    assert result.factors["identity"] == 0


# ---------------------------------------------------------------- velocity

POPULATION = PopulationStats(median=1000.0, mad=200.0, count=500)


def test_velocity_rises_with_the_robust_z_against_the_population() -> None:
    # A steady player: ten earlier submissions of the same delta in the last five minutes.
    intervals = human_intervals(10, seed=5, median_s=25.0, cv=0.5)
    assert sum(intervals) < 300
    scores = []
    for delta in range(100, 10_001, 100):
        s = with_history(intervals, [delta] * 10, delta=delta, population=POPULATION)
        result = assess(s, PARAMS)
        velocity = 11 * delta / 5
        assert result.measures["velocity"]["velocity"] == pytest.approx(velocity)
        z = 0.6745 * (velocity - 1000.0) / 250.0  # the MAD floor: a quarter of the median
        assert result.factors["velocity"] == pytest.approx(ramp(z, 3.5, 12.0), abs=1e-4)
        scores.append(result.factors["velocity"])
    assert nondecreasing(scores)
    assert scores[0] == 0 and scores[-1] == 1


def test_velocity_alone_flags_and_with_a_moderate_signal_blocks() -> None:
    intervals = [30.0, 25.0, 40.0, 20.0, 35.0, 28.0, 50.0, 20.0, 30.0]
    # Ten submissions of 3000 in five minutes: 6000 points/min, 13.5 robust z over the median.
    fast = with_history(intervals, [3000] * 9, delta=3000, population=POPULATION)
    result = assess(fast, PARAMS)
    only(result, "velocity")
    assert result.factors["velocity"] == 1
    assert result.decision == "flag"
    assert result.reasons == (
        "6000 points/min over the last 300 s is 13.5 robust z above recent players' median "
        "of 1000 (MAD used 250, 500 observations)",
    )
    # A second signal a little past half-way (14 accounts on the IP: 0.6) tips it over.
    assert assess(replace(fast, ip_users=14), PARAMS).decision == "block"


def test_a_player_at_the_population_pace_stays_zero() -> None:
    # About 1000 points/min: 20 submissions of 250 around 15 s apart.
    intervals = human_intervals(20, seed=10, median_s=15.0, cv=0.5)
    result = assess(with_history(intervals, [250], delta=250, population=POPULATION), PARAMS)
    assert 500 < result.measures["velocity"]["velocity"] < 2000
    assert result.factors["velocity"] == 0
    assert result.decision == "allow"


def test_velocity_needs_a_population_and_some_history() -> None:
    intervals = [10.0] * 3
    short = with_history(intervals, [5000] * 3, delta=9000, population=POPULATION)
    assert assess(short, PARAMS).factors["velocity"] == 0
    assert assess(short, PARAMS).measures["velocity"] == {}
    unknown = with_history([10.0, 13.0] * 5, [5000] * 10, delta=5000)
    assert assess(unknown, PARAMS).factors["velocity"] == 0


def test_user_velocity_counts_points_per_minute_in_the_window() -> None:
    times = [NOW - 300.0, NOW - 250.0, NOW - 100.0, NOW - 10.0]
    deltas = [1000, 100, 200, 300]
    # The one exactly a window ago is out: (100 + 200 + 300 + 400) / 5 min.
    assert user_velocity(times, deltas, NOW, 400, 300.0) == pytest.approx(200.0)
    assert user_velocity([], [], NOW, 60, 60.0) == pytest.approx(60.0)
    assert user_velocity([NOW + 5.0], [60], NOW, 60, 60.0) == pytest.approx(120.0)


def test_user_velocity_over_a_full_history_uses_the_span_it_covers() -> None:
    every_2s = times_ending_at_now([2.0] * HISTORY_MAX)
    # 65 submissions of 10 over the 128 s the history covers, not the 300 s window.
    assert user_velocity(every_2s, [10] * HISTORY_MAX, NOW, 10, 300.0) == pytest.approx(
        650 * 60 / 128
    )
    flood = times_ending_at_now([0.1] * HISTORY_MAX)
    # Never over less than a minute.
    assert user_velocity(flood, [10] * HISTORY_MAX, NOW, 10, 300.0) == pytest.approx(650.0)


def test_user_velocity_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        user_velocity([], [], NOW, 1, 0.0)
    with pytest.raises(ValueError, match="2 times but 1 deltas"):
        user_velocity([1.0, 2.0], [1], NOW, 1, 60.0)


# ---------------------------------------------------------------- combining


def test_the_risk_is_a_weighted_noisy_or() -> None:
    factors = {"frequency": 0.5, "increment": 0.2, "timing": 0.0, "identity": 1.0, "velocity": 0.3}
    expected = 1 - (1 - 0.9 * 0.5) * (1 - 0.9 * 0.2) * (1 - 0.85 * 1.0) * (1 - 0.6 * 0.3)
    assert combine(factors, PARAMS.weights) == round(expected, 4)
    assert combine(dict.fromkeys(FACTORS, 0.0), PARAMS.weights) == 0
    assert combine(dict.fromkeys(FACTORS, 1.0), dict.fromkeys(FACTORS, 1.0)) == 1


def test_one_moderate_signal_is_allowed_and_any_two_are_flagged() -> None:
    for name in FACTORS:
        alone = dict.fromkeys(FACTORS, 0.0) | {name: 0.5}
        assert decide(combine(alone, PARAMS.weights), 0.5, 0.8) == "allow"
    for pair in combinations(FACTORS, 2):
        both = dict.fromkeys(FACTORS, 0.0) | dict.fromkeys(pair, 0.5)
        assert decide(combine(both, PARAMS.weights), 0.5, 0.8) in {"flag", "block"}, pair


def test_two_moderate_signals_from_real_signals_are_flagged() -> None:
    # 1.5 times the IP limit, and 12 or 13 accounts on that IP: each about half-way.
    one = signals(ip_requests=179)
    two = signals(ip_requests=179, ip_users=13)
    assert assess(one, PARAMS).decision == "allow"
    assert assess(replace(one, ip_requests=0, ip_users=13), PARAMS).decision == "allow"
    assert assess(two, PARAMS).decision == "flag"
    busy_shared_ip = with_history(alternating(0.15), NORMAL_DELTAS, ip_users=13)
    assert assess(busy_shared_ip, PARAMS).decision == "flag"


def test_decide_is_inclusive_at_both_thresholds() -> None:
    assert decide(0.4999, 0.5, 0.8) == "allow"
    assert decide(0.5, 0.5, 0.8) == "flag"
    assert decide(0.7999, 0.5, 0.8) == "flag"
    assert decide(0.8, 0.5, 0.8) == "block"


def test_weights_and_thresholds_are_parameters() -> None:
    strict = FraudParams(flag_threshold=0.2, block_threshold=0.4, identity_weight=0.5)
    assert assess(signals(ip_users=20), strict).decision == "block"
    lenient = FraudParams(identity_weight=0.0)
    result = assess(signals(ip_users=20), lenient)
    assert result.factors["identity"] == 1  # still scored and explained...
    assert result.risk == 0 and result.decision == "allow"  # ...but without weight
    assert result.reasons == ("20 accounts on this IP in the last hour (normal up to 5)",)


# ---------------------------------------------------------------- the log row


def test_as_json_round_trips_and_explains_the_decision() -> None:
    intervals = human_intervals(20, seed=6)
    s = with_history(intervals, NORMAL_DELTAS, delta=400, ip_users=9, population=POPULATION)
    result = assess(s, PARAMS)
    assert result.decision == "flag"
    row = result.as_json()
    assert json.loads(json.dumps(row, allow_nan=False)) == row
    assert set(row) == {
        "risk",
        "decision",
        "factors",
        "reasons",
        "weights",
        "thresholds",
        "measures",
    }
    assert tuple(row["factors"]) == FACTORS == tuple(row["weights"])
    assert combine(row["factors"], row["weights"]) == row["risk"]
    assert decide(row["risk"], row["thresholds"]["flag"], row["thresholds"]["block"]) == "flag"
    assert row["reasons"] == [
        "delta 400 is 6.7 robust z above this user's median of 100 (MAD used 30, 20 submissions)",
        "9 accounts on this IP in the last hour (normal up to 5)",
    ]
    assert row["measures"]["identity"] == {"ip_users": 9, "device_users": 1, "user_ips": 1}
    assert row["measures"]["increment"]["z"] == round(0.6745 * 300 / 30, 4)


# ---------------------------------------------------------------- properties

times_near = st.one_of(
    st.just(0.0),
    st.floats(0, 3),
    st.floats(0, 400),
    st.floats(-10, 7200),
    st.floats(-MAX_ABS_TIME_S, MAX_ABS_TIME_S),
)
int64 = st.integers(INT64_MIN, INT64_MAX)
small_delta = st.integers(-1000, 10_000)


@st.composite
def any_signals(draw: st.DrawFn) -> Signals:
    """Any Signals from the documented ranges, extremes included."""
    now = draw(st.one_of(st.just(NOW), st.floats(-MAX_ABS_TIME_S, MAX_ABS_TIME_S)))
    count = draw(st.integers(0, HISTORY_MAX))
    offsets = draw(st.lists(times_near, min_size=count, max_size=count))
    times = sorted(max(-MAX_ABS_TIME_S, min(MAX_ABS_TIME_S, now - off)) for off in offsets)
    deltas = draw(
        st.one_of(
            st.lists(small_delta, min_size=count, max_size=count),
            st.lists(int64, min_size=count, max_size=count),
        )
    )
    low, high = sorted(draw(st.lists(st.one_of(small_delta, int64), min_size=2, max_size=2)))
    population = draw(
        st.one_of(
            st.none(),
            st.builds(
                PopulationStats,
                median=st.floats(-1e15, 1e15),
                mad=st.floats(0, 1e15),
                count=st.integers(1, 10_000),
            ),
        )
    )
    return Signals(
        now=now,
        delta=draw(st.one_of(st.integers(low, high), int64)),
        delta_min=low,
        delta_max=high,
        user_times=times,
        user_deltas=deltas,
        ip_requests=draw(st.integers(0, 10**6)),
        device_requests=draw(st.integers(0, 10**6)),
        ip_users=draw(st.integers(1, 10**4)),
        device_users=draw(st.integers(1, 10**4)),
        user_ips=draw(st.integers(1, 10**4)),
        population=population,
    )


@st.composite
def any_params(draw: st.DrawFn) -> FraudParams:
    flag, block = sorted(draw(st.lists(st.floats(0, 1), min_size=2, max_size=2, unique=True)))
    weight = st.floats(0, 1)
    return FraudParams(
        flag_threshold=flag,
        block_threshold=block,
        frequency_weight=draw(weight),
        increment_weight=draw(weight),
        timing_weight=draw(weight),
        identity_weight=draw(weight),
        velocity_weight=draw(weight),
    )


def check_assessment(result: Assessment, params: FraudParams) -> None:
    assert 0 <= result.risk <= 1
    assert tuple(result.factors) == FACTORS
    assert all(0 <= score <= 1 for score in result.factors.values())
    assert result.decision == decide(result.risk, params.flag_threshold, params.block_threshold)
    if result.decision == "block":
        assert result.risk >= params.block_threshold
    elif result.decision == "flag":
        assert params.flag_threshold <= result.risk < params.block_threshold
    else:
        assert result.risk < params.flag_threshold
    assert result.risk == combine(result.factors, params.weights)
    assert len(result.reasons) == sum(1 for score in result.factors.values() if score > 0)
    assert all(reason for reason in result.reasons)
    row = result.as_json()
    assert json.loads(json.dumps(row, allow_nan=False)) == row
    assert combine(row["factors"], row["weights"]) == row["risk"]


@given(any_signals(), st.one_of(st.just(PARAMS), any_params()))
@settings(max_examples=150, deadline=None)
def test_assess_never_raises_and_keeps_every_invariant(s: Signals, params: FraudParams) -> None:
    check_assessment(assess(s, params), params)


@given(
    any_signals(),
    st.sampled_from(["ip_requests", "device_requests", "ip_users", "device_users", "user_ips"]),
    st.integers(1, 100),
)
@settings(max_examples=100, deadline=None)
def test_more_of_any_count_never_lowers_the_risk(s: Signals, field: str, more: int) -> None:
    worse = replace(s, **{field: getattr(s, field) + more})
    assert assess(worse, PARAMS).risk >= assess(s, PARAMS).risk


@given(
    st.lists(st.floats(0, 1e6), min_size=1, max_size=200),
    st.floats(-1e6, 1e6),
)
def test_robust_z_is_monotone_and_finite(values: list[float], x: float) -> None:
    median, mad = median_mad(values)
    floor = max(mad, 1.0)
    z = robust_z(x, median=median, mad=floor)
    assert math.isfinite(z)
    assert robust_z(x + 1, median=median, mad=floor) >= z


@given(any_signals(), st.one_of(st.just(PARAMS), any_params()), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_the_order_the_history_comes_in_changes_nothing(
    s: Signals, params: FraudParams, rnd: random.Random
) -> None:
    # The actor passes it oldest first; any other order is scored the same.
    order = list(range(len(s.user_times)))
    rnd.shuffle(order)
    times = [s.user_times[i] for i in order]
    deltas = [s.user_deltas[i] for i in order]
    shuffled = replace(s, user_times=times, user_deltas=deltas)
    assert assess(shuffled, params).as_json() == assess(s, params).as_json()
    window = params.velocity_window_s
    assert user_velocity(times, deltas, s.now, s.delta, window) == user_velocity(
        s.user_times, s.user_deltas, s.now, s.delta, window
    )


@given(
    st.one_of(
        # Few distinct values (ties at and around the median), ordinary spreads, extremes,
        # and integers that floats cannot tell apart (some below the median round to it).
        st.lists(st.integers(-3, 3), min_size=1, max_size=HISTORY_MAX),
        st.lists(small_delta, min_size=1, max_size=HISTORY_MAX),
        st.lists(int64, min_size=1, max_size=HISTORY_MAX),
        st.lists(st.integers(2**62 - 3000, 2**62 + 3000), min_size=1, max_size=HISTORY_MAX),
    ),
    st.randoms(use_true_random=False),
)
@settings(max_examples=300, deadline=None)
def test_the_increment_median_and_mad_are_those_of_the_deltas_as_floats(
    deltas: list[int], rnd: random.Random
) -> None:
    # The model picks the MAD out of the sorted deltas without sorting every
    # distance; median_mad() sorts them all. repr() tells -0.0 from 0.0, as the log row would.
    rnd.shuffle(deltas)
    history = with_history([10.0] * len(deltas), deltas)
    measures = assess(history, replace(PARAMS, increment_min_history=1)).measures["increment"]
    expected = median_mad([float(delta) for delta in deltas])
    assert repr((measures["median"], measures["mad"])) == repr(expected)


@given(
    any_signals(),
    st.sampled_from([1.0, FREQUENCY_WINDOW_S, PARAMS.velocity_window_s, 3600.0]),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_the_measured_velocity_is_the_user_velocity(
    s: Signals, window: float, rnd: random.Random
) -> None:
    # The fraud actor feeds its population sketch with this measure when there is one.
    order = list(range(len(s.user_times)))
    rnd.shuffle(order)  # any order, like the history of nodes whose clocks differ
    s = replace(
        s,
        user_times=[s.user_times[i] for i in order],
        user_deltas=[s.user_deltas[i] for i in order],
        population=s.population or POPULATION,
    )
    measures = assess(s, replace(PARAMS, velocity_window_s=window)).measures["velocity"]
    expected = user_velocity(s.user_times, s.user_deltas, s.now, s.delta, window)
    if len(s.user_times) < PARAMS.velocity_min_history:
        assert measures == {}
    else:
        assert repr(measures["velocity"]) == repr(expected)


# ---------------------------------------------------------------- honest players


@dataclass(frozen=True)
class Profile:
    """One honest player: human timing, stable deltas, an ordinary network."""

    median_interval_s: float  # log-normal inter-arrivals...
    interval_cv: float  # ...with a coefficient of variation of at least 0.4
    delta_mean: float  # deltas around a mean of their own, within 1 to 10,000
    delta_cv: float
    history: int  # earlier submissions known
    ips: int  # 1 to 3 in the last hour (home, mobile, work)
    ip_users: int  # up to 3 users behind the IP (family, flatmates)
    seed: int  # for the draws that make the sample path


profiles = st.builds(
    Profile,
    median_interval_s=st.floats(2.0, 20.0),
    interval_cv=st.floats(0.4, 1.0),
    delta_mean=st.floats(50.0, 2000.0),
    delta_cv=st.floats(0.05, 0.4),
    history=st.integers(0, HISTORY_MAX),
    ips=st.integers(1, 3),
    ip_users=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)


def random_profile(rng: random.Random) -> Profile:
    return Profile(
        median_interval_s=rng.uniform(2.0, 20.0),
        interval_cv=rng.uniform(0.4, 1.0),
        delta_mean=rng.uniform(50.0, 2000.0),
        delta_cv=rng.uniform(0.05, 0.4),
        history=rng.randint(0, HISTORY_MAX),
        ips=rng.randint(1, 3),
        ip_users=rng.randint(1, 3),
        seed=rng.getrandbits(32),
    )


def honest_signals(profile: Profile, population: PopulationStats | None) -> Signals:
    rng = random.Random(profile.seed)
    intervals = human_intervals(
        profile.history,
        seed=rng.getrandbits(32),
        median_s=profile.median_interval_s,
        cv=profile.interval_cv,
    )
    times = times_ending_at_now(intervals)
    deltas = [
        min(
            10_000,
            max(1, round(rng.gauss(profile.delta_mean, profile.delta_mean * profile.delta_cv))),
        )
        for _ in range(profile.history + 1)
    ]
    own = sum(1 for t in times if NOW - t < FREQUENCY_WINDOW_S)
    # The others behind a shared IP play too, each at an honest pace.
    neighbours = sum(rng.randint(0, 25) for _ in range(profile.ip_users - 1))
    return Signals(
        now=NOW,
        delta=deltas[-1],
        delta_min=1,
        delta_max=10_000,
        user_times=times,
        user_deltas=deltas[:-1],
        ip_requests=own + neighbours,
        device_requests=own,
        ip_users=profile.ip_users,
        device_users=1,
        user_ips=profile.ips,
        population=population,
    )


def honest_population(players: int, seed: int) -> PopulationStats:
    rng = random.Random(seed)
    sketch = PopulationSketch(1024, min_count=50)
    for _ in range(players):
        profile = replace(random_profile(rng), history=rng.randint(PARAMS.velocity_min_history, 64))
        s = honest_signals(profile, None)
        sketch.observe(
            user_velocity(s.user_times, s.user_deltas, NOW, s.delta, PARAMS.velocity_window_s)
        )
    stats = sketch.stats()
    assert stats is not None
    return stats


HONEST_POPULATION = honest_population(500, seed=7)


@given(profiles)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_honest_players_are_never_blocked(profile: Profile) -> None:
    for population in (None, HONEST_POPULATION):
        result = assess(honest_signals(profile, population), PARAMS)
        assert result.risk < PARAMS.block_threshold, result.reasons


def test_honest_players_are_rarely_flagged() -> None:
    rng = random.Random(8)
    results = [
        assess(honest_signals(random_profile(rng), HONEST_POPULATION), PARAMS) for _ in range(1000)
    ]
    decisions = [result.decision for result in results]
    assert decisions.count("block") == 0
    assert decisions.count("flag") <= 10  # 1%
    # And most are not even close: the risk of nine in ten is under a tenth.
    risks = sorted(result.risk for result in results)
    assert risks[899] < 0.1


# ---------------------------------------------------------------- population sketch


def test_sketch_is_bounded_and_silent_below_its_minimum() -> None:
    sketch = PopulationSketch(100, min_count=10)
    assert sketch.size == 100
    for i in range(9):
        sketch.observe(float(i))
        assert sketch.stats() is None
    sketch.observe(9.0)
    assert sketch.stats() == PopulationStats(median=4.5, mad=2.5, count=10)
    for i in range(1000):
        sketch.observe(float(i))
    assert len(sketch) == 100
    # Only the last 100 (900 to 999) are kept.
    assert sketch.stats() == PopulationStats(median=949.5, mad=25.0, count=100)


def test_sketch_median_and_mad_on_known_data() -> None:
    sketch = PopulationSketch(16, min_count=1)
    for value in (1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0):
        sketch.observe(value)
    # Median 2; absolute deviations 1 1 0 0 2 4 7, whose median is 1.
    assert sketch.stats() == PopulationStats(median=2.0, mad=1.0, count=7)
    sketch.observe(math.nan)
    sketch.observe(math.inf)
    assert len(sketch) == 7
    sketch.observe(100.0)  # the cached answer is dropped
    assert sketch.stats() == PopulationStats(median=3.0, mad=2.0, count=8)


def test_median_mad_of_nothing_and_of_one() -> None:
    assert median_mad([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        median_mad([])


@pytest.mark.parametrize(
    ("size", "min_count", "message"),
    [(0, 1, "size"), (10, 0, "min_count"), (10, 11, "min_count"), (True, 1, "size")],
)
def test_sketch_refuses_bad_bounds(size: int, min_count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PopulationSketch(size, min_count=min_count)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"flag_threshold": 0.8, "block_threshold": 0.8}, "flag_threshold .* below block"),
        ({"flag_threshold": 0.9}, "flag_threshold .* below block"),
        ({"block_threshold": 1.5}, "block_threshold must be between 0 and 1"),
        ({"flag_threshold": -0.1}, "flag_threshold must be between 0 and 1"),
        ({"flag_threshold": math.nan}, "flag_threshold"),
        ({"timing_weight": 1.2}, "timing_weight must be between 0 and 1"),
        ({"velocity_weight": -0.5}, "velocity_weight"),
        ({"frequency_ip_limit": 0}, "frequency_ip_limit must be a positive integer"),
        ({"frequency_user_limit": 33}, "frequency_user_limit must be at most 32"),
        ({"frequency_device_limit": 2.5}, "frequency_device_limit must be a positive integer"),
        ({"increment_z_start": 8.0}, "increment_z_start .* below increment_z_end"),
        ({"increment_z_end": math.inf}, "increment_z_end"),
        ({"increment_top_fraction": 0.0}, "increment_top_fraction"),
        ({"increment_top_score": 2.0}, "increment_top_score"),
        ({"increment_mad_floor": 0.0}, "increment_mad_floor must be positive"),
        ({"increment_mad_floor_ratio": -1.0}, "increment_mad_floor_ratio"),
        ({"timing_min_intervals": 20}, "timing_min_intervals .* at most timing_max_intervals"),
        ({"timing_max_intervals": 65}, "timing_max_intervals must be at most 64"),
        ({"timing_cv_end": 0.3}, "timing_cv_end < timing_cv_start"),
        ({"timing_burst_window_s": 0.0}, "timing_burst_window_s must be positive"),
        ({"timing_burst_end": 5}, "timing_burst_start .* below timing_burst_end"),
        ({"identity_ip_users_end": 3}, "identity_ip_users_start .* below identity_ip_users_end"),
        ({"identity_device_users_start": 0}, "identity_device_users_start"),
        ({"velocity_window_s": -1.0}, "velocity_window_s must be positive"),
        ({"velocity_mad_floor": math.nan}, "velocity_mad_floor"),
        ({"velocity_min_history": 0}, "velocity_min_history"),
    ],
)
def test_params_refuse_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FraudParams(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"now": math.nan}, "now must be finite"),
        ({"now": math.inf}, "now must be finite"),
        ({"user_times": [math.nan], "user_deltas": [1]}, "user_times must be finite"),
        ({"user_times": [1.0], "user_deltas": []}, "same length"),
        ({"user_times": [NOW] * 65, "user_deltas": [1] * 65}, "at most 64"),
        ({"delta": 2**63}, "delta must be a signed 64-bit integer"),
        ({"user_deltas": [1.5], "user_times": [NOW]}, "user_deltas must be an integer"),
        ({"delta_min": 10, "delta_max": 9}, "delta_min .* greater than delta_max"),
        ({"ip_requests": -1}, "ip_requests must be an integer of at least 0"),
        ({"ip_users": 0}, "ip_users must be an integer of at least 1"),
        ({"device_users": True}, "device_users"),
        ({"user_ips": 0}, "user_ips"),
    ],
)
def test_signals_refuse_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        signals(**changes)


BAD_TIMES = [math.nan, math.inf, -math.inf, True, "1.0", None, 1e13, -1e13, 10**13]
BAD_INTEGERS = [1.0, 1.5, math.nan, True, False, "1", None, 2**63, -(2**63) - 1, 10**30]


@pytest.mark.parametrize("bad", BAD_TIMES)
@pytest.mark.parametrize("at", [0, 7, -1])
def test_signals_refuse_any_bad_time_wherever_it_is(bad: Any, at: int) -> None:
    times: list[Any] = times_ending_at_now([3.0] * 20)
    times[at] = bad
    with pytest.raises(ValueError, match="user_times must be"):
        signals(user_times=times, user_deltas=[100] * 20)
    with pytest.raises(ValueError, match="user_times must be"):
        signals(user_times=tuple(times), user_deltas=(100,) * 20)
    with pytest.raises(ValueError, match="now must be"):
        signals(now=bad)


@pytest.mark.parametrize("bad", BAD_INTEGERS)
@pytest.mark.parametrize("at", [0, 7, -1])
def test_signals_refuse_any_bad_delta_wherever_it_is(bad: Any, at: int) -> None:
    deltas: list[Any] = [100] * 20
    deltas[at] = bad
    with pytest.raises(ValueError, match="user_deltas must be"):
        signals(user_times=times_ending_at_now([3.0] * 20), user_deltas=deltas)
    for field in ("delta", "delta_min", "delta_max"):
        with pytest.raises(ValueError, match=f"{field} must be"):
            signals(**{field: bad})


@pytest.mark.parametrize("bad", [-1, 1.0, True, "1", None])
@pytest.mark.parametrize(
    "field", ["ip_requests", "device_requests", "ip_users", "device_users", "user_ips"]
)
def test_signals_refuse_any_bad_count(field: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=f"{field} must be an integer of at least"):
        signals(**{field: bad})


def test_signals_name_the_first_bad_field() -> None:
    with pytest.raises(ValueError, match=r"^now"):
        signals(now=math.nan, user_times=[math.nan], user_deltas=[1.5], delta=2**63)
    with pytest.raises(ValueError, match=r"^user_times"):
        signals(user_times=[math.nan], user_deltas=[1.5], delta=2**63)
    with pytest.raises(ValueError, match=r"^delta must"):
        signals(user_times=[NOW], user_deltas=[1.5], delta=2**63, ip_users=0)
    with pytest.raises(ValueError, match=r"^user_deltas"):
        signals(user_times=[NOW], user_deltas=[1.5], delta_min=5, delta_max=4)
    with pytest.raises(ValueError, match=r"^delta_min"):
        signals(user_times=[NOW, NOW], user_deltas=[1], delta_min=5, delta_max=4)
    with pytest.raises(ValueError, match="same length"):
        signals(user_times=[NOW, NOW], user_deltas=[1], ip_users=0)


class Seconds(float):
    pass


class Points(int):
    pass


@pytest.mark.parametrize(
    "changes",
    [
        {"now": int(NOW), "user_times": [int(NOW) - 10, NOW - 5.0], "user_deltas": [1, 2]},
        {"now": Seconds(NOW), "user_times": [Seconds(NOW - 1)], "user_deltas": [Points(5)]},
        {"user_times": [-MAX_ABS_TIME_S, MAX_ABS_TIME_S], "user_deltas": [INT64_MIN, INT64_MAX]},
        {"delta": INT64_MIN, "delta_min": INT64_MIN, "delta_max": INT64_MAX},
        {"delta": Points(7), "delta_min": Points(1), "delta_max": Points(9)},
        {"ip_requests": 10**30, "device_requests": 2**64, "ip_users": 2**63},
        {"ip_users": Points(3), "user_ips": Points(2)},
        {
            "now": MAX_ABS_TIME_S,
            "user_times": [NOW] * HISTORY_MAX,
            "user_deltas": [0] * HISTORY_MAX,
        },
    ],
)
def test_signals_take_every_valid_value(changes: dict[str, Any]) -> None:
    s = signals(**changes)
    check_assessment(assess(s, PARAMS), PARAMS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"median": math.nan}, "median"), ({"mad": -1.0}, "mad"), ({"count": 0}, "count")],
)
def test_population_stats_refuse_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(POPULATION, **changes)


# ---------------------------------------------------------------- docs


def test_the_docs_give_every_parameter_with_its_default() -> None:
    docs = DOCS_PATH.read_text("utf-8")
    for field in fields(FraudParams):
        default = field.default
        assert re.search(rf"`{field.name}`\s*\|\s*`?{default!r}`?", docs), field.name


def test_the_docs_end_the_model_part_where_operations_begin() -> None:
    docs = DOCS_PATH.read_text("utf-8")
    assert "\n<!-- operations sections follow -->\n" in docs
    for heading in ("How a submission is scored", "Decisions", "Tuning", *FACTORS):
        assert re.search(rf"^## .*{heading}", docs, re.MULTILINE | re.IGNORECASE), heading


def test_parse_params_reads_overrides_and_names_mistakes() -> None:
    from protocol.fraud import parse_params

    assert parse_params("") == FraudParams()
    params = parse_params("identity_weight=0.5, frequency_user_limit=20,timing_cv_end=0.05")
    assert params.identity_weight == 0.5
    assert params.frequency_user_limit == 20 and isinstance(params.frequency_user_limit, int)
    assert params.timing_cv_end == 0.05
    for bad, names in [
        ("identity=0.5", "'identity'"),
        ("frequency_user_limit=many", "frequency_user_limit"),
        ("frequency_user_limit=2.5", "frequency_user_limit"),
        ("identity_weight=0.5,identity_weight=0.6", "twice"),
        ("identity_weight=1.5", "identity_weight"),
    ]:
        with pytest.raises(ValueError, match=names):
            parse_params(bad)
