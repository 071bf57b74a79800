"""Predictors of an objective (latency, memory, accuracy) from a configuration's features.

    X = space_features(space, space.encode_many(configs), analytic)     # or tables.Table.features(columns)
    predictor = fit_predictor(X, latency_ms)                             # CV-chosen model, log space for y > 0
    mean, std = predictor.predict_dist(space_features(space, candidates))
    predictor.save("latency.json"); load_predictor("latency.json")     # JSON, format in predictor.py
"""
from .features import space_feature_names, space_features
from .metrics import regression_metrics
from .models import FAMILIES
from .predictor import FORMAT_VERSION, Predictor, fit_predictor, load_predictor

__all__ = ["FAMILIES", "FORMAT_VERSION", "Predictor", "fit_predictor", "load_predictor", "regression_metrics",
           "space_feature_names", "space_features"]
