"""Two agents on one device (one per runtime or thread count, each a process of its own) take turns to measure:
their `--device-lock` file orders them as each agent's queue orders its own requests."""
import threading
from contextlib import contextmanager

from agents import AgentProcess
from models import onnx_mlp
from fleetnas_agent.client import AgentClient
from fleetnas_agent.proto import agent_pb2 as pb

#: Long enough that two measurements started together would overlap by most of their length.
RULE = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.01, min_runs=5, min_s=1.5, max_s=2.0, max_runs=1_000_000)


def _measure_together(agents: list[AgentProcess]) -> list[pb.ProfileResult]:
    model = onnx_mlp(width=64, layers=2)
    results, errors, start = [None] * len(agents), [], threading.Barrier(len(agents))

    def measure(i: int) -> None:
        try:
            with AgentClient(agents[i].address) as client:
                sha = client.put_artifact(model)
                start.wait(timeout=60)
                results[i] = client.profile(sha, runtime="onnxruntime", stopping=RULE, timeout_s=60)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=measure, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors and all(r is not None for r in results), errors
    return results


def test_agents_sharing_a_device_lock_never_measure_at_once(tmp_path):
    lock = tmp_path / "device.lock"
    with AgentProcess(tmp_path / "a", args=["--device-lock", str(lock)]) as a, \
            AgentProcess(tmp_path / "b", args=["--device-lock", str(lock)]) as b:
        first, second = sorted(_measure_together([a, b]), key=lambda r: r.started_unix_s)
    assert first.latency.n >= 5 and second.latency.n >= 5
    assert second.started_unix_s >= first.finished_unix_s  # one after the other, whichever came first
    assert lock.exists()


def test_an_agent_whose_device_lock_cannot_be_made_refuses_to_start(tmp_path):
    agent = AgentProcess(tmp_path / "a", args=["--device-lock", str(tmp_path / "no" / "such" / "folder" / "x.lock")])
    try:
        agent.start()
    except RuntimeError as exc:
        assert "cannot use the device lock" in str(exc) and "No such file or directory" in str(exc)
    else:
        agent.stop()
        raise AssertionError("the agent started without its device lock")


@contextmanager
def _two_agents_on_one_lock(tmp_path):
    """(client of agent a, client of agent b, the sha of a model both hold): two agents on one device lock."""
    lock = tmp_path / "device.lock"
    model = onnx_mlp(width=64, layers=2)
    with AgentProcess(tmp_path / "a", args=["--device-lock", str(lock)]) as a, \
            AgentProcess(tmp_path / "b", args=["--device-lock", str(lock)]) as b, \
            AgentClient(a.address) as client_a, AgentClient(b.address) as client_b:
        sha = client_a.put_artifact(model)
        client_b.put_artifact(model)
        yield client_a, client_b, sha


def test_an_agent_with_a_backlog_lets_a_waiting_agent_in_between_its_measurements(tmp_path):
    """Without the turnstile, the agent with a backlog took the device again within a millisecond of letting
    go, while the other polled for it, and the other came after the whole backlog."""
    with _two_agents_on_one_lock(tmp_path) as (client_a, client_b, sha):
        results, measuring = {}, threading.Event()

        def measure(name, client, on_progress=None):
            results[name] = client.profile(sha, runtime="onnxruntime", stopping=RULE, timeout_s=60,
                                           on_progress=on_progress)

        first = threading.Thread(target=measure, args=("a1", client_a, lambda p: p.phase ==
                                                       pb.ProfileProgress.PHASE_LOADING and measuring.set()))
        first.start()
        assert measuring.wait(timeout=60)  # the device is a's; a's backlog and b's request arrive meanwhile
        rest = [threading.Thread(target=measure, args=(name, client))
                for name, client in (("a2", client_a), ("a3", client_a), ("b", client_b))]
        for t in rest:
            t.start()
        for t in [first, *rest]:
            t.join(timeout=180)
    assert sorted(results) == ["a1", "a2", "a3", "b"]
    order = sorted(results, key=lambda name: results[name].started_unix_s)
    assert order.index("b") < 3, f"the waiting agent measured only after the whole backlog: {order}"


def test_an_agent_that_waits_longer_than_its_models_time_limit_says_the_device_is_busy(tmp_path):
    import grpc
    import pytest

    long_rule = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.01, min_runs=5, min_s=4.0, max_s=5.0,
                              max_runs=1_000_000)  # a tiny model would reach the default cap of runs first
    short_rule = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.01, min_runs=3, min_s=0.1, max_s=0.5)
    with _two_agents_on_one_lock(tmp_path) as (client_a, client_b, sha):
        loading = threading.Event()
        holder = threading.Thread(target=lambda: client_a.profile(
            sha, runtime="onnxruntime", stopping=long_rule, timeout_s=60,
            on_progress=lambda p: p.phase == pb.ProfileProgress.PHASE_LOADING and loading.set()))
        holder.start()
        try:
            assert loading.wait(timeout=60)  # the device is a's
            with pytest.raises(grpc.RpcError) as refused:
                client_b.profile(sha, runtime="onnxruntime", stopping=short_rule, timeout_s=1.0)
        finally:
            holder.join(timeout=120)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "another agent on this device has measured for more than 1 s" in refused.value.details()


def test_a_lock_file_another_user_made_in_a_sticky_folder_is_used_as_it_is(tmp_path):
    """Linux's fs.protected_regular refuses O_CREAT on another user's file in a sticky folder (/tmp, /run/lock),
    even to root: the agent opens an existing lock without it."""
    import os

    import pytest

    from fleetnas_agent.profiler import DeviceLock

    try:
        protected = int(open("/proc/sys/fs/protected_regular").read())
    except (OSError, ValueError):
        protected = 0
    if os.geteuid() != 0 or protected < 1:
        pytest.skip("needs root and fs.protected_regular on, to make another user's file in a sticky folder")
    sticky = tmp_path / "sticky"
    sticky.mkdir(mode=0o1777)
    os.chmod(sticky, 0o1777)
    for name in ("device.lock", "device.lock.turn"):
        (sticky / name).touch(mode=0o644)
        os.chown(sticky / name, 4321, 4321)
    DeviceLock(sticky / "device.lock").check()
