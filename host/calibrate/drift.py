"""Has a device changed? Its reference round now against its baseline round, config by config.

A device has drifted when its latencies moved together, by more than a threshold, and beyond chance:

  * effect      the median over reference configs of log(latency now / latency at baseline) is at least
                log(1 + threshold) away from zero (default threshold 10 %);
  * consistency a Wilcoxon signed-rank test of those paired log ratios rejects "no shift" at `alpha`
                (default 0.01): one config that measured badly, or a few that moved in opposite
                directions, cannot pass it; with 10 configs all must move the same way bar the smallest;
  * precision   the shift exceeds the median of the pairs' own uncertainty (the two medians' 95 % CI
                half-widths, combined), so measurements too loose to resolve it cannot raise an alarm;
  * swings      the shift exceeds what the device's own speed does from one round to the next
                (`swing_floor`: SWING_SIGMAS standard deviations of the steps between its successive
                rounds, estimated robustly), once SWING_MIN_STEPS steps are known. A measurement's CI
                says how well it pinned its median, not how far the device moves between rounds: on a
                shared VM, or a phone whose clock governor moves, the same configs measured twice in a
                row differ by 1 % to 50 % while each CI is under 1 %. Without this gate a watch on such
                a device calls each swing drift, marks its measurements stale and refits, again and again.

Throttled or failed measurements are left out of the pairs (a throttled device is a passing state, not
a drift); too few pairs left to ever reach `alpha` make the round inconclusive. A change of runtime
version, agent version or OS between the rounds is a change by itself, whatever the latencies say.

Interference (another process, a background job) only ever slows a measurement down, and on a busy
device it hits one config in a round now and then, by up to 2x. So a baseline, and a round that looks
like drift before it is acted on, is made of two back-to-back rounds: each config's lesser median
(`least_per_config`). One disturbed measurement then neither hides a drift nor fakes one.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.01
#: How many robust standard deviations of the device's round-to-round steps a shift must exceed.
SWING_SIGMAS = 3.0
#: The latest steps between successive rounds that the swings are learned from, and the fewest that count.
SWING_WINDOW, SWING_MIN_STEPS = 20, 10
NORMAL_ABS_Q90 = 1.6449  # the 90th percentile of |x| for x ~ N(0, 1)
PLATFORM_FIELDS = ("runtime_version", "agent_version", "os")


@dataclass(frozen=True)
class RoundEntry:
    """One reference config's measurement in a round."""
    key: str                        # the config's space key
    ok: bool
    median_ms: float = math.nan
    rel_ci_half_width: float = math.nan   # of the median's 95 % CI, as a fraction of the median
    throttled: bool = False
    runtime_version: str = ""
    measurement_id: int | None = None

    @property
    def usable(self) -> bool:
        return self.ok and not self.throttled and self.median_ms > 0 and math.isfinite(self.median_ms)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("median_ms", "rel_ci_half_width"):  # JSON has no NaN
            d[name] = d[name] if math.isfinite(d[name]) else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RoundEntry":
        nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
        return cls(d["key"], bool(d["ok"]), nan(d.get("median_ms")), nan(d.get("rel_ci_half_width")),
                   bool(d.get("throttled")), d.get("runtime_version") or "", d.get("measurement_id"))


@dataclass(frozen=True)
class DriftVerdict:
    drift: bool                     # latencies moved (see the module's rule)
    pairs: int                      # reference configs compared
    median_change: float            # fraction: +0.213 is 21.3 % slower than at baseline; NaN without pairs
    p_value: float                  # Wilcoxon signed-rank, two-sided; NaN without pairs
    noise: float                    # median combined relative CI half-width of the pairs
    reason: str                     # one line: what was found
    version_change: dict = field(default_factory=dict)   # {field: [before, now]}
    throttled: int = 0              # reference measurements left out because the device was throttled
    swing: float = 1.0              # the device's own swings, a factor either way: within ×/÷ swing is no drift
    swing_steps: int = 0            # steps between its rounds learned from; below SWING_MIN_STEPS swing is unknown

    @property
    def changed(self) -> bool:
        return self.drift or bool(self.version_change)

    @property
    def cause(self) -> str:
        """The calibration reason this verdict gives: version (it wins: it explains a shift too), drift or ''."""
        return "version" if self.version_change else "drift" if self.drift else ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("median_change", "p_value", "noise"):
            d[name] = d[name] if math.isfinite(d[name]) else None
        d["changed"] = self.changed
        return d


