"""The measurement method, input generation and the artifact cache, without a server."""
import hashlib

import numpy as np
import pytest

from fleetnas_agent import inputs
from fleetnas_agent.cache import ArtifactCache, CacheError
from fleetnas_agent.measure import StoppingRule, latency_stats, measure, median_ci
from fleetnas_agent.proto import agent_pb2 as pb


def test_median_ci_brackets_the_median_with_order_statistics():
    samples = np.arange(1, 101, dtype=float)  # median 50.5
    low, high = median_ci(samples)
    assert low < 50.5 < high
    # n=100: ranks 50 ± 1.96*5 -> about the 40th and 60th values
    assert 38 <= low <= 42 and 59 <= high <= 63


def test_median_ci_is_the_exact_binomial_interval_and_needs_six_runs():
    from math import comb

    for n in (6, 9, 20, 100, 1000, 1033, 5000):  # exact to 1000, normal approximation beyond
        low, high = median_ci(np.arange(n, dtype=float))
        r = int(low)
        miss = lambda r: 2 * sum(comb(n, i) for i in range(r + 1)) / 2 ** n  # noqa: E731
        assert high == n - 1 - r
        assert miss(r) <= 0.05 < miss(r + 1)  # the narrowest interval of order statistics that keeps 95 %
    for n in (1, 2, 5):  # no interval: even min..max misses the median too often
        stats = latency_stats(np.linspace(10, 10.01, n), StoppingRule(target_rel_ci=0.5))
        assert not stats["target_met"] and stats["rel_ci_half_width"] == 1e9
    six = latency_stats(np.linspace(10, 10.01, 6), StoppingRule(target_rel_ci=0.5))
    assert six["target_met"] and six["rel_ci_half_width"] < 0.001


def test_latency_stats_are_ordered_and_report_the_target():
    rng = np.random.default_rng(0)
    samples = 10 + rng.gamma(2.0, 0.05, size=2000)
    stats = latency_stats(samples, StoppingRule(target_rel_ci=0.01))
    assert stats["n"] == 2000
    assert stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["median_ci_low_ms"] <= stats["median_ms"] <= stats["median_ci_high_ms"]
    assert stats["target_met"] and stats["rel_ci_half_width"] < 0.01
    noisy = latency_stats(rng.uniform(1, 100, size=20), StoppingRule(target_rel_ci=0.01))
    assert not noisy["target_met"]


def test_stopping_rule_defaults_fill_unset_fields_and_bad_rules_are_refused():
    rule = StoppingRule.from_message({"min_runs": 7})
    assert rule.min_runs == 7 and rule.max_runs == StoppingRule().max_runs
    with pytest.raises(ValueError, match="max_runs"):
        StoppingRule.from_message({"min_runs": 50, "max_runs": 10})
    with pytest.raises(ValueError, match="target_rel_ci"):
        StoppingRule.from_message({"target_rel_ci": 2.0})


def test_measure_respects_run_caps_and_warms_up_first():
    calls = []
    rule = StoppingRule(warmup_min_runs=3, warmup_min_s=0.0, min_runs=5, max_runs=20, min_s=0.0,
                        max_s=60, target_rel_ci=1e-12)  # unreachable target: the run cap must stop it
    stats = measure(lambda: calls.append(1), rule)
    assert stats["n"] == 20 and stats["warmup_runs"] == 3 and len(calls) == 23
    assert not stats["target_met"]


def test_measure_stops_early_once_precise_enough():
    rule = StoppingRule(warmup_min_runs=1, warmup_min_s=0.0, min_runs=10, max_runs=100_000, min_s=0.0,
                        max_s=60, target_rel_ci=0.5)
    stats = measure(lambda: sum(range(2000)), rule)
    assert stats["target_met"] and stats["n"] < 1000


def test_slowdown_stretches_every_timed_run():
    rule = StoppingRule(warmup_min_runs=1, warmup_min_s=0.0, min_runs=30, max_runs=30, min_s=0.0, max_s=60)
    work = lambda: sum(range(20000))  # noqa: E731
    plain = measure(work, rule)["median_ms"]
    slowed = measure(work, rule, slowdown=1.0)["median_ms"]
    assert slowed > 1.5 * plain


