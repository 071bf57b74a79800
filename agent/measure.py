"""Where latency is measured: warm-up, adaptive repetition, statistics.

The method follows TFLite's benchmark_model and MLPerf's single-stream scenario:
  1. warm up until both a minimum number of runs and a minimum time are reached;
  2. repeat timed runs until the 95 % confidence interval of the median is narrower than a target
     (relative half-width, default 1 %) — or a run or time cap is hit — but never fewer than the minimum
     runs and time, except where the time cap comes first: it bounds every measurement (the host's
     deadlines are made from it), so a model too slow for the minimum runs stops at the cap, short of
     its target (`target_met` false);
  3. report n, mean, median, p90, p99, std, min, max, the median's confidence interval, and whether the
     target was met.
The median's interval is distribution-free (order statistics of a binomial(n, 1/2)), because latency
samples are skewed and occasionally stall: a normal-theory interval of the mean would be misleading.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

Z95 = 1.959963984540054
#: rel_ci_half_width when there is no interval (fewer than MIN_CI_RUNS runs, or a zero median).
NO_INTERVAL = 1e9
#: The largest max_s and warmup_min_s a stopping rule may ask for.
MAX_SECONDS = 3600
#: The most timed runs a rule may ask for (a run count beyond it would outlast any time cap on a fast model).
MAX_RUNS = 1_000_000
#: The most intra-op threads a measurement may ask for (the host's options and inventory check it too).
MAX_THREADS = 256


@dataclass(frozen=True)
class StoppingRule:
    warmup_min_runs: int = 5
    warmup_min_s: float = 0.5
    min_runs: int = 10
    max_runs: int = 100_000
    min_s: float = 1.0
    max_s: float = 30.0
    target_rel_ci: float = 0.01

    @classmethod
    def from_message(cls, values: dict) -> "StoppingRule":
        """Zero or missing fields take the defaults (proto3 cannot tell 'unset' from 0)."""
        given = {f.name: values[f.name] for f in fields(cls) if values.get(f.name)}
        for name, value in given.items():  # before a cap pulls a minimum down with it, which would be named instead
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number, not negative, got {value}")
        # A cap given alone pulls the default minimum down with it (max_s=0.3 means "be quick").
        if "max_s" in given and "min_s" not in given:
            given["min_s"] = min(cls.min_s, given["max_s"])
        if "max_runs" in given and "min_runs" not in given:
            given["min_runs"] = min(cls.min_runs, given["max_runs"])
        if "max_s" in given and "warmup_min_s" not in given:  # the warm-up may take no longer than max_s
            given["warmup_min_s"] = min(cls.warmup_min_s, given["max_s"])
        return cls(**given)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for f in fields(self):  # NaN passes every comparison below, and infinity would never stop
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number, not negative, got {value}")
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) is below min_runs ({self.min_runs})")
        if self.max_s < self.min_s:
            raise ValueError(f"max_s ({self.max_s}) is below min_s ({self.min_s})")
        if not 0 < self.target_rel_ci < 1:
            raise ValueError(f"target_rel_ci must be in (0, 1), got {self.target_rel_ci}")
        for name, cap, unit in (("max_runs", MAX_RUNS, ""), ("max_s", MAX_SECONDS, " s"),
                                ("warmup_min_s", MAX_SECONDS, " s")):
            if getattr(self, name) > cap:
                raise ValueError(f"{name} is capped at {cap:,}{unit}, got {getattr(self, name):g}")
        if self.warmup_min_s > self.max_s:  # measure() caps the warm-up at max_s, and the deadlines assume it
            raise ValueError(f"warmup_min_s ({self.warmup_min_s}) is above max_s ({self.max_s}), which caps the "
                             "warm-up too")


#: Below this many runs no pair of order statistics brackets the median with 95 % confidence: with 5 runs
#: the widest interval, min to max, misses it in 1/16 of cases. Fewer runs report no interval.
MIN_CI_RUNS = 6
#: Above this many runs the binomial's normal approximation is used (exact sums of C(n, i) grow slow).
EXACT_CI_MAX_RUNS = 1000


def median_ci(sorted_ms: np.ndarray) -> tuple[float, float]:
    """95 % confidence interval of the median from order statistics of a binomial(n, 1/2): exact up to
    EXACT_CI_MAX_RUNS runs, normal approximation above. Fewer than MIN_CI_RUNS runs: (min, max), which is
    not a 95 % interval (`rel_half_width` then reports none)."""
    n = len(sorted_ms)
    if n < MIN_CI_RUNS:
        return float(sorted_ms[0]), float(sorted_ms[-1])
    low = _lower_rank(n)
    return float(sorted_ms[low]), float(sorted_ms[n - 1 - low])


def _lower_rank(n: int) -> int:
    """0-based index r of the interval [x_r, x_(n-1-r)], which misses the median with probability
    2·P(B <= r), B ~ Binomial(n, 1/2): the largest r with P(B <= r) <= 2.5 %."""
    if n > EXACT_CI_MAX_RUNS:  # normal approximation, with the continuity correction: from 1,001 to 30,000 runs
        # it never covers less than 95 %, and is one rank wider than the exact interval for 60 of those n
        return int(math.floor(n / 2 - 0.5 - Z95 * math.sqrt(n) / 2))
    total, coefficient, below, r = 2 ** n, 1, 0, 0
    while 40 * (below + coefficient) <= total:  # P(B <= r) <= 2.5 %: try one rank further in
        below += coefficient
        coefficient = coefficient * (n - r) // (r + 1)
        r += 1
    return r - 1


def rel_half_width(samples_ms: np.ndarray) -> float:
    """The median's 95 % interval half-width over the median; infinite below MIN_CI_RUNS runs."""
    ordered = np.sort(samples_ms)
    return _relative(*median_ci(ordered), float(np.median(ordered)), len(ordered))


