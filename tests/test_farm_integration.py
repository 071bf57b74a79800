"""A farm of real agent processes on 127.0.0.1: agents killed, frozen and restarted; the host killed and rerun.

Every measurement spawns a child interpreter on its agent (~0.5-1 s on two cores), so the models are tiny
and the stopping rule short; the 200-job batch is the bulk of this file's time.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest

import plugins
from agents import AgentProcess
from models import onnx_mlp
from fleetnas.farm import AgentEntry, ArtifactSource, Farm, Inventory
from fleetnas.store import SqliteStore

KIND = "cpu-ort-1t"
FAST = {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}
FAST_FLAGS = ["--warmup-runs", "1", "--warmup-seconds", "0.001", "--min-runs", "3", "--min-seconds", "0.001",
              "--max-seconds", "0.05"]

pytestmark = pytest.mark.slow


def tiny(n, start):
    """n distinct tiny models (different weights, so different sha256: dedup does not merge them)."""
    return [ArtifactSource.from_bytes(onnx_mlp(width=16, layers=1, seed=seed)) for seed in range(start, start + n)]


def wait_until(condition, timeout_s=120.0, what="condition"):
    """Polls `condition` until true; fails the test past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def measuring(agent: AgentProcess) -> bool:
    """Whether the agent has a measuring child right now (so a kill lands mid-job)."""
    try:
        return any("fleetnas_agent.worker" in " ".join(c.cmdline()) for c in psutil.Process(agent.proc.pid).children())
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def farm_agents(tmp_path_factory):
    root = tmp_path_factory.mktemp("farm")
    agents = [AgentProcess(root / f"cache{i}", args=["--label", f"agent{i}"]).start() for i in range(4)]
    yield root, agents
    for agent in agents:  # the list holds the restarted agent, if a test replaced one
        agent.stop()


def inventory(root: Path, agents, name="farm.toml") -> Inventory:
    inv = Inventory(root / name, [AgentEntry(f"agent{i}", a.address, KIND) for i, a in enumerate(agents)])
    inv.save()
    return inv


def test_200_jobs_survive_an_agent_killed_mid_batch_and_the_restarted_agent_is_used_again(farm_agents):
    root, agents = farm_agents
    db = root / "batch.db"
    farm = Farm(inventory(root, agents), SqliteStore(db), reprobe_s=0.3, rpc_timeout_s=5)
    artifacts = tiny(200, start=1000)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(
        results=farm.measure_artifacts(artifacts, KIND, stopping=FAST)))
    runner.start()
    watcher = SqliteStore(db)
    stored = watcher.count_measurements
    wait_until(lambda: stored() >= 30, what="30 results stored")
    wait_until(lambda: measuring(agents[1]), what="agent1 to be measuring")
    victim = agents[1]
    victim.kill()  # SIGKILL, mid-measurement
    killed_at = time.time()
    wait_until(lambda: stored() >= 90, what="the batch to go on without agent1")
    agents[1] = AgentProcess(victim.cache_dir, port=victim.port, args=["--label", "agent1"]).start()
    restarted_at = time.time()
    runner.join(timeout=300)
    assert not runner.is_alive()
    farm.close()

    results = outcome["results"]
    assert len(results) == 200 and all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert any(r.attempts == 2 for r in results)  # the job in flight on agent1 was retried on a peer
    rows = watcher.measurements(ok=None, include_stale=True)
    assert len(rows) == 200  # every job exactly once: none lost, none duplicated
    assert {r.artifact for r in rows} == {a.sha256 for a in artifacts}
    assert all(r.ok and not r.stale for r in rows)
    assert {r.measurement.id for r in results} == {r.id for r in rows}
    by_victim = [r for r in rows if r.agent == "agent1"]
    # nothing from agent1 while it was down, and work from it again once it was back
    assert all(r.detail["finished_unix_s"] < killed_at or r.detail["started_unix_s"] > restarted_at
               for r in by_victim)
    assert any(r.detail["started_unix_s"] > restarted_at for r in by_victim)
    assert {r.agent for r in rows} == {"agent0", "agent1", "agent2", "agent3"}
    watcher.close()


def test_a_frozen_agent_misses_its_deadline_and_the_job_moves_to_a_peer(farm_agents):
    root, agents = farm_agents
    pair = agents[2:]
    inv = Inventory(root / "pair.toml", [AgentEntry(f"agent{i}", a.address, KIND) for i, a in enumerate(pair, 2)])
    farm = Farm(inv, SqliteStore(root / "frozen.db"), deadline_s=2.0, rpc_timeout_s=1.0, reprobe_s=60)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(
        results=farm.measure_artifacts(tiny(8, start=3000), KIND, stopping=FAST)))
    runner.start()
    wait_until(lambda: farm.store.count_measurements() >= 1 and measuring(pair[1]), what="agent3 mid-job")
    pair[1].signal(signal.SIGSTOP)
    try:
        runner.join(timeout=120)
    finally:
        pair[1].signal(signal.SIGCONT)
    assert not runner.is_alive()
    results = outcome["results"]
    assert all(r.ok for r in results)
    assert any(r.attempts == 2 for r in results)
    assert not farm.agents["agent3"].healthy and farm.agents["agent3"].last_error.startswith("DEADLINE_EXCEEDED")
    farm.close()