def test_inputs_fill_open_dimensions_and_check_overrides():
    declared = [{"name": "x", "shape": [-1, 8], "dtype": "float32"}, {"name": "ids", "shape": [1, -1], "dtype": "int64"}]
    specs = inputs.resolve(declared, [{"name": "ids", "shape": [1, 32], "dtype": ""}])
    assert specs == [{"name": "x", "shape": [1, 8], "dtype": "float32"},
                     {"name": "ids", "shape": [1, 32], "dtype": "int64"}]
    arrays = inputs.generate(specs, seed=3)
    again = inputs.generate(specs, seed=3)
    assert arrays["x"].dtype == np.float32 and arrays["ids"].shape == (1, 32)
    assert np.array_equal(arrays["x"], again["x"])  # seeded
    with pytest.raises(ValueError, match="'x' is declared"):
        inputs.resolve(declared, [{"name": "x", "shape": [1, 9]}])
    with pytest.raises(ValueError, match="no input named 'y'"):
        inputs.resolve(declared, [{"name": "y", "shape": [1]}])
    with pytest.raises(ValueError, match="at most 1000 bytes"):
        inputs.check_size([{"name": "x", "shape": [1000, 1000, 1000], "dtype": "float32"}], 1000)


def _put(cache: ArtifactCache, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    upload = cache.begin(pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))
    if upload is not None:
        cache.write(upload, data)
        cache.commit(upload)
    return sha


def test_cache_evicts_least_recently_used_but_never_a_pinned_artifact(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=3000, max_artifact_bytes=3000)
    a, b = _put(cache, b"a" * 1000), _put(cache, b"b" * 1000)
    with cache.pinned(a):  # in use: a is now the most recently used, and pinned
        c = _put(cache, b"c" * 1000)
        d = _put(cache, b"d" * 1000)  # must evict b, the least recently used
        assert cache.has(a).present and not cache.has(b).present
        assert cache.has(c).present and cache.has(d).present
    assert cache.used_bytes() <= 3000


def test_cache_refuses_what_cannot_fit_and_keeps_nothing_half_written(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=1000, max_artifact_bytes=5000)
    assert cache.max_artifact_bytes == 1000  # what could never fit is over the limit, not a wait for room
    with pytest.raises(CacheError) as err:
        _put(cache, b"x" * 2000)
    assert err.value.code == "INVALID_ARGUMENT" and "limit of 1000 bytes" in str(err.value)
    data = b"y" * 500
    upload = cache.begin(pb.ArtifactHeader(sha256="0" * 64, size_bytes=len(data)))
    cache.write(upload, data)
    with pytest.raises(CacheError, match="sha256 mismatch"):
        cache.commit(upload)
    assert cache.used_bytes() == 0 and not list((tmp_path / "incoming").iterdir())


def test_the_cache_counts_and_evicts_only_its_own_files(tmp_path):
    """A lost+found folder, a folder named like an artifact, a user's file: neither counted, found nor evicted."""
    (tmp_path / "artifacts" / "lost+found").mkdir(parents=True)
    (tmp_path / "artifacts" / ("ab" * 32)).mkdir()
    (tmp_path / "artifacts" / "README").write_text("the user's own")
    cache = ArtifactCache(tmp_path, max_bytes=2500, max_artifact_bytes=2500)
    assert not cache.has("ab" * 32).present and cache.used_bytes() == 0
    with pytest.raises(CacheError) as err:
        with cache.pinned("ab" * 32):
            pass
    assert err.value.code == "NOT_FOUND"
    first = _put(cache, b"1" * 1000)
    _put(cache, b"2" * 1000)
    third = _put(cache, b"3" * 1000)  # room is made by evicting the oldest artifact, past the odd entries
    assert not cache.has(first).present and cache.has(third).present and cache.used_bytes() == 2000
    assert (tmp_path / "artifacts" / "README").read_text() == "the user's own"
    assert (tmp_path / "artifacts" / "lost+found").is_dir()
    with pytest.raises(CacheError) as err:  # the folder stands where that artifact would go: say so
        cache.begin(pb.ArtifactHeader(sha256="ab" * 32, size_bytes=10))
    assert err.value.code == "FAILED_PRECONDITION" and "not an artifact file" in str(err.value)
