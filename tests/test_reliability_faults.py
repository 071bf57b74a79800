"""Faults: the agent killed, its cache disk full, the network cut, the database locked, the host killed mid-search.

In each, nothing stored is lost, nothing is recorded twice, no measuring process outlives its agent, and a
search resumed after the fault ends where one without it does. (tests/test_farm_integration.py covers an
agent SIGKILLed or frozen mid-batch and the host killed mid-batch; this file adds what it does not: an
agent killed alone, as the OOM killer does, mid-measurement and mid-upload; a full disk; a real network
cut; a locked database; a search killed and resumed.)
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import grpc
import pytest

import plugins
from agents import AgentProcess, running_agent
from counts import scale
from faults import DatabaseLock, NetworkCut, SmallDisk, wait_until, workers_of
from models import onnx_mlp, tflite_mlp
from fleetnas.farm import AgentEntry, ArtifactSource, Farm, Inventory
from fleetnas.store import SqliteStore, StoreLocked
from fleetnas_agent.client import AgentClient
from fleetnas_agent.proto import agent_pb2 as pb

AREA = "faults"
KIND = "cpu-ort-1t"
FAST = {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}
FAST_RULE = pb.StoppingRule(**FAST)
TOKEN = "farm-token"


def tiny(n: int, start: int, width: int = 16) -> list[ArtifactSource]:
    return [ArtifactSource.from_bytes(onnx_mlp(width=width, layers=1, seed=s)) for s in range(start, start + n)]


def exactly_once(store: SqliteStore, artifacts: list[ArtifactSource]) -> tuple[int, int]:
    """(rows too many or too few, failed rows): 0, 0 when each artifact has exactly one good row."""
    rows = store.measurements(ok=None, include_stale=True)
    per_artifact = [sum(r.artifact == a.sha256 for r in rows) for a in artifacts]
    return sum(abs(n - 1) for n in per_artifact) + len(rows) - sum(per_artifact), sum(not r.ok for r in rows)


# ----- the agent killed alone (the OOM killer's way: one process, no clean-up) -------------------------
def test_an_agent_killed_mid_measurement_leaves_no_process_and_serves_again_after_restart(tmp_path, counts):
    """A hanging model's measuring process would hold the device forever once its agent is gone."""
    env = {"PYTHONPATH": str(plugins.install_plugin(tmp_path / "plugin"))}
    agent = AgentProcess(tmp_path / "cache", env=env).start()
    try:
        with AgentClient(agent.address) as client:
            hang = client.put_artifact(plugins.spec("test-hang"))
            model = client.put_artifact(tflite_mlp(16, 1))
            phases, outcome = [], {}

            def measure():
                try:
                    client.profile(hang, stopping=FAST_RULE, on_progress=lambda p: phases.append(p.phase))
                except grpc.RpcError as exc:
                    outcome["code"] = exc.code()

            caller = threading.Thread(target=measure)
            caller.start()
            wait_until(lambda: pb.ProfileProgress.PHASE_LOADING in phases, what="the measurement to start")
            [worker] = workers_of(agent.proc.pid)
            worker_oom = int((Path("/proc") / str(worker.pid) / "oom_score_adj").read_text())
            os.kill(agent.proc.pid, signal.SIGKILL)  # the agent alone, not its process group
            agent.proc.wait()
            caller.join(30)
        wait_until(lambda: not worker.is_running() or worker.status() == "zombie", timeout_s=10,
                   what="the measuring process to die with its agent")
        assert outcome["code"] == grpc.StatusCode.UNAVAILABLE
        assert worker_oom == 1000  # were memory to run out, the kernel would take the model, not the agent
    finally:
        agent.kill()
        agent.stop()
    restarted = AgentProcess(tmp_path / "cache", port=agent.port, env=env).start()
    try:
        with AgentClient(restarted.address) as client:
            assert client.has_artifact(model).present  # the cache survived the kill
            assert client.profile(model, stopping=FAST_RULE).latency.n >= 3
        assert not list((tmp_path / "cache" / "artifacts").glob(".*"))
    finally:
        restarted.stop()
    counts.add(AREA, requests=6, faults=1, failures=int(worker_oom != 1000))


