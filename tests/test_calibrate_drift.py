"""Drift detection on reference rounds, and the reference set itself (no agents: fast)."""
import math

import numpy as np
import pytest

from fleetnas.calibrate import RoundEntry, compare_rounds, least_per_config, min_pairs, reference_set
from fleetnas.calibrate.drift import SWING_MIN_STEPS, SWING_WINDOW, swing_floor
from fleetnas.supernets import get_supernet

KEYS = [f"cfg{i}" for i in range(10)]
BASE_MS = np.linspace(0.5, 5.0, 10)  # reference configs span the space's cost
PLATFORM = {"runtime_version": "1.32.0", "agent_version": "0.1.0", "os": "Linux 6.1"}


def entries(latency_ms, rel_ci=0.005, throttled=(), version="1.32.0"):
    return [RoundEntry(k, True, float(ms), rel_ci, i in throttled, version, i) for i, (k, ms) in
            enumerate(zip(KEYS, latency_ms))]


def test_a_uniform_20_percent_slowdown_is_drift_with_the_figures_in_the_reason():
    v = compare_rounds(entries(BASE_MS), entries(BASE_MS * 1.2))
    assert v.drift and v.changed and v.cause == "drift" and v.pairs == 10
    assert v.median_change == pytest.approx(0.2)
    assert v.p_value == pytest.approx(2 / 2 ** 10)  # all ten moved the same way: the exact two-sided minimum
    assert v.reason.startswith("+20.0 % median over 10 reference configs (p=0.002")
    faster = compare_rounds(entries(BASE_MS), entries(BASE_MS / 1.25))  # a device can drift faster too
    assert faster.drift and faster.median_change == pytest.approx(-0.2)


def test_one_wild_config_or_opposite_moves_or_a_small_shift_do_not_fire():
    wild = BASE_MS.copy()
    wild[3] *= 1.8
    assert not compare_rounds(entries(BASE_MS), entries(wild)).drift
    # four configs far off: the median ignores them
    wild[[0, 5, 7]] *= 1.5
    assert not compare_rounds(entries(BASE_MS), entries(wild)).drift
    mixed = BASE_MS * np.array([1.15, 0.86, 1.15, 0.86, 1.15, 1.15, 0.86, 1.15, 0.86, 1.15])
    v = compare_rounds(entries(BASE_MS), entries(mixed))
    assert abs(v.median_change) >= 0.1 and not v.drift and v.reason.startswith("not consistent")
    small = compare_rounds(entries(BASE_MS), entries(BASE_MS * 1.05))
    assert small.p_value < 0.01 and not small.drift and small.reason.startswith("steady")  # real, but below 10 %


def test_measurements_too_loose_to_resolve_the_shift_do_not_fire():
    v = compare_rounds(entries(BASE_MS, rel_ci=0.2), entries(BASE_MS * 1.2, rel_ci=0.2))
    assert not v.drift and v.noise == pytest.approx(math.hypot(0.2, 0.2)) and "imprecise" in v.reason


def test_throttled_and_failed_entries_are_left_out_and_too_few_pairs_are_inconclusive():
    now = entries(BASE_MS * 1.3, throttled={0, 1})
    now[2] = RoundEntry(KEYS[2], False)
    v = compare_rounds(entries(BASE_MS), now)
    assert v.pairs == 7 < min_pairs(0.01) == 8 and v.throttled == 2
    assert not v.drift and not v.changed and v.reason.startswith("inconclusive: 7 comparable reference configs")
    assert compare_rounds(entries(BASE_MS), now, alpha=0.05).drift  # 7 pairs can reach p <= 0.05


def test_a_version_change_is_a_change_whatever_the_latencies():
    v = compare_rounds(entries(BASE_MS), entries(BASE_MS * 1.01), baseline_platform=PLATFORM,
                       current_platform={**PLATFORM, "runtime_version": "1.33.0"})
    assert v.changed and not v.drift and v.cause == "version"
    assert v.version_change == {"runtime_version": ["1.32.0", "1.33.0"]}
    assert v.reason.startswith("runtime_version 1.32.0 → 1.33.0; steady")
    unknown = compare_rounds(entries(BASE_MS), entries(BASE_MS), baseline_platform={},
                             current_platform=PLATFORM)
    assert not unknown.changed  # a field missing on one side is not a change


