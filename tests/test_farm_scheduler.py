"""The scheduler against real in-process agents: spreading, dedup, retries, failures, health, credentials."""
import logging
import math
import os
import threading
import time
from contextlib import ExitStack

import pytest

import plugins
from agents import running_agent
from models import onnx_huge_input, onnx_mlp
from fleetnas.farm import AgentEntry, ArtifactSource, Farm, FarmError, Inventory, Job, JobError, Settings
from fleetnas.store import SqliteStore

KIND = "cpu-ort-1t"
# Tiny: each job still spawns the agent's measuring child, but measures for ~50 ms at most.
FAST = {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}
DEAD = "127.0.0.1:9"  # nothing listens there


def tiny(n, start=0):
    return [ArtifactSource.from_bytes(onnx_mlp(width=16, layers=1, seed=seed)) for seed in range(start, start + n)]


@pytest.fixture
def farm_of(tmp_path):
    """farm_of(n_live, dead=0, **options): a Farm over n live in-process agents (and dead addresses)."""
    stack = ExitStack()

    def make(n_live, dead=0, entries=(), **options):
        inv = Inventory(tmp_path / "farm.toml")
        for i in range(n_live):
            address, _ = stack.enter_context(running_agent(tmp_path / f"cache{i}", label=f"live{i}"))
            inv.add(AgentEntry(f"live{i}", address, KIND))
        for i in range(dead):
            inv.add(AgentEntry(f"dead{i}", f"127.0.0.1:{9 + i}", KIND))
        for entry in entries:
            inv.add(entry)
        farm = Farm(inv, SqliteStore(tmp_path / "fleet.db"), **options)
        stack.callback(farm.close)
        return farm

    with stack:
        yield make


def test_jobs_spread_over_agents_and_are_stored_before_they_are_returned(farm_of):
    farm = farm_of(2)
    artifacts = tiny(4)
    results = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
    assert [r.job.artifact.sha256 for r in results] == [a.sha256 for a in artifacts]  # in order
    assert all(r.ok and not r.from_store and r.attempts == 1 for r in results)
    assert {r.measurement.agent for r in results} == {"live0", "live1"}
    stored = {m.artifact: m for m in farm.store.measurements(device_kind=KIND)}
    assert set(stored) == {a.sha256 for a in artifacts}
    for r in results:
        m = stored[r.job.artifact.sha256]
        assert m.id == r.measurement.id and m.runtime == "onnxruntime" and m.device_kind == KIND
        assert m.settings == {"runtime": "onnxruntime", "threads": 1, "stopping": FAST, "seed": 0}
        assert m.stats["median"] > 0 and m.stats["n"] >= 3 and m.memory["measured"] in (True, False)
        assert r.value("latency_ms") == m.stats["median"] and r.value("latency_ms.p90") == m.stats["p90"]
    assert farm.store.latest_device(KIND) is not None


def test_what_is_stored_is_not_measured_again_unless_asked(farm_of):
    farm = farm_of(1)
    artifacts = tiny(2)
    first = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
    again = farm.measure_artifacts(artifacts + artifacts[:1], KIND, stopping=FAST)
    assert all(r.from_store for r in again)
    assert [r.measurement.id for r in again] == [r.measurement.id for r in first] + [first[0].measurement.id]
    other_settings = farm.measure_artifacts(artifacts[:1], KIND, stopping={**FAST, "min_runs": 4})
    assert not other_settings[0].from_store  # settings are part of the dedup key
    remeasured = farm.measure_artifacts(artifacts[1:], KIND, stopping=FAST, remeasure=True)
    assert not remeasured[0].from_store and remeasured[0].measurement.id != first[1].measurement.id
    current = farm.store.measurements(device_kind=KIND)
    assert len(current) == 3  # 2 first + 1 other settings; the re-measured one replaced its row
    assert len(farm.store.measurements(device_kind=KIND, include_stale=True)) == 4


def test_duplicate_jobs_in_one_batch_are_measured_once(farm_of):
    farm = farm_of(2)
    [artifact] = tiny(1)
    results = farm.measure_artifacts([artifact] * 4, KIND, stopping=FAST)
    assert len({r.measurement.id for r in results}) == 1
    assert len(farm.store.measurements()) == 1


