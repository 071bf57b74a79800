"""The measurement method, input generation and the artifact cache, without a server."""
import hashlib
import json
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from fleetnas_agent import inputs
from fleetnas_agent.cache import ArtifactCache, CacheError, FolderLock
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
    # Pairs measured back to back, the median ratio judged: this shared machine's own speed moves by up to 1.7x
    # between bursts (one plain measurement, then one slowed, read 0.44 and 0.54 ms in a clean CI run).
    ratios = [measure(work, rule, slowdown=1.0)["median_ms"] / measure(work, rule)["median_ms"] for _ in range(7)]
    assert float(np.median(ratios)) > 1.5, ratios


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


def test_a_resumed_upload_whose_kept_bytes_were_wrong_is_retried_whole(tmp_path):
    """Bytes kept from an interrupted upload (another host's bad one, a file torn by a power cut) that do not
    belong to the artifact: the honest resume fails with a status to retry on, and the retry sends it whole."""
    cache = ArtifactCache(tmp_path, max_bytes=10_000, max_artifact_bytes=10_000)
    data = bytes(range(256)) * 8
    sha = hashlib.sha256(data).hexdigest()
    bad = cache.begin(pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))
    cache.write(bad, b"\xff" * 1000)
    cache.abort(bad, keep_partial=True)
    assert cache.has(sha).resume_offset_bytes == 1000
    resumed = cache.begin(pb.ArtifactHeader(sha256=sha, size_bytes=len(data), offset_bytes=1000))
    cache.write(resumed, data[1000:])
    with pytest.raises(CacheError) as err:
        cache.commit(resumed)
    assert err.value.code == "ABORTED" and "upload it again from the start" in str(err.value)
    assert cache.has(sha).resume_offset_bytes == 0  # the wrong bytes are gone
    assert _put(cache, data) == sha and cache.path(sha).read_bytes() == data


def test_a_cache_folder_removed_while_the_agent_runs_is_made_again(tmp_path):
    cache = ArtifactCache(tmp_path / "cache", max_bytes=10_000, max_artifact_bytes=10_000)
    first = _put(cache, b"1" * 1000)
    shutil.rmtree(tmp_path / "cache")  # a clean-up of the device's disk
    assert cache.used_bytes() == 0 and not cache.has(first).present
    assert cache.has(_put(cache, b"1" * 1000)).present and cache.used_bytes() == 1000


def test_the_cache_folders_lock_goes_on_with_a_folder_removed_and_made_again(tmp_path):
    """An agent holds its cache folder's lock (flock: another open file, even in this process, is refused it).
    A clean-up that removes the folder takes the locked file along: the next upload locks the new folder's
    file, so a second agent started on the folder is refused; where the second came first, the first stops
    using the folder instead of sharing it."""
    folder = tmp_path / "cache"
    cache = ArtifactCache(folder, max_bytes=10_000, max_artifact_bytes=10_000, folder_lock=FolderLock.hold(folder))
    with pytest.raises(ValueError, match="another agent uses the cache folder"):
        FolderLock.hold(folder)
    shutil.rmtree(folder)
    _put(cache, b"1" * 1000)  # makes the folders again, and locks the new folder's file
    with pytest.raises(ValueError, match="another agent uses the cache folder"):
        FolderLock.hold(folder)
    shutil.rmtree(folder)
    second = FolderLock.hold(folder)  # started while the folder was gone
    theirs = ArtifactCache(folder, max_bytes=10_000, max_artifact_bytes=10_000, folder_lock=second)
    kept = _put(theirs, b"3" * 1000)
    for use in (lambda: _put(cache, b"2" * 1000), lambda: cache.has(kept), lambda: cache.pinned(kept).__enter__()):
        with pytest.raises(CacheError) as err:  # what the folder holds is the other agent's to evict
            use()
        assert err.value.code == "UNAVAILABLE" and "another agent took the cache folder" in str(err.value)
    assert second.still_ours() and theirs.has(kept).present and theirs.used_bytes() == 1000


