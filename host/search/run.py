"""Search runs kept in the store: start one, resume one by id, and what a run leaves behind.

A run's settings (space, objectives, constraints, tactic and its settings, budget, seed, where the farm
and the accuracy evaluator come from) are stored when it starts, so `resume_run(store, run_id)` needs
nothing else. Each real evaluation is a `measured` run member; the hypervolume after it is a `hypervolume`
event; LINAS's prediction for a candidate, made before it was measured, is a `prediction` event (the honest
parity plot); the final predicted front is stored as `predicted` members. How many values of each objective
the store held when the run started, which LINAS learns from as well (`LiveEvaluator.known`), is a `known`
event.
"""
from __future__ import annotations

import contextlib
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..locks import beside_store, holder, lease
from ..store import StoreError, canonical_json
from ..supernets import Config, get_supernet
from ..supernets.base import network_count, network_of
from .hypervolume import Normaliser, hypervolume, non_dominated
from .objectives import Constraint, Objective, minimised, parse_constraint, parse_objective, with_unit_case
from .session import BudgetExhausted, SearchSession, TooManyFailures
from .tactics import LEARNING, get_tactic

REF = 1.1
#: The hypervolume of a live run is measured against the range of its first evaluations, fixed from then
#: on so that the curve is comparable along the run (a table replay uses the table's true front instead).
#: Under constraints the range reaches at least to the first evaluation that meets them: feasible networks may
#: lie beyond the early ones (`accuracy >= 0.92` takes large ones), and a front outside the range counts 0.
HV_REFERENCE_AFTER = 10
#: The largest --seed: tactics derive further seeds from it (LINAS adds its iteration), which must stay within
#: the 32-bit signed seeds that LightGBM and scikit-learn take.
MAX_SEED = 2 ** 31 - 1


@dataclass
class RunSpec:
    space: str
    objectives: list[str]
    tactic: str = "linas"
    budget: int = 100
    seed: int = 0
    constraints: list[str] = field(default_factory=list)
    tactic_settings: dict = field(default_factory=dict)
    inventory: str | None = None
    accuracy: str | None = None
    #: The folder the run was started in, where --accuracy's MODULE was found: a resume may run from another.
    accuracy_folder: str | None = None
    stopping: dict | None = None
    #: How each device kind was measured when the run started ({kind: {"runtime", "threads"}}): a resume on a
    #: farm whose inventory now measures a kind otherwise would mix two kinds of latency in one front.
    measured_with: dict | None = None

    def parsed_objectives(self) -> list[Objective]:
        return [parse_objective(o) for o in self.objectives]

    def parsed_constraints(self) -> list[Constraint]:
        return [parse_constraint(c) for c in self.constraints]

    def validate(self) -> None:
        supernet = get_supernet(self.space)  # KeyError names the known spaces
        objectives = self.parsed_objectives()
        if len(objectives) < 2:
            raise ValueError("a multi-objective search needs at least two --objective")
        for o in objectives:  # devices measuring for a front of the slowest, largest networks help no one (params
            if o.sign < 0 and o.device_kind:  # maximised stand for capacity, a cheap proxy of accuracy: allowed)
                raise ValueError(f"objective {o}: {o.metric} on a device is a cost, searched for its least; give "
                                 f"{o.name}:min")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"an objective is repeated: {', '.join(names)}")
        for c in self.parsed_constraints():
            if c.objective not in names:
                raise ValueError(f"constraint {c} is on {c.objective!r}, which is not an objective ({', '.join(names)})")
        get_tactic(self.tactic)
        if self.budget <= 0:
            raise ValueError(f"--budget must be positive, got {self.budget}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be 0 to {MAX_SEED}, got {self.seed}")
        if self.constraints and self.tactic_settings.get("algorithm") == "moead":
            raise ValueError("--algorithm moead cannot keep to a --constraint (pymoo's MOEA/D has no constraint "
                             "handling); choose nsga2, agemoea, unsga3 or ctaea")
        # Each network is evaluated once: the rest could never be spent, and a search would look forever.
        counted = network_count(supernet)
        available = supernet.space.size if counted is None else counted
        if self.budget > available:
            what = f"{'valid ' if supernet.space.rule and counted is not None else ''}configurations of {self.space}"
            count = f"{available:,.0f}" if available < 1e15 else f"{available:g}"
            raise ValueError(f"--budget {self.budget} is more than the {count} " + (
                f"distinct networks that the {what} build" if network_of(supernet) and counted is not None else what))