def test_a_dead_agent_is_set_aside_and_its_peers_do_the_work(farm_of):
    farm = farm_of(1, dead=1, reprobe_s=60)
    results = farm.measure_artifacts(tiny(2), KIND, stopping=FAST)
    assert all(r.ok for r in results)
    assert {r.measurement.agent for r in results} == {"live0"}
    assert not farm.agents["dead0"].healthy and "UNAVAILABLE" in farm.agents["dead0"].last_error


def test_a_kind_without_a_usable_agent_fails_its_jobs_after_the_give_up_time(farm_of, caplog):
    farm = farm_of(0, dead=1, reprobe_s=0.1, give_up_s=0.5)
    with caplog.at_level(logging.WARNING, logger="fleetnas.farm"):
        results = farm.measure_artifacts(tiny(2), KIND, stopping=FAST)
    waiting = [r.getMessage() for r in caplog.records if "is usable now" in r.getMessage()]
    assert waiting == ["no agent of kind 'cpu-ort-1t' is usable now; waiting up to 0.5 s for one to come back"]
    assert all(not r.ok and r.measurement is None for r in results)
    assert "no agent of kind 'cpu-ort-1t' was usable for 0.5 s" in results[0].error and "dead0" in results[0].error
    assert farm.store.measurements(ok=None) == []


def test_jobs_pinned_to_a_dead_agent_say_they_wait_for_it_not_that_its_kind_has_no_agent(farm_of, caplog):
    farm = farm_of(1, dead=1, reprobe_s=0.1, give_up_s=0.5)
    with caplog.at_level(logging.WARNING, logger="fleetnas.farm"):
        [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST, agent="dead0")
    waiting = [r.getMessage() for r in caplog.records if "come back" in r.getMessage()]
    assert waiting == ["agent 'dead0' is not usable now; its own jobs wait up to 0.5 s for it to come back"]
    assert not result.ok and result.error.startswith("agent 'dead0' was not usable for 0.5 s (dead0: UNAVAILABLE")


def test_an_agent_back_before_the_farm_gives_up_is_seen_though_its_reprobe_time_is_longer(tmp_path):
    # A give-up time shorter than the re-probe time let the jobs fail while the agent was serving again.
    with running_agent(tmp_path / "c", label="back") as (address, config):
        port = int(address.rsplit(":", 1)[1])  # the agent's port, free again once it stops below
    inv = Inventory(tmp_path / "farm.toml", [AgentEntry("back", address, KIND)])
    farm = Farm(inv, SqliteStore(tmp_path / "fleet.db"), reprobe_s=60, give_up_s=6)
    waiting = threading.Event()

    class Restart(logging.Handler):  # the agent comes back once the farm has found it down and waits
        def emit(self, record):
            if "is usable now" in record.getMessage():
                waiting.set()

    handler = Restart()
    logging.getLogger("fleetnas.farm").addHandler(handler)
    try:
        results: list = []
        measuring = threading.Thread(target=lambda: results.extend(farm.measure_artifacts(tiny(1), KIND,
                                                                                          stopping=FAST)))
        measuring.start()
        assert waiting.wait(timeout=30)
        with running_agent(tmp_path / "c", label="back", port=port):
            measuring.join(timeout=60)
        assert not measuring.is_alive()
    finally:
        logging.getLogger("fleetnas.farm").removeHandler(handler)
        farm.close()
    assert [r.ok for r in results] == [True], results[0].error


def test_a_job_the_device_cannot_run_fails_once_and_is_kept_as_a_failure(farm_of):
    farm = farm_of(2)
    bad = ArtifactSource.from_bytes(onnx_huge_input())  # a 4 GB input: the agent refuses it
    good = tiny(1)
    results = farm.measure_artifacts([bad, *good], KIND, stopping=FAST)
    assert not results[0].ok and results[0].attempts == 1 and math.isnan(results[0].value("latency_ms"))
    assert "INVALID_ARGUMENT" in results[0].error or "RESOURCE_EXHAUSTED" in results[0].error
    assert all(r.ok for r in results[1:])
    [failure] = farm.store.measurements(ok=False)
    assert failure.artifact == bad.sha256 and failure.error == results[0].error
    # a failure is history, not a result: the next batch tries again
    assert not farm.measure_artifacts([bad], KIND, stopping=FAST)[0].from_store