def test_entries_round_trip_through_json_and_bad_parameters_are_named():
    failed = RoundEntry("k", False)
    assert failed.to_dict()["median_ms"] is None and math.isnan(RoundEntry.from_dict(failed.to_dict()).median_ms)
    measured = entries(BASE_MS, throttled={1})[1]
    assert RoundEntry.from_dict(measured.to_dict()) == measured
    with pytest.raises(ValueError, match="threshold .* got 10"):
        compare_rounds([], [], threshold=10)
    with pytest.raises(ValueError, match="alpha .* got 0"):
        compare_rounds([], [], alpha=0)


def noisy_round(rng, factor=1.0, interference_rate=0.15):
    """A reference round on a busy device: each config off by a lognormal error of 2 %, and now and then one
    slowed by 1.2-2x (another process running during its measurement: interference only slows)."""
    ms = BASE_MS * factor * np.exp(rng.normal(0.0, 0.02, size=10))
    hit = rng.random(10) < interference_rate
    ms[hit] *= rng.uniform(1.2, 2.0, size=hit.sum())
    return entries(ms)


def drift_found(rng, baseline, factor):
    """What a watch round does: one round, and if it looks changed, the lesser of it and a second one."""
    now = noisy_round(rng, factor)
    if not compare_rounds(baseline, now).drift:
        return False
    return compare_rounds(baseline, least_per_config([now, noisy_round(rng, factor)])).drift


def test_busy_device_noise_never_fires_over_600_rounds_and_a_20_percent_slowdown_always_does():
    rng = np.random.default_rng(0)
    baseline = least_per_config([noisy_round(rng), noisy_round(rng)])
    assert sum(drift_found(rng, baseline, 1.0) for _ in range(600)) == 0
    assert sum(drift_found(rng, baseline, 1.2) for _ in range(200)) == 200


def test_a_single_disturbed_baseline_measurement_would_hide_drift_but_the_lesser_of_two_does_not():
    disturbed = BASE_MS.copy()
    disturbed[9] *= 2.0    # the largest config, slowed while the baseline was measured
    slow = entries(BASE_MS * 1.2)
    assert not compare_rounds(entries(disturbed), slow).drift  # its -40 % has the largest rank: p = 0.02
    assert compare_rounds(least_per_config([entries(disturbed), entries(BASE_MS * 1.01)]), slow).drift


def test_least_per_config_takes_each_configs_lesser_usable_median():
    a, b = entries(BASE_MS), entries(BASE_MS * 0.9, throttled={0})
    b[1] = RoundEntry(KEYS[1], False)
    least = least_per_config([a, b])
    assert [e.key for e in least] == KEYS
    assert least[0] == a[0] and least[1] == a[1] and least[2] == b[2]  # throttled and failed do not count
    assert least_per_config([[RoundEntry("x", False)], [RoundEntry("x", False, throttled=True)]])[0].throttled


def test_the_reference_set_is_fixed_spans_the_space_and_has_a_digest():
    space = get_supernet("demo").space
    a, b = reference_set(space), reference_set(space)
    assert a == b and len(a.configs) == 10 and len(set(a.keys)) == 10 and len(a.digest) == 16
    assert a.configs[0] == {v.name: min(v.choices) for v in space.variables}   # smallest
    assert a.configs[1] == {v.name: max(v.choices) for v in space.variables}   # largest
    assert all(space.is_valid(c) for c in a.configs)
    assert reference_set(space, 6).digest != a.digest
    with pytest.raises(ValueError, match="at least 2 configs, got 1"):
        reference_set(space, 1)
    ofa = reference_set(get_supernet("ofa_mbv3").space)
    assert ofa.digest != a.digest and len(ofa.configs) == 10


def rounds_at(factors, rng, noise=0.02):
    """A device's recorded rounds, one per factor (its speed then), each config off by lognormal noise."""
    return [entries(BASE_MS * f * np.exp(rng.normal(0.0, noise, size=10))) for f in factors]


def test_the_swing_floor_learns_a_devices_swings_but_not_one_real_drift():
    rng = np.random.default_rng(3)
    steady, steps = swing_floor(rounds_at([1.0] * 21, rng))
    assert steps == SWING_WINDOW == 20 and 0 < math.expm1(steady) < 0.1   # 2 % noise: well below 10 %
    assert swing_floor(rounds_at([1.0] * 10, rng)) == (0.0, 9)  # too few steps to say anything yet
    # One real drift in the history is one large step: it must not hide the next drift.
    drifted, _ = swing_floor(rounds_at([1.0] * 10 + [1.3] * 11, rng))
    assert math.expm1(drifted) < 0.1
    # A device that runs 1.5x slower in one round of three swings out and back: that is its normal.
    swinging, _ = swing_floor(rounds_at([1.5 if i % 3 == 0 else 1.0 for i in range(21)], rng))
    assert math.exp(swinging) > 1.5
    # Only the latest SWING_WINDOW steps count: a device whose swings stopped long ago is steady again.
    calmed, _ = swing_floor(rounds_at([1.5 if i % 2 else 1.0 for i in range(20)] + [1.0] * 21, rng))
    assert math.expm1(calmed) < 0.1
    # The first floor, from exactly SWING_MIN_STEPS steps, leaves out the largest entirely (a drift acted on).
    first, steps = swing_floor(rounds_at([1.0] * 10 + [2.0], rng, noise=0.01))
    assert steps == SWING_MIN_STEPS == 10 and math.expm1(first) < 0.05