def test_one_agent_frozen_mid_measurement_ends_the_profile_command_past_its_deadline(tmp_path, capsys):
    """`fleetnas profile --agent` without a farm: the call is cancelled once it sees no progress for the
    deadline and 5 s more, where it used to wait for as long as the agent stayed frozen (or a cut link stayed
    silent)."""
    from fleetnas.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_mlp(width=16, layers=1, seed=7))
    agent = AgentProcess(tmp_path / "cache").start()
    outcome = {}
    try:
        command = threading.Thread(target=lambda: outcome.update(rc=main(
            ["profile", "--agent", agent.address, "--model", str(model), "--min-seconds", "2", "--max-seconds", "2",
             "--deadline", "3"])), daemon=True)
        command.start()
        wait_until(lambda: measuring(agent), what="the agent's measuring child")
        agent.signal(signal.SIGSTOP)
        command.join(timeout=60)
        agent.signal(signal.SIGCONT)
        assert not command.is_alive(), "the command still waits on the frozen agent"
    finally:
        agent.signal(signal.SIGCONT)
        agent.stop()
    assert outcome["rc"] == 1
    assert "DEADLINE_EXCEEDED: no progress for 8 s" in capsys.readouterr().err


def test_an_agent_frozen_before_it_answers_ends_the_profile_command_past_its_deadline(tmp_path, capsys):
    """Frozen before the connection was set up, the agent held the command for gRPC's connection timeout
    (20 s, UNAVAILABLE), whatever --deadline said."""
    from fleetnas.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_mlp(width=16, layers=1, seed=8))
    agent = AgentProcess(tmp_path / "cache").start()
    agent.signal(signal.SIGSTOP)  # its socket still accepts connections: the kernel does that
    try:
        rc = main(["profile", "--agent", agent.address, "--model", str(model), "--deadline", "2"])
    finally:
        agent.signal(signal.SIGCONT)
        agent.stop()
    assert rc == 1 and "DEADLINE_EXCEEDED" in capsys.readouterr().err


def test_a_model_that_runs_out_of_memory_or_time_fails_alone_and_is_not_tried_on_a_peer(tmp_path):
    """The agent names the cause (FailureCause): a model's own fault is final, the agent stays in use, and the
    rest of the batch is measured. Tried on each peer in turn, a model the device cannot hold ended the batch.
    A measuring process killed from outside (the OOM killer, most likely) is the model's fault once it is
    killed again on a peer."""
    plugin = plugins.install_plugin(tmp_path / "plugin")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))}
    agents = [AgentProcess(tmp_path / f"cache{i}", args=["--label", f"agent{i}"], env=env).start() for i in range(2)]
    try:
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry(f"agent{i}", a.address, KIND) for i, a in enumerate(agents)])
        # A deadline well past the seconds that importing torch can take on a loaded machine.
        with Farm(inv, SqliteStore(tmp_path / "farm.db"), deadline_s=15.0) as farm:
            faulty = [ArtifactSource.from_bytes(plugins.spec(s)) for s in ("test-killed", "test-oom", "test-hang")]
            results = farm.measure_artifacts([*faulty, *tiny(3, start=4000)], KIND, stopping=FAST)
            assert [r.ok for r in results] == [False] * 3 + [True] * 3
            for r, attempts, said in zip(results, (2, 1, 1), ("out of memory", "ran out of memory",
                                                               "did not finish within 15 s")):
                assert r.attempts == attempts and said in r.error
                assert r.measurement is not None and not r.measurement.ok  # stored: a search fails that config alone
            assert all(a.healthy and a.consecutive_failures == 0 for a in farm.agents.values())
            assert len(farm.store.measurements(ok=False)) == 3
    finally:
        for agent in agents:
            agent.stop()


class Aborted(grpc.RpcError):
    """A passing refusal (an upload of the same artifact still in flight), as an agent gives it."""

    def code(self):
        return grpc.StatusCode.ABORTED

    def details(self):
        return "another upload of this artifact is in progress"

    def trailing_metadata(self):
        return ()