def test_jobs_pinned_to_one_agent_are_always_measured_there(farm_of):
    farm = farm_of(2)
    artifacts = tiny(2)
    on_live1 = farm.measure_artifacts(artifacts, KIND, stopping=FAST, agent="live1")
    assert {r.measurement.agent for r in on_live1} == {"live1"}
    on_live0 = farm.measure_artifacts(artifacts, KIND, stopping=FAST, agent="live0")
    assert {r.measurement.agent for r in on_live0} == {"live0"} and not any(r.from_store for r in on_live0)
    current = farm.store.measurements(device_kind=KIND)
    assert {m.agent for m in current} == {"live0"}  # the latest per key is current, the older kept as history
    history = farm.store.measurements(device_kind=KIND, include_stale=True)
    assert sorted(m.agent for m in history if m.stale) == ["live1", "live1"]
    unpinned = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
    assert all(r.from_store and r.measurement.agent == "live0" for r in unpinned)
    with pytest.raises(FarmError, match="pinned to agent 'live7'"):
        farm.measure_artifacts(artifacts, KIND, agent="live7")


def test_credentials_come_from_the_inventory(tmp_path, farm_of):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with running_agent(tmp_path / "secure-cache", token="s3cret") as (address, _), \
            running_agent(tmp_path / "other-cache", token="s3cret") as (other_address, _):
        farm = farm_of(0, reprobe_s=60, entries=[
            AgentEntry("secure", address, "secure-kind", token_file=str(token)),
            AgentEntry("no-token", other_address, "secure-kind")])  # an agent that wants the token, not given
        results = farm.measure_artifacts(tiny(2), "secure-kind", stopping=FAST)
        assert all(r.ok and r.measurement.agent == "secure" for r in results)
        assert "UNAUTHENTICATED" in farm.agents["no-token"].last_error


def test_bad_batches_are_refused_before_anything_runs(farm_of):
    farm = farm_of(1)
    with pytest.raises(FarmError, match="no agent of kind 'rpi4'"):
        farm.measure_artifacts(tiny(1), "rpi4")
    with pytest.raises(JobError, match="unknown stopping rule field 'max_time'"):
        farm.measure_artifacts(tiny(1), KIND, stopping={"max_time": 1})
    with pytest.raises(JobError, match="runtime must be one of"):
        Settings("tensorflow")
    with pytest.raises(JobError, match="cannot read model"):
        ArtifactSource.from_file("/nonexistent/model.onnx")
    litert_farm_entry = AgentEntry("pi", "127.0.0.1:2", "rpi4-litert", runtime="litert")
    farm.inventory.add(litert_farm_entry)
    with pytest.raises(JobError, match="runs litert, which cannot run onnx artifacts"):
        farm.jobs_for(tiny(1), "rpi4-litert")
    assert farm.export_format("rpi4-litert") == "tflite" and farm.export_format(KIND) == "onnx"


def test_explicit_jobs_with_their_own_settings(farm_of):
    farm = farm_of(1)
    [artifact] = tiny(1)
    jobs = [Job(artifact, KIND, Settings("onnxruntime", 1, FAST, seed=s)) for s in (0, 1)]
    results = farm.run(jobs)
    assert [r.measurement.settings["seed"] for r in results] == [0, 1]
    assert results[0].measurement.id != results[1].measurement.id


def test_a_job_another_process_stored_first_counts_as_stored_not_measured(farm_of, tmp_path):
    from fleetnas.store import NewMeasurement

    farm = farm_of(1)
    [artifact] = tiny(1)
    settings = Settings("onnxruntime", 1, FAST)
    theirs = []

    def another_process_stores_it_meanwhile(*key):
        # The race: the job is checked just before it is measured, and another host process stores it first.
        with SqliteStore(tmp_path / "fleet.db") as other:
            record, _ = other.record_measurement(NewMeasurement(
                device_id="elsewhere", device_kind=KIND, artifact=artifact.sha256, runtime="onnxruntime",
                settings=settings.to_dict(), ok=True, stats={"median": 1.0}, agent="other-host"))
        theirs.append(record)
        return None
    farm.store.find_measurement = another_process_stores_it_meanwhile
    farm.agents["live0"].consecutive_failures = 1  # a fault before: a measurement that works clears it
    [result] = farm.run([Job(artifact, KIND, settings)])
    assert result.ok and result.from_store and result.measurement.id == theirs[0].id
    assert farm.agents["live0"].jobs_done == 0 and farm.agents["live0"].consecutive_failures == 0
    assert len(farm.store.measurements(device_kind=KIND)) == 1


