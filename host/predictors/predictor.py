"""Fitting, using and storing a predictor.

`fit_predictor` chooses a model family and its hyper-parameters by k-fold cross-validation, optionally in
log space, refits the choice on all rows and keeps the k fold models as an ensemble whose spread is the
prediction's uncertainty.

File format (JSON, UTF-8; never pickle). Top-level object:

    format          "fleetnas-predictor"
    format_version  1
    model           family of the chosen model: ridge | svr | lgbm | mlp, or blend (the mean of one of each)
    params          its hyper-parameters; a blend's: {"parts": [{"model", "params", "view"} per family]}
    log_target      true when the model predicts log(y) (predictions are exp'd back)
    floor           (optional) for a cost (every training y > 0) fitted on the raw scale, where its predictions
                    bend towards zero without reaching it (`_natural`), so that no latency or memory is
                    predicted zero or below; absent or null: none
    feature_spec    what the caller said the columns are (e.g. space id + column names), plus n_features
    columns         indices of the feature columns the model reads (a view chosen by cross-validation),
                    or null for all of them
    training        {"rows": n, "sha256": hex of the float64 bytes of X (C order) followed by those of y}
    cv_metrics      out-of-fold regression metrics of the chosen model, and "selection": every candidate tried
    final           the model fitted on all rows                 (a model object, below)
    members         the ensemble (the k fold models), for predict_dist's std   (list of model objects)

A model object has "family" and:
    ridge  coef[n_features], intercept                       y = X·coef + intercept
    svr    x{mean,scale}, y{mean,scale}, gamma, support_vectors[m][n_features], dual_coef[m], intercept
           z = (X-mean)/scale;  y = undo_y(Σ dual_coef·exp(-gamma·|z-sv|²) + intercept)
    mlp    x{mean,scale}, y{mean,scale}, activation "relu", weights[layer][in][out], biases[layer][out]
    lgbm   model_text: LightGBM's native model text (lightgbm.Booster(model_str=...))
    blend  parts[{"columns": indices or null, "model": a model object}]   y = mean of the parts' y, each
           part reading its columns of X (a blend's members are blends of one part: one family's fold model)
where undo_y(v) = v·y.scale + y.mean. Floats are written with full precision, so a loaded predictor gives
the identical predictions.
"""
from __future__ import annotations

import hashlib
import math
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .metrics import figure, json_safe, regression_metrics
from .models import FAMILIES, GRIDS, BlendModel, Model, fit_model

FORMAT = "fleetnas-predictor"
FORMAT_VERSION = 1
#: The largest magnitude a feature or target may have (`_check_data`).
LARGEST_VALUE = 1e150


