"""The farm's scheduler: many measurement jobs over every healthy agent of each device kind.

One worker thread per agent takes jobs from its kind's shared queue, one at a time: upload the artifact
if the agent lacks it, measure with a deadline, store the result (committed), only then count the job
done. A job whose agent dies or times out goes back to the queue for a peer of the same kind; an agent
that fails repeatedly (or stops answering health checks) is set aside and re-probed later, and used again
once it answers. Jobs whose result the store already holds (same artifact, device kind, runtime and
settings) are not measured again unless asked to re-measure.

A measurement its device took while throttled (agent.proto's `throttled`: a hot CPU, the Raspberry Pi
firmware's bits) is stored, flagged, and taken again up to `throttled_retries` times: the hot device takes no
job until its Environment no longer says throttled (or `cool_down_s` has passed), so a free peer takes it
first, else the device itself once cool. A throttled device measures every model slower, so its figure would
teach a predictor, and put on a front, a latency the device does not have. A stored measurement that was
throttled counts as one such try. Whatever becomes of the tries (a peer that fails, a device that goes away),
the throttled measurement stays the job's result unless a cool one replaces it. Jobs pinned to an agent (a
watch's reference rounds) keep what they got: a watch judges each device as it is. A device still throttled
after a whole cool-down (a sensor whose limit is set below its resting temperature) is waited for no more, and
takes no job a cooler peer could re-measure, until it measures cool again.

One current row per job: a job is in one agent's hands at a time (it is re-queued only after that
attempt has ended), and the store's unique index on the dedup key is the backstop against two host
processes measuring the same job. A throttled measurement taken again leaves its row, marked stale.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import grpc

from fleetnas.store import MeasurementRecord, NewMeasurement, Store, StoreError

from .inventory import AgentEntry, Inventory, InventoryError
from .jobs import FORMAT_RUNTIME, RUNTIME_FORMAT, ArtifactSource, Job, JobError, JobResult, Settings

log = logging.getLogger("fleetnas.farm")

# How an RPC failure is handled: the agent's fault (retry on a peer, count against the agent), a passing
# condition (retry, no blame), or the job's own fault (final: recorded as a failed measurement).
# FAILED_PRECONDITION is the agent's state (its cache holding what it cannot use, say), except where the agent
# names the cause RUNTIME_UNAVAILABLE (its runtime not installed, or installed but broken): then a peer whose
# runtime works takes the job, and with none the job fails at once, unrecorded; the agent is well.
AGENT_FAULTS = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "UNAUTHENTICATED", "PERMISSION_DENIED",
                "FAILED_PRECONDITION"}
TRANSIENT = {"RESOURCE_EXHAUSTED", "ABORTED", "NOT_FOUND"}
# Where the agent names the cause (agent.proto's FailureCause), the model's own faults are final whatever the
# code: a model that ran out of memory or time on one device of a kind does the same on its peers, and three
# tries of it would end the batch (and a search) as if the farm had no agent left. A measuring process killed
# from outside is most likely the model's too (the OOM killer), yet the kernel takes it first whatever fills the
# memory: it is the model's only when it happens twice.
MODEL_FAULTS = {"MODEL_OUT_OF_MEMORY", "MODEL_TIMEOUT", "MODEL_CRASHED"}
MODEL_FAULT_IF_REPEATED = {"KILLED"}
#: How long an agent that refused a job as busy gets no job; it doubles with each refusal in a row, to the max,
#: and starts again once the agent measures.
BUSY_PAUSE_S, MAX_BUSY_PAUSE_S = 0.25, 8.0
#: How long a kind may have no usable agent before its waiting jobs fail (Farm's give_up_s).
GIVE_UP_S = 300.0
#: Times a measurement taken while throttled is taken again; the longest a throttled device is waited for to
#: cool down (Farm's throttled_retries, cool_down_s); how often its Environment is asked meanwhile.
THROTTLED_RETRIES, COOL_DOWN_S, COOL_POLL_S = 2, 60.0, 2.0


class FarmError(RuntimeError):
    """The farm cannot run the batch at all (e.g. no agent of a kind); the message says why."""


class AgentState:
    """What the scheduler knows about one agent; changed only under the batch's lock or by its own worker."""

    def __init__(self, entry: AgentEntry, base_dir):
        self.entry = entry
        self.base_dir = base_dir
        self.healthy = False
        self.probe_due = True
        self.next_probe_at = 0.0
        self.consecutive_failures = 0
        self.client = None
        self.device_id: str | None = None
        self.device_label = ""
        self.max_artifact_bytes: int | None = None  # from Describe; None until known (or 0: not said)
        self.busy_until = 0.0  # monotonic time until which it gets no job: its device is busy with others' work
        self.busy_pause_s = BUSY_PAUSE_S
        self.hot_since: float | None = None  # monotonic time of its latest throttled measurement, until it cools
        self.stays_hot = False  # still throttled after a whole cool-down: its measurements are kept as they come
        self.last_error = ""
        self.jobs_done = 0
        self.cannot_run: dict[str, str] = {}  # runtime -> why the agent cannot run it (RUNTIME_UNAVAILABLE), this batch

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def kind(self) -> str:
        return self.entry.kind

    def takes(self, artifact) -> bool:
        """Whether the artifact is within this agent's upload limit, as far as the agent has said."""
        return not self.max_artifact_bytes or artifact.size_bytes <= self.max_artifact_bytes

    def may_serve(self) -> bool:
        return self.healthy or self.probe_due

    def close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@dataclasses.dataclass(eq=False)