def test_a_model_beyond_one_agents_upload_limit_goes_to_a_peer_that_takes_it(tmp_path):
    """One agent set up with a smaller --max-artifact-mb than its peers: what they can measure is not refused
    for good by it. With no peer to take it, the refusal is final for that job alone."""
    small = [ArtifactSource.from_bytes(onnx_mlp(width=16, layers=1, seed=s)) for s in range(3)]
    large = [ArtifactSource.from_bytes(onnx_mlp(width=256, layers=2, seed=s)) for s in range(2)]
    limit = 64 * 1024
    assert all(a.size_bytes < limit for a in small) and all(a.size_bytes > limit for a in large)
    with running_agent(tmp_path / "c0", label="strict", max_artifact_bytes=limit) as (strict, _), \
            running_agent(tmp_path / "c1", label="roomy") as (roomy, _):
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry("strict", strict, KIND), AgentEntry("roomy", roomy, KIND)])
        with Farm(inv, SqliteStore(tmp_path / "both.db")) as farm:
            results = farm.measure_artifacts([*large, *small], KIND, stopping=FAST)
        assert all(r.ok and r.attempts == 1 for r in results)
        assert [r.measurement.agent for r in results[:2]] == ["roomy", "roomy"]
        alone = Inventory(tmp_path / "alone.toml", [AgentEntry("strict", strict, KIND)])
        with Farm(alone, SqliteStore(tmp_path / "alone.db")) as farm:
            results = farm.measure_artifacts([*large, *small], KIND, stopping=FAST)
        assert [r.ok for r in results] == [False, False, True, True, True]
        assert all(r.measurement is not None and "exceeds this agent's" in r.error and r.attempts == 1
                   for r in results[:2])


def test_a_device_busy_with_another_hosts_work_is_waited_for_without_spending_attempts(tmp_path):
    """The only agent that takes the model is busy (its queue full with another host's measurement): the
    job waits for it, and is neither given to the agent that must refuse it nor failed after three refusals."""
    big = ArtifactSource.from_bytes(onnx_mlp(width=256, layers=2, seed=1))
    limit = 64 * 1024
    with running_agent(tmp_path / "c0", label="strict", max_artifact_bytes=limit) as (strict, _), \
            running_agent(tmp_path / "c1", label="roomy", max_queued=0) as (roomy, _):
        busy = another_host_measuring(roomy, seconds=3)
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry("strict", strict, KIND), AgentEntry("roomy", roomy, KIND)])
        with Farm(inv, SqliteStore(tmp_path / "busy.db")) as farm:
            [result] = farm.measure_artifacts([big], KIND, stopping=FAST)
        busy.join(60)
    assert result.ok and result.attempts == 1 and result.measurement.agent == "roomy"


def test_a_measuring_process_killed_once_from_outside_is_measured_again(tmp_path):
    """A SIGKILL is most likely the OOM killer's, but it takes the measuring process first whatever fills the
    device's memory: once is not the model's fault."""
    slow = dict(FAST, min_s=1.0, max_s=2.0)  # long enough to be caught measuring
    with running_agent(tmp_path / "c0", label="a0") as (a0, _), running_agent(tmp_path / "c1", label="a1") as (a1, _):
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry("a0", a0, KIND), AgentEntry("a1", a1, KIND)])
        with Farm(inv, SqliteStore(tmp_path / "killed.db")) as farm:
            outcome = {}
            runner = threading.Thread(target=lambda: outcome.update(
                results=farm.measure_artifacts(tiny(1, start=500), KIND, stopping=slow)))
            runner.start()
            deadline = time.monotonic() + 60
            while not (workers := _measuring_processes()):
                assert time.monotonic() < deadline, "no measuring process appeared"
                time.sleep(0.02)
            workers[0].kill()
            runner.join(120)
    [result] = outcome["results"]
    assert result.ok and result.attempts == 2


