"""How far LINAS is from what it could reach with better predictors, on NAS-Bench-201.

    .venv/bin/python benchmarks/search_ceiling.py [--pairs imagenet16_test:lat_ms_titanxp_1,...]
                                                  [--seeds 8] [--budget 100] [--jobs 2]
                                                  [--variants "as is,..."] [--mix 0.25,0.5]

Runs the LINAS loop as it is, then with one objective's predictions replaced by what a perfect predictor of
the architecture would say:
- accuracy exactly: the table's own value, training noise included — more than any predictor can know;
- accuracy ± training noise: the table's value plus a fresh draw of the noise that retraining the same
  architecture adds. Its size comes from the table itself: cells that differ only in edges off every
  input-to-output path compute the same function, so the spread of their accuracies is training noise
  alone (`training_noise_sd`). A predictor that knew each architecture's expected accuracy would err
  by just that much: this is the ceiling for an architecture-only accuracy predictor;
- best latency: the median latency of the other cells with the same multiset of operations (on the eager
  devices — Gold 6226, Titan Xp, Titan RTX — every cell with the same operations does the same work, so
  that median is all an architecture-only predictor can know; see bench_predictors.py. Pixel 3 folds
  graphs, and there it is no ceiling).
The gap between the rows says which predictor limits the search, and the last row how far any
architecture-only predictor could take this loop.

`--mix W,...` adds, per weight w, LINAS with its own accuracy predictions (mean and every Thompson member)
replaced by w × (accuracy ± training noise) + (1 − w) × its own: a predictor part way between LINAS's and
that ceiling. bench_accuracy_predictor.py's `--mix` gives the same mixtures' Kendall τ, so together they say
how much better a ranking the accuracy predictor needs for a given hypervolume.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "data" / "nb201_accuracy_latency.csv"
#: The six pairs where LINAS missed the issue's target when this benchmark was written (benchmarks/results/search.txt).
PAIRS = ("imagenet16_test:lat_ms_titanxp_1,cifar10_test:lat_ms_titanxp_1,imagenet16_test:lat_ms_pixel3,"
         "imagenet16_test:lat_ms_gold_6226,cifar100_test:lat_ms_titanxp_1,imagenet16_test:lat_ms_titan_rtx_32")
ACCURACIES = ("cifar10_test", "cifar100_test", "imagenet16_test")
#: variant -> what replaces the (accuracy, latency) predictions; None keeps LINAS's own predictor.
VARIANTS = {"as is": (None, None), "exact accuracy": ("exact", None), "accuracy ± noise": ("noisy", None),
            "best latency": (None, "median"), "noisy + best lat": ("noisy", "median")}


def mixed(weight: float) -> str:
    """The name of the variant whose accuracy is `weight` × (accuracy ± noise) + (1 − weight) × LINAS's own."""
    return f"mix {weight:g}"


def function_groups(cellstrs: list[str]) -> list[np.ndarray]:
    """Row indices of the NB201 cells that compute the same function: the same operations on the same
    input-to-output edges (`useful_edges`), whatever sits on the edges no path uses."""
    from bench_predictors import groups_by
    from fleetnas.supernets.nb201 import SPACE, edge_name, useful_edges

    configs = [SPACE.from_key(cell) for cell in cellstrs]
    return groups_by([tuple((edge, c[edge_name(*edge)]) for edge in useful_edges(c)) for c in configs])


def training_noise_sd(groups: list[np.ndarray], y: np.ndarray) -> float:
    """The spread of one training run's result around its architecture's mean, pooled over groups of cells
    that compute the same function (unbiased per group: deviations scaled by sqrt(n / (n - 1)))."""
    deviations = [(y[m] - y[m].mean()) * np.sqrt(len(m) / (len(m) - 1)) for m in groups if len(m) > 1]
    return float(np.sqrt(np.mean(np.concatenate(deviations) ** 2)))


