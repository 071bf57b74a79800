"""A search session: the budget, the memo of real evaluations, and their durable log.

Every real evaluation goes through `SearchSession.evaluate`. It evaluates each configuration at most once
(the measurement is kept, so asking again costs nothing), stops at the budget, and hands every new result
to a recorder (the store) before returning it. A session resumed from a recorder replays: the tactic,
re-run with the same seed, asks for the same configurations in the same order and gets the recorded
values without re-measuring, so a resumed search ends exactly where an uninterrupted one would. Should the
replay diverge (what the store knew changed in between), the recorded evaluations still count against the
budget (`_absorb_record`), and a request beyond it spends what is left and ends the run (BudgetExhausted).

A session may be told which configurations build one network (`network`: a super-network's canonical form,
where the parts it resets are never built). It then evaluates each network once: a second configuration of
one network gets the first one's values, costs nothing and is not proposed again (`fresh`).

A session may also start with what was already known of single objectives (`known`): a device kind's
calibration measurements, earlier runs' accuracy evaluations. Those values cost nothing from the budget and
never enter the measured front; tactics that fit predictors (LINAS) train on them as well.

A configuration that cannot be evaluated (a device refuses its model, the accuracy evaluator raises on it)
comes back from the evaluator as a row of NaN, with the reason in the evaluator's `failures`. It costs its
place in the budget like any evaluation, is recorded as failed (`Recorder.record_failure`) so that a resumed
run does not try it again, and is never proposed again; `history` leaves it out, so tactics learn only from
values. Failures that keep coming (FAILURES_BEFORE_ANY_VALUE, FAILURES_IN_A_ROW) end the run (TooManyFailures):
their cause is not the configurations. Ten in a row end it once their batch is recorded; the first three of a
run end it within its batch, whose other configurations are never evaluated and stay in the budget.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Protocol, Sequence

import numpy as np

from ..supernets.space import COUNTED_UP_TO, Config, SearchSpace
from .objectives import Constraint, Objective, minimised

log = logging.getLogger("fleetnas.search")


class Evaluator(Protocol):
    """Real evaluations: measured latency/memory, trained accuracy, or look-ups in a recorded table."""
    objectives: list[Objective]

    def evaluate(self, configs: Sequence[Config]) -> np.ndarray:
        """(len(configs) × objectives) values in the objectives' natural units; a row of NaN for a config that
        could not be evaluated, its reason in `failures` (if the evaluator has that attribute)."""
        ...


class Recorder(Protocol):
    def load(self) -> list[tuple[Config, np.ndarray]]: ...
    def record(self, index: int, config: Config, values: np.ndarray) -> None: ...
    def record_failure(self, index: int, config: Config, reason: str) -> None: ...
    def record_prediction(self, config: Config, mean: np.ndarray, std: np.ndarray) -> None: ...
    def record_predicted_front(self, configs: Sequence[Config], values: np.ndarray) -> None:
        """Keeps the run's predicted front, unless it holds one already (a resumed run notes it again)."""


class BudgetExhausted(Exception):
    pass


#: At most this many known values per objective (the latest) are given to a run: LINAS refits its predictors
#: on them at every iteration, and a refit on 500 rows already takes seconds (benchmarks/results/predictors.txt).
KNOWN_LIMIT = 1000

#: A run stops, rather than record failure after failure, once this many evaluations have failed with none
#: done yet, or this many in a row: the cause is then not the configurations (an evaluator that raises on every
#: one, a runtime missing on the device) and the budget would go on nothing. Isolated failures (a model too
#: large for the device, an out-of-memory error on the largest networks) are recorded and the search goes on.
FAILURES_BEFORE_ANY_VALUE = 3
FAILURES_IN_A_ROW = 10
#: A tactic stops once it has drawn this many configurations in a row without one whose network it had not
#: evaluated: what it can reach of the space is spent (a space whose configs build few distinct networks, an
#: evolution converged on what it evaluated), and drawing on would spin for ever. Counted in configurations, not
#: draws, so that MOEA/D's asks of one stop no sooner than NSGA-II's generations of 20. A space small enough to
#: count (whose budget may reach its every network) draws IN_VAIN_PER_NETWORK times its networks first, if more:
#: uniform draws then miss its last unseen network with odds of e^-30 where every network is built by as many
#: configs (more where it is built by fewer than most, such as a stage at its greatest depth).
EMPTY_CONFIGS_IN_A_ROW = 10_000
IN_VAIN_PER_NETWORK = 30


