"""The agent over a real socket: describe, upload, profile on each runtime, health, and bad input."""
import hashlib
import json
import threading
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import models
import plugins
from agents import running_agent
from fleetnas_agent import server
from fleetnas_agent.client import AgentClient, failure_cause, result_to_dict
from fleetnas_agent.proto import agent_pb2 as pb
from fleetnas_agent.proto.agent_pb2_grpc import ProfilerAgentStub

FAST = pb.StoppingRule(warmup_min_runs=2, warmup_min_s=0.01, min_runs=5, min_s=0.05, max_s=0.5)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_describe_reports_device_runtimes_and_limits(agent):
    address, config = agent
    with AgentClient(address) as client:
        d = client.describe()
    assert d.device_id.startswith("dev-") and d.label == "test-agent"
    assert d.cpu_cores_logical >= 1 and d.ram_bytes > 0 and d.os
    runtimes = {r.name: r for r in d.runtimes}
    assert runtimes["litert"].available and runtimes["litert"].version
    assert runtimes["onnxruntime"].available and runtimes["onnxruntime"].version
    assert d.limits.max_artifact_bytes == config.max_artifact_bytes
    assert d.limits.max_queued_profiles == config.max_queued


@pytest.mark.parametrize("make, runtime", [(models.tflite_mlp, "litert"), (models.onnx_mlp, "onnxruntime")])
def test_profile_measures_a_real_model(agent, make, runtime):
    address, _ = agent
    phases = []
    with AgentClient(address) as client:
        sha = client.put_artifact(make(width=128, layers=2))
        result = client.profile(sha, stopping=FAST, on_progress=lambda p: phases.append(p.phase))
    s = result_to_dict(result)
    lat = s["latency_ms"]
    assert lat["n"] >= 5 and 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["std"] >= 0 and "target_met" in lat
    assert s["memory"]["measured"] and s["memory"]["peak_bytes"] > 0
    assert s["memory"]["peak_rss_bytes"] >= s["memory"]["baseline_rss_bytes"] + s["memory"]["peak_bytes"] - 4096
    assert s["runtime"]["name"] == runtime and s["runtime"]["version"]
    assert s["env"]["before"]["unix_s"] <= s["env"]["after"]["unix_s"]
    assert s["device"]["label"] == "test-agent" and s["inputs"][0]["shape"] == [1, 128]
    assert pb.ProfileProgress.PHASE_LOADING in phases
    assert s["started_unix_s"] <= s["finished_unix_s"]


def test_open_dimensions_take_the_requested_shape(agent):
    address, _ = agent
    with AgentClient(address) as client:
        sha = client.put_artifact(models.onnx_mlp(width=32, layers=1, batch="N"))
        result = client.profile(sha, stopping=FAST, inputs=[pb.TensorSpec(name="input", shape=[4, 32])])
    assert list(result.inputs[0].shape) == [4, 32]