class Predictor:
    def __init__(self, final: Model, members: Sequence[Model], *, params: dict, log_target: bool,
                 feature_spec: dict, training: dict, cv_metrics: dict, columns: Sequence[int] | None = None,
                 out_of_fold: np.ndarray | None = None, floor: float | None = None):
        self.final, self.members = final, list(members)
        if floor is not None and not (isinstance(floor, (int, float)) and not isinstance(floor, bool) and math.isfinite(floor) and floor > 0):
            raise ValueError(f"floor must be a positive number or null, got {floor!r}")
        self.floor = None if floor is None else float(floor)
        self.columns = None if columns is None else [int(c) for c in columns]
        self.params, self.log_target = params, log_target
        self.feature_spec, self.training, self.cv_metrics = feature_spec, training, cv_metrics
        # The chosen model's cross-validated prediction of each training row (what cv_metrics scored), for
        # parity plots; known only right after fitting (not saved).
        self.out_of_fold = out_of_fold

    @property
    def model_name(self) -> str:
        return self.final.family

    @property
    def families(self) -> tuple[str, ...]:
        """The model families it predicts with: one, or a blend's."""
        return getattr(self.final, "families", (self.final.family,))

    @property
    def n_features(self) -> int:
        return int(self.feature_spec["n_features"])

    def __repr__(self) -> str:
        cv = self.cv_metrics
        return (f"Predictor({self.model_name}{' on log(y)' if self.log_target else ''}, {self.training['rows']} rows, "
                f"CV MAPE {figure(cv.get('mape'))} %, within ±10 % {figure(cv.get('within_10'), '.1%')})")

    def predict(self, X, *, bounded: bool = True) -> np.ndarray:
        """Predictions in the units of y. bounded=False gives a raw-scale model's own extrapolation, below zero
        included, for a search to rank by (`bound` makes them what predict gives)."""
        return self._back(self.final.predict(self._check(X)), bounded)

    def predict_dist(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, std of the ensemble members' predictions), both in the units of y."""
        X = self._check(X)
        mean = self._back(self.final.predict(X))
        if len(self.members) < 2:
            return mean, np.zeros_like(mean)
        spread = np.stack([self._back(m.predict(X)) for m in self.members])
        return mean, spread.std(axis=0, ddof=1)

    def predict_members(self, X, *, bounded: bool = True) -> np.ndarray:
        """Each ensemble member's predictions, (members × rows): samples of what the truth might be."""
        X = self._check(X)
        models = self.members or [self.final]
        return np.stack([self._back(m.predict(X), bounded) for m in models])

    def bound(self, predictions: np.ndarray) -> np.ndarray:
        """Predictions made with bounded=False, as predict gives them."""
        predictions = np.asarray(predictions, dtype=np.float64)
        return predictions if self.log_target else _natural(predictions, False, self.floor)

    def _back(self, raw: np.ndarray, bounded: bool = True) -> np.ndarray:
        return _natural(raw, self.log_target, self.floor if bounded else None)

    def _check(self, X) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.n_features:
            raise ValueError(f"this predictor takes {self.n_features} features per row, got {X.shape[1]}")
        return X if self.columns is None else X[:, self.columns]

    # ----- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model_name,
                "params": self.params, "log_target": self.log_target, "floor": self.floor,
                "feature_spec": self.feature_spec, "columns": self.columns,
                "training": self.training, "cv_metrics": json_safe(self.cv_metrics),
                "final": self.final.to_dict(), "members": [m.to_dict() for m in self.members]}

    def save(self, path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), allow_nan=False))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "Predictor":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a FleetNAS predictor file (format {d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"predictor file format version {d.get('format_version')!r} is not supported "
                             f"(this FleetNAS reads version {FORMAT_VERSION})")
        return cls(Model.from_dict(d["final"]), [Model.from_dict(m) for m in d["members"]], params=d["params"],
                   log_target=bool(d["log_target"]), feature_spec=d["feature_spec"], training=d["training"],
                   cv_metrics=d["cv_metrics"], columns=d.get("columns"), floor=d.get("floor"))


def load_predictor(path) -> Predictor:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read predictor {path}: {exc}") from None
    try:
        return Predictor.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"predictor file {path} is incomplete or malformed: {exc!r}") from None


def training_fingerprint(X: np.ndarray, y: np.ndarray) -> dict:
    digest = hashlib.sha256(np.ascontiguousarray(X, np.float64).tobytes())
    digest.update(np.ascontiguousarray(y, np.float64).tobytes())
    return {"rows": int(len(y)), "sha256": digest.hexdigest()}


# ----- fitting ----------------------------------------------------------------------------------------
def fit_predictor(X, y, *, models: Sequence[str] | str = "auto", log_target: bool | None = None, cv: int = 5,
                  seed: int = 0, ensemble: int = 5, feature_spec: dict | None = None,
                  views: dict[str, Sequence[int]] | None = None, score: str = "auto", blend: bool = False) -> Predictor:
    """Chooses the model family and hyper-parameters with the lowest out-of-fold error and refits it.

    models      families to try ("auto" = all of ridge, svr, lgbm, mlp)
    log_target  fit log(y); None lets the cross-validation decide when every y > 0 (log space fits ratios,
                which suits multiplicative effects; raw space suits additive ones such as per-layer latencies)
    cv          folds for the selection (at least 2; fewer when there are fewer rows)
    ensemble    members kept for predict_dist's std: the chosen model's fold models when ensemble == cv,
                else that many fold models of an extra k-fold fit (0 or 1: no spread)
    views       named column subsets to choose among as well (`features.feature_views`); None: all columns
    score       what the selection minimises: "mape", "rmse", or "auto" — MAPE when every y > 0 (costs such
                as latency, where a 10 % error matters as much on a small model as on a large one), else RMSE.
                RMSE suits a quality to maximise, such as accuracy, where relative error would weight the
                worst configurations (1 % accuracy) most and the best, which a search cares about, least.
    blend       instead of choosing one family, choose the best of each and predict their mean (`BlendModel`);
                the members then take turns among the families: the first fold model of each, then the
                second, and so on. Needs log_target True or False where every y > 0: one scale to average on.
    (See `_race` for how the selection stays fast.)
    """
    from threadpoolctl import threadpool_limits

    # One BLAS thread: small matrices gain nothing from more, and the search loop shares 2 cores.
    with threadpool_limits(limits=1):
        return _fit_predictor(X, y, models=models, log_target=log_target, cv=cv, seed=seed, ensemble=ensemble,
                              feature_spec=feature_spec, views=views, score=score, blend=blend)