class TooManyFailures(RuntimeError):
    """Evaluations fail whatever the configuration: the run stops with what it recorded."""


class SearchSession:
    def __init__(self, space: SearchSpace, evaluator: Evaluator, budget: int, recorder: Recorder | None = None,
                 pool: np.ndarray | None = None, constraints: Sequence[Constraint] = (),
                 on_evaluation: Callable[[int, int], None] | None = None,
                 known: dict[str, tuple[Sequence[Config], Sequence[float]]] | None = None,
                 network: Callable[[Config], Config] | None = None):
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.space, self.evaluator, self.budget, self.recorder = space, evaluator, budget, recorder
        self.objectives = list(evaluator.objectives)
        self.constraints = list(constraints)
        #: Called with (evaluations used, budget) after each batch: progress bars.
        self.on_evaluation = on_evaluation
        #: Encodings of the only configs the evaluator can evaluate (a recorded table), or None for any.
        self.pool = pool
        self._network = network
        self._memo: dict[str, np.ndarray] = {}
        self._order: list[str] = []          # keys in the order this execution consumed them
        self._consumed: set[str] = set()
        self._configs: dict[str, Config] = {}
        self.real_evaluations = 0            # evaluations paid for in this execution (not replayed)
        #: Recorded evaluations of a network recorded before (by a run from before networks were told apart):
        #: paid for, so they count against the budget, though a replay never asks for them again.
        self._repeats = 0
        for config, values in (recorder.load() if recorder else []):
            key = self.key(config)
            if key in self._memo:
                self._repeats += 1
            else:
                self._memo[key], self._configs[key] = np.asarray(values, dtype=float), config
        self._recorded = list(self._memo)  # keys in the order they were recorded
        self._known = self._check_known(known or {})
        self._drawn_in_vain = 0

    @property
    def used(self) -> int:
        return len(self._order) + self._repeats

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def evaluate(self, configs: Sequence[Config]) -> np.ndarray:
        """Values of `configs`. Asked for more new ones than the budget has left, it evaluates (and records) as
        many as are left, in the order asked, and then raises BudgetExhausted."""
        keys = [self.key(c) for c in configs]
        if any(k not in self._memo for k in keys):
            self._absorb_record(keys)
        fresh = list(dict.fromkeys(k for k in keys if k not in self._consumed))
        beyond = None
        if len(fresh) > self.remaining:
            # The tactic sized its request before a diverged replay's record joined the budget: what is left
            # is spent on the first of them, so the run ends with its budget spent, not short of it.
            beyond = f"{len(fresh)} new configurations asked for, {self.remaining} left in the budget"
            fresh = fresh[:max(self.remaining, 0)]
        by_key: dict[str, Config] = {}
        for k, c in zip(keys, configs):
            by_key.setdefault(k, c)  # a network asked for twice is evaluated as the config asked for first
        unknown = [k for k in fresh if k not in self._memo]
        failures: dict[str, str] = {}
        done = 0
        while done < len(unknown):
            part = unknown[done:done + self._part_size(fresh, len(unknown) - done)]
            self._evaluate_part(part, by_key, failures)
            done += len(part)
            if self._failing_from_the_start(fresh):
                break
        stopped = done < len(unknown)
        if stopped:  # the rest of the batch is not asked for: the run stops below
            fresh = fresh[:fresh.index(unknown[done])]
        for k in fresh:
            self._order.append(k)
            self._consumed.add(k)
            if k in unknown:
                self.real_evaluations += 1
                if self.recorder is None:
                    continue
                if k in failures:
                    self.recorder.record_failure(self.used - 1, self._configs[k], failures[k])
                else:
                    self.recorder.record(self.used - 1, self._configs[k], self._memo[k])
        if fresh and self.on_evaluation is not None:
            self.on_evaluation(self.used, self.budget)
        if failures:
            self._stop_if_failing(failures)
        if stopped:  # failures a diverged replay had recorded later in the batch counted too
            raise TooManyFailures(f"{FAILURES_BEFORE_ANY_VALUE} evaluations failed, and none has succeeded: the "
                                  "cause is not the configurations")
        if beyond is not None:
            raise BudgetExhausted(beyond)
        return np.stack([self._memo[k] for k in keys]) if keys else np.zeros((0, len(self.objectives)))

    def _evaluate_part(self, keys: list[str], by_key: dict[str, Config], failures: dict[str, str]) -> None:
        values = np.atleast_2d(np.asarray(self.evaluator.evaluate([by_key[k] for k in keys]), dtype=float))
        reasons = getattr(self.evaluator, "failures", {})  # index into the configs asked → why it failed
        for i, (k, v) in enumerate(zip(keys, values)):
            self._memo[k], self._configs[k] = v, self.space.validate(by_key[k])
            if not np.isfinite(v).all():
                failures[k] = reasons.get(i, "the evaluator returned no value")

    def _part_size(self, fresh: list[str], left: int) -> int:
        """How many of a batch's `left` unevaluated configs to evaluate next: all of them once any evaluation of
        the run has given values; before that, only as many as may still fail before the run stops. An evaluator
        that fails on everything (a data set it cannot find, after minutes of loading) then costs
        FAILURES_BEFORE_ANY_VALUE calls, not a whole seed sample of them, and the budget keeps the rest."""
        so_far = self._values_so_far(fresh)
        if any(np.isfinite(v).all() for v in so_far):
            return left
        return max(FAILURES_BEFORE_ANY_VALUE - len(so_far), 1)

    def _failing_from_the_start(self, fresh: list[str]) -> bool:
        so_far = self._values_so_far(fresh)
        return len(so_far) >= FAILURES_BEFORE_ANY_VALUE and not any(np.isfinite(v).all() for v in so_far)

    def _values_so_far(self, fresh: list[str]) -> list[np.ndarray]:
        """The run's evaluations so far, the batch's (`fresh`) evaluated ones included."""
        return [self._memo[k] for k in self._order + fresh if k in self._memo]

    def _stop_if_failing(self, new: dict[str, str]) -> None:
        """Counted over the run's whole record, replayed evaluations included, so a resume goes on as it stood."""
        failed = [not np.isfinite(self._memo[k]).all() for k in self._order]
        in_a_row = next((i for i, f in enumerate(reversed(failed)) if not f), len(failed))
        succeeded = in_a_row < len(failed)
        if in_a_row >= (FAILURES_IN_A_ROW if succeeded else FAILURES_BEFORE_ANY_VALUE):
            none = "" if succeeded else ", and none has succeeded"
            raise TooManyFailures(f"{in_a_row} evaluations in a row failed{none}: the cause is not the "
                                  f"configurations. Last: {list(new.values())[-1]}")

    def _absorb_record(self, asked: list[str]) -> None:
        """A resumed run asked for a configuration its record lacks while recorded ones are still unasked, and
        not among those asked now (a batch stopped part-way has the rest of it unrecorded): its replay has
        diverged from the first execution (what the store knew changed in between, say). The recorded
        evaluations were paid for: they join the history and count against the budget from here on, so the run
        never spends more than its budget."""
        asked_now = set(asked)
        left = [k for k in self._recorded if k not in self._consumed and k not in asked_now]
        if not left:
            return
        log.warning("the resumed run diverged from its record after %d of %d recorded evaluations; the other %d "
                    "count against its budget and are learned from", len(self._order), len(self._recorded), len(left))
        for k in left:
            self._order.append(k)
            self._consumed.add(k)

    def note_predictions(self, configs: Sequence[Config], mean: np.ndarray, std: np.ndarray) -> None:
        """What a predictor expected of configs about to be evaluated (kept for parity plots)."""
        if self.recorder is None:
            return
        for config, m, s in zip(configs, mean, std):
            if self.key(config) not in self._memo:  # a replay must not record its predictions twice
                self.recorder.record_prediction(config, m, s)

    def note_predicted_front(self, configs: Sequence[Config], values: np.ndarray) -> None:
        """The front the predictors believed in at the end. Handed to the recorder even by a pure replay: a run
        killed after its last evaluation but before its front was kept has none yet, and only the recorder
        knows whether it holds one (it keeps the first)."""
        if self.recorder is not None:
            self.recorder.record_predicted_front(configs, values)

    # ----- what tactics read ---------------------------------------------------------------------
    def history(self) -> tuple[list[Config], np.ndarray]:
        """Configs consumed so far that were evaluated, in order, and their natural-unit values (those that
        could not be evaluated are left out: they have no values to learn from)."""
        keys = [k for k in self._order if np.isfinite(self._memo[k]).all()]
        configs = [self._configs[k] for k in keys]
        values = np.stack([self._memo[k] for k in keys]) if keys else np.zeros((0, len(self.objectives)))
        return configs, values

    @property
    def failed(self) -> int:
        """Evaluations consumed so far that could not be done."""
        return sum(not np.isfinite(self._memo[k]).all() for k in self._order)

    def history_encoded(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer encodings and all-minimise objective values of everything consumed so far."""
        configs, values = self.history()
        return self.space.encode_many(configs), minimised(values, self.objectives)

    @property
    def known_counts(self) -> dict[str, int]:
        """How many values of each objective were known before the run."""
        return {name: len(rows) for name, rows in self._known.items()}

    def known_encoded(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """What was known of objective j before the run, for configs not evaluated in it: integer encodings
        and all-minimise values (a config the run evaluated is known by its own evaluation instead)."""
        rows = [row for key, row in self._known.get(self.objectives[j].name, {}).items() if key not in self._consumed]
        X = np.array([x for x, _ in rows], dtype=np.int64).reshape(-1, self.space.n_var)
        return X, np.array([v for _, v in rows], dtype=float) * self.objectives[j].sign

    def _check_known(self, known: dict) -> dict[str, dict[str, tuple[np.ndarray, float]]]:
        """{objective: {key: (encoding, value)}}; configs that no longer fit the space are left out."""
        names = {o.name for o in self.objectives}
        checked = {}
        for name, (configs, values) in known.items():
            if name not in names:
                raise ValueError(f"known values of {name!r}, which is not an objective ({', '.join(sorted(names))})")
            if len(configs) != len(values):
                raise ValueError(f"known values of {name!r}: {len(configs)} configs but {len(values)} values")
            rows = {self.key(c): (self.space.encode(c), float(v)) for c, v in zip(configs, values)
                    if np.isfinite(v) and self.space.is_valid(c)}
            if rows:
                checked[name] = rows
        return checked

    def key(self, config: Config) -> str:
        """What identifies `config`'s evaluation: its network's key where the session was told networks apart."""
        return self.space.key(self._network(config) if self._network else config)

    def keys(self) -> list[str]:
        """The keys of the configs consumed so far, in order (each network's first config)."""
        return [self.space.key(self._configs[k]) for k in self._order]

    def keep_drawing(self, found: int, drawn: int) -> bool:
        """Whether a tactic whose latest draw of `drawn` configurations found `found` unseen networks should draw
        again: False once EMPTY_CONFIGS_IN_A_ROW (in a countable space, IN_VAIN_PER_NETWORK per network, if
        more) were drawn in a row without an unseen one, which it says (the run then ends short of its budget)."""
        self._drawn_in_vain = 0 if found else self._drawn_in_vain + drawn
        if found:
            return True
        count = self._network_count
        if self._drawn_in_vain < max(EMPTY_CONFIGS_IN_A_ROW, IN_VAIN_PER_NETWORK * (count or 0)):
            return True
        self._absorb_record([])  # a resumed run's record was paid for, asked again or not
        log.warning("%s configurations drawn in a row held no network that was not evaluated yet: the search ends "
                    "with %d of its %d evaluations spent", f"{self._drawn_in_vain:,}", self.used, self.budget)
        return False

    @functools.cached_property
    def _network_count(self) -> int | None:
        """How many networks the space's valid configs build, where it has at most COUNTED_UP_TO configs."""
        if self.space.size > COUNTED_UP_TO:
            return None
        return len({self.key(config) for config in self.space.valid_configs()})

    def fresh(self, X: np.ndarray) -> np.ndarray:
        """The rows of X (integer encodings) not consumed yet, de-duplicated, in their first order."""
        out, seen = [], set(self._consumed)
        for row in np.atleast_2d(X):
            key = self.key(self.space.decode(row))
            if key not in seen:
                seen.add(key)
                out.append(row)
        return np.array(out, dtype=np.int64).reshape(-1, self.space.n_var)
