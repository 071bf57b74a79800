"""Hostile input to a real agent: random, truncated and oversized messages to every RPC; uploads that lie,
stop short or vanish; garbage artifacts in every format; absurd shapes and stopping rules; clients that
leave mid-upload or mid-measurement.

The agent must answer each with a clear status (never UNKNOWN, which means an unhandled exception; INTERNAL
only for bytes that are not a message at all, gRPC's own answer), go on serving, keep no corrupt or
half-written artifact, leak no cache space, open files or measuring processes.
(tests/test_agent_service.py covers each bad input once by hand; this file throws many at it.)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import models
import plugins
from agents import running_agent
from counts import scale
from faults import open_fds, wait_until, workers_of
from fleetnas_agent.client import AgentClient
from fleetnas_agent.proto import agent_pb2 as pb

AREA = "hostile input"
MAX_MESSAGE = 1024 * 1024  # the smallest limit `fleetnas-agent serve --max-message-mb` allows
MAX_ARTIFACT = 4 * 1024 * 1024
CACHE_MAX = 16 * 1024 * 1024
FAST = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.001, min_runs=3, min_s=0.001, max_s=0.05)
SERVICE = "/fleetnas.agent.v1.ProfilerAgent/"
# Statuses that tell the caller what happened. UNKNOWN (an exception escaped the servicer) never is.
CLEAR = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
         "ABORTED"}
UNDECODABLE = "Exception deserializing request!"  # gRPC's INTERNAL answer to bytes that are no message


def fuzz_settings(examples: int):
    """Deterministic in CI (same cases every run); random and `scale()` times larger in the benchmark."""
    return settings(max_examples=examples * scale(), deadline=None, database=None, derandomize=scale() == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@dataclass
class Target:
    address: str
    cache_dir: Path
    client: AgentClient
    channel: grpc.Channel
    known: dict[str, str]        # name -> sha256 of artifacts uploaded at the start
    contents: dict[str, bytes]   # name -> bytes, for upload fuzzing

    def __repr__(self) -> str:  # a failing example prints its arguments: keep the artifacts' bytes out of it
        return f"Target({self.address})"

    def call(self, method: str, payload, timeout: float = 30.0) -> tuple[str, str]:
        """Sends raw bytes (a list of them for the client-streaming upload); returns (status, details)."""
        raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
        try:
            if method == "PutArtifact":
                self.channel.stream_unary(SERVICE + method, **raw)(iter(payload), timeout=timeout)
            elif method == "Profile":
                list(self.channel.unary_stream(SERVICE + method, **raw)(payload, timeout=timeout))
            else:
                self.channel.unary_unary(SERVICE + method, **raw)(payload, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", ""


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(plugins.install_plugin(root / "plugin")))
        with running_agent(root / "cache", max_message_bytes=MAX_MESSAGE, max_artifact_bytes=MAX_ARTIFACT,
                           cache_max_bytes=CACHE_MAX, max_queued=2) as (address, _):
            # The client may send more than the agent accepts: the agent, not the client, must refuse.
            options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
            with AgentClient(address, max_message_bytes=64 << 20) as client, \
                    grpc.insecure_channel(address, options=options) as channel:
                contents = {"onnx": models.onnx_mlp(16, 1), "onnx-open": models.onnx_mlp(16, 1, batch="N"),
                            "tflite": models.tflite_mlp(16, 1), "spec": plugins.spec("test-tiny"),
                            "big-onnx": models.onnx_mlp(300, 4, seed=3)}  # ~1.4 MB: several chunks
                known = {name: client.put_artifact(data) for name, data in contents.items() if name != "big-onnx"}
                yield Target(address, root / "cache", client, channel, known, contents)


def clear(status: str, details: str) -> bool:
    return status in CLEAR or (status == "INTERNAL" and details == UNDECODABLE)


def assert_sound(target: Target) -> None:
    """The agent serves, measures nothing in the background, and its cache holds only verified artifacts."""
    assert target.client.health() == "SERVING"
    wait_until(lambda: not workers_of(os.getpid()), timeout_s=10, what="no measuring process left")
    for path in (target.cache_dir / "artifacts").iterdir():
        assert not path.name.startswith("."), f"a temporary file was left: {path.name}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"corrupt artifact {path.name}"
    on_disk = sum(p.stat().st_size for d in ("artifacts", "incoming") for p in (target.cache_dir / d).iterdir())
    assert target.client.describe().limits.cache_used_bytes == on_disk <= CACHE_MAX


# ----- raw bytes to every RPC ------------------------------------------------------------------------
VALID = [pb.DescribeRequest().SerializeToString(), pb.HasArtifactRequest(sha256="ab" * 32).SerializeToString(),
         pb.ProfileRequest(artifact_sha256="cd" * 32, runtime="onnxruntime", threads=1, stopping=FAST,
                           inputs=[pb.TensorSpec(name="input", shape=[1, 16], dtype="float32")]).SerializeToString(),
         pb.ArtifactChunk(header=pb.ArtifactHeader(sha256="ef" * 32, size_bytes=10)).SerializeToString(),
         pb.ArtifactChunk(data=b"0123456789").SerializeToString()]
payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(VALID).flatmap(lambda b: st.integers(0, len(b)).map(lambda k: b[:k])),  # truncated messages
    st.sampled_from(VALID).flatmap(lambda b: st.binary(min_size=1, max_size=8).map(lambda junk: b + junk)),
    st.just(b"\x0a" + b"\xff" * 9),  # a length prefix claiming more bytes than exist
    st.just(b"\x00" * (MAX_MESSAGE + 1)),  # over the agent's message limit
)


@fuzz_settings(120)
@given(method=st.sampled_from(["Describe", "HasArtifact", "Environment", "Profile", "PutArtifact"]),
       payload=payloads, stream=st.lists(payloads, max_size=4))
@example(method="PutArtifact", payload=b"", stream=[])                     # a zero-length stream
@example(method="PutArtifact", payload=b"", stream=[VALID[3], b"", b""])    # header, then empty chunks
@example(method="Profile", payload=b"", stream=[])                         # an empty request
def test_random_truncated_and_oversized_messages_get_clear_statuses(target, counts, method, payload, stream):
    status, details = target.call(method, stream if method == "PutArtifact" else payload)
    counts.add(AREA, requests=1, failures=int(not clear(status, details)))
    assert clear(status, details), f"{method}: {status} {details}"
    if method in ("Profile", "PutArtifact"):
        assert not workers_of(os.getpid())


# ----- Profile requests that are well-formed messages with hostile values ----------------------------
ODD_FLOATS = [0.0, 0.001, 0.02, -1.0, math.nan, math.inf, -math.inf, 1e9, 3601.0]
stopping_rules = st.builds(
    pb.StoppingRule,
    warmup_min_runs=st.sampled_from([0, 1, 3, 2**32 - 1]), warmup_min_s=st.sampled_from(ODD_FLOATS),
    min_runs=st.sampled_from([0, 1, 5, 2**32 - 1]), max_runs=st.sampled_from([0, 2, 50, 10**6 + 1, 2**32 - 1]),
    min_s=st.sampled_from(ODD_FLOATS), max_s=st.sampled_from([0.02, 0.05, -1.0, math.nan, math.inf, 1e9, 3601.0]),
    target_rel_ci=st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1, math.nan]))
dimensions = st.sampled_from([-1, 0, 1, 4, 16, 10**9, 2**62, -2**63])
tensor_specs = st.builds(
    pb.TensorSpec, name=st.sampled_from(["input", "x", "", "ïnput\x00"]),
    shape=st.lists(dimensions, max_size=4) | st.just([1, 16]) | st.just([10**9, 16]) | st.just([1] * 64),
    dtype=st.sampled_from(["", "float32", "float64", "int64", "bool", "object", "complex64", "U8", "V0", "f"]))


@fuzz_settings(30)
@given(artifact=st.sampled_from(["onnx", "onnx-open", "tflite", "unknown", "not-a-digest", ""]),
       runtime=st.sampled_from(["", "onnxruntime", "litert", "torch", "tensorrt", "../../bin/sh"]),
       threads=st.sampled_from([0, 1, 2, 257, 2**32 - 1]), inputs=st.lists(tensor_specs, max_size=2),
       stopping=stopping_rules, seed=st.integers(0, 2**64 - 1),
       timeout_s=st.sampled_from([0.0, 0.001, 20.0, -1.0, math.nan, math.inf]))
@example(artifact="onnx", runtime="", threads=1, inputs=[], seed=0, timeout_s=math.nan,
         stopping=pb.StoppingRule(warmup_min_s=math.inf, max_s=math.nan))  # was: warms up forever, no deadline
def test_hostile_profile_requests_get_clear_statuses_and_no_process_outlives_them(
        target, counts, artifact, runtime, threads, inputs, stopping, seed, timeout_s):
    sha = target.known.get(artifact, {"unknown": "0" * 64}.get(artifact, artifact))
    request = pb.ProfileRequest(artifact_sha256=sha, runtime=runtime, threads=threads, inputs=inputs,
                                stopping=stopping, seed=seed, timeout_s=timeout_s)
    # The client's own deadline is the hang detector: a clear answer comes long before it.
    status, details = target.call("Profile", request.SerializeToString(), timeout=30)
    hung = status == "DEADLINE_EXCEEDED" and "did not finish within" not in details  # the client's deadline
    bad = not clear(status, details) or hung
    counts.add(AREA, requests=1, failures=int(bad))
    assert not bad, f"{status}: {details}"
    wait_until(lambda: not workers_of(os.getpid()), timeout_s=10, what="the measuring process to be reaped")


# ----- uploads that lie, stop short, or vanish ------------------------------------------------------
@dataclass
class UploadCase:
    content: str
    sha: str              # "true", "wrong" or "bad"
    size: str             # "true", "zero", "short", "long", "huge"
    format: int
    offset: int
    chunk_bytes: int
    corrupt: bool         # send different bytes than the header describes
    extra_header: bool    # a second header in the middle
    leave_after: int | None  # the client vanishes after this many data chunks


upload_cases = st.builds(
    UploadCase, content=st.sampled_from(["onnx", "tflite", "spec", "big-onnx", "garbage", "json-garbage"]),
    sha=st.sampled_from(["true", "true", "wrong", "bad"]), size=st.sampled_from(["true", "true", "zero", "short",
                                                                                  "long", "huge"]),
    format=st.sampled_from([0, 1, 2, 3, 99]), offset=st.sampled_from([0, 0, 0, 7, 2**63]),
    chunk_bytes=st.sampled_from([1 << 10, 256 << 10, MAX_MESSAGE + 1]), corrupt=st.booleans(),
    extra_header=st.booleans(), leave_after=st.none() | st.integers(0, 3))


def _content(target: Target, name: str) -> bytes:
    if name == "garbage":
        return b"\x00garbage" * 500
    if name == "json-garbage":
        return b'{"space": "demo", "config": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # nested too deep to parse
    return target.contents[name]


@fuzz_settings(60)
@given(case=upload_cases)
@example(case=UploadCase("json-garbage", "true", "true", 0, 0, 256 << 10, False, False, None))
@example(case=UploadCase("garbage", "true", "true", 99, 0, 256 << 10, False, False, None))
@example(case=UploadCase("onnx", "true", "true", 0, 0, 1 << 10, False, False, 2))  # cached: answered at once
def test_uploads_that_lie_stop_short_or_vanish_leave_no_corrupt_artifact(target, counts, case):
    data = _content(target, case.content)
    true_sha = hashlib.sha256(data).hexdigest()
    sha = {"true": true_sha, "wrong": hashlib.sha256(b"other" + data).hexdigest(), "bad": "xyz"}[case.sha]
    size = {"true": len(data), "zero": 0, "short": len(data) // 2, "long": len(data) + 10,
            "huge": 2**64 - 1}[case.size]
    header = pb.ArtifactHeader(sha256=sha, size_bytes=size, format=case.format, offset_bytes=case.offset)
    sent = data[::-1] if case.corrupt else data
    chunks = [sent[i:i + case.chunk_bytes] for i in range(0, len(sent), case.chunk_bytes)]
    messages = [pb.ArtifactChunk(header=header).SerializeToString()]
    messages += [pb.ArtifactChunk(data=c).SerializeToString() for c in chunks]
    if case.extra_header:
        messages.insert(len(messages) // 2 + 1, messages[0])
    fds = open_fds()
    if case.leave_after is None:
        status, details = target.call("PutArtifact", messages)
        bad = not clear(status, details)
        lied = case.sha != "true" or case.size != "true" or case.corrupt or case.extra_header or case.offset
        bad = bad or (status == "OK" and lied and not _already_cached(target, sha))
    else:  # the client goes away mid-upload (a crash, a cut cable): what arrived stays for a resume
        honest = [messages[0]] + [pb.ArtifactChunk(data=c).SerializeToString() for c in
                                  (data[i:i + case.chunk_bytes] for i in range(0, len(data), case.chunk_bytes))]
        status, details = _vanish(target, honest[:1 + case.leave_after])
        bad = not clear(status, details) and status != "CANCELLED"
    counts.add(AREA, requests=1, failures=int(bad))
    assert not bad, f"{status}: {details}"
    assert_sound(target)
    assert open_fds() <= fds + 5  # uploads close what they open (a little slack for gRPC's own sockets)


def _already_cached(target: Target, sha: str) -> bool:
    """An upload of an artifact the agent has is answered OK without reading the data: not a lie accepted."""
    return target.client.has_artifact(sha).present if len(sha) == 64 else False


def _vanish(target: Target, messages: list[bytes]) -> tuple[str, str]:
    """Sends `messages`, then leaves without ending the stream (as a crashed or cut-off host would)."""
    stop = threading.Event()

    def stream():
        yield from messages
        stop.wait(30)

    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    call = target.channel.stream_unary(SERVICE + "PutArtifact", **raw).future(stream(), timeout=30)
    header = pb.ArtifactChunk.FromString(messages[0]).header
    sent = sum(len(pb.ArtifactChunk.FromString(m).data) for m in messages[1:])
    # Leave once the agent has the bytes on disk, or has already refused the upload.
    arrived = lambda: len(header.sha256) == 64 and target.client.has_artifact(header.sha256).resume_offset_bytes \
        >= header.offset_bytes + sent  # noqa: E731
    wait_until(lambda: call.done() or not sent or arrived(), timeout_s=30, what="the upload to arrive")
    call.cancel()
    stop.set()
    try:
        call.result()
    except grpc.FutureCancelledError:
        return "CANCELLED", ""
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def test_after_the_fuzzing_every_artifact_still_uploads_and_resumes(target, counts):
    """No upload slot stays taken and no partial upload blocks a resume, whatever came before."""
    for name in ("onnx", "tflite", "spec", "big-onnx", "garbage"):
        data = _content(target, name)
        assert target.client.put_artifact(data) == hashlib.sha256(data).hexdigest()
        counts.add(AREA, requests=1)
    assert_sound(target)


# ----- garbage artifacts of every format, and absurd shapes ------------------------------------------
def _flip(data: bytes, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(8, len(out), size=n):
        out[i] ^= 0xFF
    return bytes(out)


def _onnx(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _spec(**fields) -> bytes:
    return json.dumps({"space": "test-tiny", "config": {}, **fields}).encode()


FLOAT1 = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])]
FLOAT_OUT = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
BIG_SHAPE = numpy_helper.from_array(np.array([10**6, 10**6], dtype=np.int64), "shape")  # 10^12 floats: 4 TB
ONE = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])


def garbage_artifacts() -> dict[str, bytes]:
    tfl, onx = models.tflite_mlp(16, 1), models.onnx_mlp(16, 1)
    rng = np.random.default_rng(0)
    return {
        "tflite: the magic and nothing else": b"\0\0\0\0TFL3",
        "tflite: cut in half": tfl[:len(tfl) // 2],
        "tflite: 64 bytes flipped": _flip(tfl, 64, 1),
        "tflite: random bytes after the magic": tfl[:8] + rng.bytes(4000),
        "onnx: random bytes": rng.bytes(4000),
        "onnx: cut in half": onx[:len(onx) // 2],
        "onnx: 64 bytes flipped": _flip(onx, 64, 2),
        "onnx: a tensor, not a model": numpy_helper.from_array(np.ones(4, np.float32)).SerializeToString(),
        "onnx: an operator nobody has": _onnx([helper.make_node("Frobnicate", ["x"], ["y"], domain="evil")],
                                              FLOAT1, FLOAT_OUT),
        "onnx: an opset from the future": _onnx([helper.make_node("Relu", ["x"], ["y"])], FLOAT1, FLOAT_OUT,
                                                opset=999),
        "onnx: a 10^9-element input": models.onnx_huge_input(),
        "onnx: a 10^12-element intermediate": _onnx(
            [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=ONE),
             helper.make_node("Add", ["big", "x"], ["y"])], FLOAT1, FLOAT_OUT, [BIG_SHAPE]),
        "spec: a space nobody installed": json.dumps({"space": "no-such-space", "config": {}}).encode(),
        "spec: a 10^9-element input": _spec(inputs=[{"name": "x", "shape": [1000, 1000, 1000], "dtype": "float32"}]),
        "spec: no inputs": _spec(),
        "spec: an input dtype numpy cannot make": _spec(inputs=[{"name": "x", "shape": [1, 4], "dtype": "object"}]),
        "spec: a JSON array, not an object": b"[1, 2, 3]",
    }


@pytest.mark.parametrize("name", list(garbage_artifacts()))
def test_garbage_artifacts_are_refused_or_fail_clearly_and_the_agent_stays_up(target, counts, name):
    data = garbage_artifacts()[name]
    try:
        sha = target.client.put_artifact(data)
    except grpc.RpcError as exc:  # refused at the door: fine if it says why
        counts.add(AREA, requests=1, failures=int(exc.code() != grpc.StatusCode.INVALID_ARGUMENT))
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
        assert_sound(target)
        return
    try:
        result = target.client.profile(sha, stopping=FAST, timeout_s=30, wait_s=90)
        status, details = "OK", f"ran: median {result.latency.median_ms} ms"  # a flipped byte may still run
    except grpc.RpcError as exc:
        status, details = exc.code().name, exc.details()
    bad = status not in CLEAR or (status == "DEADLINE_EXCEEDED" and "killed" not in details)
    counts.add(AREA, requests=2, failures=int(bad))
    assert not bad, f"{status}: {details}"
    if "10^" in name:  # absurd sizes are refused or fail to allocate; they never take the agent down
        assert status in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), details
    assert_sound(target)


# ----- clients that leave mid-measurement ------------------------------------------------------------
SLOW = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.001, min_runs=10**6, max_runs=10**6, min_s=60, max_s=60)
CLIENT = """
import sys
from fleetnas_agent.client import AgentClient
from fleetnas_agent.proto import agent_pb2 as pb
rule = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.001, min_runs=10**6, max_runs=10**6, min_s=60, max_s=60)
def seen(p):
    if p.phase == pb.ProfileProgress.PHASE_MEASURING:
        print("measuring", flush=True)
