"""The model families a predictor chooses among, each as a fitted object that predicts with numpy alone
and serialises to plain JSON (LightGBM: its native model text inside the JSON).

Every family standardises X itself, so callers pass raw features. Ridge, SVR and MLP also standardise y,
which keeps one hyper-parameter grid meaningful whatever the target's unit.
All fits are single-threaded: the search loop refits them on a 2-core machine it shares with other work.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Hyper-parameter grids, kept small so that a k-fold selection on 500 rows stays well under a few seconds.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "ridge": [{"alpha": a} for a in (0.01, 0.1, 1.0, 10.0)],
    "svr": [{"C": 10.0, "gamma_scale": 0.1}, {"C": 100.0, "gamma_scale": 0.01}, {"C": 1000.0, "gamma_scale": 0.01}],
    "lgbm": [{"num_leaves": 7, "n_estimators": 200, "learning_rate": 0.08, "min_child_samples": 5}],
    "mlp": [{"hidden": 32, "alpha": 1.0}],
}
FAMILIES = tuple(GRIDS)


class Standardiser:
    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)

    @classmethod
    def fit(cls, values: np.ndarray) -> "Standardiser":
        scale = values.std(axis=0)
        # Constant columns (a choice never drawn in this sample) stay as they are instead of dividing by zero.
        return cls(values.mean(axis=0), np.where(scale > 1e-12, scale, 1.0))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.scale

    def undo(self, values: np.ndarray) -> np.ndarray:
        return values * self.scale + self.mean

    def to_dict(self) -> dict:
        return {"mean": np.atleast_1d(self.mean).tolist(), "scale": np.atleast_1d(self.scale).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardiser":
        return cls(d["mean"], d["scale"])


class Model:
    """A fitted model: `predict(X)` with numpy, `to_dict()` / `Model.from_dict()` for the JSON file."""

    family: str

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def from_dict(d: dict) -> "Model":
        family = d.get("family")
        if family not in _LOADERS:
            raise ValueError(f"unknown model family {family!r} in predictor file; known: {', '.join(_LOADERS)}")
        return _LOADERS[family](d)


class RidgeModel(Model):
    family = "ridge"

    def __init__(self, coef, intercept: float):
        self.coef, self.intercept = np.asarray(coef, np.float64), float(intercept)

    def predict(self, X):
        return X @ self.coef + self.intercept

    def to_dict(self):
        return {"family": self.family, "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def load(cls, d):
        return cls(d["coef"], d["intercept"])


class SVRModel(Model):
    """RBF-kernel support vector regression, on standardised X and y."""

    family = "svr"

    def __init__(self, x: Standardiser, y: Standardiser, support, dual_coef, intercept: float, gamma: float):
        self.x, self.y = x, y
        self.support = np.asarray(support, np.float64).reshape(-1, len(x.mean))
        self.dual_coef, self.intercept, self.gamma = np.asarray(dual_coef, np.float64), float(intercept), float(gamma)

    def predict(self, X):
        Z = self.x(X)
        sq = (Z ** 2).sum(1)[:, None] + (self.support ** 2).sum(1)[None, :] - 2.0 * Z @ self.support.T
        return self.y.undo(np.exp(-self.gamma * np.maximum(sq, 0.0)) @ self.dual_coef + self.intercept)

    def to_dict(self):
        return {"family": self.family, "x": self.x.to_dict(), "y": self.y.to_dict(), "gamma": self.gamma,
                "support_vectors": self.support.tolist(), "dual_coef": self.dual_coef.tolist(),
                "intercept": self.intercept}

    @classmethod
    def load(cls, d):
        return cls(Standardiser.from_dict(d["x"]), Standardiser.from_dict(d["y"]), d["support_vectors"],
                   d["dual_coef"], d["intercept"], d["gamma"])


class MLPModel(Model):
    """A ReLU multilayer perceptron with a linear output, on standardised X and y."""

    family = "mlp"

    def __init__(self, x: Standardiser, y: Standardiser, weights, biases):
        self.x, self.y = x, y
        self.weights = [np.asarray(w, np.float64) for w in weights]
        self.biases = [np.asarray(b, np.float64) for b in biases]

    def predict(self, X):
        h = self.x(X)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return self.y.undo(h[:, 0])

    def to_dict(self):
        return {"family": self.family, "x": self.x.to_dict(), "y": self.y.to_dict(), "activation": "relu",
                "weights": [w.tolist() for w in self.weights], "biases": [b.tolist() for b in self.biases]}

    @classmethod
    def load(cls, d):
        if d.get("activation", "relu") != "relu":
            raise ValueError(f"unsupported MLP activation {d['activation']!r} in predictor file")
        return cls(Standardiser.from_dict(d["x"]), Standardiser.from_dict(d["y"]), d["weights"], d["biases"])


class LGBMModel(Model):
    """Gradient-boosted trees; kept as LightGBM's own model text, which reloads to identical predictions."""

    family = "lgbm"

    def __init__(self, model_text: str):
        import lightgbm

        self.model_text = model_text
        self.booster = lightgbm.Booster(model_str=model_text)

    def predict(self, X):
        return self.booster.predict(np.asarray(X, np.float64), num_threads=1)

    def to_dict(self):
        return {"family": self.family, "model_text": self.model_text}

    @classmethod
    def load(cls, d):
        return cls(d["model_text"])