def _relative(low: float, high: float, median: float, n: int) -> float:
    return (high - low) / 2 / median if median > 0 and n >= MIN_CI_RUNS else math.inf


def latency_stats(samples_ms: np.ndarray, rule: StoppingRule) -> dict:
    ordered = np.sort(np.asarray(samples_ms, dtype=np.float64))
    low, high = median_ci(ordered)
    median = float(np.median(ordered))
    rel = _relative(low, high, median, len(ordered))
    return {
        "n": int(len(ordered)),
        "mean_ms": float(ordered.mean()),
        "median_ms": median,
        "p90_ms": float(np.percentile(ordered, 90)),
        "p99_ms": float(np.percentile(ordered, 99)),
        "std_ms": float(ordered.std(ddof=1)) if len(ordered) > 1 else 0.0,
        "min_ms": float(ordered[0]),
        "max_ms": float(ordered[-1]),
        "median_ci_low_ms": low,
        "median_ci_high_ms": high,
        # The wire has no infinity to say "no interval": too few runs, or a median of zero.
        "rel_ci_half_width": rel if math.isfinite(rel) else NO_INTERVAL,
        "target_rel_ci": rule.target_rel_ci,
        "target_met": bool(rel <= rule.target_rel_ci),
    }


def measure(run_once: Callable[[], None], rule: StoppingRule,
            on_progress: Callable[[str, int, float, float], None] = lambda *a: None,
            slowdown: float = 0.0) -> dict:
    """Times `run_once` by the stopping rule. `slowdown` (a test aid) stretches every timed run by that fraction."""
    clock = time.perf_counter

    def timed() -> float:
        start = clock()
        run_once()
        elapsed = clock() - start
        if slowdown:
            until = start + elapsed * (1 + slowdown)
            while clock() < until:  # busy-wait: sleep() is far too coarse below a millisecond
                pass
            elapsed = clock() - start
        return elapsed * 1000.0

    warm_start = clock()
    warm_runs = 0
    on_progress("warmup", 0, 0.0, math.inf)  # now: a long warm-up would otherwise look like loading
    while warm_runs < rule.warmup_min_runs or clock() - warm_start < rule.warmup_min_s:
        timed()
        warm_runs += 1
        if clock() - warm_start > rule.max_s:  # a very slow model: do not spend forever warming up
            break
    warmup_s = clock() - warm_start
    on_progress("warmup", warm_runs, warmup_s, math.inf)

    samples: list[float] = []
    start = clock()
    next_check = rule.min_runs
    last_report = start
    rel = math.inf
    while True:
        samples.append(timed())
        n = len(samples)
        elapsed = clock() - start
        if n >= next_check and elapsed >= rule.min_s:
            rel = rel_half_width(np.asarray(samples))
            # Check again after a few percent more runs: sorting every run would cost O(n^2 log n).
            next_check = n + max(1, n // 20)
            if rel <= rule.target_rel_ci:
                break
        if n >= rule.max_runs or elapsed >= rule.max_s:
            break
        if clock() - last_report >= 0.5:
            on_progress("measuring", n, elapsed, rel)
            last_report = clock()
    measure_s = clock() - start
    stats = latency_stats(np.asarray(samples), rule)
    stats.update(warmup_runs=warm_runs, warmup_s=warmup_s, measure_s=measure_s)
    return stats