def test_an_agent_killed_mid_upload_resumes_the_upload_after_restart(tmp_path, counts):
    data = onnx_mlp(width=300, layers=4, seed=11)  # ~1.4 MB: three chunks
    sha = hashlib.sha256(data).hexdigest()
    agent = AgentProcess(tmp_path / "cache").start()
    sent = 600_000
    with AgentClient(agent.address) as client:
        stall = threading.Event()

        def stream():
            yield pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))
            yield pb.ArtifactChunk(data=data[:sent])
            stall.wait(30)

        call = client.stub.PutArtifact.future(stream(), timeout=60)
        wait_until(lambda: client.has_artifact(sha).resume_offset_bytes == sent, what="the first bytes on disk")
        agent.kill()
        stall.set()
        with pytest.raises(grpc.RpcError):
            call.result()
    restarted = AgentProcess(tmp_path / "cache", port=agent.port).start()
    try:
        with AgentClient(restarted.address) as client:
            offset = client.has_artifact(sha).resume_offset_bytes
            assert client.put_artifact(data) == sha  # resumes from what survived
            assert client.has_artifact(sha).present
        stored = (tmp_path / "cache" / "artifacts" / sha).read_bytes()
    finally:
        restarted.stop()
    counts.add(AREA, requests=4, faults=1, failures=int(hashlib.sha256(stored).hexdigest() != sha))
    assert offset == sent and hashlib.sha256(stored).hexdigest() == sha


# ----- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    if not SmallDisk.available(tmp_path):
        pytest.skip("mounting a tmpfs needs root; the cache cap is covered by test_reliability_load.py")
    with SmallDisk(tmp_path / "disk", size_kib=2048) as disk:
        yield disk


def test_a_full_cache_disk_refuses_uploads_clearly_and_keeps_nothing_half_written(small_disk, counts):
    with AgentProcess(small_disk.path / "cache", args=["--cache-max-mb", "64"]) as agent, \
            AgentClient(agent.address) as client:
        small = client.put_artifact(onnx_mlp(16, 1))  # fits: the device works while its disk is nearly full
        filler = small_disk.fill(leave_bytes=300_000)
        refused = []
        # One chunk bigger than the free space (a short write, then ENOSPC), and several chunks.
        for data in (onnx_mlp(width=300, layers=1, seed=1), onnx_mlp(width=300, layers=4, seed=2)):
            with pytest.raises(grpc.RpcError) as err:
                client.put_artifact(data)
            refused.append((err.value.code(), err.value.details(), hashlib.sha256(data).hexdigest()))
        leftovers = list((small_disk.path / "cache" / "incoming").iterdir())
        present = [client.has_artifact(sha).present for _, _, sha in refused]
        assert client.profile(small, stopping=FAST_RULE).latency.n >= 3  # still measures
        filler.unlink()  # space again: the same upload now succeeds
        data = onnx_mlp(width=300, layers=4, seed=2)
        assert client.put_artifact(data) == hashlib.sha256(data).hexdigest()
        kept = (small_disk.path / "cache" / "artifacts" / hashlib.sha256(data).hexdigest()).read_bytes()
    failures = sum(code != grpc.StatusCode.RESOURCE_EXHAUSTED for code, _, _ in refused) + len(leftovers) + \
        sum(present) + int(hashlib.sha256(kept).digest() != hashlib.sha256(data).digest())
    counts.add(AREA, requests=6, faults=2, failures=failures)
    assert [(code, "disk is full" in details) for code, details, _ in refused] == \
        [(grpc.StatusCode.RESOURCE_EXHAUSTED, True)] * 2
    assert leftovers == [] and present == [False, False]
    assert hashlib.sha256(kept).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_search_whose_store_disk_fills_says_how_to_go_on_and_resumes_once_there_is_room(
        small_disk, tmp_path, monkeypatch, capsys, counts):
    from fleetnas.cli import main

    # The evaluator fills the store's disk at its third call, as another program writing there would.
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "filling.py").write_text(
        "calls = []\n"
        "def accuracy(config):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        f"        with open({str(small_disk.path / 'filler')!r}, 'ab') as f:\n"
        "            try:\n"
        "                while True:\n"
        "                    f.write(bytes(65536))\n"
        "                    f.flush()\n"
        "            except OSError:\n"
        "                pass\n"
        "    return 0.5 + config['depth_s1'] / 10\n")
    db = small_disk.path / "s.db"
    command = ["search", "--space", "demo", "--objective", "accuracy:max", "--objective", "macs:min", "--tactic",
               "random", "--budget", "12", "--db", str(db), "--accuracy", "filling:accuracy"]
    assert main(command) == 1
    err = capsys.readouterr().err
    (small_disk.path / "filler").unlink()  # room again
    resumed = main(["search", "--resume", "1", "--db", str(db)])
    with SqliteStore(db) as store:
        evaluated = len(store.run_members(1, "measured"))
    counts.add(AREA, requests=2, faults=1, failures=int(resumed != 0) + int(evaluated != 12))
    assert "database or disk is full" in err and "`fleetnas search --resume 1` continues it" in err
    assert resumed == 0 and evaluated == 12