def _fit_predictor(X, y, *, models, log_target, cv, seed, ensemble, feature_spec, views, score, blend) -> Predictor:
    started, started_cpu = time.perf_counter(), time.process_time()
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64).ravel()
    families = _families(models)
    _check_data(X, y)
    positive = bool((y > 0).all())
    if log_target and not positive:
        raise ValueError("log_target needs every y > 0")
    if blend and log_target is None and positive:
        raise ValueError("blend needs log_target True or False: a blend's models are averaged on one scale")
    logs = [False, True] if log_target is None and positive else [bool(log_target)]
    views = _check_views(views, X.shape[1])
    metric = _check_score(score, positive)
    candidates = [(family, params, log, view) for view in views for family in families for log in logs
                  for params in GRIDS[family]]
    folds = _folds(len(y), cv, seed)
    # A blend races each family on its own, so that every family's best sees every fold.
    groups = [[c for c in candidates if c[0] == family] for family in families] if blend else [candidates]
    parts, selection = [], []
    for group in groups:
        winner, tried = _race(group, folds, X, y, views, metric, seed)
        selection += tried
        parts.append(_Refitted(winner, group[winner.index], views, X, y, folds, ensemble, seed))
    if len(parts) == 1:
        part = parts[0]
        final, members, columns, out_of_fold = part.final, part.members, part.columns, part.winner.out_of_fold
        params, log = dict(part.params), part.log
    else:
        final = BlendModel([(p.final, p.columns) for p in parts])
        # Turns among the families, so that any first few members (a search's batch) hold every family.
        turns = zip(*[[BlendModel([(m, p.columns)]) for m in p.members] for p in parts])
        members = [member for turn in turns for member in turn][:ensemble]
        columns, out_of_fold, log = None, np.mean([p.winner.out_of_fold for p in parts], axis=0), parts[0].log
        params = {"parts": [{"model": p.family, "params": dict(p.params), "view": p.view} for p in parts]}
    spec = dict(feature_spec or {})
    spec["n_features"] = int(X.shape[1])
    cv_metrics = {**regression_metrics(y, out_of_fold), "folds": len(folds),
                  "selection_score": metric, "selection": selection,
                  "fit_seconds": time.perf_counter() - started, "fit_cpu_seconds": time.process_time() - started_cpu}
    if len(views) > 1 and len(parts) == 1:
        spec["view"] = parts[0].view
    return Predictor(final, members, params=params, log_target=log, feature_spec=spec,
                     training=training_fingerprint(X, y), cv_metrics=cv_metrics, columns=columns,
                     out_of_fold=out_of_fold, floor=_floor(y, log, metric))


class _Refitted:
    """A race's winner refitted: on every row (final), and as an ensemble (members: its fold models, or the
    folds of another k-fold split when `ensemble` asks for another number of them)."""

    def __init__(self, winner, candidate: tuple, views: dict, X, y, folds, ensemble: int, seed: int):
        self.winner = winner
        self.family, self.params, self.log, self.view = candidate
        self.columns = views[self.view]
        self.final = self._fit(X, y, np.arange(len(y)), seed)
        if ensemble == len(folds):
            self.members = winner.models
        elif ensemble >= 2:
            self.members = [self._fit(X, y, train, seed) for train, _ in _folds(len(y), ensemble, seed + 1)]
        else:
            self.members = []

    def _fit(self, X, y, rows, seed) -> Model:
        Xv = X[rows] if self.columns is None else X[np.ix_(rows, self.columns)]
        return fit_model(self.family, self.params, Xv, np.log(y[rows]) if self.log else y[rows], seed)


#: After each fold, candidates whose mean fold score is worse than the best's by more than this factor stop.
#: 1.15 (was 1.25) keeps a refit on 500 FBNet rows with two feature views at 2.5 s CPU instead of 4.4 s, with
#: the same accuracy on every FBNet and NB201 latency column (benchmarks/results/predictors.txt).
RACE_MARGIN = 1.15


class _Entry:
    def __init__(self, index: int, n: int):
        self.index, self.out_of_fold, self.models, self.scores = index, np.full(n, np.nan), [], []

    @property
    def score(self) -> float:
        return float(np.mean(self.scores))