def test_upload_is_deduplicated_and_resumable(agent):
    address, _ = agent
    data = models.onnx_mlp(width=256, layers=4)  # about 1 MiB: several chunks
    sha = hashlib.sha256(data).hexdigest()
    with AgentClient(address) as client:
        # An upload that sends a header and 100 kB, then stalls until the test cancels it.
        stall = threading.Event()

        def interrupted():
            yield pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))
            yield pb.ArtifactChunk(data=data[:100_000])
            stall.wait(30)

        call = client.stub.PutArtifact.future(interrupted(), timeout=30)
        assert wait_for(lambda: client.has_artifact(sha).resume_offset_bytes == 100_000)
        call.cancel()
        stall.set()
        state = client.has_artifact(sha)
        assert not state.present and state.resume_offset_bytes == 100_000
        assert client.put_artifact(data) == sha  # resumes from the offset
        assert client.has_artifact(sha).present
        header_only = iter([pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))])
        assert client.stub.PutArtifact(header_only, timeout=10).already_present


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    """Waits for an observable condition (not a fixed time), checking every few milliseconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.01)
    return False


def _upload(client, header, *chunks):
    messages = [pb.ArtifactChunk(header=header)] + [pb.ArtifactChunk(data=c) for c in chunks]
    return client.stub.PutArtifact(iter(messages), timeout=10)


def test_bad_uploads_are_refused_and_leave_nothing_behind(tmp_path):
    cache_dir = tmp_path / "cache"
    with running_agent(cache_dir, max_artifact_bytes=1 << 20) as (address, _), AgentClient(address) as client:
        data = models.onnx_mlp(width=16, layers=1)
        sha = hashlib.sha256(data).hexdigest()
        wrong = pb.ArtifactHeader(sha256="ab" * 32, size_bytes=len(data))
        assert code_of(lambda: _upload(client, wrong, data))[0] == grpc.StatusCode.INVALID_ARGUMENT
        truncated = pb.ArtifactHeader(sha256=sha, size_bytes=len(data))
        code, details = code_of(lambda: _upload(client, truncated, data[:10]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ended after 10" in details
        too_big = pb.ArtifactHeader(sha256=sha, size_bytes=2 << 20)
        code, details = code_of(lambda: _upload(client, too_big, data))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds" in details
        overflow = pb.ArtifactHeader(sha256=sha, size_bytes=5)
        assert code_of(lambda: _upload(client, overflow, data))[0] == grpc.StatusCode.INVALID_ARGUMENT
        bad_sha = pb.ArtifactHeader(sha256="not-a-digest", size_bytes=5)
        assert code_of(lambda: _upload(client, bad_sha, b"12345"))[0] == grpc.StatusCode.INVALID_ARGUMENT
        headless = iter([pb.ArtifactChunk(data=b"123")])
        assert code_of(lambda: client.stub.PutArtifact(headless, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: client.stub.PutArtifact(iter([]), timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT
        tflite_as_onnx = pb.ArtifactHeader(sha256=hashlib.sha256(models.tflite_mlp(8, 1)).hexdigest(),
                                           size_bytes=len(models.tflite_mlp(8, 1)), format=pb.ARTIFACT_FORMAT_ONNX)
        assert code_of(lambda: _upload(client, tflite_as_onnx, models.tflite_mlp(8, 1)))[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert client.describe().limits.cache_used_bytes == 0
    assert not any((cache_dir / "incoming").iterdir()) and not any((cache_dir / "artifacts").iterdir())


def test_a_long_error_still_arrives_as_the_agents_status(agent):
    """A status message travels as a header, which a client drops past 16 KiB (RESOURCE_EXHAUSTED, "metadata
    size exceeds limit"): a model's 20,000-character load error, or a long value echoed back, would reach the
    host as a busy device, to be retried, instead of the model's fault."""
    address, _ = agent
    with AgentClient(address) as client:
        unknown_op = client.put_artifact(models.onnx_unknown_op(20_000))
        with pytest.raises(grpc.RpcError) as err:
            client.profile(unknown_op, stopping=FAST)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "cannot load" in err.value.details() and "characters left out" in err.value.details()
        assert len(err.value.details().encode()) <= server.STATUS_MESSAGE_BYTES
        code, details = code_of(lambda: client.profile(unknown_op, runtime="r" * 100_000, stopping=FAST))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("unknown runtime 'rrr")


def test_a_shortened_message_keeps_its_start_and_end_within_the_limit():
    message = "cannot load: " + "é" * 5000 + " because of X"
    short = server.shortened(message, limit=1000)
    assert short.startswith("cannot load: é") and short.endswith("because of X") and "characters left out" in short
    # gRPC percent-encodes a status message's non-ASCII bytes (and "%"), 3 characters each
    assert sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in short) <= 1000
    assert server.shortened("short enough") == "short enough"