def test_a_report_on_a_full_disk_fails_clearly_and_leaves_no_cut_off_file(small_disk, tmp_path, capsys, counts):
    from fleetnas.cli import main

    db = str(tmp_path / "s.db")
    assert main(["search", "--space", "demo", "--objective", "macs:min", "--objective", "params:max", "--objective",
                 "accuracy:max", "--tactic", "random", "--budget", "12", "--db", db]) == 0
    out = small_disk.path / "report"
    small_disk.fill(leave_bytes=40_000)  # room for the front's JSON, not for every figure
    code = main(["report", "1", "--db", db, "--out", str(out)])
    err = capsys.readouterr().err
    pngs = list(out.glob("*.png"))
    cut_off = [p.name for p in pngs if not p.read_bytes().endswith(b"IEND\xaeB`\x82")]  # a PNG's last chunk
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    counts.add(AREA, requests=1, faults=1, failures=int(code != 1) + len(cut_off) + len(leftovers))
    assert code == 1 and f"cannot write the report to {out}: No space left on device" in err
    assert cut_off == [] and leftovers == []
    (small_disk.path / "filler").unlink()
    assert main(["report", "1", "--db", db, "--out", str(out)]) == 0 and len(list(out.glob("*.png"))) == 4


def test_jobs_refused_by_an_agent_with_a_full_disk_go_to_its_peer(tmp_path, counts):
    """A full disk (or a cache too small) is not the job's fault: its peer measures it, once."""
    if SmallDisk.available(tmp_path):
        disk = SmallDisk(tmp_path / "disk", size_kib=512)
        full_args, full_cache = ["--cache-max-mb", "64"], disk.path / "cache"
    else:  # no tmpfs here: a cache capped below the artifacts' size is the same refusal
        disk, full_args, full_cache = None, ["--cache-max-mb", "1"], tmp_path / "full-cache"
    artifacts = tiny(6, start=100, width=300 if disk else 600)  # each too big for the full agent
    with disk or nullcontext(), AgentProcess(full_cache, args=full_args) as full, \
            AgentProcess(tmp_path / "cache", args=[]) as peer:
        if disk:
            disk.fill(leave_bytes=64_000)
        inventory = Inventory(tmp_path / "farm.toml", [AgentEntry("full", full.address, KIND),
                                                       AgentEntry("peer", peer.address, KIND)])
        with Farm(inventory, SqliteStore(tmp_path / "fleet.db"), rpc_timeout_s=5) as farm:
            results = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
            wrong, failed = exactly_once(farm.store, artifacts)
            agents = {r.measurement.agent for r in results if r.ok}
    counts.add(AREA, requests=len(artifacts), faults=1, failures=wrong + failed + sum(not r.ok for r in results))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert (wrong, failed) == (0, 0) and agents == {"peer"}


# ----- the network cut between host and agent ---------------------------------------------------------
@pytest.fixture
def far_agent(tmp_path):
    """(agent process, cut, restore): an agent behind a cable the test can pull (or, without root, freeze)."""
    (tmp_path / "token").write_text(TOKEN)
    args = ["--token-file", str(tmp_path / "token")]
    if NetworkCut.available():
        with NetworkCut() as net:
            agent = AgentProcess(tmp_path / "far-cache", args=args, host=net.agent_ip, wrapper=net.wrapper).start()
            try:
                yield agent, net.cut, net.restore
            finally:
                agent.stop()
    else:  # without network namespaces, a frozen agent is the nearest thing: it answers nothing
        agent = AgentProcess(tmp_path / "far-cache", args=args).start()
        try:
            yield agent, lambda: agent.signal(signal.SIGSTOP), lambda: agent.signal(signal.SIGCONT)
        finally:
            agent.signal(signal.SIGCONT)
            agent.stop()


