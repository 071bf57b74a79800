"""Load on one agent: 50 clients at once, and uploads racing for the last bytes of the cache.

What must hold: measurements never overlap (the agent's own timestamps of the device lock prove it, and
no two measuring processes are ever seen at once), the queue never holds more than its bound and refuses
only when full, nothing deadlocks, every accepted request is answered, and uploads running side by side
never together push the cache past its cap.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field

import grpc

from agents import AgentProcess, running_agent
from counts import scale
from faults import wait_until, workers_of
from models import onnx_mlp, tflite_mlp
from fleetnas_agent.client import AgentClient
from fleetnas_agent.proto import agent_pb2 as pb

AREA = "load"
CLIENTS = 50
MAX_QUEUE = 20
FAST = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.001, min_runs=3, min_s=0.001, max_s=0.02)
REFUSAL = re.compile(r"the device is busy and (\d+) measurements already wait \(limit (\d+)\)")


@dataclass
class Outcome:
    uploaded: bool = False
    result: pb.ProfileResult | None = None
    status: str = ""
    details: str = ""
    positions: list = field(default_factory=list)
    other_calls_ok: bool = False


def _client(address: str, artifact: bytes, start: threading.Barrier, outcome: Outcome) -> None:
    def seen(progress):
        if progress.phase == pb.ProfileProgress.PHASE_QUEUED:
            outcome.positions.append(progress.queue_position)

    with AgentClient(address, timeout_s=60) as client:
        start.wait()
        try:
            sha = client.put_artifact(artifact)  # ten clients send each artifact at once: one uploads, nine wait
            outcome.uploaded = True
            outcome.other_calls_ok = bool(client.describe().device_id and client.environment().unix_s
                                          and client.health() == "SERVING")
            outcome.result = client.profile(sha, stopping=FAST, on_progress=seen, wait_s=120)
            outcome.status = "OK"
        except grpc.RpcError as exc:
            outcome.status, outcome.details = exc.code().name, exc.details()


def _watch_workers(pid: int, stop: threading.Event, most: list) -> None:
    """Records the most measuring processes seen at once (observation, not synchronisation)."""
    while not stop.is_set():
        most[0] = max(most[0], len(workers_of(pid)))
        stop.wait(0.005)


def test_fifty_clients_at_once_never_overlap_and_every_accepted_request_is_answered(tmp_path, counts):
    artifacts = [onnx_mlp(16, 1, seed=s) for s in range(3)] + [tflite_mlp(16, 1, seed=s) for s in range(2)]
    with AgentProcess(tmp_path / "cache", args=["--max-queue", str(MAX_QUEUE)]) as agent:
        for round_ in range(scale()):
            outcomes = [Outcome() for _ in range(CLIENTS)]
            start = threading.Barrier(CLIENTS)
            threads = [threading.Thread(target=_client, args=(agent.address, artifacts[i % len(artifacts)], start,
                                                              outcomes[i]), daemon=True) for i in range(CLIENTS)]
            stop, most = threading.Event(), [0]
            watcher = threading.Thread(target=_watch_workers, args=(agent.proc.pid, stop, most), daemon=True)
            watcher.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            stop.set()
            watcher.join()
            _check_round(outcomes, threads, most[0], counts)
        with AgentClient(agent.address) as client:
            assert client.health() == "SERVING"
        assert not workers_of(agent.proc.pid)


def _check_round(outcomes: list[Outcome], threads, most_at_once: int, counts) -> None:
    hung = sum(t.is_alive() for t in threads)
    accepted = [o for o in outcomes if o.status == "OK"]
    refused = [o for o in outcomes if o.status == "RESOURCE_EXHAUSTED"]
    strange = [o for o in outcomes if o.status not in ("OK", "RESOURCE_EXHAUSTED")]
    refusals = [REFUSAL.search(o.details) for o in refused]
    intervals = sorted((o.result.started_unix_s, o.result.finished_unix_s) for o in accepted)
    overlaps = sum(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:]))
    over_bound = sum(p > MAX_QUEUE for o in outcomes for p in o.positions)
    early_refusals = sum(m is None or int(m.group(1)) != MAX_QUEUE for m in refusals)
    failures = (hung + len(strange) + overlaps + over_bound + early_refusals + int(most_at_once > 1)
                + sum(not (o.uploaded and o.other_calls_ok) for o in outcomes))
    counts.add(AREA, requests=CLIENTS * 6, failures=failures)
    assert hung == 0, "a client is still waiting: deadlock"
    assert strange == [], [(o.status, o.details) for o in strange]
    assert all(o.uploaded and o.other_calls_ok for o in outcomes)
    assert len(accepted) + len(refused) == CLIENTS
    assert len(accepted) >= MAX_QUEUE + 1  # the first arrivals always fit: one measured, MAX_QUEUE waiting
    assert all(o.result.latency.n >= 3 and o.result.started_unix_s < o.result.finished_unix_s for o in accepted)
    assert overlaps == 0, intervals
    assert most_at_once == 1  # never two measuring processes at once
    assert over_bound == 0 and max(p for o in outcomes for p in o.positions) <= MAX_QUEUE
    assert early_refusals == 0, [o.details for o in refused]  # refused only with the queue full


def test_uploads_side_by_side_never_push_the_cache_past_its_cap(tmp_path, counts):
    """Eight uploads of 300 kB into a 1 MiB cache, all begun before any ends: at most three may be accepted."""
    cap, size, first = 1 << 20, 300_000, 100_000
    blobs = [b"\0" + os.urandom(size - 1) for _ in range(8)]
    with running_agent(tmp_path / "cache", cache_max_bytes=cap) as (address, _), AgentClient(address) as client:
        go = threading.Event()

        def stream(data: bytes):
            yield pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=hashlib.sha256(data).hexdigest(),
                                                            size_bytes=len(data)))
            yield pb.ArtifactChunk(data=data[:first])
            go.wait(60)  # every upload has begun before any sends its rest
            yield pb.ArtifactChunk(data=data[first:])

        calls = [client.stub.PutArtifact.future(stream(b), timeout=120) for b in blobs]
        shas = [hashlib.sha256(b).hexdigest() for b in blobs]
        begun = lambda i: calls[i].done() or client.has_artifact(shas[i]).resume_offset_bytes == first  # noqa: E731
        wait_until(lambda: all(begun(i) for i in range(len(blobs))), what="every upload to begin or be refused")
        in_flight = sum(not c.done() for c in calls)
        go.set()
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        stored = sum(client.has_artifact(sha).present for sha in shas)
        used = client.describe().limits.cache_used_bytes
    counts.add(AREA, requests=len(blobs), failures=int(in_flight > cap // size) + int(used > cap))
    assert in_flight <= cap // size, f"{in_flight} uploads of {size} bytes accepted into a {cap}-byte cache"
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and codes.count("OK") == in_flight
    assert stored == in_flight and used <= cap