class StoreRecorder:
    """Keeps a run's evaluations, hypervolume and predictions in the store (see the module docstring)."""

    def __init__(self, store, run_id: int, objectives: Sequence[Objective], constraints: Sequence[Constraint] = ()):
        self.store, self.run_id, self.objectives = store, run_id, list(objectives)
        self.constraints = list(constraints)  # what breaks one is off the front, so it adds no hypervolume
        self._values: list[np.ndarray] = []
        self._normaliser: Normaliser | None = None
        self._hv_done = len(store.run_events(run_id, "hypervolume"))
        # A run killed between storing a batch's predictions and its results predicts that batch again.
        self._predicted = {canonical_json(e.payload["config"]) for e in store.run_events(run_id, "prediction")}

    def load(self) -> list[tuple[Config, np.ndarray]]:
        """Every evaluation recorded, in the order recorded: members, and configs that failed as rows of NaN."""
        members = self.store.run_members(self.run_id, source="measured")
        loaded = list(zip((m.config for m in members), member_values(members, self.objectives)))
        nothing = np.full(len(self.objectives), np.nan)
        failed = self.store.run_events(self.run_id, "failed")
        for e in sorted(failed, key=lambda e: e.payload["index"]):  # each where it was evaluated: the clock
            loaded.insert(min(e.payload["index"], len(loaded)), (e.payload["config"], nothing))  # may step back
        self._values = [v for _, v in loaded]
        self._record_hypervolume()  # catches up if the previous process died between member and event
        return loaded

    def record(self, index: int, config: Config, values: np.ndarray) -> None:
        self.store.add_run_members(self.run_id, [(config, self._named(values), "measured")])
        self._values.append(np.asarray(values, dtype=float))
        self._record_hypervolume()

    def record_failure(self, index: int, config: Config, reason: str) -> None:
        """A config that could not be evaluated: kept (so that a resume does not try it again) off the front."""
        self.store.add_run_event(self.run_id, "failed", {"config": config, "error": reason, "index": index})
        self._values.append(np.full(len(self.objectives), np.nan))
        self._record_hypervolume()

    def record_prediction(self, config: Config, mean: np.ndarray, std: np.ndarray) -> None:
        key = canonical_json(config)
        if key in self._predicted:
            return
        self._predicted.add(key)
        self.store.add_run_event(self.run_id, "prediction", {"config": config, "mean": self._named(mean),
                                                             "std": self._named(std)})

    def record_predicted_front(self, configs: Sequence[Config], values: np.ndarray) -> None:
        """Stores the front once: a resumed run that replays to its end notes it again, and one killed before
        it was stored (after its last evaluation, say) stores it now. What the store holds decides, not
        whether this execution evaluated anything."""
        if self.store.run_members(self.run_id, source="predicted"):
            return
        self.store.add_run_members(self.run_id, [(c, self._named(v), "predicted") for c, v in zip(configs, values)])

    def finish(self) -> None:
        self._record_hypervolume(final=True)

    def _scale(self, values: np.ndarray, final: bool) -> Normaliser | None:
        """The range the run's hypervolume is measured in (HV_REFERENCE_AFTER), once it is known: that of its
        first HV_REFERENCE_AFTER evaluations with values, and of every one up to the first that meets the
        constraints; a run's last word takes what there is."""
        finite = np.flatnonzero(np.isfinite(values).all(axis=1))  # failed evaluations have no values to scale by
        met = np.flatnonzero(feasible(values, self.objectives, self.constraints))
        if len(finite) == 0 or (not final and (len(finite) < HV_REFERENCE_AFTER or len(met) == 0)):
            return None
        end = finite[min(HV_REFERENCE_AFTER, len(finite)) - 1] + 1
        if len(met):
            end = max(end, met[0] + 1)
        scaled = minimised(values[:end], self.objectives)
        scaled = scaled[np.isfinite(scaled).all(axis=1)]
        return Normaliser(scaled.min(axis=0), scaled.max(axis=0))

    def _named(self, values) -> dict:
        return {o.name: float(v) for o, v in zip(self.objectives, values)}

    def _record_hypervolume(self, final: bool = False) -> None:
        n = len(self._values)
        if n == 0:
            return
        values = np.stack(self._values)
        if self._normaliser is None and self._hv_done:  # resumed: the range its curve was recorded in
            scale = self.store.run_events(self.run_id, "hypervolume")[-1].payload
            self._normaliser = Normaliser(np.array(scale["ideal"]), np.array(scale["ideal"]) + scale["span"])
        if self._normaliser is None:
            self._normaliser = self._scale(values, final)
            if self._normaliser is None:
                return
        F = self._normaliser(minimised(values, self.objectives))
        ok = feasible(values, self.objectives, self.constraints)
        ref = np.full(F.shape[1], REF)
        for k in range(self._hv_done, n):
            met = F[:k + 1][ok[:k + 1]]
            hv = hypervolume(met, ref) if len(met) else 0.0
            self.store.add_run_event(self.run_id, "hypervolume", {"evaluations": k + 1, "hv": hv,
                                                                  "ideal": self._normaliser.ideal.tolist(),
                                                                  "span": self._normaliser.span.tolist()})
        self._hv_done = n