def test_a_network_cut_mid_job_moves_it_to_a_peer_and_records_every_job_once(tmp_path, far_agent, counts):
    far, cut, restore = far_agent
    # Slow enough jobs (~1 s) that the batch is still running when the cut agent comes back.
    stopping = {**FAST, "min_s": 0.5, "max_s": 0.5, "min_runs": 10**6, "max_runs": 10**6}
    artifacts = tiny(20, start=300)
    with running_agent(tmp_path / "near-cache", label="near") as (near_address, _):
        inventory = Inventory(tmp_path / "farm.toml", [AgentEntry("near", near_address, KIND),
                                                       AgentEntry("far", far.address, KIND, token_file="token")])
        farm = Farm(inventory, SqliteStore(tmp_path / "fleet.db"), deadline_s=3.0, rpc_timeout_s=2.0, reprobe_s=0.5)
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(
            results=farm.measure_artifacts(artifacts, KIND, stopping=stopping)))
        runner.start()
        try:
            wait_until(lambda: farm.store.count_measurements() >= 2 and workers_of(far.proc.pid),
                       what="the far agent to be mid-job")
            cut()
            wait_until(lambda: not farm.agents["far"].healthy, timeout_s=60, what="the cut to be noticed")
        finally:
            restore()
        restored_at = time.time()
        runner.join(timeout=300)
        assert not runner.is_alive()
        results = outcome["results"]
        wrong, failed = exactly_once(farm.store, artifacts)
        far_after = [r for r in farm.store.measurements() if r.agent == "far" and
                     r.detail["started_unix_s"] > restored_at]
        farm.close()
    counts.add(AREA, requests=len(artifacts), faults=1, failures=wrong + failed + sum(not r.ok for r in results))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert (wrong, failed) == (0, 0)  # every job once: none lost, none recorded twice
    assert any(r.attempts == 2 for r in results)  # the job cut off on the far agent was measured by its peer
    assert far_after, "the far agent was not used again once the network was back"


# ----- the database locked by another process ----------------------------------------------------------
def test_a_database_locked_mid_batch_stops_it_clearly_and_a_rerun_completes_without_duplicates(tmp_path, counts):
    db = tmp_path / "fleet.db"
    artifacts = tiny(12, start=500)
    with running_agent(tmp_path / "cache") as (address, _):
        inventory = Inventory(tmp_path / "farm.toml", [AgentEntry("only", address, KIND)])
        farm = Farm(inventory, SqliteStore(db, busy_timeout_s=0.5), rpc_timeout_s=5)
        watcher = SqliteStore(db)
        outcome = {}

        def batch():
            try:
                outcome["results"] = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcome["error"] = exc

        runner = threading.Thread(target=batch)
        runner.start()
        wait_until(lambda: watcher.count_measurements() >= 3, what="three results stored")
        with DatabaseLock(db) as lock:
            runner.join(timeout=60)
            assert not runner.is_alive(), "the batch did not stop while the database was locked"
            stored_while_locked = len(watcher.measurements(ok=None, include_stale=True))  # WAL: reads go on
            lock.release()
        error = outcome.get("error")
        rerun = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
        wrong, failed = exactly_once(watcher, artifacts)
        from_store = sum(r.from_store for r in rerun)
        farm.close()
        watcher.close()
    counts.add(AREA, requests=2 * len(artifacts), faults=1,
               failures=wrong + failed + int(not isinstance(error, StoreLocked)) + sum(not r.ok for r in rerun))
    assert isinstance(error, StoreLocked) and "locked by another process" in str(error), error
    assert 3 <= stored_while_locked < len(artifacts)
    assert all(r.ok for r in rerun) and (wrong, failed) == (0, 0)
    assert from_store >= stored_while_locked  # what was stored before the lock was not measured again


# ----- the host killed mid-search, then resumed --------------------------------------------------------
ACCURACY = '''
import hashlib, json


def accuracy(config):
    """A stand-in for a trained network's accuracy: deterministic, and instant."""
    return 0.5 + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).digest()[0] / 512
'''
COMMON = ["--space", "demo", "--objective", "accuracy:max", "--objective", "macs:min", "--seed", "3",
          "--accuracy", "fleetnas_test_accuracy:accuracy", "--json"]