def another_host_measuring(address: str, seconds: float) -> threading.Thread:
    """Another host's measurement holding the agent's device for about `seconds`; returns once it measures."""
    from fleetnas_agent.client import AgentClient
    from fleetnas_agent.proto import agent_pb2 as pb

    client = AgentClient(address)
    theirs = client.put_artifact(onnx_mlp(width=16, layers=1, seed=99))
    rule = pb.StoppingRule(warmup_min_runs=1, warmup_min_s=0.001, min_runs=3, min_s=seconds, max_s=seconds + 1,
                           max_runs=10 ** 6)  # the tiny model would reach the default run cap within a second
    measuring = threading.Event()

    def measure() -> None:
        with client:
            client.profile(theirs, stopping=rule,
                           on_progress=lambda p: p.phase == pb.ProfileProgress.PHASE_MEASURING and measuring.set())

    thread = threading.Thread(target=measure)
    thread.start()
    assert measuring.wait(60), "the other host's measurement did not start"
    return thread


def _measuring_processes() -> list:
    """The agents' measuring children of this process (the agents run in it)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "fleetnas_agent.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # ended meanwhile
            pass
    return found


def test_a_model_that_hangs_behind_another_hosts_measurement_fails_alone(tmp_path, monkeypatch):
    """The host's bound on a call restarts as the agent's queue moves (`stall_s`): the agent's own deadline on
    the model, with its cause, comes first. A bound on the whole call fired first behind a long queue, with no
    cause, and blamed the agent for what the model did."""
    plugin = plugins.install_plugin(tmp_path / "plugin")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")])))
    with running_agent(tmp_path / "c0", label="a0") as (address, _):
        busy = another_host_measuring(address, seconds=8)
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry("a0", address, KIND)])
        # Queued ~8 s, then 5 s of hanging: past the 10 s a bound on the whole call would allow.
        with Farm(inv, SqliteStore(tmp_path / "hang.db"), deadline_s=5.0, max_attempts=1) as farm:
            [result] = farm.measure_artifacts([ArtifactSource.from_bytes(plugins.spec("test-hang"))], KIND,
                                              stopping=FAST)
            assert farm.agents["a0"].consecutive_failures == 0
        busy.join(60)
    assert result.measurement is not None and not result.ok and "did not finish within 5 s" in result.error


def test_a_busy_device_gets_no_job_while_it_pauses_and_a_job_gives_up_after_give_up_s(tmp_path, caplog):
    """One refusal per pause of the busy device, not one per job and round; the pauses a job waited out add
    up to give_up_s at most."""
    caplog.set_level(logging.INFO, logger="fleetnas.farm")
    with running_agent(tmp_path / "c0", label="a0", max_queued=0) as (address, _):
        inv = Inventory(tmp_path / "farm.toml", [AgentEntry("a0", address, KIND)])
        busy = another_host_measuring(address, seconds=3)
        with Farm(inv, SqliteStore(tmp_path / "ten.db")) as farm:
            results = farm.measure_artifacts(tiny(10, start=700), KIND, stopping=FAST)
        busy.join(60)
        assert all(r.ok and r.attempts == 1 for r in results)
        refusals = [r for r in caplog.records if "gets no job for" in r.getMessage()]
        assert 1 <= len(refusals) <= 6  # pauses of 0.25, 0.5, 1, 2, 4 s cover the ~3 s it stays busy
        busy = another_host_measuring(address, seconds=3)
        with Farm(inv, SqliteStore(tmp_path / "late.db"), give_up_s=1.0) as farm:
            [late] = farm.measure_artifacts(tiny(1, start=800), KIND, stopping=FAST)
        busy.join(60)
    assert late.measurement is None and "stayed busy for 1 s" in late.error


class HotThenCool:
    """The device's throttle reading (what the Raspberry Pi firmware's bits say): "throttled" for the first
    `hot` readings the agent takes, then not. This machine has no throttle signal of its own to heat."""

    def __init__(self, hot: int):
        self.hot, self.reads = hot, 0

    def __call__(self) -> int:
        self.reads += 1
        return 0x4 if self.reads <= self.hot else 0


def test_a_measurement_taken_while_throttled_is_taken_again_once_the_device_has_cooled(farm_of, monkeypatch):
    """Readings: the measurement's before and after (hot), the host's first Environment poll (hot), its
    second (cool), then the measurement again (cool). The throttled row stays, stale and flagged."""
    from fleetnas_agent import device

    monkeypatch.setattr("fleetnas.farm.scheduler.COOL_POLL_S", 0.05)
    farm = farm_of(1, cool_down_s=30.0)
    reading = HotThenCool(3)
    monkeypatch.setattr(device, "_firmware_bits", reading)
    [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST)
    assert result.ok and not result.measurement.env["throttled"]
    assert reading.reads == 6
    rows = farm.store.measurements(device_kind=KIND, include_stale=True)
    assert [(m.env["throttled"], m.stale) for m in rows] == [(True, True), (False, False)]


def per_agent_throttle(monkeypatch, farm, measured_hot, env_hot):
    """Which agent's device reads throttled, decided host-side where the in-process agents share one sensor:
    measured_hot(agent, n) for its n-th measurement, env_hot(agent) for its Environment answers."""
    from fleetnas.farm import scheduler
    from fleetnas_agent.client import AgentClient

    counts = {}
    measurement, environment = scheduler.Farm._measurement, AgentClient.environment
    by_address = {a.entry.address: a.name for a in farm.agents.values()}

    def measured(self, agent, job, result):
        m = measurement(self, agent, job, result)
        counts[agent.name] = counts.get(agent.name, 0) + 1
        m.env["throttled"] = measured_hot(agent.name, counts[agent.name])
        return m

    def answered(self):
        snapshot = environment(self)
        snapshot.throttled = env_hot(by_address[self.address])
        return snapshot

    monkeypatch.setattr(scheduler.Farm, "_measurement", measured)
    monkeypatch.setattr(AgentClient, "environment", answered)
    monkeypatch.setattr(scheduler, "COOL_POLL_S", 0.05)


def _rows(farm):
    return [(m.agent, m.env["throttled"], m.stale) for m in farm.store.measurements(device_kind=KIND, include_stale=True)]


def test_a_cool_peer_measures_again_while_the_throttled_device_cools_down(farm_of, monkeypatch):
    farm = farm_of(2, cool_down_s=30.0)
    hot = []  # the agent that measures first: hot, and still hot when asked

    def measured_hot(agent, n):
        hot[:] = hot or [agent]
        return agent == hot[0]

    per_agent_throttle(monkeypatch, farm, measured_hot, env_hot=lambda agent: agent in hot)
    [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST)  # no 30 s wait: the peer takes it
    assert result.ok and not result.measurement.env["throttled"] and result.measurement.agent != hot[0]
    assert _rows(farm) == [(hot[0], True, True), (result.measurement.agent, False, False)]


def test_a_device_that_has_cooled_takes_back_its_job_rather_than_wait_for_a_hot_peer(farm_of, monkeypatch):
    """Both devices throttled on their first job; live0 is cool when asked, live1 stays hot: live0 measures
    both jobs again, cool, instead of one waiting out live1's cool-down to be measured hot there."""
    farm = farm_of(2, cool_down_s=0.5)
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: agent == "live1" or n == 1,
                       env_hot=lambda agent: agent == "live1")
    results = farm.measure_artifacts(tiny(2), KIND, stopping=FAST)
    assert [(r.measurement.agent, r.measurement.env["throttled"]) for r in results] == [("live0", False)] * 2
    farm.agents["live1"].stays_hot = True  # as a whole cool-down leaves it: no job a cooler peer can take again
    again = farm.measure_artifacts(tiny(2, start=2), KIND, stopping=FAST)
    assert not any(r.measurement.env["throttled"] for r in again)


