"""Calibration: predictors of latency and memory per device kind, kept true as devices change.

    from fleetnas.calibrate import calibrate, watch, latest_predictor
    with Farm.open("fleetnas.toml", db="fleetnas.db") as farm:
        result = calibrate(farm, farm.store, "demo", "rpi4-ort-1t", samples=40)   # measure, fit, record, plot
        for report in watch(farm, farm.store, "demo", "rpi4-ort-1t", interval_s=600, rounds=6):
            report.changed, report.refit                          # agents that drifted or changed; the new fit
        predictor = latest_predictor(farm.store, "demo", "rpi4-ort-1t", "latency_ms")

reference.py  the fixed reference set of a space
drift.py      has a device changed? (paired test of reference latencies; version changes)
calibration.py  measuring, fitting, recording: calibrate() and refit()
watch.py      the continuous loop: watch() and watch_round()
plot.py       the parity plot
"""
from .calibration import (METRICS, CalibrationError, CalibrationResult, MetricFit, calibrate, default_out_dir,
                          latest_predictor, predictor_path, refit, training_set)
from .drift import (DEFAULT_ALPHA, DEFAULT_THRESHOLD, DriftVerdict, RoundEntry, compare_rounds, least_per_config,
                    min_pairs)
from .reference import REFERENCE_SIZE, ReferenceSet, reference_set
from .watch import RoundReport, watch, watch_round

__all__ = ["DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "METRICS", "REFERENCE_SIZE", "CalibrationError",
           "CalibrationResult", "DriftVerdict", "MetricFit", "ReferenceSet", "RoundEntry", "RoundReport", "calibrate",
           "compare_rounds", "default_out_dir", "latest_predictor", "least_per_config", "min_pairs",
           "predictor_path",
           "reference_set", "refit", "training_set", "watch", "watch_round"]