def check_parameters(threshold: float, alpha: float) -> None:
    if not 0 < threshold < 10:
        raise ValueError(f"the drift threshold is a fraction such as 0.1 (10 %), got {threshold!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")


def min_pairs(alpha: float) -> int:
    """The fewest pairs with which a two-sided signed-rank test can reach `alpha` at all (p ≥ 2 / 2**n)."""
    return max(1, math.ceil(math.log2(2.0 / alpha)))


def smallest_alpha(pairs: int) -> float:
    """The least alpha that `pairs` pairs can ever reach (min_pairs' inverse: min_pairs of it is `pairs`)."""
    return 2.0 / 2 ** pairs


def check_alpha_reachable(alpha: float, pairs: int) -> None:
    """Raises ValueError when `pairs` pairs can never reach `alpha`: every round would be inconclusive, and
    drift detection silently off."""
    if min_pairs(alpha) > pairs:
        raise ValueError(f"alpha {alpha:g} needs {min_pairs(alpha)} reference configs to ever detect drift, but the "
                         f"reference set has {pairs}: the smallest usable alpha is {smallest_alpha(pairs)!r}")


def compare_rounds(baseline: Sequence[RoundEntry], current: Sequence[RoundEntry], *,
                   baseline_platform: dict | None = None, current_platform: dict | None = None,
                   threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA,
                   history: Sequence[Sequence[RoundEntry]] = ()) -> DriftVerdict:
    """The verdict on `current` against `baseline` (entries are paired by config key). `history`: the agent's
    earlier rounds, oldest first, that its swings are learned from (`swing_floor`); not `current` itself."""
    check_parameters(threshold, alpha)
    swing, steps = swing_floor(history)  # log units
    versions = version_changes(baseline_platform or {}, current_platform or {})
    before = {e.key: e for e in baseline if e.usable}
    pairs = [(before[e.key], e) for e in current if e.usable and e.key in before]
    throttled = sum(e.ok and e.throttled for e in current)
    version_text = "; ".join(f"{name} {old} → {new}" for name, (old, new) in versions.items())
    if len(pairs) < min_pairs(alpha):
        reason = (f"inconclusive: {len(pairs)} comparable reference configs "
                  f"({throttled} throttled), need {min_pairs(alpha)} for p ≤ {alpha:g}")
        return DriftVerdict(False, len(pairs), math.nan, math.nan, math.nan,
                            f"{version_text}; {reason}" if versions else reason, versions, throttled,
                            math.exp(swing), steps)
    log_ratios = np.array([math.log(now.median_ms / then.median_ms) for then, now in pairs])
    shift = float(np.median(log_ratios))
    noise = float(np.median([math.hypot(_fraction(then.rel_ci_half_width), _fraction(now.rel_ci_half_width))
                             for then, now in pairs]))
    p_value = _signed_rank_p(log_ratios)
    change = math.expm1(shift)
    big = abs(shift) >= math.log1p(threshold)
    drift = big and p_value <= alpha and abs(shift) > noise and abs(shift) > swing
    swings = f", swings ×/÷{math.exp(swing):.2f} over {steps} steps" if steps >= SWING_MIN_STEPS else ""
    figures = (f"{change * 100:+.1f} % median over {len(pairs)} reference configs (p={p_value:.2g}, "
               f"CI ±{noise * 100:.1f} %{swings})")
    reason = (figures if drift else f"steady: {figures}, within ±{threshold * 100:g} %" if not big
              else f"not consistent: {figures}, p > {alpha:g}" if p_value > alpha
              else f"too imprecise: {figures}, shift within the measurements' own CI" if abs(shift) <= noise
              else f"within this device's swings: {figures}")
    return DriftVerdict(drift, len(pairs), change, p_value, noise, f"{version_text}; {reason}" if versions else reason,
                        versions, throttled, math.exp(swing), steps)