# tactic: (its options, budget, when to kill it, given the evaluations and predictions stored so far).
# Evolutionary: generations of 20, killed in or after the second of three. LINAS (about a minute, so only in
# the benchmark): 20 seed evaluations, then batches of 4 chosen by predictors, killed once the first batch is
# predicted (its predictions are stored before it is measured).
SEARCHES = {"evolutionary": (["--tactic", "evolutionary"], 60, lambda evaluated, predicted: evaluated >= 22)}
if scale() > 1:
    SEARCHES["linas"] = (["--tactic", "linas", "--batch", "4"], 28, lambda evaluated, predicted: predicted >= 1)


@pytest.mark.parametrize("tactic", list(SEARCHES))
def test_a_search_killed_mid_run_and_resumed_ends_exactly_where_an_uninterrupted_one_does(tmp_path, counts, tactic):
    from fleetnas.search.live import accuracy_metric

    options, budget, kill_when = SEARCHES[tactic]
    command = [*COMMON, *options, "--budget", str(budget)]
    (tmp_path / "fleetnas_test_accuracy.py").write_text(ACCURACY)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    fleetnas = [str(Path(sys.executable).parent / "fleetnas"), "search"]

    def search(*args):
        out = subprocess.run([*fleetnas, *args], capture_output=True, text=True, env=env, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    reference = search(*command, "--db", str(tmp_path / "reference.db"))
    db = tmp_path / "killed.db"
    SqliteStore(db).close()  # created before the search starts, so that it can be watched from the start
    watcher = SqliteStore(db)
    host = subprocess.Popen([*fleetnas, *command, "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    def due() -> bool:
        runs = watcher.runs()
        return bool(runs) and kill_when(len(watcher.run_members(runs[0].id, "measured")),
                                        len(watcher.run_events(runs[0].id, "prediction")))

    try:
        wait_until(due, timeout_s=600, what="the search to be under way")
    finally:
        os.killpg(host.pid, signal.SIGKILL)
        host.communicate()
    [run] = watcher.runs()
    before = len(watcher.run_members(run.id, "measured"))
    resumed = search("--resume", str(run.id), "--db", str(db), "--json")
    reference_store = SqliteStore(tmp_path / "reference.db")
    expected = reference_store.run_members(reference_store.runs()[0].id, "measured")
    members = watcher.run_members(run.id, "measured")
    keys = [json.dumps(m.config, sort_keys=True) for m in members]
    predicted = lambda store, run_id: [json.dumps(e.payload, sort_keys=True)  # noqa: E731
                                       for e in store.run_events(run_id, "prediction")]
    predictions = predicted(watcher, run.id)
    expected_predictions = predicted(reference_store, reference_store.runs()[0].id)
    accuracy_rows = watcher.evaluations("demo", accuracy_metric("fleetnas_test_accuracy:accuracy"))
    hv_events = watcher.run_events(run.id, "hypervolume")
    state = watcher.run(run.id).state
    watcher.close()
    reference_store.close()
    failures = (int(resumed["front"] != reference["front"]) + len(keys) - len(set(keys))
                + int([m.config for m in members] != [m.config for m in expected])
                + len(accuracy_rows) - len(set(keys)) + int(predictions != expected_predictions))
    counts.add(AREA, requests=3, faults=1, failures=failures)
    assert 0 < before < budget and state == "finished"
    assert [m.config for m in members] == [m.config for m in expected]  # the same evaluations, in order
    assert [m.objectives for m in members] == [m.objectives for m in expected]
    assert len(set(keys)) == len(keys) == budget  # none recorded twice
    assert resumed["front"] == reference["front"] and resumed["evaluations"] == reference["evaluations"]
    assert len(accuracy_rows) == budget  # no configuration's accuracy was evaluated twice
    assert [e.payload["evaluations"] for e in hv_events] == list(range(1, budget + 1))
    # LINAS's predictions (made before each batch is measured) are kept once each, as without the fault.
    assert predictions == expected_predictions, f"{len(predictions)} predictions kept, {len(expected_predictions)} " \
                                                f"without the fault"