def test_bad_profile_requests_get_clear_statuses(agent):
    address, _ = agent
    with AgentClient(address) as client:
        garbage = client.put_artifact(b"\x00garbage, not a model" * 10)
        code, details = code_of(lambda: client.profile(garbage, stopping=FAST))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot load" in details
        tflite = client.put_artifact(models.tflite_mlp(16, 1))
        code, details = code_of(lambda: client.profile(tflite, runtime="tensorrt", stopping=FAST))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown runtime 'tensorrt'" in details
        code, details = code_of(lambda: client.profile(tflite, runtime="onnxruntime", stopping=FAST))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details == ("runtime 'onnxruntime' cannot run this "
                                                                        "TFLite model artifact; it runs onnx")
        assert code_of(lambda: client.profile("f" * 64, stopping=FAST))[0] == grpc.StatusCode.NOT_FOUND
        huge = client.put_artifact(models.onnx_huge_input())
        code, details = code_of(lambda: client.profile(huge, stopping=FAST))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes of inputs" in details
        assert details.startswith("bad inputs for the model")  # the request's doing, not the model's
        onnx = client.put_artifact(models.onnx_mlp(width=8, layers=1))
        wrong = [pb.TensorSpec(name="nope", shape=[1, 8], dtype="float32")]
        code, details = code_of(lambda: client.profile(onnx, stopping=FAST, inputs=wrong))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bad inputs for the model" in details
        assert "no input named 'nope'" in details
        code, details = code_of(lambda: client.profile(tflite, stopping=pb.StoppingRule(min_runs=10, max_runs=2)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_runs" in details
        code, details = code_of(lambda: client.profile(tflite, stopping=pb.StoppingRule(max_s=-1)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_s must be" in details  # the field given, not min_s
        code, details = code_of(lambda: client.profile(tflite, stopping=FAST, timeout_s=1e15))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "timeout_s must be from 0" in details
        # Shorter than the rule's own warm-up and timed minimum: every such measurement would be killed, and its
        # model blamed for the timeout.
        code, details = code_of(lambda: client.profile(onnx, timeout_s=1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "timeout_s 1 s is shorter than" in details
        for given, message in [
                ([pb.TensorSpec(name="input", shape=[1, 8]), pb.TensorSpec(name="input", shape=[2, 8])], "'input' is given more"),
                ([pb.TensorSpec(name="input", shape=[1, 8], dtype=">f4")], "not in this device's byte order"),
                ([pb.TensorSpec(name="input", shape=[1, 8], dtype="int64")], "declared float32; dtype 'int64'"),
                ([pb.TensorSpec(name="input", shape=[1, 8], dtype="floaty")], "'floaty' is not a dtype")]:
            code, details = code_of(lambda: client.profile(onnx, stopping=FAST, inputs=given))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details
        # One spelling of a dtype in every result, whichever the request used.
        spelled = client.profile(onnx, stopping=FAST, inputs=[pb.TensorSpec(name="input", shape=[1, 8], dtype="<f4")])
        assert [(t.name, t.dtype) for t in spelled.inputs] == [("input", "float32")]
        request = pb.ProfileRequest(artifact_sha256=tflite, stopping=FAST, extra_delay_ms=500)
        code, details = code_of(lambda: list(client.stub.Profile(request, timeout=30)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "extra_delay_ms" in details
        for sha in ("\x00", "a" * 300, "../" * 30):
            code, details = code_of(lambda: client.has_artifact(sha))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "64 lowercase hex digits" in details
        assert client.health() == "SERVING"


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def failure_of(call) -> tuple[grpc.StatusCode, str, str]:
    """The status code, the agent's FailureCause and the message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), failure_cause(err.value), err.value.details()


def test_a_crashing_hanging_or_memory_hungry_model_does_not_take_the_agent_down(tmp_path, monkeypatch, agent):
    monkeypatch.setenv("PYTHONPATH", str(plugins.install_plugin(tmp_path / "plugin")))
    address, _ = agent
    before = _children()
    with AgentClient(address) as client:
        crash = client.put_artifact(plugins.spec("test-crash"))
        code, cause, details = failure_of(lambda: client.profile(crash, runtime="torch", stopping=FAST))
        assert (code, cause) == (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_CRASHED") and "SIGSEGV" in details
        hang = client.put_artifact(plugins.spec("test-hang"))
        code, cause, details = failure_of(lambda: client.profile(hang, stopping=FAST, timeout_s=3))
        assert (code, cause) == (grpc.StatusCode.DEADLINE_EXCEEDED, "MODEL_TIMEOUT") and "killed" in details
        # Out of memory is the model's fault, told apart from a full queue (the same status code) by its cause.
        oom = client.put_artifact(plugins.spec("test-oom"))
        code, cause, details = failure_of(lambda: client.profile(oom, stopping=FAST))
        assert (code, cause) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_OUT_OF_MEMORY") and "memory" in details
        # A runtime's own allocation failure (onnxruntime's arena), not a MemoryError, is out of memory too.
        unallocatable = client.put_artifact(models.onnx_unallocatable_output())
        code, cause, details = failure_of(lambda: client.profile(unallocatable, stopping=FAST))
        assert (code, cause) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_OUT_OF_MEMORY"), details
        assert "ran out of memory" in details and "allocate" in details
        # Killed from outside: the OOM killer most likely, but not surely for this model's memory.
        killed = client.put_artifact(plugins.spec("test-killed"))
        code, cause, details = failure_of(lambda: client.profile(killed, stopping=FAST))
        assert (code, cause) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "KILLED") and "SIGKILL" in details
        # Stopped with the machine's services: the device's state, not the model's fault.
        terminated = client.put_artifact(plugins.spec("test-terminated"))
        code, cause, details = failure_of(lambda: client.profile(terminated, stopping=FAST))
        assert (code, cause) == (grpc.StatusCode.UNAVAILABLE, "UNSPECIFIED") and "SIGTERM" in details
        # A refusal the status code says all about carries no cause.
        code, cause, _ = failure_of(lambda: client.profile(killed, stopping=FAST, timeout_s=-1))
        assert (code, cause) == (grpc.StatusCode.INVALID_ARGUMENT, "UNSPECIFIED")
        tiny = client.put_artifact(plugins.spec("test-tiny"))
        assert client.profile(tiny, stopping=FAST).latency.n >= 5  # still serving, torch spec runtime works
        # A spec is a spec however much white space it starts with: upload and measurement see the same format.
        padded = client.put_artifact(b" " * 100 + plugins.spec("test-tiny"))
        assert client.profile(padded, stopping=FAST).latency.n >= 5
    assert _children() == before  # no measuring process outlived its request


def test_queue_is_bounded_and_fifo(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(plugins.install_plugin(tmp_path / "plugin")))
    with running_agent(tmp_path / "cache", max_queued=1) as (address, _), AgentClient(address) as client:
        hang = client.put_artifact(plugins.spec("test-hang"))
        tiny = client.put_artifact(models.onnx_mlp(16, 1))
        running, queued = threading.Event(), threading.Event()
        outcome = {}

        def first():
            try:
                client.profile(hang, timeout_s=4, on_progress=lambda p: running.set())
            except grpc.RpcError as exc:
                outcome["first"] = exc.code()

        def second():
            def seen(p):
                if p.phase == pb.ProfileProgress.PHASE_QUEUED:
                    outcome["position"] = p.queue_position
                    queued.set()
            outcome["second"] = client.profile(tiny, stopping=FAST, on_progress=seen)

        threads = [threading.Thread(target=first)]
        threads[0].start()
        assert running.wait(30)
        threads.append(threading.Thread(target=second))
        threads[1].start()
        assert queued.wait(30)
        code, cause, details = failure_of(lambda: client.profile(tiny, stopping=FAST))
        assert (code, cause) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DEVICE_BUSY") and "limit 1" in details
        for t in threads:
            t.join(60)
        assert outcome["first"] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert outcome["position"] == 1 and outcome["second"].latency.n >= 5
        assert outcome["second"].started_unix_s >= 0


def test_a_call_queued_behind_a_long_measurement_is_not_taken_for_a_frozen_agent(tmp_path, monkeypatch):
    """Another host's measurement runs for seconds; a call queued behind it, whose watchdog allows 1 s of
    silence, hears its place again and again, and measures once the device is free."""
    from fleetnas_agent.profiler import DeviceQueue

    monkeypatch.setattr(DeviceQueue, "HEARTBEAT_S", 0.2)
    monkeypatch.setenv("PYTHONPATH", str(plugins.install_plugin(tmp_path / "plugin")))
    with running_agent(tmp_path / "cache") as (address, _), AgentClient(address) as client:
        hang = client.put_artifact(plugins.spec("test-hang"))
        tiny = client.put_artifact(models.onnx_mlp(16, 1))
        running, outcome = threading.Event(), {}

        def other_host():
            try:
                client.profile(hang, timeout_s=3, on_progress=lambda p: running.set())
            except grpc.RpcError as exc:
                outcome["other"] = exc.code()

        thread = threading.Thread(target=other_host)
        thread.start()
        assert running.wait(30)
        result = client.profile(tiny, stopping=FAST, stall_s=1.0)
        thread.join(60)
    assert result.latency.n >= 5 and outcome["other"] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_and_reflection_follow_their_standards(agent):
    address, _ = agent
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="fleetnas.agent.v1.ProfilerAgent"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert {"fleetnas.agent.v1.ProfilerAgent", "grpc.health.v1.Health"} <= names


def test_environment_reports_device_state(agent):
    address, _ = agent
    with AgentClient(address) as client:
        env = client.environment()
    assert env.unix_s > 0 and env.memory_available_bytes > 0
    assert env.throttled == bool(env.throttle_reason)
    # What this machine cannot tell is left unset, not sent as 0.
    sensors = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    assert env.HasField("cpu_temp_max_c") == any(e.current is not None for es in sensors.values() for e in es)
    freq = psutil.cpu_freq()
    assert env.HasField("cpu_freq_max_mhz") == bool(freq and freq.max)


def test_what_a_device_cannot_tell_reads_as_none_never_as_zero():
    """Unset optional fields (no temperature sensor, no arena figure) and unmeasured memory are None in the
    dictionary the CLI prints and the store keeps; 64-bit counts are numbers, not JSON's strings."""
    result = pb.ProfileResult(
        latency=pb.LatencyStats(n=12, median_ms=1.5),
        memory=pb.MemoryStats(measured=False, model_bytes=3000, note="no VmHWM here"),
        env_before=pb.EnvironmentSnapshot(memory_available_bytes=2 ** 40, cpu_freq_current_mhz=1500.0,
                                          temperatures=[pb.TemperatureReading(sensor="soc", current_c=41.0)]),
        env_after=pb.EnvironmentSnapshot(cpu_temp_max_c=0.0))  # a real 0 °C is set, and stays 0
    s = result_to_dict(result)
    assert s["latency_ms"]["n"] == 12 and s["memory"]["model_bytes"] == 3000
    assert [s["memory"][k] for k in ("peak_bytes", "baseline_rss_bytes", "peak_rss_bytes", "runtime_arena_bytes")] \
        == [None] * 4
    before, after = s["env"]["before"], s["env"]["after"]
    assert before["memory_available_bytes"] == 2 ** 40 and before["cpu_freq_current_mhz"] == 1500.0
    assert before["cpu_temp_max_c"] is None and before["cpu_freq_max_mhz"] is None
    assert before["temperatures"] == [{"sensor": "soc", "current_c": 41.0, "high_c": None, "critical_c": None}]
    assert after["cpu_temp_max_c"] == 0.0
    measured = result_to_dict(pb.ProfileResult(memory=pb.MemoryStats(measured=True, peak_bytes=7)))["memory"]
    assert measured["peak_bytes"] == 7 and measured["baseline_rss_bytes"] == 0


# ----- clients that stop reading or sending, and results a runtime cannot report ------------------------------
SLOW_READER = [("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)]  # a tiny receive window


def test_a_client_that_stops_reading_cannot_hold_the_device_past_its_timeout(tmp_path, caplog):
    """Sending a progress event blocks while its client does not read; the measurement must still end at its
    timeout_s and release the device, and the call whose result nobody reads is ended too."""
    with running_agent(tmp_path / "cache", result_unread_s=2) as (address, _), AgentClient(address) as client, \
            grpc.insecure_channel(address, options=SLOW_READER) as channel:
        sha = client.put_artifact(models.onnx_mlp(width=16, layers=1))
        # Would measure for a minute (a million runs), sending progress every 0.5 s; allowed 3 s.
        endless = pb.StoppingRule(warmup_min_s=0.01, min_runs=10**6, max_runs=10**6, min_s=1, max_s=60,
                                  target_rel_ci=1e-6)
        request = pb.ProfileRequest(artifact_sha256=sha, stopping=endless, timeout_s=3)
        stalled = ProfilerAgentStub(channel).Profile(request)
        assert next(stalled).progress.phase == pb.ProfileProgress.PHASE_LOADING  # then never read again
        asked_at = time.time()
        result = client.profile(sha, stopping=FAST, wait_s=30)
        assert result.latency.n >= 5
        assert result.started_unix_s - asked_at < 20  # the device came free at the 3 s timeout, not at the end
        assert wait_for(lambda: any("did not read its result" in r.getMessage() for r in caplog.records))
        with pytest.raises(grpc.RpcError) as err:
            for event in stalled:
                assert not event.HasField("result")
        assert err.value.code() == grpc.StatusCode.CANCELLED
    assert _children() == set()  # no measuring process outlived its timeout


def test_a_stalled_upload_is_stopped_after_the_idle_limit_and_keeps_its_bytes(tmp_path):
    data = models.onnx_mlp(width=256, layers=4)  # about 1 MiB: several chunks
    sha = hashlib.sha256(data).hexdigest()
    with running_agent(tmp_path / "cache", upload_idle_s=3) as (address, _), AgentClient(address) as client:
        stall = threading.Event()

        def stalling():  # sends part of the artifact, then nothing, without ending its stream
            yield pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))
            yield pb.ArtifactChunk(data=data[:100_000])
            stall.wait(60)

        try:
            call = client.stub.PutArtifact.future(stalling(), timeout=60)
            assert wait_for(lambda: client.has_artifact(sha).resume_offset_bytes == 100_000)
            resume = pb.ArtifactHeader(sha256=sha, size_bytes=len(data), offset_bytes=100_000)
            code, details = code_of(lambda: _upload(client, resume, data[100_000:]))
            assert code == grpc.StatusCode.ABORTED and "in progress" in details  # the stalled one holds it
            assert wait_for(call.done, timeout_s=30)
            assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no data for 3 s" in call.exception().details()
            assert client.has_artifact(sha).resume_offset_bytes == 100_000  # kept for a resume
            assert _upload(client, resume, data[100_000:]).sha256 == sha  # another host may now finish it
            assert client.has_artifact(sha).present
        finally:
            stall.set()
    assert hashlib.sha256((tmp_path / "cache" / "artifacts" / sha).read_bytes()).hexdigest() == sha


def test_slow_uploads_cannot_take_the_call_slots_measurements_and_health_checks_need(tmp_path):
    """Uploads that trickle (a byte now and then, never idle long enough to be stopped) beyond MAX_UPLOADS are
    refused at once; other hosts' health checks, Describe and measurements still get through."""
    with running_agent(tmp_path / "cache", max_queued=1) as (address, _), AgentClient(address) as client:
        cached = client.put_artifact(models.onnx_mlp(width=8, layers=1))
        release = threading.Event()

        def trickling(i):  # a header, one chunk, then nothing until the test ends
            yield pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=f"{i:064x}", size_bytes=1000))
            yield pb.ArtifactChunk(data=b"x")
            release.wait(60)

        calls = []
        try:
            for i in range(server.MAX_UPLOADS + 2):
                calls.append(client.stub.PutArtifact.future(trickling(i), timeout=60))
            assert wait_for(lambda: sum(c.done() for c in calls) == 2)  # the two beyond the limit
            refused = [c.exception() for c in calls if c.done()]
            assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and failure_cause(e) == "DEVICE_BUSY"
                       for e in refused)  # busy, not broken: a farm waits for it without blaming anything
            assert f"{server.MAX_UPLOADS} uploads are in progress" in refused[0].details()
            assert client.health() == "SERVING" and client.describe().limits.max_queued_profiles == 1
            assert client.profile(cached, stopping=FAST).latency.n >= 5
        finally:
            release.set()
            for call in calls:
                call.cancel()


def test_a_result_the_runtime_cannot_report_is_a_clear_error(tmp_path, monkeypatch, caplog, agent):
    """Values a runtime reports that the result message cannot hold are named in an INTERNAL status, not left to
    escape as UNKNOWN with a traceback; the device is free again afterwards."""
    address, _ = agent
    real_child = server.run_child
    reported, missing = {}, object()

    def child(request, threads, timeout_s, cancelled):
        yield {"phase": "loading", "runs_done": 0, "elapsed_s": 0.0, "rel_ci_half_width": 0.0}
        out = {"inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}], "latency": {"n": 3},
               "memory": {"measured": False}, "load_ms": 1.0, "runtime_version": "1", **reported}
        return {key: value for key, value in out.items() if value is not missing}

    monkeypatch.setattr(server, "run_child", child)
    with AgentClient(address) as client:
        sha = client.put_artifact(models.onnx_mlp(width=8, layers=1))
        assert client.profile(sha).latency.n == 3  # the fake runtime's result goes through
        for bad, named in [({"inputs": [{"name": 5, "shape": [1, 4], "dtype": "float32"}]}, "input spec name=5"),
                           ({"latency": {"n": 3, "p50": 1.0}}, "latency p50=1.0"),
                           ({"memory": {"peak_bytes": "lots"}}, "memory peak_bytes='lots'"),
                           ({"load_ms": "slow"}, "result load_ms='slow'"), ({"runtime_version": 2}, "version=2"),
                           ({"load_ms": missing}, "it has no 'load_ms'"), ({"inputs": None}, "NoneType")]:
            reported.clear()
            reported.update(bad)
            code, details = code_of(lambda: client.profile(sha))
            assert code == grpc.StatusCode.INTERNAL and "runtime reported a result" in details, details
            assert named in details, details
        reported.clear()
        monkeypatch.setattr(server, "run_child", real_child)
        assert client.profile(sha, stopping=FAST).latency.n >= 5  # the device lock was released each time
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_torch_spec_with_a_numeric_input_name_is_refused_by_name(tmp_path, monkeypatch, agent):
    monkeypatch.setenv("PYTHONPATH", str(plugins.install_plugin(tmp_path / "plugin")))
    address, _ = agent
    spec = json.dumps({"space": "test-tiny", "config": {},
                       "inputs": [{"name": 5, "shape": [1, 4], "dtype": "float32"}]}).encode()
    with AgentClient(address) as client:
        sha = client.put_artifact(spec)
        code, details = code_of(lambda: client.profile(sha, runtime="torch", stopping=FAST))
    # Refused by the runtime before measuring (INVALID_ARGUMENT), or, failing that, by the agent (INTERNAL).
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), (code, details)
    assert "name" in details, details