def test_a_failed_try_keeps_the_throttled_measurement_as_the_result(farm_of, monkeypatch):
    """Taking a throttled measurement again can fail (a peer refuses the model, the device goes away): the
    job still has its measurement, flagged, and a search goes on with it."""
    from fleetnas.farm import scheduler

    farm = farm_of(1, cool_down_s=1.0)
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: n == 1, env_hot=lambda agent: False)
    measure_on = scheduler.Farm._measure_on
    calls = []

    def failing_again(self, agent, job):
        calls.append(agent.name)
        if len(calls) > 1:
            raise JobError("the runtime cannot run it any more")
        return measure_on(self, agent, job)

    monkeypatch.setattr(scheduler.Farm, "_measure_on", failing_again)
    [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST)
    assert result.ok and result.measurement.env["throttled"] and len(calls) == 2


def test_a_failed_try_gives_the_cool_row_another_host_stored_meanwhile(farm_of, monkeypatch):
    """The try fails, but another host has measured the job cool in between: that row, the store's current
    one, is the job's result, not the throttled row it replaced."""
    import dataclasses

    from fleetnas.farm import scheduler

    farm = farm_of(1, cool_down_s=1.0)
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: True, env_hot=lambda agent: False)
    measure_on, measurement, made = scheduler.Farm._measure_on, scheduler.Farm._measurement, []

    def kept(self, agent, job, result):
        made.append(measurement(self, agent, job, result))
        return made[-1]

    def other_host_then_failure(self, agent, job):
        if made:  # the try: another host stores a cool row, then this device cannot run the model
            self.store.record_measurement(dataclasses.replace(made[0], env={**made[0].env, "throttled": False},
                                                              agent="other"), supersede=True)
            raise JobError("the runtime cannot run it any more")
        return measure_on(self, agent, job)

    monkeypatch.setattr(scheduler.Farm, "_measurement", kept)
    monkeypatch.setattr(scheduler.Farm, "_measure_on", other_host_then_failure)
    [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST)
    assert result.ok and result.measurement.agent == "other" and not result.measurement.env["throttled"]