class BlendModel(Model):
    """The mean of models of different families, each reading its own columns of X (the feature view its
    cross-validation chose): families err in different places, and their mean ranks where none alone does
    (`fit_predictor(blend=True)`)."""

    family = "blend"

    def __init__(self, parts: Sequence[tuple[Model, Sequence[int] | None]]):
        if not parts:
            raise ValueError("a blend needs at least one model")
        self.parts = [(model, None if columns is None else [int(c) for c in columns]) for model, columns in parts]

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(model.family for model, _ in self.parts)

    def predict(self, X):
        return np.mean([model.predict(X if columns is None else X[:, columns]) for model, columns in self.parts],
                       axis=0)

    def to_dict(self):
        return {"family": self.family,
                "parts": [{"columns": columns, "model": model.to_dict()} for model, columns in self.parts]}

    @classmethod
    def load(cls, d):
        parts = []
        for part in d["parts"]:
            if part["model"].get("family") == cls.family:
                raise ValueError("a blend's parts are single models, not blends")
            columns = part["columns"]
            if columns is not None and not (isinstance(columns, list) and all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in columns)):
                raise ValueError(f"a blend part's columns must be null or column indices, got {columns!r}")
            parts.append((Model.from_dict(part["model"]), columns))
        return cls(parts)


_LOADERS = {"ridge": RidgeModel.load, "svr": SVRModel.load, "mlp": MLPModel.load, "lgbm": LGBMModel.load,
            "blend": BlendModel.load}


def fit_model(family: str, params: dict, X: np.ndarray, y: np.ndarray, seed: int = 0) -> Model:
    """Fits one family with one point of its grid."""
    seed %= 2 ** 31  # callers derive seeds by adding to one (a search's iteration): keep them in int32
    if family == "ridge":
        xs = Standardiser.fit(X)
        Z, offset = xs(X), y.mean()
        # Closed form on standardised X: cheaper than a library call at these sizes, and the same solution.
        w = np.linalg.solve(Z.T @ Z + params["alpha"] * np.eye(Z.shape[1]), Z.T @ (y - offset))
        coef = w / xs.scale
        return RidgeModel(coef, offset - coef @ xs.mean)
    if family == "svr":
        from sklearn.svm import SVR

        xs, ys = Standardiser.fit(X), Standardiser.fit(y)
        gamma = params["gamma_scale"] / X.shape[1]
        # tol 0.01 (libsvm's default is 0.001): a third faster at C=1000, predictions equal to 0.01 % MAPE.
        fitted = SVR(C=params["C"], epsilon=0.01, gamma=gamma, tol=0.01, cache_size=50).fit(xs(X), ys(y))
        return SVRModel(xs, ys, fitted.support_vectors_, fitted.dual_coef_[0], fitted.intercept_[0], gamma)
    if family == "mlp":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor

        xs, ys = Standardiser.fit(X), Standardiser.fit(y)
        net = MLPRegressor(hidden_layer_sizes=(params["hidden"],), alpha=params["alpha"], solver="lbfgs",
                           max_iter=100, random_state=seed)
        with warnings.catch_warnings():
            # lbfgs stopping at max_iter is the intended budget, not a failure.
            warnings.simplefilter("ignore", ConvergenceWarning)
            net.fit(xs(X), ys(y))
        return MLPModel(xs, ys, net.coefs_, net.intercepts_)
    if family == "lgbm":
        import lightgbm

        booster = lightgbm.train(
            {"objective": "regression", "num_leaves": params["num_leaves"], "learning_rate": params["learning_rate"],
             "min_data_in_leaf": params["min_child_samples"], "min_data_in_bin": 1, "feature_fraction": 0.8,
             "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "seed": seed, "num_threads": 1,
             "verbosity": -1, "deterministic": True, "force_col_wise": True},
            lightgbm.Dataset(X, y, params={"verbosity": -1}), num_boost_round=params["n_estimators"])
        return LGBMModel(booster.model_to_string())
    raise ValueError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
