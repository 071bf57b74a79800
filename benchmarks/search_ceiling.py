"""How far LINAS is from what it could reach with better predictors, on NAS-Bench-201.

    .venv/bin/python benchmarks/search_ceiling.py [--pairs imagenet16_test:lat_ms_titanxp_1,...]
                                                  [--seeds 8] [--budget 100] [--jobs 2]

Runs the LINAS loop as it is, then with one objective's predictions replaced by what a perfect predictor of
the architecture would say: accuracy by the table's own value; latency by the median latency of the other
cells with the same multiset of operations (on the eager devices — Gold 6226, Titan Xp, Titan RTX — every
cell with the same operations does the same work, so that median is all an architecture-only predictor can
know; see bench_predictors.py. Pixel 3 folds graphs, and there it is no ceiling).
The gap between the rows says which predictor limits the search.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "data" / "nb201_accuracy_latency.csv"
PAIRS = "imagenet16_test:lat_ms_titanxp_1,cifar10_test:lat_ms_titanxp_1,imagenet16_test:lat_ms_pixel3"
VARIANTS = {"as is": (), "exact accuracy": (0,), "best latency": (1,), "both": (0, 1)}


def best_predictions(space, table, accuracy: str, latency: str) -> dict[str, np.ndarray]:
    """Per configuration key, (accuracy, latency) in minimised form as the ceiling predictors give them."""
    from bench_predictors import leave_one_out_median, operation_groups

    cells = [row["cellstr"] for row in table.rows]
    measured = table.column(latency)
    best = leave_one_out_median(operation_groups(cells), measured)
    best = np.where(np.isnan(best), measured, best)  # a lone cell: nothing better to go by than itself
    return {space.key(space.from_key(cell)): np.array([-a, b])
            for cell, a, b in zip(cells, table.column(accuracy), best)}


def run_one(job) -> tuple[str, str, str, list[float]]:
    accuracy, latency, variant, seed, budget = job
    from fleetnas.search.objectives import parse_objective
    from fleetnas.search.replay import ReplayProblem
    from fleetnas.search.tactics import linas
    from fleetnas.tables import read_table

    table = read_table(TABLE)
    problem = ReplayProblem.from_table(table, "nb201", "cellstr",
                                       [parse_objective(f"{accuracy}:max"), parse_objective(f"{latency}:min")])
    replaced = VARIANTS[variant]
    if replaced:
        space = problem.space
        best = best_predictions(space, table, accuracy, latency)

        def override(X: np.ndarray, predicted: np.ndarray) -> np.ndarray:
            truth = np.stack([best[space.key(space.decode(x))] for x in X])
            predicted[..., replaced] = truth[..., replaced]
            return predicted

        class Ceiling(linas.Surrogates):
            def samples(self, X):
                return override(X, super().samples(X))

            def predict_mean(self, X):
                return override(X, super().predict_mean(X))

        linas.Surrogates = Ceiling  # this process runs one job at a time
    hv = problem.run("linas", seed, budget)["hv"]
    return accuracy, latency, variant, hv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=PAIRS, help="comma-separated accuracy:latency columns")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    jobs = [(a, lat, v, s, args.budget) for a, lat in pairs for v in VARIANTS for s in range(args.seeds)]
    # One job per child process: the ceiling variants patch the LINAS module they run in.
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        results = list(pool.map(run_one, jobs))
    print(f"{'pair':42s} {'predictors':16s} HV@{args.budget // 2:<4d} HV@{args.budget}")
    for a, lat in pairs:
        for variant in VARIANTS:
            curves = [hv for ra, rl, rv, hv in results if (ra, rl, rv) == (a, lat, variant)]
            half = np.mean([hv[args.budget // 2 - 1] for hv in curves])
            full = np.mean([hv[-1] for hv in curves])
            print(f"{a + ' × ' + lat:42s} {variant:16s} {half:.4f}  {full:.4f}")


if __name__ == "__main__":
    main()