def test_an_agent_whose_runtime_is_broken_leaves_its_jobs_to_a_healthy_peer(tmp_path, capsys, monkeypatch):
    """An onnxruntime that is installed but does not import (a NumPy it was not built for, as on a Pi) failed
    its agent's jobs as the models' fault (INTERNAL, stored as failed measurements), with a healthy peer idle."""
    broken = tmp_path / "broken" / "onnxruntime"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("numpy.core.multiarray failed to import")\n')
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(broken.parent), os.environ.get("PYTHONPATH")]))}
    sick = AgentProcess(tmp_path / "cache-sick", args=["--label", "sick"], env=env).start()
    well = AgentProcess(tmp_path / "cache-well", args=["--label", "well"]).start()
    try:
        from fleetnas.cli import main

        model = tmp_path / "m.onnx"
        model.write_bytes(onnx_mlp(width=16, layers=1, seed=1))
        assert main(["profile", "--agent", sick.address, "--model", str(model), *FAST_FLAGS]) != 0
        assert ("FAILED_PRECONDITION: runtime 'onnxruntime' is installed but cannot be used on this device: "
                "ImportError: numpy.core.multiarray failed to import") in capsys.readouterr().err
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry("sick", sick.address, KIND),
                                                 AgentEntry("well", well.address, KIND)])
        with Farm(inv, SqliteStore(tmp_path / "farm.db")) as farm:
            results = farm.measure_artifacts(tiny(5, start=5000), KIND, stopping=FAST)
            assert all(r.ok and r.measurement.agent == "well" for r in results)
            assert farm.store.measurements(ok=False) == []
        # Alone in its kind, it fails each job at once (one try), naming the cause, and stores no failure: the
        # models are not at fault. Set aside and probed again, it took about 40 s a job.
        alone = Inventory(tmp_path / "alone.toml", [AgentEntry("sick", sick.address, KIND)])
        with Farm(alone, SqliteStore(tmp_path / "alone.db")) as farm:
            results = farm.measure_artifacts(tiny(3, start=5100), KIND, stopping=FAST)
            assert all(not r.ok and r.attempts == 1 and "cannot be used on this device" in r.error for r in results)
            assert farm.store.measurements(ok=False) == [] and farm.agents["sick"].healthy
        # Beside a peer that is down, too: the job is not tried again and again on the agent that cannot run it.
        with Farm(Inventory(tmp_path / "dead.toml", [AgentEntry("sick", sick.address, KIND),
                                                     AgentEntry("dead", "127.0.0.1:9", KIND)]),
                  SqliteStore(tmp_path / "dead.db")) as farm:
            results = farm.measure_artifacts(tiny(3, start=5200), KIND, stopping=FAST)
            assert all(not r.ok and r.attempts < farm.max_attempts for r in results), [r.attempts for r in results]
        # A job the healthy peer failed once for a passing reason goes back to it, not to the agent that cannot
        # run it: it waited for ever between the two.
        sick_failed, first_on_well = threading.Event(), threading.Event()
        measure_on = Farm._measure_on

        def abort_once_on_well(self, agent, job):
            if agent.name == "well" and not first_on_well.is_set():
                first_on_well.set()
                assert sick_failed.wait(60), "the agent that cannot run the job never tried one"
                raise Aborted()
            try:
                return measure_on(self, agent, job)
            finally:
                if agent.name == "sick":
                    sick_failed.set()

        monkeypatch.setattr(Farm, "_measure_on", abort_once_on_well)
        with Farm(inv, SqliteStore(tmp_path / "passing.db"), give_up_s=30) as farm:
            out = []
            batch = threading.Thread(target=lambda: out.append(farm.measure_artifacts(tiny(3, start=5300), KIND,
                                                                                      stopping=FAST)), daemon=True)
            batch.start()
            batch.join(120)
            assert not batch.is_alive(), "the batch never ended"
            assert all(r.ok and r.measurement.agent == "well" for r in out[0])
    finally:
        sick.stop()
        well.stop()


def test_the_host_killed_mid_batch_resumes_without_remeasuring_what_is_stored(farm_agents):
    root, agents = farm_agents
    inv = inventory(root, agents, "host-kill.toml")
    db = root / "host-kill.db"
    models = []
    for artifact in tiny(24, start=5000):
        path = root / "models" / f"{artifact.sha256[:16]}.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(artifact.data)
        models.append(str(path))
    fleetnas = str(Path(sys.executable).parent / "fleetnas")
    cmd = [fleetnas, "profile", "--device-kind", KIND, "--model", *models, "--inventory", str(inv.path),
           "--db", str(db), "--json", *FAST_FLAGS]
    host = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        SqliteStore(db).close()  # the host may not have created it yet: create it, so it can be watched
        watcher = SqliteStore(db)
        wait_until(lambda: watcher.count_measurements() >= 8, what="8 results stored by the first host")
    finally:
        os.killpg(host.pid, signal.SIGKILL)
        host.communicate()
    stored_before = {m.artifact for m in watcher.measurements()}
    assert 8 <= len(stored_before) < 24

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = json.loads(rerun.stdout)
    assert len(rows) == 24 and all(r["ok"] for r in rows)
    from_store = {r["artifact_sha256"] for r in rows if r["from_store"]}
    assert from_store == stored_before  # nothing stored was measured again
    measured = [r for r in rows if not r["from_store"]]
    assert len(measured) == 24 - len(stored_before)
    assert all(r["device"]["agent"].startswith("agent") and r["latency_ms"]["median"] > 0 for r in measured)
    all_rows = watcher.measurements(ok=None, include_stale=True)
    assert len(all_rows) == 24 and len({m.artifact for m in all_rows}) == 24
    watcher.close()
