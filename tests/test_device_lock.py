"""Two agents on one device (one per runtime or thread count, each a process of its own) take turns to measure:
their `--device-lock` file orders them as each agent's queue orders its own requests."""
import threading

from agents import AgentProcess
from models import onnx_mlp
from fleetnas_agent.client import AgentClient
from fleetnas_agent.proto import agent_pb2 as pb

#: Long enough that two measurements started together would overlap by most of their length.
RULE = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.01, min_runs=5, min_s=1.5, max_s=2.0)


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
