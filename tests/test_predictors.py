"""Predictors: metrics, model selection on functions with a known shape, uncertainty, files."""
import json

import numpy as np
import pytest

from fleetnas.predictors import (FORMAT_VERSION, fit_predictor, load_predictor, regression_metrics, space_features,
                                 space_feature_names)
from fleetnas.supernets import get_supernet


# ----- metrics ---------------------------------------------------------------------------------------
def test_metrics_on_hand_made_vectors():
    m = regression_metrics([10.0, 20.0, 40.0, 80.0], [10.4, 21.8, 30.0, 80.0])
    # relative errors: 4 %, 9 %, 25 %, 0 %
    assert m["mape"] == pytest.approx((4 + 9 + 25 + 0) / 4)
    assert m["within_5"] == pytest.approx(0.5)
    assert m["within_10"] == pytest.approx(0.75)
    assert m["rmse"] == pytest.approx(np.sqrt((0.4 ** 2 + 1.8 ** 2 + 10 ** 2) / 4))
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert regression_metrics([1, 2, 3], [3, 2, 1])["kendall_tau"] == pytest.approx(-1.0)


def test_metrics_reject_bad_vectors():
    with pytest.raises(ValueError, match="3 values"):
        regression_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        regression_metrics([1, 2], [1, np.nan])
    assert np.isnan(regression_metrics([1, 2, 3], [2, 2, 2])["kendall_tau"])