class _Task:
    job: Job
    attempts: int = 0
    failed_on: set = dataclasses.field(default_factory=set)
    errors: list = dataclasses.field(default_factory=list)
    causes: set = dataclasses.field(default_factory=set)  # the agents' FailureCause of each failed attempt
    result: JobResult | None = None
    stranded_since: float | None = None
    busy_waited_s: float = 0.0  # the pauses it has waited out, refused by devices busy with others' measurements
    throttled: int = 0  # times it was measured while its device was throttled
    kept: MeasurementRecord | None = None  # the latest of those: its result, unless a try measures it cool

    def may_run_on(self, agent: "AgentState") -> bool:
        return self.job.agent in (None, agent.name)


class _Batch:
    def __init__(self, tasks: list[_Task], remeasure: bool):
        self.cond = threading.Condition()
        self.remeasure = remeasure
        self.pending: dict[str, list[_Task]] = {}
        self.running: dict[str, int] = {}
        for task in tasks:
            self.pending.setdefault(task.job.device_kind, []).append(task)
            self.running.setdefault(task.job.device_kind, 0)
        self.remaining = len(tasks)
        self.total = len(tasks)
        self.fatal: BaseException | None = None
        self.closed = self.remaining == 0
        self.waiting_for: set[tuple] = set()  # kinds with no usable agent, and pinned agents not usable: said once

    def kind_done(self, kind: str) -> bool:
        return not self.pending.get(kind) and not self.running.get(kind)