def test_rounds_with_too_few_usable_configs_and_version_changes_are_passed_over():
    rng = np.random.default_rng(6)
    factors = [1.6 if i % 3 == 0 else 1.0 for i in range(40)]
    history = rounds_at(factors, rng)
    for i in range(1, 40, 3):  # one round in three on a throttled device: nothing usable
        history[i] = entries(BASE_MS, throttled=set(range(10)))
    swing, steps = swing_floor(history)
    assert steps == SWING_WINDOW and math.exp(swing) > 1.6  # the steps run between the usable rounds
    # A runtime upgrade that made the device twice as fast is one step, and not a swing.
    upgraded = rounds_at([1.0] * 11, rng, noise=0.01) + [entries(BASE_MS / 2, version="1.33.0") for _ in range(2)]
    assert swing_floor(upgraded)[1] == 11

def test_a_shift_within_the_devices_own_swings_is_not_drift():
    rng = np.random.default_rng(4)
    history = rounds_at([1.6 if i % 3 == 0 else 1.0 for i in range(21)], rng)
    v = compare_rounds(entries(BASE_MS), entries(BASE_MS * 1.3), history=history)
    assert not v.drift and v.swing > 1.6 and v.swing_steps == 20
    assert v.reason.startswith("within this device's swings: +30.0 % median") and "swings ×/÷" in v.reason
    assert compare_rounds(entries(BASE_MS), entries(BASE_MS * 1.3)).drift  # the same shift, no history
    assert compare_rounds(entries(BASE_MS), entries(BASE_MS * 4.0), history=history).drift  # beyond the swings
    assert compare_rounds(entries(BASE_MS), entries(BASE_MS / 4.0), history=history).drift  # either way
    assert v.to_dict()["swing"] == pytest.approx(v.swing)
    unknown = compare_rounds(entries(BASE_MS), entries(BASE_MS), history=history[:5])
    assert unknown.swing == 1.0 and unknown.swing_steps == 4 and "swings" not in unknown.reason


def swinging_watch(rng, rounds, slow_share, slow=1.5, drift_from=None, drift=1.0, learn=True):
    """A watch on a device whose speed swings (slow by `slow` in a `slow_share` of rounds, the state held for
    a round and its confirmation), as `watch_round` judges: the first look, a confirmation when it looks
    drifted, every round recorded, a confirmed drift the new baseline. Which rounds were called drift."""
    def device(i):
        factor = (slow if rng.random() < slow_share else 1.0) * (drift if drift_from is not None and i >= drift_from
                                                                  else 1.0)
        return lambda: noisy_round(rng, factor)

    baseline = least_per_config([noisy_round(rng), noisy_round(rng)])
    recorded, called = [baseline], []
    for i in range(rounds):
        measure = device(i)
        now = measure()
        history = recorded if learn else []
        verdict = compare_rounds(baseline, now, history=history)
        if verdict.drift:
            now = least_per_config([now, measure()])
            verdict = compare_rounds(baseline, now, history=history)
        recorded.append(now)
        baseline = now if verdict.drift else baseline
        called.append(verdict.drift)
    return np.array(called)


def test_a_watch_on_a_swinging_device_stops_calling_its_swings_drift_and_still_sees_a_real_one():
    rng = np.random.default_rng(5)
    # A third of the rounds 1.5x slower: without what its history says, about 2 rounds in 5 are called drift.
    blind = np.array([swinging_watch(rng, 60, 0.3, learn=False) for _ in range(5)])
    assert blind[:, 10:].sum() > 60  # of 250
    learned = np.array([swinging_watch(rng, 60, 0.3) for _ in range(5)])
    assert learned[:, 10:].sum() <= 3  # once SWING_MIN_STEPS steps are known
    # A drift to four times the latency, well beyond the swings, is seen within the next three rounds.
    found = [swinging_watch(rng, 33, 0.3, drift_from=30, drift=4.0)[30:].any() for _ in range(10)]
    assert sum(found) == 10