# ----- selection on known functions ---------------------------------------------------------------------
def _data(fn, n=160, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    return X, fn(X)


def linear(X):
    return 5.0 + X @ np.array([3.0, -2.0, 1.5, 0.5, 4.0, -1.0])


def steps(X):
    # Thresholds and an interaction: what trees model and a linear model cannot.
    return 5.0 + 4.0 * (X[:, 0] > 0.5) * (X[:, 1] > 0.5) + 3.0 * (X[:, 2] > 0.3) - 2.0 * (X[:, 3] > 0.7)


def test_selection_prefers_ridge_for_a_linear_function():
    X, y = _data(linear)
    p = fit_predictor(X[:120], y[:120], models=("ridge", "lgbm"), log_target=False)
    assert p.model_name == "ridge"
    lgbm = fit_predictor(X[:120], y[:120], models=("lgbm",), log_target=False)
    assert regression_metrics(y[120:], p.predict(X[120:]))["mape"] < regression_metrics(y[120:], lgbm.predict(X[120:]))["mape"]


def test_selection_prefers_trees_for_a_step_function():
    X, y = _data(steps, n=260)
    p = fit_predictor(X[:200], y[:200], models=("ridge", "lgbm"), log_target=False)
    assert p.model_name == "lgbm"
    ridge = fit_predictor(X[:200], y[:200], models=("ridge",), log_target=False)
    assert regression_metrics(y[200:], p.predict(X[200:]))["mape"] < regression_metrics(y[200:], ridge.predict(X[200:]))["mape"]


def test_cross_validation_decides_log_space():
    X, y = _data(lambda X: np.exp(linear(X) / 2))        # multiplicative: linear in log space
    assert fit_predictor(X, y, models="ridge").log_target is True
    X, y = _data(linear)                                 # additive: linear as it is
    assert fit_predictor(X, y, models="ridge").log_target is False
    X, y = _data(lambda X: linear(X) - 6.0)              # some y <= 0: log space is impossible
    assert fit_predictor(X, y, models="ridge").log_target is False
    with pytest.raises(ValueError, match="y > 0"):
        fit_predictor(X, y, models="ridge", log_target=True)


def test_cv_metrics_and_selection_record():
    X, y = _data(linear)
    p = fit_predictor(X, y, models=("ridge", "svr"), cv=4)
    assert p.cv_metrics["folds"] == 4
    assert {"mape", "within_5", "within_10", "rmse", "kendall_tau"} <= set(p.cv_metrics)
    tried = {(s["model"], s["log_target"]) for s in p.cv_metrics["selection"]}
    assert ("ridge", False) in tried and ("svr", True) in tried
    assert p.cv_metrics["within_10"] > 0.9


def test_selection_score_can_be_chosen():
    X, y = _data(linear)
    y = y - y.min() + 1.0                                # all positive: "auto" scores relative error
    assert fit_predictor(X, y, models="ridge").cv_metrics["selection_score"] == "mape"
    p = fit_predictor(X, y, models=("ridge", "svr"), score="rmse")
    assert p.cv_metrics["selection_score"] == "rmse"
    assert all("rmse" in s and "mape" not in s for s in p.cv_metrics["selection"])
    # The winner is the candidate with the lowest out-of-fold RMSE among those that saw every fold.
    full = [s for s in p.cv_metrics["selection"] if s["folds"] == p.cv_metrics["folds"]]
    best = min(full, key=lambda s: s["rmse"])
    assert (best["model"], best["log_target"]) == (p.model_name, p.log_target)
    with pytest.raises(ValueError, match="unknown score 'r2'"):
        fit_predictor(X, y, score="r2")
    with pytest.raises(ValueError, match="'mape' needs every y > 0"):
        fit_predictor(X, y - 100.0, score="mape")


# ----- uncertainty --------------------------------------------------------------------------------------
def test_predict_dist_spread_of_the_fold_ensemble():
    X, y = _data(steps, n=120)
    p = fit_predictor(X, y, models="svr", cv=5, ensemble=5)
    assert len(p.members) == 5
    mean, std = p.predict_dist(X[:10])
    np.testing.assert_array_equal(mean, p.predict(X[:10]))
    assert (std >= 0).all() and std.max() > 0
    # A linear model's fold members disagree more far outside the training data than inside it.
    noisy = y + np.random.default_rng(1).normal(0, 0.5, len(y))
    ridge = fit_predictor(X, noisy, models="ridge", log_target=False)
    assert ridge.predict_dist(X[:10] + 5.0)[1].mean() > 3 * ridge.predict_dist(X[:10])[1].mean()
    assert len(fit_predictor(X, y, models="ridge", ensemble=3).members) == 3
    assert (fit_predictor(X, y, models="ridge", ensemble=0).predict_dist(X[:3])[1] == 0).all()


def test_a_cost_on_the_raw_scale_is_never_predicted_zero_or_below(tmp_path):
    """A raw-scale latency model predicted a negative latency for a network unlike those it was fitted on."""
    X, y = _data(linear)
    y = y - y.min() + 0.5                                # a cost: every y > 0, additive (raw scale)
    p = fit_predictor(X, y, models="ridge", log_target=False)
    far = np.array([k * np.array([-1.0, 1, -1, -1, -1, 1]) for k in (5, 10, 50, 1e6)])  # ever further below zero
    raw = p.final.predict(far)
    assert (raw < 0).all() and (np.diff(raw) < 0).all()
    predicted = p.predict(far)
    assert (predicted > 0).all() and (np.diff(predicted) < 0).all() and (predicted < y.min()).all()  # same order
    assert (p.predict_members(far) > 0).all()
    inside = p.final.predict(X) >= y.min()  # where it does not extrapolate below the cheapest: untouched
    assert inside.mean() > 0.9 and (p.predict(X)[inside] == p.final.predict(X)[inside]).all()
    # A search ranks by the model's own extrapolation, and records it as predict gives it.
    assert (p.predict(far, bounded=False) == raw).all() and (p.bound(raw) == predicted).all()
    assert (p.predict_members(far, bounded=False) < 0).all()
    assert load_predictor(p.save(tmp_path / "cost.json")).predict(far).tolist() == predicted.tolist()
    # A quality (scored by absolute error, as a search fits accuracy), or one that may be zero or negative, has no
    # floor; nor has a file written before floors were.
    for quality in (fit_predictor(X, y, models="ridge", log_target=False, score="rmse"),
                    fit_predictor(X, y - 3.0, models="ridge", log_target=False)):
        assert quality.floor is None and (quality.predict(far) < 0).all()
    data = json.loads((tmp_path / "cost.json").read_text())
    del data["floor"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert (load_predictor(tmp_path / "old.json").predict(far) < 0).all()
    for bad in (float("nan"), 0.0, -1.0, "1.5", True):
        data["floor"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match="floor must be a positive number or null"):
            load_predictor(tmp_path / "bad.json")


# ----- files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["ridge", "svr", "lgbm", "mlp"])
def test_save_load_gives_identical_predictions(tmp_path, family):
    X, y = _data(lambda X: np.exp(steps(X) / 4), n=100)
    p = fit_predictor(X, y, models=family, feature_spec={"kind": "table", "columns": list("abcdef")})
    path = p.save(tmp_path / "latency.json")
    data = json.loads(path.read_text())
    assert data["format"] == "fleetnas-predictor" and data["format_version"] == FORMAT_VERSION
    assert data["model"] == family and data["training"]["rows"] == 100 and len(data["training"]["sha256"]) == 64
    assert data["feature_spec"]["columns"] == list("abcdef") and data["feature_spec"]["n_features"] == 6
    q = load_predictor(path)
    Z = np.random.default_rng(5).uniform(-0.5, 1.5, (50, 6))
    np.testing.assert_array_equal(q.predict(Z), p.predict(Z))
    np.testing.assert_array_equal(q.predict_dist(Z)[1], p.predict_dist(Z)[1])
    assert q.model_name == family and q.log_target == p.log_target and q.training == p.training


def test_a_blend_predicts_the_mean_of_each_familys_best(tmp_path):
    X, y, names = _drowned(n=120)
    y = y + 3.0 * (X[:, 150] > 5)  # a step, which trees model, beside what is linear
    from fleetnas.predictors.features import feature_views

    views = feature_views(names)
    fit = dict(log_target=False, score="rmse", views=views, seed=3)  # as a search fits a quality
    blend = fit_predictor(X, y, models=("ridge", "lgbm"), blend=True, **fit)
    alone = [fit_predictor(X, y, models=family, **fit) for family in ("ridge", "lgbm")]
    assert blend.model_name == "blend" and blend.families == ("ridge", "lgbm") and blend.columns is None
    # Each part is what that family alone would have chosen and fitted, view included; the blend is their mean.
    assert blend.params["parts"] == [{"model": p.model_name, "params": p.params, "view": p.feature_spec["view"]}
                                     for p in alone]
    np.testing.assert_allclose(blend.predict(X), np.mean([p.predict(X) for p in alone], axis=0), rtol=1e-12)
    np.testing.assert_allclose(blend.out_of_fold, np.mean([p.out_of_fold for p in alone], axis=0), rtol=1e-12)
    assert blend.cv_metrics["rmse"] == pytest.approx(regression_metrics(y, blend.out_of_fold)["rmse"])
    # The members take turns among the families, fold by fold.
    assert [m.families for m in blend.members] == [("ridge",), ("lgbm",)] * 2 + [("ridge",)]
    members = blend.predict_members(X)
    np.testing.assert_allclose(members[[0, 2, 4]], alone[0].predict_members(X)[:3], rtol=1e-12)
    np.testing.assert_allclose(members[[1, 3]], alone[1].predict_members(X)[:2], rtol=1e-12)
    q = load_predictor(blend.save(tmp_path / "blend.json"))
    assert q.families == ("ridge", "lgbm") and json.loads((tmp_path / "blend.json").read_text())["model"] == "blend"
    np.testing.assert_array_equal(q.predict(X), blend.predict(X))
    np.testing.assert_array_equal(q.predict_members(X), members)
    data = json.loads((tmp_path / "blend.json").read_text())
    nested, strange = json.loads(json.dumps(data)), json.loads(json.dumps(data))
    nested["final"]["parts"][0]["model"] = data["final"]
    strange["final"]["parts"][0]["columns"] = "all"
    for broken, message in ((nested, "parts are single models"), (strange, "columns must be null or column")):
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            load_predictor(tmp_path / "broken.json")
    # One family named: an ordinary predictor. Costs need one scale to average on.
    assert fit_predictor(X, y, models="ridge", blend=True, log_target=False).model_name == "ridge"
    with pytest.raises(ValueError, match="blend needs log_target True or False"):
        fit_predictor(X, y, models=("ridge", "lgbm"), blend=True)


def test_fingerprint_follows_the_training_data():
    X, y = _data(linear, n=40)
    a = fit_predictor(X, y, models="ridge").training
    b = fit_predictor(X, y + 1e-9, models="ridge").training
    assert a["rows"] == b["rows"] == 40 and a["sha256"] != b["sha256"]


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a FleetNAS predictor"):
        load_predictor(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "fleetnas-predictor", "format_version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_predictor(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_predictor(tmp_path / "c.json")


# ----- bad input ----------------------------------------------------------------------------------------
def test_bad_input_is_named():
    X, y = _data(linear, n=30)
    with pytest.raises(ValueError, match="unknown model 'forest'"):
        fit_predictor(X, y, models=("ridge", "forest"))
    with pytest.raises(ValueError, match="finite"):
        fit_predictor(np.where(X > 0.9, np.nan, X), y)
    with pytest.raises(ValueError, match="at least 4 rows"):
        fit_predictor(X[:3], y[:3])
    with pytest.raises(ValueError, match="30 values"):
        fit_predictor(X[:20], y)
    p = fit_predictor(X, y, models="ridge")
    with pytest.raises(ValueError, match="6 features per row, got 5"):
        p.predict(X[:, :5])


# ----- features ----------------------------------------------------------------------------------------
def test_space_features_columns():
    space = get_supernet("nb201").space
    X_int = space.encode_many(space.sample(7, rng=0))
    F = space_features(space, X_int)
    # 6 edges x 5 one-hot + 6 ordinal + 5 per-op counts (all edges share the op set)
    assert F.shape == (7, 30 + 6 + 5)
    assert len(space_feature_names(space)) == F.shape[1]
    np.testing.assert_array_equal(F[:, 36:41].sum(axis=1), 6)
    with_analytic = space_features(space, X_int, np.ones((7, 2)))
    assert with_analytic.shape == (7, 43) and len(space_feature_names(space, ["a", "b"])) == 43
    with pytest.raises(ValueError, match="3 rows for 7 configs"):
        space_features(space, X_int, np.ones((3, 2)))
    with pytest.raises(ValueError, match="6 columns"):
        space_features(space, X_int[:, :4])


# ----- feature views ---------------------------------------------------------------------------------------
def _drowned(n=120, noise_columns=150, seed=0):
    """y depends on 3 'analytic' columns; 150 one-hot-like noise columns come first and drown them."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 2, (n, noise_columns)).astype(float)
    signal = rng.uniform(1, 10, (n, 3))
    X = np.hstack([noise, signal])
    names = [f"edge={i}" for i in range(noise_columns)] + ["analytic:macs", "analytic:params", "count(a+b)=x"]
    return X, 2.0 + signal @ np.array([1.0, 0.5, 2.0]), names


def test_views_let_cross_validation_drop_drowning_columns(tmp_path):
    from fleetnas.predictors.features import feature_views

    X, y, names = _drowned(n=160)
    views = feature_views(names)
    assert views["compact"] == [150, 151, 152] and views["all"] == list(range(153)) and views["counts"] == [152]
    p = fit_predictor(X[:80], y[:80], models="svr", log_target=False, views=views)
    assert p.feature_spec["view"] == "compact" and p.columns == [150, 151, 152]
    assert {s["view"] for s in p.cv_metrics["selection"]} == {"all", "compact", "counts"}
    plain = fit_predictor(X[:80], y[:80], models="svr", log_target=False)
    assert plain.columns is None and "view" not in plain.feature_spec
    error = regression_metrics(y[80:], p.predict(X[80:]))["mape"]
    assert error < regression_metrics(y[80:], plain.predict(X[80:]))["mape"] / 2
    # The file keeps the columns: the loaded predictor takes the full rows and predicts the same.
    q = load_predictor(p.save(tmp_path / "p.json"))
    assert q.columns == [150, 151, 152]
    np.testing.assert_array_equal(q.predict(X[80:]), p.predict(X[80:]))
    with pytest.raises(ValueError, match="153 features per row"):
        q.predict(X[80:, 150:])


def test_counts_view_fits_an_additive_cost_per_choice():
    """Cost adds up over the choices made (a latency where every edge runs its kernel), and analytic columns
    that do not carry it drown it: the per-choice counts alone are the model cross-validation should pick."""
    from fleetnas.predictors.features import feature_views

    rng = np.random.default_rng(1)
    counts = rng.multinomial(6, [0.2] * 5, size=200).astype(float)
    analytic = rng.normal(size=(200, 30))
    X = np.hstack([rng.integers(0, 2, (200, 30)).astype(float), analytic, counts])
    y = 4.0 + counts @ np.array([0.1, 0.0, 1.1, 1.9, 0.4]) + rng.normal(0, 0.05, 200)
    names = [f"edge={i}" for i in range(30)] + [f"analytic:a{i}" for i in range(30)] + [f"count(e1+e6)={c}" for c in "abcde"]
    views = feature_views(names)
    assert views["counts"] == list(range(60, 65))
    p = fit_predictor(X[:100], y[:100], models="ridge", log_target=False, views=views)
    assert p.feature_spec["view"] == "counts"
    compact = fit_predictor(X[:100], y[:100], models="ridge", log_target=False, views={"compact": views["compact"]})
    assert regression_metrics(y[100:], p.predict(X[100:]))["mape"] < regression_metrics(y[100:], compact.predict(X[100:]))["mape"]


def test_feature_views_need_analytic_columns_and_valid_indices():
    from fleetnas.predictors.features import feature_views

    assert feature_views(["edge=a", "edge=b", "count(e1+e2)=a"]) is None          # nothing analytic
    assert feature_views(["analytic:macs", "count(e1+e2)=a"]) is None            # compact is everything
    X, y, _ = _drowned(n=40)
    with pytest.raises(ValueError, match="feature view 'bad' must name columns 0..152"):
        fit_predictor(X, y, models="ridge", views={"bad": [0, 153]})
    with pytest.raises(ValueError, match="feature view 'empty'"):
        fit_predictor(X, y, models="ridge", views={"empty": []})


def test_fbnet_kernel_features_add_up_to_the_analytic_macs():
    fbnet = get_supernet("fbnet")
    config = fbnet.space.sample(1, rng=3)[0]
    features = fbnet.predictor_features(config)
    layer_macs = sum(features[k] for k in features if k.endswith(("_pointwise_macs", "_depthwise_macs")))
    assert layer_macs == pytest.approx(sum(features[f"stage{s}_macs"] for s in range(7)))
    used = {config[n] for n in fbnet.space.names}
    for op in ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6"):
        assert (features[f"{op}_depthwise_macs"] > 0) == (op in used)