def swing_floor(history: Sequence[Sequence[RoundEntry]]) -> tuple[float, int]:
    """(the least |log shift| beyond the device's own swings, the steps it was learned from); (0.0, steps) while
    fewer than SWING_MIN_STEPS are known.

    A step is the median log ratio of the configs two successive usable rounds share (rounds with fewer than 3
    usable configs, throttled or failed, are passed over; so are steps across a runtime version change, a
    change by itself): how far the device moved between them, as a shift against the baseline is how far it
    moved since then. The floor is SWING_SIGMAS standard deviations of the latest SWING_WINDOW steps, each
    estimated as their 90th percentile |step| / 1.645 (what it is for normal steps about zero), taken as an
    observed step, not interpolated. Steps, not each round's distance from the history's mean: a real drift is
    one large step, a swing is two (out and back) and recurs. That percentile of 10 to 19 steps leaves out
    the largest (of 20, the two largest): a drift the watch has acted on must not hide the next one; it takes
    in swings seen in more than a tenth of the steps, where the median would need them in half. Swings slower
    than the rounds (a state that holds for several rounds and moves by small steps) go unseen: to the watch
    they are drift."""
    rounds = [_usable_medians(entries) for entries in history]
    rounds = [r for r in rounds if len(r[1]) >= 3]  # fewer: one config's own noise would be the step
    steps = []
    for (version_before, before), (version_after, after) in zip(rounds, rounds[1:]):
        shared = before.keys() & after.keys()
        if len(shared) >= 3 and (version_before == version_after or not version_before or not version_after):
            steps.append(float(np.median([math.log(after[k] / before[k]) for k in shared])))
    steps = steps[-SWING_WINDOW:]
    if len(steps) < SWING_MIN_STEPS:
        return 0.0, len(steps)
    return SWING_SIGMAS * float(np.quantile(np.abs(steps), 0.9, method="lower")) / NORMAL_ABS_Q90, len(steps)


def _usable_medians(entries: Sequence[RoundEntry]) -> tuple[str, dict[str, float]]:
    """(the runtime version most of the round ran, {config key: median ms}) of a round's usable entries."""
    usable = [e for e in entries if e.usable]
    versions = Counter(e.runtime_version for e in usable if e.runtime_version)
    return (versions.most_common(1)[0][0] if versions else ""), {e.key: e.median_ms for e in usable}


def least_per_config(rounds: Sequence[Sequence[RoundEntry]]) -> list[RoundEntry]:
    """Each config's usable entry with the least median over `rounds` (same reference set), in the first
    round's order; a config with no usable entry keeps its latest entry."""
    by_key: dict[str, list[RoundEntry]] = {}
    for entries in rounds:
        for e in entries:
            by_key.setdefault(e.key, []).append(e)
    least = []
    for candidates in by_key.values():
        usable = [e for e in candidates if e.usable]
        least.append(min(usable, key=lambda e: e.median_ms) if usable else candidates[-1])
    return least


def version_changes(before: dict, now: dict) -> dict:
    """{field: [before, now]} for each platform field known in both and different."""
    return {name: [before[name], now[name]] for name in PLATFORM_FIELDS
            if before.get(name) and now.get(name) and before[name] != now[name]}


def _fraction(rel_ci_half_width: float) -> float:
    # A measurement without a CI (too few runs: the agent sends a huge sentinel) is as uncertain as it gets,
    # but no more: it must not make drift look precise, nor drown every other pair's noise.
    return min(rel_ci_half_width, 1.0) if math.isfinite(rel_ci_half_width) else 1.0


def _signed_rank_p(log_ratios: np.ndarray) -> float:
    import warnings

    from scipy.stats import wilcoxon

    if not np.any(log_ratios):
        return 1.0
    # Exact for a reference set's few pairs, even with ties or zeros (SciPy's "auto" would switch to a
    # permutation test there, 200x slower, for no better answer at this size).
    method = "exact" if len(log_ratios) <= 50 else "approx"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p_value = float(wilcoxon(log_ratios, zero_method="wilcox", method=method).pvalue)
    return p_value if math.isfinite(p_value) else 1.0