def test_a_cool_measurement_another_host_stored_meanwhile_is_taken_not_replaced(farm_of, monkeypatch):
    import dataclasses

    from fleetnas.farm import scheduler

    farm = farm_of(1, cool_down_s=0.2, throttled_retries=1)
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: True, env_hot=lambda agent: False)
    measurement, cool_down = scheduler.Farm._measurement, scheduler.Farm._cool_down
    first = []

    def kept(self, agent, job, result):
        first.append(measurement(self, agent, job, result))
        return first[-1]

    def other_host_measures_cool(self, agent, batch):
        m = first[0]
        self.store.record_measurement(dataclasses.replace(m, env={**m.env, "throttled": False}, agent="other"),
                                      supersede=True)
        return cool_down(self, agent, batch)

    monkeypatch.setattr(scheduler.Farm, "_measurement", kept)
    monkeypatch.setattr(scheduler.Farm, "_cool_down", other_host_measures_cool)
    [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST)
    assert result.from_store and result.measurement.agent == "other" and not result.measurement.env["throttled"]
    assert farm.store.find_measurement(*result.job.key).agent == "other"


def test_a_stored_throttled_measurement_is_taken_again_and_pinned_jobs_keep_theirs(farm_of, monkeypatch):
    from fleetnas_agent import device

    farm = farm_of(1, throttled_retries=0)
    artifacts = tiny(1)
    monkeypatch.setattr(device, "_firmware_bits", lambda: 0x4)
    [throttled] = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
    [pinned] = farm.measure_artifacts(artifacts, KIND, stopping=FAST, agent="live0")
    assert throttled.measurement.env["throttled"] and pinned.measurement.env["throttled"]
    monkeypatch.setattr(device, "_firmware_bits", lambda: 0)
    farm.throttled_retries = 2
    [again] = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
    assert not again.from_store and not again.measurement.env["throttled"]
    [stored] = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
    assert stored.from_store and stored.measurement.id == again.measurement.id


def test_a_stored_throttled_measurement_stands_where_no_device_can_take_it_again(farm_of, monkeypatch):
    from fleetnas_agent import device

    monkeypatch.setattr(device, "_firmware_bits", lambda: 0x4)
    [throttled] = farm_of(1, throttled_retries=0).measure_artifacts(tiny(1), KIND, stopping=FAST)
    offline = farm_of(0, dead=1, give_up_s=0.5)  # the same store; its device is off now
    [result] = offline.measure_artifacts(tiny(1), KIND, stopping=FAST)
    assert result.ok and result.measurement.id == throttled.measurement.id


def test_a_device_still_throttled_after_a_whole_cool_down_is_waited_for_no_more(farm_of, monkeypatch, caplog):
    """A sensor that reads hot at rest: one cool-down and one retry, then its measurements are kept as they
    come, so that a false alarm costs a search one wait, not one per job."""
    from fleetnas_agent import device

    monkeypatch.setattr("fleetnas.farm.scheduler.COOL_POLL_S", 0.05)
    farm = farm_of(1, cool_down_s=0.3)
    monkeypatch.setattr(device, "_firmware_bits", lambda: 0x4)
    first, second = farm.measure_artifacts(tiny(2), KIND, stopping=FAST)
    assert first.measurement.env["throttled"] and second.measurement.env["throttled"]
    rows = farm.store.measurements(device_kind=KIND, include_stale=True)
    assert sorted(m.artifact == first.job.artifact.sha256 for m in rows) == [False, True, True]
    assert "live0 still says throttled 0.3 s after a throttled measurement" in caplog.text