def start_run(store, spec: RunSpec, name: str | None = None) -> int:
    """Stores a new run; its name composed (NFC), as `find_run` looks names up."""
    spec.validate()
    return store.create_run(spec.tactic, spec.__dict__,
                            name=None if name is None else unicodedata.normalize("NFC", name)).id


def measurement_settings(farm, kinds) -> dict:
    """How the farm measures each device kind now, as RunSpec.measured_with keeps it."""
    settings = {kind: farm.settings_for(kind, farm.export_format(kind)) for kind in sorted(kinds)}
    return {kind: {"runtime": s.runtime, "threads": s.threads} for kind, s in settings.items()}


def find_run(store, ref: str | int):
    """A stored run (RunRecord) by its id, or by the --name it was started with."""
    text = str(ref)
    number = text.isascii() and text.isdigit()
    if number and int(text) >= 2 ** 63:  # beyond SQLite's integers: no such id
        run = None
    else:
        # Names are stored composed (NFC): 'é' typed as one character or as 'e' and an accent finds the same run.
        # The name as given is tried first, for a run stored before names were composed.
        run = store.run(int(text)) if number else (store.run_by_name(text)
                                                   or store.run_by_name(unicodedata.normalize("NFC", text)))
    if run is None:
        what = f"run {text}" if number else f"run named {text!r}"
        raise KeyError(f"no search {what} in this database (`fleetnas runs` lists them)")
    return run


def run_state(store, run) -> str:
    """The run's stored state, except that a run stored as running which no process drives (its driver was
    killed, or the machine went down) is "interrupted": `fleetnas search --resume` continues it."""
    if run.state != "running":
        return run.state
    path = _lease_path(store, run.id)
    if path is not None and holder(path):
        return "running"
    # `run` may have been read just before its driver stored its end and let go of its lock (execute_run stores
    # the end first): read the state again, now that no process holds the lock, before calling it interrupted.
    now = store.run(run.id)
    state = run.state if now is None else now.state
    return "interrupted" if state == "running" else state


def load_spec(store, run_id: int) -> RunSpec:
    run = store.run(run_id)
    if run is None:
        raise KeyError(f"no search run {run_id} in this database")
    try:
        spec = RunSpec(**run.settings)
        spec.constraints = [with_unit_case(c) for c in spec.constraints]
        return spec
    except TypeError as exc:  # FleetNAS stores what RunSpec holds: this row was written by something else
        raise StoreError(f"search run {run_id}'s stored settings do not describe a search run ({exc}): the "
                         "database was edited or damaged outside FleetNAS") from None