def with_training_noise(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """y plus a fresh draw of retraining noise of sd `noise`, the same for a seed wherever it is drawn: the
    "accuracy ± noise" ceiling here and bench_accuracy_predictor.py's "± training noise" reference."""
    return y + np.random.default_rng(seed).normal(0.0, noise, len(y))


def ceiling_predictions(space, table, accuracy: str, latency: str, seed: int) -> dict[str, dict[str, float]]:
    """Per configuration key, each ceiling predictor's value in minimised form ("exact", "noisy" accuracy;
    "median" latency)."""
    from bench_predictors import leave_one_out_median, operation_groups

    cells = [row["cellstr"] for row in table.rows]
    measured_accuracy, measured_latency = table.column(accuracy), table.column(latency)
    noisy = with_training_noise(measured_accuracy, training_noise_sd(function_groups(cells), measured_accuracy), seed)
    median = leave_one_out_median(operation_groups(cells), measured_latency)
    median = np.where(np.isnan(median), measured_latency, median)  # a lone cell: nothing better to go by
    return {space.key(space.from_key(cell)): {"exact": -a, "noisy": -n, "median": m}
            for cell, a, n, m in zip(cells, measured_accuracy, noisy, median)}


def run_one(job) -> tuple[str, str, str, list[float]]:
    accuracy, latency, variant, (sources, weight), seed, budget = job
    from fleetnas.search.objectives import parse_objective
    from fleetnas.search.replay import ReplayProblem
    from fleetnas.search.tactics import linas
    from fleetnas.tables import read_table

    table = read_table(TABLE)
    problem = ReplayProblem.from_table(table, "nb201", "cellstr",
                                       [parse_objective(f"{accuracy}:max"), parse_objective(f"{latency}:min")])
    if any(sources):
        space = problem.space
        ceiling = ceiling_predictions(space, table, accuracy, latency, seed)

        def override(X: np.ndarray, predicted: np.ndarray) -> np.ndarray:
            keys = [space.key(space.decode(x)) for x in X]
            for j, source in enumerate(sources):
                if source:
                    best = np.array([ceiling[k][source] for k in keys])
                    predicted[..., j] = best if weight == 1 else weight * best + (1 - weight) * predicted[..., j]
            return predicted

        class Ceiling(linas.Surrogates):
            def samples(self, X):
                return override(X, super().samples(X))

            def predict_mean(self, X):
                return override(X, super().predict_mean(X))

        linas.Surrogates = Ceiling  # this process runs one job at a time
    hv = problem.run("linas", seed, budget)["hv"]
    return accuracy, latency, variant, hv


def print_training_noise() -> None:
    from fleetnas.tables import read_table

    table = read_table(TABLE)
    groups = function_groups([row["cellstr"] for row in table.rows])
    shared = sum(len(m) for m in groups if len(m) > 1)
    for accuracy in ACCURACIES:
        y = table.column(accuracy)
        print(f"# {accuracy}: training noise sd {training_noise_sd(groups, y):.2f} points (from {shared} cells in "
              f"same-function groups; all cells sd {y.std():.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=PAIRS, help="comma-separated accuracy:latency columns")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--mix", type=mix_weights, default=[], help="comma-separated weights in [0, 1] of the "
                        "accuracy ± noise ceiling mixed into LINAS's own accuracy predictions")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)} (may be empty with --mix)")
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    # variant -> (what replaces the predictions, the weight of the replacement against LINAS's own)
    chosen = {**{v: (VARIANTS[v], 1.0) for v in variants}, **{mixed(w): (("noisy", None), w) for w in args.mix}}
    if not chosen:
        parser.error("nothing to run: name a variant or give --mix")
    jobs = [(a, lat, v, how, s, args.budget)
            for a, lat in pairs for v, how in chosen.items() for s in range(args.seeds)]
    print_training_noise()
    # One job per child process: the ceiling variants patch the LINAS module they run in.
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        results = list(pool.map(run_one, jobs))
    print(f"{'pair':42s} {'predictors':16s} HV@{args.budget // 2:<4d} HV@{args.budget}")
    for a, lat in pairs:
        for variant in chosen:
            curves = [hv for ra, rl, rv, hv in results if (ra, rl, rv) == (a, lat, variant)]
            half = np.mean([hv[args.budget // 2 - 1] for hv in curves])
            full = np.mean([hv[-1] for hv in curves])
            print(f"{a + ' × ' + lat:42s} {variant:16s} {half:.4f}  {full:.4f}")


def mix_weights(text: str) -> list[float]:
    """`--mix`'s weights, each checked to lie in [0, 1]."""
    weights = [float(w) for w in text.split(",")]
    bad = [w for w in weights if not 0 <= w <= 1]
    if bad:
        raise argparse.ArgumentTypeError(f"a mix weight must lie in [0, 1], got {bad[0]:g}")
    return weights


if __name__ == "__main__":
    main()