def _finishes_within(seconds: float, batch):
    """The batch's results, or None where it is still running after `seconds` (a hang, left to its thread)."""
    out = {}
    worker = threading.Thread(target=lambda: out.update(results=batch()), daemon=True)
    worker.start()
    worker.join(seconds)
    return out.get("results")


def test_a_device_that_stays_hot_takes_a_try_back_when_its_cool_peer_failed_it(farm_of, monkeypatch):
    """live0 stays hot; live1 refuses the try once (busy with another host's queue, a passing error): live1
    waits for live0 to fail it too, so live0 must take it, or the batch never ends."""
    import grpc

    from fleetnas.farm import scheduler

    farm = farm_of(2, cool_down_s=0.2)
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: True, env_hot=lambda agent: True)
    farm.throttled_retries = 0
    artifacts = tiny(1)
    farm.measure_artifacts(artifacts, KIND, stopping=FAST)  # a throttled measurement, stored
    farm.throttled_retries = 2
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: agent == "live0",
                       env_hot=lambda agent: agent == "live0")
    farm.agents["live0"].stays_hot, farm.agents["live0"].hot_since = True, None
    measure_on, calls = scheduler.Farm._measure_on, []

    class Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.ABORTED

        def details(self):
            return "another host's measurement holds the device"

    def refused_once_on_live1(self, agent, job):
        calls.append(agent.name)
        if calls.count("live1") == 1 and agent.name == "live1":
            raise Refused()
        return measure_on(self, agent, job)

    monkeypatch.setattr(scheduler.Farm, "_measure_on", refused_once_on_live1)
    [result] = _finishes_within(60, lambda: farm.measure_artifacts(artifacts, KIND, stopping=FAST))
    assert result.ok and "live0" in calls


def test_a_device_that_stays_hot_takes_a_try_back_that_its_peer_cannot_take(tmp_path, monkeypatch):
    """The only cooler peer refuses models this large (its upload limit): the hot device must measure it."""
    from models import onnx_mlp

    big = ArtifactSource.from_bytes(onnx_mlp(width=256, layers=2, seed=1))
    with running_agent(tmp_path / "c0", label="strict", max_artifact_bytes=64 * 1024) as (strict, _), \
            running_agent(tmp_path / "c1", label="roomy") as (roomy, _):
        inventory = Inventory(tmp_path / "farm.toml", [AgentEntry("strict", strict, KIND),
                                                       AgentEntry("roomy", roomy, KIND)])
        with Farm(inventory, SqliteStore(tmp_path / "x.db"), cool_down_s=0.3) as farm:
            per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: agent == "roomy",
                               env_hot=lambda agent: agent == "roomy")
            [result] = _finishes_within(60, lambda: farm.measure_artifacts([big], KIND, stopping=FAST))
    assert result.ok and result.measurement.agent == "roomy" and result.measurement.env["throttled"]


def test_a_throttled_try_does_not_replace_a_cool_row_stored_while_it_measured(farm_of, monkeypatch):
    import dataclasses

    from fleetnas.farm import scheduler

    farm = farm_of(1, cool_down_s=0.1, throttled_retries=1)
    per_agent_throttle(monkeypatch, farm, measured_hot=lambda agent, n: True, env_hot=lambda agent: False)
    measurement, made = scheduler.Farm._measurement, []

    def other_host_stores_cool_meanwhile(self, agent, job, result):
        m = measurement(self, agent, job, result)
        if made:  # the try: another host stored a cool row while this one measured
            self.store.record_measurement(dataclasses.replace(made[0], env={**made[0].env, "throttled": False},
                                                              agent="other"), supersede=True)
        made.append(m)
        return m

    monkeypatch.setattr(scheduler.Farm, "_measurement", other_host_stores_cool_meanwhile)
    [result] = farm.measure_artifacts(tiny(1), KIND, stopping=FAST)
    current = farm.store.find_measurement(*result.job.key)
    assert current.agent == "other" and not current.env["throttled"] and result.measurement.id == current.id