def execute_run(store, run_id: int, evaluator, on_evaluation: Callable[[int, int], None] | None = None,
                on_start: Callable[[], None] | None = None) -> SearchSession:
    """Runs (or resumes) a stored run to the end of its budget; returns the session. `on_start` is called once
    the run is this process's to drive (another process driving it raises RunBusy first)."""
    spec = load_spec(store, run_id)
    with run_lease(store, run_id):
        if on_start is not None:
            on_start()
        recorder = StoreRecorder(store, run_id, spec.parsed_objectives(), spec.parsed_constraints())
        supernet = get_supernet(spec.space)
        # Known before the run started, so that a resumed run is given the same and replays.
        learns = spec.tactic in LEARNING and hasattr(evaluator, "known")
        known = evaluator.known(before=store.run(run_id).created_at) if learns else None
        session = SearchSession(supernet.space, evaluator, spec.budget, recorder=recorder, known=known,
                                constraints=spec.parsed_constraints(), on_evaluation=on_evaluation,
                                network=network_of(supernet))
        if session.known_counts and not store.run_events(run_id, "known"):
            store.add_run_event(run_id, "known", session.known_counts)
        store.set_run_state(run_id, "running")
        try:
            _drive(session, spec, store, run_id)
        except KeyboardInterrupt:  # stopped, not failed: it stays "running", which `fleetnas runs` shows as
            raise                  # interrupted once no process holds its lease
        except BaseException:
            if session.remaining <= 0:  # no resume can add values: its curve ends here, over what there is
                with contextlib.suppress(Exception):  # (a run that can go on sets its range from
                    recorder.finish()                 # HV_REFERENCE_AFTER values, as an unstopped run does)
            store.set_run_state(run_id, "failed")
            raise
        recorder.finish()
        store.set_run_state(run_id, "finished")
    return session


def finish_recorded(store, run_id: int) -> None:
    """Ends a run whose budget is all recorded (its process was killed after its last evaluation, before it
    stored that it had finished) from the store alone: it needs no farm or evaluator, which may be gone by
    now. Its hypervolume is completed; a predicted front it had not stored yet stays missing."""
    spec = load_spec(store, run_id)
    with run_lease(store, run_id):
        recorder = StoreRecorder(store, run_id, spec.parsed_objectives(), spec.parsed_constraints())
        recorder.load()
        recorder.finish()
        try:
            _stop_if_all_failed(store, run_id, *evaluations_spent(store, run_id))
        except TooManyFailures:
            store.set_run_state(run_id, "failed")
            raise
        store.set_run_state(run_id, "finished")


def _drive(session: SearchSession, spec: RunSpec, store, run_id: int) -> None:
    """The run's tactic, to the end of its budget."""
    try:
        get_tactic(spec.tactic)(session, seed=spec.seed, **spec.tactic_settings)
    except BudgetExhausted:  # a diverged replay asked for more than its budget has left: it is spent
        pass
    _stop_if_all_failed(store, run_id, session.used, session.failed)


def _stop_if_all_failed(store, run_id: int, used: int, failed: int) -> None:
    """A run too short to have stopped on its failures on the way, all of whose evaluations failed."""
    if used and failed == used:
        last = store.run_events(run_id, "failed")[-1].payload["error"]
        raise TooManyFailures(f"all {used} evaluations failed; last: {last}")


def evaluations_spent(store, run_id: int) -> tuple[int, int]:
    """(evaluations, failed) of a stored run: configs that could not be evaluated spent budget too."""
    failed = len(store.run_events(run_id, "failed"))
    return len(store.run_members(run_id, source="measured")) + failed, failed


def known_summary(session: SearchSession) -> str | None:
    """One line on what the run learned from besides its own evaluations, for the terminal."""
    if not session.known_counts:
        return None
    return "also learned from what the store held before the run: " + ", ".join(
        f"{n} values of {name}" for name, n in session.known_counts.items())


class RunBusy(ValueError):
    """Another process is driving this run."""