class Farm:
    """Measures jobs on the agents of an inventory and records every result in a store.

    deadline_s: per-job bound on one measurement (default: from the stopping rule, see Settings.deadline_s).
    max_attempts: agents a job may be tried on before it is reported failed.
    unhealthy_after: consecutive failures that set an agent aside (at once if it stops answering health checks).
    reprobe_s: how long an agent set aside waits before the next health check; at most a third of give_up_s,
               so that an agent back (restarted, rebooted) before the farm gives up on its kind is seen to be.
    give_up_s: how long a kind may have no usable agent before its waiting jobs are reported failed; also the
               most a job waits out devices busy with other hosts' measurements.
    throttled_retries: times a measurement taken while throttled is taken again (0: kept as it came).
    cool_down_s: the longest a throttled device is waited for to cool down before it measures again.
    """

    def __init__(self, inventory: Inventory, store: Store, *, deadline_s: float | None = None, max_attempts: int = 3,
                 unhealthy_after: int = 2, reprobe_s: float = 30.0, give_up_s: float = GIVE_UP_S,
                 rpc_timeout_s: float = 10.0, progress: bool = False, throttled_retries: int = THROTTLED_RETRIES,
                 cool_down_s: float = COOL_DOWN_S):
        if max_attempts < 1 or unhealthy_after < 1:
            raise ValueError("max_attempts and unhealthy_after must be at least 1")
        if throttled_retries < 0 or cool_down_s < 0:
            raise ValueError("throttled_retries and cool_down_s must not be negative")
        self.inventory, self.store = inventory, store
        self.deadline_s, self.max_attempts, self.unhealthy_after = deadline_s, max_attempts, unhealthy_after
        self.reprobe_s, self.give_up_s, self.rpc_timeout_s = min(reprobe_s, give_up_s / 3), give_up_s, rpc_timeout_s
        self.throttled_retries, self.cool_down_s = throttled_retries, cool_down_s
        self.progress = progress
        self.agents = {e.name: AgentState(e, inventory.base_dir) for e in inventory.agents}
        self._run_lock = threading.Lock()
        self._closing = False  # set by close(): what workers still in an RPC then meet is the shutdown, not a fault

    @classmethod
    def open(cls, inventory: str | Inventory = "fleetnas.toml", db=None, **options) -> "Farm":
        """A farm over an inventory file and a store location (path, or None for the default)."""
        from fleetnas.store import open_store

        inv = inventory if isinstance(inventory, Inventory) else Inventory.load(inventory)
        return cls(inv, open_store(db), **options)

    def close(self) -> None:
        self._closing = True
        for agent in self.agents.values():
            agent.close_client()
        self.store.close()

    def __enter__(self) -> "Farm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- building jobs --------------------------------------------------------------------------
    def agents_of(self, device_kind: str) -> list[AgentEntry]:
        try:
            return self.inventory.of_kind(device_kind)
        except InventoryError as exc:
            raise FarmError(str(exc)) from None

    def require_answering(self, device_kinds: Iterable[str], timeout_s: float = 5.0) -> None:
        """Raises FarmError naming each agent's answer when no agent of a kind answers its health check now.
        A search refuses to start then: otherwise its first batch waits give_up_s for an agent that never comes."""
        from .check import check_agent

        for kind in device_kinds:
            checks = []
            for entry in self.agents_of(kind):
                checks.append(check_agent(entry, self.inventory.base_dir, timeout_s, reference=False))
                if checks[-1].healthy:
                    break
            else:
                raise FarmError(f"no agent of kind {kind!r} answers: " + "; ".join(
                    f"{c.name} at {c.address}: {c.status}{' ' + c.detail if c.detail else ''}" for c in checks))

    def settings_for(self, device_kind: str, fmt: str, stopping=None, seed: int = 0) -> Settings:
        """The settings a kind measures an artifact of format `fmt` with (runtime and threads from the inventory)."""
        entry = self.agents_of(device_kind)[0]
        runtime = entry.runtime or FORMAT_RUNTIME[fmt]
        if RUNTIME_FORMAT[runtime] != fmt:
            raise JobError(f"device kind {device_kind!r} runs {runtime}, which cannot run {fmt} artifacts")
        return Settings(runtime, entry.threads, stopping or {}, seed)

    def export_format(self, device_kind: str) -> str:
        """The artifact format a kind's runtime needs (ONNX when the inventory leaves the runtime open)."""
        runtime = self.agents_of(device_kind)[0].runtime
        return RUNTIME_FORMAT[runtime] if runtime else "onnx"

    def jobs_for(self, artifacts: Iterable[ArtifactSource], device_kind: str, stopping=None, seed: int = 0,
                 agent: str | None = None) -> list[Job]:
        return [Job(a, device_kind, self.settings_for(device_kind, a.format, stopping, seed), agent)
                for a in artifacts]

    # ----- the three ways in ----------------------------------------------------------------------
    def measure(self, configs: Sequence[dict], device_kind: str, *, space: str, stopping=None, seed: int = 0,
                remeasure: bool = False, batch: int = 1, export_cache_dir=None,
                answering_first: bool = False) -> list[JobResult]:
        """Measures sub-networks of `space` on `device_kind`: exports each (cached), then run()."""
        return self.measure_kinds(configs, [device_kind], space=space, stopping=stopping, seed=seed,
                                  remeasure=remeasure, batch=batch, export_cache_dir=export_cache_dir,
                                  answering_first=answering_first)[device_kind]

    def measure_kinds(self, configs: Sequence[dict], device_kinds: Sequence[str], *, space: str, stopping=None,
                      seed: int = 0, remeasure: bool = False, batch: int = 1, export_cache_dir=None,
                      answering_first: bool = False) -> dict[str, list[JobResult]]:
        """`measure` on several device kinds at once, in one batch: each kind's agents work side by side with
        the others', so the batch takes as long as its slowest kind, not as long as all of them together."""
        jobs = {kind: self.jobs_for(self.exported(configs, space, self.export_format(kind), batch,
                                                  export_cache_dir), kind, stopping, seed)
                for kind in dict.fromkeys(device_kinds)}
        results = iter(self.run([job for kind_jobs in jobs.values() for job in kind_jobs], remeasure=remeasure,
                                answering_first=answering_first))
        return {kind: [next(results) for _ in kind_jobs] for kind, kind_jobs in jobs.items()}

    @staticmethod
    def exported(configs: Sequence[dict], space: str, fmt: str, batch: int = 1, cache_dir=None) -> list[ArtifactSource]:
        """The artifacts of `configs` (exported, or from the export cache); JobError names the first that
        cannot be made."""
        from fleetnas.export import ExportError, export_artifact

        artifacts = []
        for config in configs:
            try:
                exported = export_artifact(space, config, fmt=fmt, batch=batch, cache_dir=cache_dir)
            except (ExportError, ValueError, KeyError) as exc:  # KeyError: unknown space; ValueError: bad config
                raise JobError(f"cannot export {space} config {config}: {exc.args[0] if exc.args else exc}") from exc
            except Exception as exc:  # noqa: BLE001 - a plug-in may fail in ways no export step foresaw
                raise JobError(f"cannot export {space} config {config}: {exc!r}") from exc
            artifacts.append(ArtifactSource.from_export(exported))
        return artifacts

    def measure_artifacts(self, artifacts: Sequence[ArtifactSource], device_kind: str, *, stopping=None,
                          seed: int = 0, remeasure: bool = False, agent: str | None = None,
                          answering_first: bool = False) -> list[JobResult]:
        """Measures any artifacts on `device_kind` (or on the one named `agent` of it: see Job.agent)."""
        return self.run(self.jobs_for(artifacts, device_kind, stopping, seed, agent), remeasure=remeasure,
                        answering_first=answering_first)

    def run(self, jobs: Sequence[Job], remeasure: bool = False, answering_first: bool = False) -> list[JobResult]:
        """Runs the jobs; returns one result per job, in order. Raises StoreError if results cannot be stored.
        `answering_first`: where something is left to measure once the store has answered, a kind none of
        whose agents answers is a FarmError at once (`require_answering`), not a wait of give_up_s."""
        jobs = list(jobs)
        for kind in {job.device_kind for job in jobs}:
            self.agents_of(kind)
        for job in jobs:
            pinned = self.agents.get(job.agent) if job.agent is not None else None
            if job.agent is not None and (pinned is None or pinned.kind != job.device_kind):
                raise FarmError(f"a job is pinned to agent {job.agent!r}, which is not an agent of kind "
                                f"{job.device_kind!r} in {self.inventory.path}")
        with self._run_lock:
            tasks: dict[tuple, _Task] = {}  # one task per distinct measurement (and pinned agent)
            for job in jobs:
                tasks.setdefault((*job.key, job.agent), _Task(job))
            free = [t for t in tasks.values() if t.job.agent is None]
            stored = {} if remeasure else self.store.find_measurements(t.job.key for t in free)
            for task in free:
                if task.job.key not in stored:
                    continue
                if _throttled(stored[task.job.key]) and self.throttled_retries:
                    task.throttled, task.kept = 1, stored[task.job.key]  # measured again, in its place
                else:
                    task.result = JobResult(task.job, stored[task.job.key], from_store=True)
            todo = [t for t in tasks.values() if t.result is None]
            batch = _Batch(todo, remeasure)
            if not batch.closed:
                if answering_first:
                    self.require_answering(set(batch.pending))
                # Recorded once something is to be measured (what the store answered has its artifact already):
                # a command refused here leaves a store it made empty, for it to remove.
                for artifact in {t.job.artifact.sha256: t.job.artifact for t in todo}.values():
                    self.store.put_artifact(artifact.sha256, artifact.format, artifact.size_bytes,
                                            artifact.supernet, artifact.config)
                self._run_batch(batch, from_store=len(tasks) - batch.total)
        return [dataclasses.replace(tasks[(*job.key, job.agent)].result, job=job) for job in jobs]

    # ----- the batch ------------------------------------------------------------------------------
    def _run_batch(self, batch: _Batch, from_store: int) -> None:
        agents = [a for a in self.agents.values() if a.kind in batch.pending]
        for agent in agents:
            agent.cannot_run.clear()
            if agent.healthy or time.monotonic() >= agent.next_probe_at:
                agent.probe_due = True  # confirm before use, and record the device's latest description
        workers = [threading.Thread(target=self._work, args=(agent, batch), name=f"farm-{agent.name}", daemon=True)
                   for agent in agents]
        for worker in workers:
            worker.start()
        try:
            with _progress(batch.total, from_store, self.progress) as show:
                with batch.cond:
                    while not batch.closed:
                        batch.cond.wait(timeout=1.0)
                        self._give_up_on_stranded_kinds(batch)
                        show(batch.total - batch.remaining)
        finally:  # interrupted: workers finish (and store) the job in hand, then take no more
            with batch.cond:
                batch.closed = True
                batch.cond.notify_all()
        if batch.fatal is not None:
            raise batch.fatal
        for worker in workers:
            worker.join()

    def _work(self, agent: AgentState, batch: _Batch) -> None:
        try:
            while (task := self._next_task(agent, batch)) is not None:
                self._execute(agent, task, batch)
        except BaseException as exc:  # a bug or a store failure: stop the batch rather than lose track of jobs
            if self._closing:  # an interrupted search closed the farm under this worker's RPC: nothing to report
                log.debug("farm worker %s stopped by the farm's close: %r", agent.name, exc)
            elif isinstance(exc, StoreError):
                log.error("farm worker %s stopped: %s", agent.name, exc)
            else:
                log.exception("farm worker %s stopped", agent.name)
            with batch.cond:
                batch.fatal = batch.fatal or exc
                batch.closed = True
                batch.cond.notify_all()

    def _next_task(self, agent: AgentState, batch: _Batch) -> _Task | None:
        with batch.cond:
            while True:
                if batch.closed or batch.kind_done(agent.kind):
                    return None
                now = time.monotonic()
                if agent.probe_due or (not agent.healthy and now >= agent.next_probe_at):
                    batch.cond.release()
                    try:
                        self._probe(agent)
                    finally:
                        batch.cond.acquire()
                    batch.cond.notify_all()
                    continue
                if not agent.healthy:
                    batch.cond.wait(timeout=max(0.01, agent.next_probe_at - now))
                    continue
                if agent.busy_until > now:  # its device is busy with others' work: peers take the jobs meanwhile
                    batch.cond.wait(timeout=agent.busy_until - now)
                    continue
                if agent.hot_since is not None:  # peers take the jobs while it cools down
                    batch.cond.release()
                    try:
                        self._cool_down(agent, batch)
                    finally:
                        batch.cond.acquire()
                    continue
                task = self._pick(agent, batch.pending[agent.kind])
                if task is not None:
                    batch.running[agent.kind] += 1
                    return task
                batch.cond.wait(timeout=5.0)

    def _pick(self, agent: AgentState, pending: list[_Task]) -> _Task | None:
        """The first job for this agent not yet failed on it; else one that every peer that could take it
        instead has failed too.

        A job beyond this agent's upload limit is left to the agents whose limit takes it, set aside or not:
        one agent set up with a smaller limit than its peers would otherwise refuse, for good, what they can
        measure. Only those count as taking it instead, so that it goes back to one of them after it failed
        there for a passing reason, not to an agent that must refuse it."""
        kin = [a for a in self.agents.values() if a.kind == agent.kind and a is not agent]
        peers = [a for a in kin if a.may_serve()]
        fallback = None
        for i, task in enumerate(pending):
            if not task.may_run_on(agent):
                continue
            artifact = task.job.artifact
            if not agent.takes(artifact) and any(p.takes(artifact) and task.may_run_on(p) for p in kin):
                continue  # theirs, once one of them may serve (`_give_up_on_stranded_kinds` bounds the wait)
            if task.kept is not None and agent.stays_hot and any(
                    not p.stays_hot and task.may_run_on(p) and p.takes(artifact) and p.name not in task.failed_on
                    for p in peers):
                continue  # a throttled measurement to take again: a cooler peer's, one that would take it
            if task.job.settings.runtime in agent.cannot_run and self._peers_that_can_run(agent, task):
                continue  # a peer whose runtime works takes it
            if agent.name not in task.failed_on or task.job.agent == agent.name:
                return pending.pop(i)
            instead = [p for p in peers if task.may_run_on(p) and (p.takes(artifact) or not agent.takes(artifact))
                       and task.job.settings.runtime not in p.cannot_run]  # one that cannot run it takes it never
            if fallback is None and all(p.name in task.failed_on for p in instead):
                fallback = i
        return pending.pop(fallback) if fallback is not None else None

    def _peers_that_can_run(self, agent: AgentState, task: _Task) -> list[AgentState]:
        """The other agents of `agent`'s kind that may serve now and could run `task`: free to take it (not pinned
        elsewhere), the artifact within their upload limit, and its runtime not refused there this batch."""
        runtime = task.job.settings.runtime
        return [p for p in self.agents.values() if p.kind == agent.kind and p is not agent and p.may_serve()
                and task.may_run_on(p) and p.takes(task.job.artifact) and runtime not in p.cannot_run]

    def _probe(self, agent: AgentState) -> None:
        """Health check and Describe on a fresh channel; records the device. Sets agent.healthy."""
        agent.close_client()
        try:
            self._connect(agent)
        finally:
            # Cleared only now: while its probe runs, the agent still counts as a peer that may serve (see _pick),
            # so that a job another agent just refused waits for it instead of going straight back to that agent.
            agent.probe_due = False

    def _connect(self, agent: AgentState) -> None:
        from fleetnas_agent.client import AgentClient
        from fleetnas_agent.client import message_dict

        try:
            client = AgentClient(agent.entry.address, agent.entry.credentials(agent.base_dir), self.rpc_timeout_s)
        except (InventoryError, OSError, ValueError) as exc:
            return self._set_aside(agent, str(exc))
        try:
            status = client.health()
            if status != "SERVING":
                raise _NotServing(f"health check says {status}")
            description = client.describe()
        except (grpc.RpcError, _NotServing) as exc:
            client.close()
            hint = client.hint(exc) if isinstance(exc, grpc.RpcError) else ""
            return self._set_aside(agent, _rpc_text(exc) + (f" ({hint})" if hint else ""))
        agent.device_id = description.device_id
        agent.device_label = description.label or agent.name
        agent.max_artifact_bytes = description.limits.max_artifact_bytes
        self.store.upsert_device(description.device_id, agent.device_label, agent.kind,
                                 message_dict(description))
        if not agent.healthy and agent.last_error:
            log.warning("agent %s (%s) is back", agent.name, agent.entry.address)
        agent.client, agent.healthy, agent.consecutive_failures, agent.last_error = client, True, 0, ""

    def _set_aside(self, agent: AgentState, reason: str) -> None:
        if agent.healthy or not agent.last_error:
            log.warning("agent %s (%s) set aside for %.1f s: %s", agent.name, agent.entry.address, self.reprobe_s,
                        reason)
        agent.healthy, agent.last_error = False, reason
        agent.next_probe_at = time.monotonic() + self.reprobe_s
        agent.close_client()

    def _execute(self, agent: AgentState, task: _Task, batch: _Batch) -> None:
        job, started = task.job, time.monotonic()
        try:
            fresh = batch.remeasure or job.agent is not None
            record = None if fresh else self.store.find_measurement(*job.key)
            if record is not None and not (task.kept is not None and _throttled(record)):
                # another host process measured it meanwhile (cool, where it is a throttled one's next try)
                return self._finish(agent, task, batch, JobResult(job, record, from_store=True))
            measured = self._measurement(agent, job, self._measure_on(agent, job))
            if task.kept is not None and measured.env.get("throttled"):  # throttled again: a cool row stored
                cool = self._stored_cool(job)                               # meanwhile stands
                if cool is not None:
                    return self._finish(agent, task, batch, JobResult(job, cool, from_store=True))
            record, inserted = self.store.record_measurement(measured, supersede=fresh or task.kept is not None)
            agent.consecutive_failures = 0  # it measured: whoever stored first, the agent is well
            agent.busy_pause_s = BUSY_PAUSE_S
            if not inserted:  # another host process stored it first: its row is the measurement, ours is dropped
                return self._finish(agent, task, batch, JobResult(job, record, from_store=True))
            agent.jobs_done += 1
            if not _throttled(record):
                agent.stays_hot = False  # it measured cool: it cools down again like any device
            elif job.agent is None and self.throttled_retries and self._measure_again_when_cool(agent, task, record):
                return self._put_back(agent, task, batch)
            self._finish(agent, task, batch, JobResult(job, record, attempts=task.attempts + 1,
                                                       elapsed_s=time.monotonic() - started))
        except grpc.RpcError as exc:
            self._failed_attempt(agent, task, batch, exc)
        except (JobError, OSError) as exc:
            self._finish(agent, task, batch, self._failed_job(agent, task, str(exc)))

    def _measure_again_when_cool(self, agent: AgentState, task: _Task, record: MeasurementRecord) -> bool:
        """A measurement its device took while throttled: kept as the job's result, and whether to take it again
        (the job then goes back to the queue, where a free peer takes it while this device cools down). False
        once the tries are spent, or where every device of the kind stays hot."""
        task.throttled, task.kept = task.throttled + 1, record
        if not agent.stays_hot:
            agent.hot_since = agent.hot_since or time.monotonic()
        kin = [a for a in self.agents.values() if a.kind == agent.kind]
        if task.throttled > self.throttled_retries or all(a.stays_hot for a in kin):
            log.warning("job %s: measured %d times while throttled, the last on %s; kept, flagged as throttled",
                        task.job.artifact.sha256[:12], task.throttled, agent.name)
            return False
        log.info("job %s: %s measured it while throttled; measuring it again on a cool device of %s",
                 task.job.artifact.sha256[:12], agent.name, agent.kind)
        return True

    def _cool_down(self, agent: AgentState, batch: _Batch) -> None:
        """Waits until the agent's device no longer says it is throttled, asking it every COOL_POLL_S, for at
        most cool_down_s since its throttled measurement. A batch that closes meanwhile ends the wait, not the
        cool-down: the next batch waits out the rest."""
        until = agent.hot_since + self.cool_down_s
        while True:
            try:
                cool = agent.client is None or not agent.client.environment().throttled
            except grpc.RpcError:  # its next job says what is wrong with it
                cool = True
            if cool or time.monotonic() >= until:
                break
            next_poll = min(time.monotonic() + COOL_POLL_S, until)
            with batch.cond:
                while not batch.closed and time.monotonic() < next_poll:
                    batch.cond.wait(timeout=next_poll - time.monotonic())
                if batch.closed:
                    return
        agent.hot_since = None
        if not cool and self.cool_down_s > 0:  # a sensor that reads hot at rest (its limit set low): waiting
            # again and again would gain nothing
            agent.stays_hot = True
            log.warning("agent %s still says throttled %g s after a throttled measurement; it is not waited for "
                        "again until it measures cool, and its measurements are kept, flagged as throttled: check "
                        "its cooling", agent.name, self.cool_down_s)

    def _measure_on(self, agent: AgentState, job: Job):
        from fleetnas_agent.proto import agent_pb2 as pb

        formats = {"onnx": pb.ARTIFACT_FORMAT_ONNX, "tflite": pb.ARTIFACT_FORMAT_TFLITE,
                   "spec": pb.ARTIFACT_FORMAT_TORCH_SPEC}
        deadline_s = self.deadline_s or job.settings.deadline_s()
        sha = agent.client.put_artifact(job.artifact.read(), formats[job.artifact.format])
        return agent.client.profile(sha, runtime=job.settings.runtime, threads=job.settings.threads,
                                    stopping=job.settings.stopping_rule(), seed=job.settings.seed,
                                    timeout_s=deadline_s, stall_s=deadline_s + 5.0)

    def _measurement(self, agent: AgentState, job: Job, result) -> NewMeasurement:
        from fleetnas_agent.client import result_to_dict

        d = result_to_dict(result)
        detail = {"runtime_version": d["runtime"]["version"], "inputs": d["inputs"], "load_ms": d["load_ms"],
                  "threads": d["threads"], "started_unix_s": d["started_unix_s"],
                  "finished_unix_s": d["finished_unix_s"], "device_label": d["device"]["label"],
                  "address": agent.entry.address}
        return NewMeasurement(device_id=d["device"]["id"] or agent.device_id, device_kind=job.device_kind,
                              artifact=job.artifact.sha256, runtime=job.settings.runtime,
                              settings=job.settings.to_dict(), ok=True, stats=d["latency_ms"], memory=d["memory"],
                              env=d["env"], detail=detail, agent=agent.name, device_label=agent.device_label)

    def _failed_attempt(self, agent: AgentState, task: _Task, batch: _Batch, exc: grpc.RpcError) -> None:
        from fleetnas_agent.client import failure_cause

        if self._closing:  # cancelled by close(): the agent is not at fault, and the batch is abandoned
            return
        code = exc.code().name if exc.code() else "UNKNOWN"
        text = f"{agent.name}: {_rpc_text(exc)}"
        cause = failure_cause(exc)
        if cause == "DEVICE_BUSY":
            return self._wait_for_busy_device(agent, task, batch, text)
        if cause in MODEL_FAULTS or (cause in MODEL_FAULT_IF_REPEATED and cause in task.causes):
            agent.consecutive_failures = 0  # it answered, and said why: the agent is well
            return self._finish(agent, task, batch, self._failed_job(agent, task, "; ".join([*task.errors, text])))
        if cause == "RUNTIME_UNAVAILABLE":  # the agent answers, but cannot run this job's runtime
            agent.consecutive_failures = 0
            agent.cannot_run[task.job.settings.runtime] = text
            task.errors.append(text)
            task.failed_on.add(agent.name)
            # A peer that failed the job for a passing reason may take it again (max_attempts bounds the tries).
            if not self._peers_that_can_run(agent, task) or task.attempts + 1 >= self.max_attempts:
                return self._finish(agent, task, batch, JobResult(task.job, None, error="; ".join(task.errors),
                                                                  attempts=task.attempts + 1))
            task.attempts += 1
            return self._put_back(agent, task, batch)
        if code not in AGENT_FAULTS | TRANSIENT:
            return self._finish(agent, task, batch, self._failed_job(agent, task, text))
        task.errors.append(text)
        task.causes.add(cause)
        # Retry on a peer first, even after a passing condition: a full disk or a queue kept full by other
        # hosts may last, and the same agent would take the job straight back. Only agent faults count against it.
        task.failed_on.add(agent.name)
        if code in AGENT_FAULTS:
            agent.consecutive_failures += 1
            if agent.consecutive_failures >= self.unhealthy_after or not self._answers(agent):
                self._set_aside(agent, _rpc_text(exc))  # its reasons are listed under its name
        log.info("job %s: attempt on %s failed (%s); retrying", task.job.artifact.sha256[:12], agent.name, code)
        if task.attempts + 1 >= self.max_attempts:
            error = f"gave up after {task.attempts + 1} attempt(s): " + "; ".join(task.errors)
            return self._finish(agent, task, batch, JobResult(task.job, None, error=error,
                                                              attempts=task.attempts + 1))
        task.attempts += 1  # in this worker's hands alone until put back
        self._put_back(agent, task, batch)

    def _wait_for_busy_device(self, agent: AgentState, task: _Task, batch: _Batch, text: str) -> None:
        """A device whose queue others' measurements fill (a farm shared by several hosts): the agent gets no
        job for a pause that doubles with each refusal in a row, the job goes back to the front for a peer or
        for it after the pause, and spends no attempt. A job fails once the pauses it waited out add up to
        give_up_s. Three attempts within milliseconds ended a search on a device that was merely in demand."""
        pause = agent.busy_pause_s
        agent.busy_until = time.monotonic() + pause
        agent.busy_pause_s = min(2 * pause, MAX_BUSY_PAUSE_S)
        task.busy_waited_s += pause
        if task.busy_waited_s > self.give_up_s:
            error = f"the devices of kind {agent.kind!r} stayed busy for {self.give_up_s:g} s: {text}"
            return self._finish(agent, task, batch, JobResult(task.job, None, error=error, attempts=task.attempts))
        log.info("job %s: %s; %s gets no job for %g s", task.job.artifact.sha256[:12], text, agent.name, pause)
        self._put_back(agent, task, batch)

    def _put_back(self, agent: AgentState, task: _Task, batch: _Batch) -> None:
        """The job in the agent's hands goes back to the front of its kind's queue."""
        with batch.cond:
            batch.running[agent.kind] -= 1
            batch.pending[agent.kind].insert(0, task)
            batch.cond.notify_all()

    def _answers(self, agent: AgentState) -> bool:
        try:
            return agent.client is not None and agent.client.health() == "SERVING"
        except grpc.RpcError:
            return False

    def _failed_job(self, agent: AgentState, task: _Task, error: str) -> JobResult:
        """The job itself cannot be measured (a bad model): kept as a failed measurement."""
        job = task.job
        record = None
        if agent.device_id is not None:
            record, _ = self.store.record_measurement(NewMeasurement(
                device_id=agent.device_id, device_kind=job.device_kind, artifact=job.artifact.sha256,
                runtime=job.settings.runtime, settings=job.settings.to_dict(), ok=False, error=error,
                agent=agent.name, device_label=agent.device_label))
        return JobResult(job, record, error=error, attempts=task.attempts + 1)

    def _finish(self, agent: AgentState, task: _Task, batch: _Batch, result: JobResult) -> None:
        result = self._or_kept(task, result)  # before the lock: it may read the store
        with batch.cond:
            task.result = result
            batch.running[agent.kind] -= 1
            batch.remaining -= 1
            batch.closed = batch.closed or batch.remaining == 0
            batch.cond.notify_all()

    def _or_kept(self, task: _Task, result: JobResult) -> JobResult:
        """A try of a throttled measurement that failed (a peer refused the model, the device went away): the
        throttled measurement, flagged, is the job's result, as when the tries are spent, unless a cool one
        that another host stored meanwhile has replaced it."""
        if result.ok or task.kept is None:
            return result
        log.warning("job %s: measuring it again failed (%s); the throttled measurement is kept",
                    task.job.artifact.sha256[:12], result.error)
        cool = self._stored_cool(task.job)
        if cool is not None:
            return JobResult(task.job, cool, from_store=True, attempts=result.attempts)
        return JobResult(task.job, task.kept, attempts=result.attempts)

    def _stored_cool(self, job: Job) -> MeasurementRecord | None:
        """The store's current measurement of the job where it was not taken while throttled (another host's,
        stored while this one re-measured a throttled one)."""
        current = self.store.find_measurement(*job.key)
        return None if current is None or _throttled(current) else current

    def _give_up_on_stranded_kinds(self, batch: _Batch) -> None:
        """Fails waiting jobs that have had no usable agent for give_up_s (called under the batch's lock)."""
        now, before = time.monotonic(), batch.remaining
        for kind, pending in batch.pending.items():
            eligible = [a for a in self.agents.values() if a.kind == kind]
            for task in list(pending):
                agents = [a for a in eligible if task.may_run_on(a)]
                # a job beyond some agents' upload limit waits for those whose limit takes it (`_pick`)
                agents = [a for a in agents if a.takes(task.job.artifact)] or agents
                if any(a.may_serve() for a in agents):
                    task.stranded_since = None
                    continue
                task.stranded_since = task.stranded_since or now
                waiting_for = ("agent", task.job.agent) if task.job.agent else ("kind", kind)
                if waiting_for not in batch.waiting_for:  # else a user sees one agent's error, then minutes of silence
                    batch.waiting_for.add(waiting_for)
                    if task.job.agent:  # jobs for this device alone (a calibration's reference rounds)
                        log.warning("agent %r is not usable now; its own jobs wait up to %g s for it to come back",
                                    task.job.agent, self.give_up_s)
                    else:
                        log.warning("no agent of kind %r is usable now; waiting up to %g s for one to come back",
                                    kind, self.give_up_s)
                if now - task.stranded_since < self.give_up_s:
                    continue
                reasons = "; ".join(f"{a.name}: {a.last_error}" for a in agents)
                which = (f"agent {task.job.agent!r} was not usable" if task.job.agent
                         else f"no agent of kind {kind!r} was usable")
                task.result = self._or_kept(task, JobResult(task.job, None, attempts=task.attempts,
                                                       error=f"{which} for {self.give_up_s:g} s ({reasons})"))
                pending.remove(task)
                batch.remaining -= 1
        if batch.remaining != before:
            batch.closed = batch.remaining == 0
            batch.cond.notify_all()


class _NotServing(Exception):
    pass


def _throttled(record) -> bool:
    return bool(record is not None and record.env.get("throttled"))


def _rpc_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code().name if exc.code() else "UNKNOWN"
        return f"{code}: {exc.details() if hasattr(exc, 'details') else exc}"
    return str(exc)


@contextmanager
def _progress(total: int, from_store: int, enabled: bool) -> Iterator:
    """A progress bar on stderr for long batches (rich); a no-op when disabled."""
    if not enabled:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    note = f" ({from_store} already stored)" if from_store else ""
    with Progress(TextColumn(f"measuring{note}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("measuring", total=total)
        yield lambda done: bar.update(task, completed=done)
