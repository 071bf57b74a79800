"""Real evaluations of sub-networks: accuracy from an evaluator, latency and memory measured on the farm,
MACs and parameters counted from the built module. Every value lands in the store before it is used.

A configuration that cannot be evaluated (a device refused or could not run its model, the accuracy evaluator
raised on it or returned no number) fails alone: its row is NaN and its reason in `failures`, and the run
records it and goes on (`SearchSession` stops a run whose failures keep coming). What no configuration could
get past stops the run at once: a device kind with no agent left, an evaluator that exits."""
from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from typing import Callable, Sequence

import numpy as np

from ..supernets import Config, get_supernet
from ..supernets.base import BuildError, network_of
from .objectives import Objective
from .session import KNOWN_LIMIT

ANALYTIC = ("macs", "params", "activation_bytes", "peak_activation_bytes")
FARM_VALUES = {"latency": "latency_ms", "memory": "peak_bytes"}

class EvaluationError(RuntimeError):
    pass


class Unmeasurable(EvaluationError):
    """An objective the device cannot measure at all (memory where its platform has no peak figure)."""


class ConfigFailed(Exception):
    """One configuration cannot be evaluated; the others may."""


def accuracy_metric(spec: str | None) -> str:
    """The store's metric name for an accuracy evaluator's values: the space's own evaluator's are "accuracy",
    a user's are "accuracy:MODULE:CALLABLE". Each evaluator keeps its own, so that a run never reads, nor learns
    from, another evaluator's numbers (another data set, another training recipe)."""
    return f"accuracy:{spec}" if spec else "accuracy"


def resolve_accuracy(space_id: str, spec: str | None, folder: str | None = None) -> Callable[[Config], float] | None:
    """The accuracy evaluator: `module:callable` (a factory or a function of a config), or the demo's own.
    MODULE is looked up first in `folder` (the one the run was started in; default the current one), as
    `python -m` would: a user's `test.py` there must not lose to the standard library's `test`."""
    if spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise EvaluationError(f"the accuracy evaluator {spec!r} must look like MODULE:CALLABLE")
        folder = folder or os.getcwd()
        if sys.path[:1] != [folder]:
            sys.path.insert(0, folder)
        try:  # the user's module may fail on import in any way (a SyntaxError, its own RuntimeError, sys.exit)
            target = getattr(importlib.import_module(module_name), attr)
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            raise EvaluationError(f"cannot load the accuracy evaluator {spec!r} from {folder}: {type(exc).__name__}: "
                                  f"{exc}") from None
        if isinstance(target, type):
            try:
                target = target()
            except Exception as exc:  # noqa: BLE001
                raise EvaluationError(f"cannot create the accuracy evaluator {spec!r} (a class, called with no "
                                      f"arguments): {type(exc).__name__}: {exc}") from None
        if not callable(target):
            raise EvaluationError(f"the accuracy evaluator {spec!r} is a {type(target).__name__}, not a function "
                                  "of a config")
        return target
    if space_id == "demo":
        from ..supernets.demo import DemoEvaluator
        return DemoEvaluator()
    return None