def run_lease(store, run_id: int):
    """Holds an exclusive lock on `<database>.run-<id>.lock` while a run executes, so that two processes
    resuming one run cannot both spend its budget (`fleetnas.locks.lease`; the file goes when the run
    stops). Only for a database file on this machine."""
    return lease(_lease_path(store, run_id), f"search run {run_id}",
                 lambda busy: RunBusy(f"{busy}; resume it once that one has stopped"))


def _lease_path(store, run_id: int) -> str | None:
    return beside_store(store, f"run-{run_id}")


def _measured(store, run_id: int) -> tuple[RunSpec, list[Objective], list, np.ndarray]:
    """The run's spec, objectives, real evaluations (members) and their natural values (members × objectives)."""
    spec = load_spec(store, run_id)
    objectives = spec.parsed_objectives()
    members = store.run_members(run_id, source="measured")
    return spec, objectives, members, member_values(members, objectives)


def member_values(members, objectives: Sequence[Objective]) -> np.ndarray:
    """The members' values of the objectives, (members × objectives). A search stores a finite number for
    each, so a value missing or not one is a row written by something else: a StoreError naming it, where it
    would otherwise stop a report with a bare KeyError or put NaN on its front."""
    values = np.empty((len(members), len(objectives)))
    for i, m in enumerate(members):
        for j, o in enumerate(objectives):
            value = m.objectives.get(o.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                problem = "has no value" if value is None else f"has {value!r}, not a finite number,"
                raise StoreError(f"the store's run member {m.id} (run {m.run_id}) {problem} for {o.name!r}; the "
                                 "database was edited or damaged outside FleetNAS")
            values[i, j] = value
    return values


def measured_front(store, run_id: int) -> tuple[list[Config], np.ndarray, list[Objective]]:
    """The run's non-dominated real evaluations that meet its constraints: configs and natural values."""
    spec, objectives, members, values = _measured(store, run_id)
    if not members:
        return [], values, objectives
    ok = feasible(values, objectives, spec.parsed_constraints())
    configs = [m.config for m, good in zip(members, ok) if good]
    values = values[ok]
    mask = non_dominated(minimised(values, objectives)) if len(values) else np.zeros(0, bool)
    order = np.argsort(values[mask, 0] * objectives[0].sign)
    return [configs[i] for i in np.where(mask)[0][order]], values[mask][order], objectives


def constraint_warnings(store, run_id: int) -> list[str]:
    """A line for each of the run's constraints that none of its evaluations meets, with the range they span,
    and for an accuracy bound written as a fraction that every evaluation meets in percent. A bound in another
    unit than the evaluator's would otherwise empty the front (`accuracy >= 30` against fractions) or be no
    bound at all (`accuracy >= 95%`, which is 0.95, against percentages) without a word."""
    spec, objectives, members, values = _measured(store, run_id)
    if not members:
        return []
    column = {o.name: j for j, o in enumerate(objectives)}
    lines = []
    for c in spec.parsed_constraints():
        v = values[:, column[c.objective]]
        span = f"they range from {c.in_its_unit(v.min())} to {c.in_its_unit(v.max())}"
        if (c.violation(v) > 0).all():
            line = f"none of {len(v)} evaluations meets {c} ({span})"
            if c.objective == "accuracy" and abs(c.value) > 1 >= np.abs(v).max():
                line += f"; the evaluator returns fractions: `{c.objective} {c.op} {c.value:g}%` is {c.value / 100:g}"
            lines.append(line)
        elif c.objective == "accuracy" and abs(c.value) <= 1 < np.abs(v).min() and len(v) > 1:
            lines.append(f"every one of {len(v)} evaluations meets {c} ({span}): the evaluator returns percentages, "
                         f"and a bound of {c.value:g} is none; write `{c.objective} {c.op} {c.value * 100:g}`")
    return lines


def feasible(values: np.ndarray, objectives: Sequence[Objective], constraints: Sequence[Constraint]) -> np.ndarray:
    """Rows that meet every constraint; a row without values (a failed evaluation) meets none."""
    column = {o.name: j for j, o in enumerate(objectives)}
    ok = np.isfinite(values).all(axis=1)
    for c in constraints:
        ok &= c.violation(values[:, column[c.objective]]) <= 0
    return ok