AgentClient(sys.argv[1]).profile(sys.argv[2], stopping=rule, on_progress=seen)
"""


def _profile_in_background(target: Target, sha: str, stopping=SLOW):
    """A Profile call in a thread; returns (call, phases seen)."""
    phases = []
    events = target.client.stub.Profile(pb.ProfileRequest(artifact_sha256=sha, stopping=stopping), timeout=120)

    def drain():
        try:
            for event in events:
                phases.append(event.progress.phase if event.HasField("progress") else "result")
        except grpc.RpcError:
            phases.append("ended")

    threading.Thread(target=drain, daemon=True).start()
    return events, phases


def test_clients_that_leave_while_measured_or_queued_free_the_device(target, counts):
    sha = target.known["onnx"]
    running, phases = _profile_in_background(target, sha)
    wait_until(lambda: pb.ProfileProgress.PHASE_MEASURING in phases, what="the first client to be measured")
    queued, queued_phases = _profile_in_background(target, sha)
    wait_until(lambda: pb.ProfileProgress.PHASE_QUEUED in queued_phases, what="the second client to queue")
    queued.cancel()  # leaves while waiting
    running.cancel()  # leaves mid-measurement: its process must be killed, not left to run for a minute
    wait_until(lambda: not workers_of(os.getpid()), timeout_s=10, what="the measurement to be killed")

    def measured_at_once() -> bool:  # the lock is released a moment after the process is reaped: ask again
        after = []
        result = target.client.profile(sha, stopping=FAST, on_progress=lambda p: after.append(p.phase), wait_s=30)
        return result.latency.n >= 3 and pb.ProfileProgress.PHASE_QUEUED not in after

    # The device is free and nobody is left in the queue: a new request is measured without waiting.
    wait_until(measured_at_once, timeout_s=30, what="a new request to be measured without queueing")
    counts.add(AREA, requests=3, faults=2)
    assert_sound(target)


def test_a_client_process_killed_mid_measurement_frees_the_device(target, counts):
    client = subprocess.Popen([sys.executable, "-c", CLIENT, target.address, target.known["tflite"]],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert client.stdout.readline().strip() == "measuring"
        assert len(workers_of(os.getpid())) == 1
    finally:
        os.killpg(client.pid, signal.SIGKILL)  # the host dies; its socket closes with it
        client.wait()
        client.stdout.close()
    wait_until(lambda: not workers_of(os.getpid()), timeout_s=10, what="the orphaned measurement to be killed")
    result = target.client.profile(target.known["tflite"], stopping=FAST)
    counts.add(AREA, requests=2, faults=1)
    assert result.latency.n >= 3
    assert_sound(target)