class LiveEvaluator:
    """Evaluates configs of one space for the given objectives; see the module docstring."""

    def __init__(self, space_id: str, objectives: Sequence[Objective], *, farm=None, store=None,
                 accuracy: Callable[[Config], float] | None = None, accuracy_metric: str = "accuracy",
                 stopping=None, on_progress=None):
        self.space_id, self.objectives = space_id, list(objectives)
        self.accuracy_metric = accuracy_metric  # the store's name for this evaluator's values
        self.supernet = get_supernet(space_id)
        self._network = network_of(self.supernet)  # what an accuracy is stored under: its network's config
        self.farm, self.store, self.accuracy, self.stopping = farm, store, accuracy, stopping
        #: Why each config of the latest `evaluate` that got no values failed, by its index there.
        self.failures: dict[int, str] = {}
        needs_module = [o for o in self.objectives if o.device_kind or o.metric in ANALYTIC]
        if self.supernet.table_only and needs_module:
            raise EvaluationError(f"objective {needs_module[0]}: {space_id} is a table-only space, whose sub-networks "
                                  "cannot be built; replay its table with `fleetnas bench search`")
        for o in self.objectives:
            if o.device_kind and farm is None:
                raise EvaluationError(f"objective {o} needs a device farm (an inventory with kind {o.device_kind!r})")
            if o.device_kind:
                farm.inventory.of_kind(o.device_kind)  # names the kinds there are
            if o.metric == "accuracy" and accuracy is None:
                raise EvaluationError(f"objective {o}: space {space_id!r} has no built-in accuracy evaluator; "
                                      "give --accuracy MODULE:CALLABLE")
            if not o.device_kind and o.metric not in ANALYTIC + ("accuracy",):
                raise EvaluationError(f"objective {o}: unknown metric {o.metric!r}; use accuracy, "
                                      f"latency@KIND, memory@KIND or one of {', '.join(ANALYTIC)}")

    def evaluate(self, configs: Sequence[Config]) -> np.ndarray:
        """Values (configs × objectives); a config that cannot be evaluated gets a row of NaN and its reason in
        `failures` (by index). Devices measure first, so that no accuracy is paid for a model a device refused."""
        self.failures = {}
        measured = self._measure(configs, [o.device_kind for o in self.objectives if o.device_kind])
        rows = []
        for i, config in enumerate(configs):
            try:
                if i in self.failures:
                    raise ConfigFailed(self.failures[i])
                rows.append([self._value(o, config, measured, i) for o in self.objectives])
            except ConfigFailed as exc:
                self.failures[i] = str(exc)
                rows.append([np.nan] * len(self.objectives))
        return np.array(rows, dtype=float).reshape(len(configs), len(self.objectives))

    def _value(self, o: Objective, config: Config, measured: dict, i: int) -> float:
        if o.device_kind:
            return self._farm_value(o, measured[o.device_kind][i])
        if o.metric == "accuracy":
            return self._accuracy(config)
        from ..supernets.analytic import analytic_features
        try:
            return float(analytic_features(self.supernet, config)[o.metric])
        except BuildError as exc:  # a plug-in's builder that fails on this config: it alone fails
            raise ConfigFailed(str(exc)) from exc

    def known(self, before: float) -> dict[str, tuple[list[Config], list[float]]]:
        """What the store held of each objective at time `before` (a run's start): current, unthrottled
        measurements of its device kind taken with the settings this evaluator measures with (a calibration's,
        earlier runs'), and accuracy evaluations; the latest KNOWN_LIMIT of each. A run resumed later sees the
        same, unless a drift has marked measurements stale in between."""
        known = {}
        for o in self.objectives:
            if o.device_kind:
                configs, values = self._known_measurements(o, before)
            elif o.metric == "accuracy" and self.store is not None:
                records = [e for e in self.store.evaluations(self.space_id, self.accuracy_metric)
                           if e.created_at <= before]
                configs, values = [e.config for e in records], [float(e.value) for e in records]
            else:
                continue
            if configs:
                known[o.name] = (configs[-KNOWN_LIMIT:], values[-KNOWN_LIMIT:])
        return known

    def _known_measurements(self, o: Objective, before: float) -> tuple[list, list]:
        from ..calibrate.calibration import training_set

        if self.store is None:
            return [], []
        settings = self.farm.settings_for(o.device_kind, self.farm.export_format(o.device_kind), self.stopping)
        configs, values, _ = training_set(self.store, self.space_id, o.device_kind, settings.runtime, settings.hash,
                                          FARM_VALUES[o.metric], before=before)
        return configs, values.tolist()

    @staticmethod
    def _farm_value(o: Objective, result) -> float:
        value = result.value(FARM_VALUES[o.metric])
        if not np.isfinite(value):  # memory the device cannot measure: a 0 would be the best value, and a lie
            raise Unmeasurable(f"objective {o}: the device could not measure it "
                               f"({result.memory.get('note') or 'no figure reported'}); search on {o.device_kind} "
                               f"without {o.name} (a new run), or give it agents that can measure it")
        return value

    def _measure(self, configs, kinds: list[str]) -> dict[str, list]:
        """The farm's results per device kind (None for a config whose model could not be made), every kind
        measured at once; a model that could not be made, or that a device tried and failed on (refused it,
        could not run it), fails its config alone, while a job no device could take (every agent of the kind
        gone) stops the run."""
        if not kinds:
            return {}
        made = self._exportable(configs, kinds)
        measured: dict[str, list] = {kind: [None] * len(configs) for kind in kinds}
        if not made:
            return measured
        by_kind = self.farm.measure_kinds([configs[i] for i in made], kinds, space=self.space_id,
                                          stopping=self.stopping)
        for kind, results in by_kind.items():
            stranded = [r for r in results if not r.ok and r.measurement is None]
            if stranded:
                raise EvaluationError(f"{len(stranded)} of {len(results)} measurements on {kind!r} could not be "
                                      f"made; first: {stranded[0].error}")
            for i, r in zip(made, results):
                measured[kind][i] = r
                if not r.ok:
                    self.failures.setdefault(i, f"measuring on {kind!r} failed: {r.error}")
        return measured

    def _exportable(self, configs, kinds: list[str]) -> list[int]:
        """Indices of the configs whose models can be made for every kind; each other one fails alone, with
        why (a plug-in's builder that fails on it, say). The farm then finds them in the export cache."""
        from ..farm import JobError

        made = []
        for i, config in enumerate(configs):
            try:
                for kind in kinds:
                    self.farm.exported([config], self.space_id, self.farm.export_format(kind))
                made.append(i)
            except JobError as exc:
                self.failures.setdefault(i, str(exc))
        return made

    def _accuracy(self, config: Config) -> float:
        """From the store when this config's network was evaluated before, else evaluated now and stored under
        the config that stands for its network (`network_of`), where any config of that network finds it."""
        stored_as = self._network(config) if self._network else config
        if self.store is not None:
            for e in self.store.evaluations(self.space_id, self.accuracy_metric, config=stored_as):
                return float(e.value)
        value = self._call_accuracy(config)
        if self.store is not None:  # another run may have stored this network's value meanwhile: one value wins
            value = float(self.store.add_evaluation(self.space_id, stored_as, self.accuracy_metric, value).value)
        return value

    def _call_accuracy(self, config: Config) -> float:
        """The user's evaluator, whose failures name it and the config: a search may run for hours before one."""
        name = getattr(self.accuracy, "__qualname__", type(self.accuracy).__name__)
        try:
            # A copy: an evaluator that edits its config must not change what the run records. Its prints go
            # to stderr: stdout may be carrying `--json`.
            with contextlib.redirect_stdout(sys.stderr):
                returned = self.accuracy(copy.deepcopy(config))
        except SystemExit as exc:  # an evaluator that calls sys.exit() must not end the search unsaid
            raise EvaluationError(f"the accuracy evaluator {name} failed on {config}: {exc!r}") from exc
        except Exception as exc:  # noqa: BLE001 — on this config (out of memory on the largest, say): it alone fails
            raise ConfigFailed(f"the accuracy evaluator {name} failed on {config}: {exc!r}") from exc
        if isinstance(returned, (np.ndarray, np.generic)) and np.ndim(returned) == 0:
            returned = returned.item()  # numpy's scalars and 0-d arrays as the Python values they hold
        try:
            # Text and truth values convert to float, but one returned is a bug in the evaluator, not an accuracy.
            value = float("nan") if isinstance(returned, (str, bytes, bool)) else float(returned)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond any float (10**400)
            value = float("nan")
        if not np.isfinite(value):
            raise ConfigFailed(f"the accuracy evaluator {name} returned {returned!r} for {config}; "
                               "it must return a finite number")
        return value