def test_a_read_only_cache_serves_what_it_holds_and_refuses_uploads_as_the_devices_fault(tmp_path):
    """A cache folder remounted read-only (a failing SD card does this): measuring what it holds goes on; an upload
    fails as the device's fault (UNAVAILABLE: retried on a peer), not the artifact's (INTERNAL was final)."""
    root = tmp_path / "cache"
    cache = ArtifactCache(root, max_bytes=10_000, max_artifact_bytes=10_000)
    held = _put(cache, b"1" * 1000)
    if subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True).returncode:
        pytest.skip("needs permission to bind-mount a folder read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True, capture_output=True)
        with cache.pinned(held) as path:
            assert path.read_bytes() == b"1" * 1000
        assert cache.begin(pb.ArtifactHeader(sha256=held, size_bytes=1000)) is None  # already there
        with pytest.raises(CacheError) as err:
            _put(cache, b"2" * 1000)
        assert err.value.code == "UNAVAILABLE" and "Read-only file system" in str(err.value)
    finally:
        subprocess.run(["umount", str(root)], check=True)
    assert cache.has(_put(cache, b"2" * 1000)).present  # nothing was left half-reserved


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


def _spec_of_size(size: int) -> bytes:
    """A well-formed torch spec of about `size` bytes, padded the way a hostile one would be."""
    body = b'{"space":"demo","config":[' + b"{}," * (size // 3) + b'{}]}'
    return body


def test_a_large_torch_spec_is_refused_before_the_agent_parses_it(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=64 << 20, max_artifact_bytes=64 << 20)
    small = _put(cache, _spec_of_size(1000))  # a real spec's size: stored
    assert cache.has(small).present
    big = _spec_of_size(4 << 20)  # sniffed as a spec at commit: json.loads would take ~100 MB for it
    with pytest.raises(CacheError) as err:
        _put(cache, big)
    assert err.value.code == "INVALID_ARGUMENT"
    assert f"of {len(big)} bytes" in str(err.value) and "limit of 1048576 bytes" in str(err.value)
    assert not cache.has(hashlib.sha256(big).hexdigest()).present and not list((tmp_path / "incoming").iterdir())
    with pytest.raises(CacheError) as err:  # declared a spec with its size: refused before a byte is sent
        cache.begin(pb.ArtifactHeader(sha256="ab" * 32, size_bytes=2 << 20, format=pb.ARTIFACT_FORMAT_TORCH_SPEC))
    assert err.value.code == "INVALID_ARGUMENT" and "limit of 1048576 bytes" in str(err.value)
    assert cache.used_bytes() == len(_spec_of_size(1000)) and not list((tmp_path / "incoming").iterdir())


@pytest.mark.parametrize("dtype", ["uint8", "bool", "int64", "float16", "float32"])
def test_inputs_are_drawn_in_their_own_dtype_without_a_wider_copy(dtype):
    import tracemalloc

    spec = {"name": "x", "shape": [4, 1024, 1024], "dtype": dtype}
    size = 4 * 1024 * 1024 * np.dtype(dtype).itemsize
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc
    try:
        array = inputs.generate([spec], seed=5)["x"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert array.dtype == np.dtype(dtype) and array.nbytes == size
    assert peak <= 1.15 * size, f"{dtype}: peak {peak} bytes for a {size}-byte input"
    assert np.array_equal(array, inputs.generate([spec], seed=5)["x"])  # still seeded
    if dtype in ("uint8", "int64", "bool"):
        assert set(np.unique(array).tolist()) == {0, 1}
    else:
        assert 0.95 < float(array.astype(np.float64).std()) < 1.05


def _torch_request(tmp_path, spec: dict) -> dict:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return {"artifact": str(path), "runtime": "torch", "threads": 1, "max_input_bytes": 1 << 20,
            "stopping": {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}}


def _demo_spec() -> dict:
    """A spec the demo super-network builds: {"space", "config", "inputs": [{"name": "image", ...}]}."""
    from fleetnas.supernets import demo

    return {"space": "demo", "config": json.loads(demo.SPACE.to_json(demo.SMALLEST)),
            "inputs": demo.SUPERNET.input_specs(demo.SMALLEST)}


@pytest.mark.parametrize("field, value, named", [
    ("name", 5, "inputs[0].name"),
    ("name", "", "inputs[0].name"),
    ("shape", [1, "1", 8, 8], "inputs[0].shape"),
    ("shape", [1, 0, 8, 8], "inputs[0].shape"),
    ("shape", [1, True, 8, 8], "inputs[0].shape"),
    ("shape", "1x1x8x8", "inputs[0].shape"),
    ("dtype", "complex64", "inputs[0].dtype"),
    ("dtype", 32, "inputs[0].dtype"),
    (None, [["image", [1, 1, 8, 8]]], "inputs[0]"),
    (None, [{"name": "image", "shape": [1, 1, 8, 8]}, {"name": "image", "shape": [1, 1, 8, 8]}], "inputs[1].name"),
    (None, {"image": [1, 1, 8, 8]}, "inputs must be a non-empty list"),
])
def test_a_wrongly_typed_torch_spec_is_refused_before_it_is_measured(tmp_path, field, value, named):
    pytest.importorskip("torch")
    from fleetnas_agent import worker

    spec = _demo_spec()
    if field is None:
        spec["inputs"] = value
    else:
        spec["inputs"][0][field] = value
    phases = []
    with pytest.raises(worker.Failure) as err:
        worker.run(_torch_request(tmp_path, spec), lambda **p: phases.append(p["phase"]))
    assert err.value.code == "INVALID_ARGUMENT" and named in str(err.value), str(err.value)
    assert phases == ["loading"]  # found while loading, not after a whole measurement


@pytest.mark.parametrize("dtype", ["float32", "single", "float", "half", "long", "int", "uint8", "bool"])
def test_a_torch_spec_may_name_a_dtype_as_numpy_spells_it(dtype):
    pytest.importorskip("torch")
    from fleetnas_agent.runtimes.torch_spec import check_spec

    spec = _demo_spec()
    spec["inputs"][0]["dtype"] = dtype
    check_spec(spec)  # as the agent drew such inputs before specs were checked


def test_a_well_formed_torch_spec_is_measured(tmp_path):
    pytest.importorskip("torch")
    from fleetnas_agent import worker

    spec = _demo_spec()
    result = worker.run(_torch_request(tmp_path, spec), lambda **p: None)
    assert result["inputs"] == spec["inputs"] and result["latency"]["n"] >= 3


def test_what_a_runtime_prepares_is_not_counted_in_the_models_peak_memory(tmp_path, monkeypatch):
    """torch imports the super-network's package in prepare(): before the baseline, so not the model's."""
    from types import SimpleNamespace

    from fleetnas_agent import worker

    imported = []  # what an imported package would hold for the rest of the process

    def prepare(path):
        imported.append(b"p" * (64 << 20))  # bytes * n writes every page: resident at once
        return "prepared"

    def load(source, threads):
        if source != "prepared":  # a worker that skips prepare() has the import happen here
            prepare(source)
        return SimpleNamespace(input_specs=lambda: [{"name": "x", "shape": [1], "dtype": "float32"}],
                               set_inputs=lambda arrays: None, run=lambda: None, memory_figures=dict)

    adapter = SimpleNamespace(prepare=prepare, load=load, version=lambda: "0")
    monkeypatch.setattr("fleetnas_agent.runtimes.load_adapter", lambda name: adapter)
    request = {**_torch_request(tmp_path, {}), "runtime": "fake"}
    memory = worker.run(request, lambda **p: None)["memory"]
    if not memory["measured"]:
        pytest.skip("per-process peak memory is not readable here")
    assert len(imported) == 1 and memory["peak_bytes"] < 32 << 20, memory


def test_a_warm_up_longer_than_max_s_is_refused_and_announced_when_it_starts():
    with pytest.raises(ValueError, match=r"warmup_min_s \(1.0\) is above max_s \(0.3\)"):
        StoppingRule(warmup_min_s=1.0, max_s=0.3, min_s=0.1, max_runs=50, min_runs=10)
    with pytest.raises(ValueError, match=r"warmup_min_s \(2.0\) is above max_s \(1.0\)"):
        StoppingRule.from_message({"warmup_min_s": 2.0, "max_s": 1.0})
    quick = StoppingRule.from_message({"max_s": 0.3})  # a cap given alone pulls the default warm-up down with it
    assert quick.warmup_min_s == 0.3 and quick.min_s == 0.3
    events = []
    rule = StoppingRule(warmup_min_runs=2, warmup_min_s=0.0, min_runs=3, max_runs=3, min_s=0.0, max_s=5)
    stats = measure(lambda: events.append("run"), rule, lambda phase, runs, *_: events.append((phase, runs)))
    assert events[0] == ("warmup", 0)  # before the first warm-up run
    assert events[1:4] == ["run", "run", ("warmup", 2)] and stats["n"] == 3


def _sensors(monkeypatch, groups: dict) -> None:
    from collections import namedtuple

    from fleetnas_agent import device

    shwtemp = namedtuple("shwtemp", "label current high critical")
    monkeypatch.setattr(device.psutil, "sensors_temperatures",
                        lambda: {chip: [shwtemp(*e) for e in entries] for chip, entries in groups.items()},
                        raising=False)


def test_only_cpu_sensors_give_the_cpu_temperature_and_throttling(tmp_path, monkeypatch):
    from fleetnas_agent import device

    firmware = tmp_path / "get_throttled"
    monkeypatch.setattr(device, "RPI_THROTTLE_FILE", firmware)
    _sensors(monkeypatch, {"nvme": [("Composite", 86.0, None, None)]})
    env = device.environment()
    assert [t.sensor for t in env.temperatures] == ["nvme/Composite"]  # still reported
    assert not env.HasField("cpu_temp_max_c") and not env.throttled and env.throttle_reason == ""
    _sensors(monkeypatch, {"nvme": [("Composite", 86.0, None, None)], "coretemp": [("Core 0", 81.0, 80.0, 100.0)]})
    env = device.environment()
    assert env.cpu_temp_max_c == 81.0 and env.throttled and "nvme" not in env.throttle_reason
    assert "coretemp/Core 0 at 81 °C (limit 80 °C)" in env.throttle_reason
    for garbage in ("throttled=0x50005", "0xzz", "-1", "\x00"):  # unexpected firmware content: unknown, no error
        firmware.write_text(garbage)
        assert "firmware" not in device.environment().throttle_reason
    firmware.write_text("0x50005\n")
    assert "firmware: under-voltage" in device.environment().throttle_reason


def test_the_device_queue_keeps_its_bound_while_its_next_owner_has_not_yet_woken():
    """Just after release() the device is free, yet its next owner is still among the waiters: arrivals then
    must not be admitted past the bound, or one of them waits at a position beyond it (found under load with
    fifty clients at once)."""
    from fleetnas_agent.profiler import DeviceQueue, ProfileError

    def queued(queue):
        turn = queue.wait_turn(lambda: False, hold_s=60.0)
        return turn, next(turn, None)  # None: the device was free, and is now held

    queue = DeviceQueue(max_waiting=2)
    assert queued(queue)[1] is None
    waiters = [queued(queue) for _ in range(2)]
    assert [ahead for _, ahead in waiters] == [1, 2]
    with pytest.raises(ProfileError, match="limit 2"):
        queued(queue)
    queue.release()  # the owner is done; the first waiter has not run yet
    late, ahead = queued(queue)  # one more fits: one waiter will measure, two will wait
    assert ahead == 2
    # Its refusal counts those who wait behind the next owner, as the bound does: not 3 of a limit of 2.
    with pytest.raises(ProfileError, match="2 measurements already wait \\(limit 2\\)") as refused:
        queued(queue)
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    assert next(waiters[0][0], None) is None  # the first waiter takes the device
    assert queue.waiting == 2  # the second waiter and the late arrival: the late one stands at the bound
    for turn in (waiters[1][0], late):
        turn.close()  # as a client that leaves: its ticket goes
    assert queue.waiting == 0


def test_a_profile_stream_ended_without_a_result_is_an_error_with_a_status_code():
    """The farm reads every failure's code to decide whose fault it is: a bare RpcError has none."""
    import grpc

    from fleetnas_agent.client import IncompleteStream, failure_cause

    error = IncompleteStream("the agent ended the profile stream without a result")
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNKNOWN
    assert error.details() == "the agent ended the profile stream without a result"
    assert failure_cause(error) == "UNSPECIFIED"


def test_a_waiter_is_told_its_place_again_only_while_the_measurement_ahead_is_within_its_bound(monkeypatch):
    """The heartbeat keeps a client's watchdog from taking a long measurement ahead for a frozen agent; one that
    has outrun its own bound gets none, so that a queue that truly stands still still reads as one."""
    from fleetnas_agent.profiler import DeviceQueue, ProfileError

    monkeypatch.setattr(DeviceQueue, "HEARTBEAT_S", 0.0)
    for hold_s, heard_again in ((60.0, True), (0.0, False)):
        queue = DeviceQueue(max_waiting=2)
        assert next(queue.wait_turn(lambda: False, hold_s=hold_s), None) is None  # holds the device
        waiter = queue.wait_turn(lambda: True, hold_s=60.0)  # its client leaves at the first check
        assert next(waiter) == 1
        if heard_again:
            assert next(waiter) == 1
        else:
            with pytest.raises(ProfileError, match="the client left while queued"):
                next(waiter)


def test_a_device_without_a_machine_id_keeps_one_id_even_after_a_write_cut_short(tmp_path, monkeypatch):
    """A device-id file left empty by a full disk was read back as the id "" for good."""
    import errno
    import os
    import re

    from fleetnas_agent import device

    path = tmp_path / "state" / "device-id"
    path.parent.mkdir()
    path.write_text("")  # what a write cut short left
    made = device._kept_id(path)
    assert re.fullmatch(r"dev-[0-9a-f]{16}", made) and device._kept_id(path) == made
    assert path.read_text() == made + "\n"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    other = tmp_path / "full" / "device-id"
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        device._kept_id(other)
    assert list(other.parent.iterdir()) == []  # nothing half-written to be read back later
    monkeypatch.undo()
    assert device._kept_id(other) == device._kept_id(other) != made
    # An id that is there but cannot be read stops the agent: a new one would cut the device's history off.
    import pathlib

    read_text = pathlib.Path.read_text
    monkeypatch.setattr(pathlib.Path, "read_text", lambda p, *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")) if p == path else read_text(p, *a, **k))
    with pytest.raises(PermissionError):
        device._kept_id(path)
    monkeypatch.undo()
    assert device._kept_id(path) == made


def test_a_cache_whose_disk_fills_up_evicts_as_its_cap_would(tmp_path, monkeypatch):
    """A disk smaller than the cap (or filled by other files) refused every new upload as 'disk full' while it
    held artifacts it could let go."""
    import collections

    import fleetnas_agent.cache as cache_module

    cache = ArtifactCache(tmp_path, max_bytes=1 << 30, max_artifact_bytes=1 << 20)
    stored = [_put(cache, bytes([i]) * 1000) for i in range(3)]
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10_000, 8_500, 1_500))  # 1,500 free
    with cache.pinned(stored[0]):
        new = _put(cache, b"n" * 2000)  # needs the room of the least recently used unpinned artifact
        assert [cache.has(s).present for s in stored] == [True, False, True] and cache.has(new).present
        with pytest.raises(CacheError, match="cache disk is full: 6000 bytes needed, 1500 free"):
            _put(cache, b"m" * 6000)  # more than evicting all but the pinned one would make room for
        assert [cache.has(s).present for s in (*stored, new)] == [True, False, True, True]  # nothing evicted for it


def test_a_resumed_upload_counts_the_disk_its_own_bytes_already_take(tmp_path, monkeypatch):
    """The bytes an interrupted upload kept are off the disk's free space already: a resume that fit was refused
    as 'disk full', for ever, since its own partial file is never evicted for it."""
    import collections

    import fleetnas_agent.cache as cache_module

    cache = ArtifactCache(tmp_path, max_bytes=1 << 30, max_artifact_bytes=1 << 20)
    usage = collections.namedtuple("usage", "total used free")
    on_disk = lambda: sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())  # noqa: E731
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10_000, on_disk(), 10_000 - on_disk()))
    data = bytes(range(256)) * 32  # 8,192 bytes: fits the 10,000-byte disk
    sha = hashlib.sha256(data).hexdigest()
    upload = cache.begin(pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))
    cache.write(upload, data[:5000])
    cache.abort(upload, keep_partial=True)  # the connection dropped: 5,000 bytes kept for a resume
    resumed = cache.begin(pb.ArtifactHeader(sha256=sha, size_bytes=len(data), offset_bytes=5000))
    cache.write(resumed, data[5000:])
    cache.commit(resumed)
    assert cache.has(sha).present
    with pytest.raises(CacheError) as err:  # a resume from an offset the agent does not hold: ask again
        cache.begin(pb.ArtifactHeader(sha256="1" * 64, size_bytes=100, offset_bytes=50))
    assert err.value.code == "ABORTED"


class _Refused(grpc.RpcError):
    def __init__(self, details: str):
        self._details = details

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details


def test_the_tls_hint_is_given_for_a_refused_connection_only():
    from fleetnas_agent.client import AgentClient, Credentials

    with AgentClient("127.0.0.1:9") as plaintext:
        refused = _Refused("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:9: Socket closed")
        assert "if the agent serves TLS" in plaintext.hint(refused)
        # An agent killed in the middle of a call is no TLS mismatch.
        assert plaintext.hint(_Refused("Stream removed (Socket closed)")) == ""
    with AgentClient("127.0.0.1:9", Credentials(tls_ca=b"ca")) as tls:
        wrong = _Refused("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Tls handshake "
                         "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
                         "WRONG_VERSION_NUMBER")
        assert "the agent answered in plaintext" in tls.hint(wrong)