def _race(candidates, folds, X, y, views: dict, metric: str, seed: int):
    """K-fold cross-validation as a race: every candidate sees the first fold, and only those within
    RACE_MARGIN of the leader go on to the next. All see the same folds, so the comparison is paired and
    a clearly worse model (often the slow ones) stops after one fit instead of k."""
    entries = [_Entry(i, len(y)) for i in range(len(candidates))]
    alive = entries
    targets = {False: y, True: np.log(y) if (y > 0).all() else None}
    viewed = {name: X if columns is None else X[:, columns] for name, columns in views.items()}
    for k, (train, test) in enumerate(folds):
        for entry in alive:
            family, params, log, view = candidates[entry.index]
            Xv = viewed[view]
            model = fit_model(family, params, Xv[train], targets[log][train], seed)
            with np.errstate(over="ignore"):
                predicted = np.exp(model.predict(Xv[test])) if log else model.predict(Xv[test])
            entry.models.append(model)
            entry.out_of_fold[test] = predicted
            entry.scores.append(_fold_score(y[test], predicted, metric))
        best = min(e.score for e in alive)
        if k < len(folds) - 1:
            alive = [e for e in alive if e.score <= best * RACE_MARGIN]
    winner = min(alive, key=lambda e: e.score)
    if not np.isfinite(winner.score):
        raise ValueError("no candidate model gave finite predictions; check X and y for extreme values")
    selection = [{"model": candidates[e.index][0], "params": candidates[e.index][1],
                  "log_target": candidates[e.index][2], "view": candidates[e.index][3], "folds": len(e.scores),
                  metric: e.score} for e in entries]
    return winner, selection


def _floor(y: np.ndarray, log: bool, metric: str) -> float | None:
    """Where a raw-scale model of a cost bends towards zero: the cheapest value it was fitted on, below which it
    extrapolates. A cost is what the selection scored by relative error (every y > 0); a quality scored by RMSE
    (accuracy) has none, nor has a log-scale model, whose predictions are positive."""
    return float(y.min()) if not log and metric == "mape" else None


def _natural(raw: np.ndarray, log: bool, floor: float | None) -> np.ndarray:
    """A model's raw output in the units of y. Below `floor`, a raw-scale prediction of a cost bends towards zero
    without reaching it: floor² / (2·floor − raw), continuous with slope 1 at the floor and increasing, so that an
    extrapolation that went to zero or below (a negative latency) is a positive cost that keeps its order: 0
    becomes half the floor."""
    if log:
        return np.exp(raw)
    if floor is None:
        return raw
    return np.where(raw >= floor, raw, floor * (floor / (2 * floor - np.minimum(raw, floor))))


def _fold_score(y_true: np.ndarray, y_pred: np.ndarray, metric: str) -> float:
    if not np.isfinite(y_pred).all():
        return float("inf")
    if metric == "mape":
        return float(np.mean(np.abs(y_pred - y_true) / np.abs(y_true)) * 100.0)
    return float(np.sqrt(np.mean((y_pred - y_true) ** 2)))


def _families(models) -> list[str]:
    if models == "auto":
        return list(FAMILIES)
    families = [models] if isinstance(models, str) else list(models)
    unknown = [m for m in families if m not in GRIDS]
    if unknown or not families:
        raise ValueError(f"unknown model {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(FAMILIES)} or 'auto'")
    return families


def _check_score(score: str, positive: bool) -> str:
    if score == "auto":
        return "mape" if positive else "rmse"
    if score not in ("mape", "rmse"):
        raise ValueError(f"unknown score {score!r}; choose from auto, mape, rmse")
    if score == "mape" and not positive:
        raise ValueError("score 'mape' needs every y > 0")
    return score


def _check_views(views, n_features: int) -> dict[str, list[int] | None]:
    """{name: column indices}; a view of every column is kept as None (no copy of X)."""
    if not views:
        return {"all": None}
    checked = {}
    for name, columns in views.items():
        columns = [int(c) for c in columns]
        if not columns or min(columns) < 0 or max(columns) >= n_features:
            raise ValueError(f"feature view {name!r} must name columns 0..{n_features - 1}, got {len(columns)} "
                             f"columns from {min(columns, default=None)} to {max(columns, default=None)}")
        checked[name] = None if columns == list(range(n_features)) else columns
    return checked


def _check_data(X: np.ndarray, y: np.ndarray) -> None:
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} values")
    if len(y) < 4:
        raise ValueError(f"a predictor needs at least 4 rows to cross-validate, got {len(y)}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite (no NaN or infinity)")
    # Squares of larger values (a variance, an RMSE) overflow a float: the fit would predict infinities.
    too_large = [(name, float(np.abs(values).max())) for name, values in
                 [("the target", y)] + [(f"feature column {j}", X[:, j]) for j in range(X.shape[1])]
                 if len(values) and np.abs(values).max() > LARGEST_VALUE]
    if too_large:
        name, largest = too_large[0]
        raise ValueError(f"{name} holds {largest:.4g}, beyond ±{LARGEST_VALUE:g}, where squares overflow a float; "
                         "rescale it (another unit)")


def _folds(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if k < 2:
        raise ValueError(f"cv needs at least 2 folds, got {k}")
    parts = np.array_split(np.random.default_rng(seed).permutation(n), min(k, n))
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(part)) for i, part in enumerate(parts)]
