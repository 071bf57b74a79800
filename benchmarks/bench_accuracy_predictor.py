"""How well LINAS's accuracy predictor ranks NAS-Bench-201 cells, from random training rows, without a search.

    .venv/bin/python benchmarks/bench_accuracy_predictor.py [--rows 50,100,200,400] [--seeds 6] [--jobs 2]
                                                            [--only imagenet16_test] [--mix 0.25,0.5]

search_ceiling.py puts what LINAS misses on the accuracy predictor; a search loop takes half an hour to say
whether a change to it helps. This takes minutes: the predictor is fitted as LINAS fits it (the configs'
canonical forms, `Featurizer`; `_fit_options` for a quality to maximise) on N random cells, and predicts
all 15,625. Per accuracy column and N, the means over seeds of:
- Kendall τ between predicted and recorded accuracy, over every cell and over the best 10 %;
- per latency column, the hypervolume fraction of the cells that the predicted accuracy and the recorded
  latency make non-dominated: the front the predictor would hand over if every cell's latency were known
  (normalised and scored against the true front as `ReplayProblem` scores a search).
Two reference rows need no training: "params" ranks by the analytic parameter count alone, and
"± training noise" is the recorded accuracy plus a fresh draw of retraining noise (search_ceiling.py's
`training_noise_sd`): what an architecture-only predictor that knew every expected accuracy would score.
`--mix W,...` adds, per N and weight w, the predictor's output mixed with that reference,
w × (accuracy ± training noise) + (1 − w) × predicted: the rankings whose searches search_ceiling.py's `--mix`
replays.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from bench_search import ACCURACIES, LATENCIES  # the columns the search benchmark replays
from search_ceiling import mix_weights

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "data" / "nb201_accuracy_latency.csv"


@lru_cache(maxsize=1)  # a worker process fits many predictors on one column
def load(accuracy: str):
    """(canonical feature matrix, the Featurizer's feature views, recorded accuracy,
    {latency column: (recorded latency, its replay problem with accuracy)}, cellstrs)."""
    from fleetnas.search.objectives import Objective
    from fleetnas.search.replay import ReplayProblem
    from fleetnas.search.tactics.linas import Featurizer
    from fleetnas.supernets.nb201 import SPACE
    from fleetnas.tables import read_table

    table = read_table(TABLE)
    cells = [row["cellstr"] for row in table.rows]
    featurize = Featurizer(SPACE)
    features = featurize(featurize.canonical(SPACE.encode_many([SPACE.from_key(c) for c in cells])))
    problems = {lat: ReplayProblem.from_table(table, "nb201", "cellstr",
                                              [Objective(accuracy, "max"), Objective(lat, "min")])
                for lat in LATENCIES}
    latencies = {lat: (table.column(lat), problems[lat]) for lat in LATENCIES}
    return features, featurize.views, table.column(accuracy), latencies, cells


def front_fraction(predicted: np.ndarray, accuracy: np.ndarray, latency: np.ndarray, problem) -> float:
    """Hypervolume fraction, against the true front (`problem`'s), of the cells non-dominated under the
    predicted accuracy."""
    from fleetnas.search.hypervolume import hypervolume, non_dominated
    from fleetnas.search.replay import REF

    chosen = non_dominated(np.stack([-predicted, latency], axis=1))
    true = np.stack([-accuracy, latency], axis=1)
    return hypervolume(problem.normaliser(true[chosen]), np.full(2, REF)) / problem.true_hv


def scores(predicted: np.ndarray, accuracy: np.ndarray, latencies: dict) -> list[float]:
    from scipy.stats import kendalltau

    best = accuracy >= np.quantile(accuracy, 0.9)
    return ([kendalltau(predicted, accuracy)[0], kendalltau(predicted[best], accuracy[best])[0]]
            + [front_fraction(predicted, accuracy, *latencies[lat]) for lat in LATENCIES])


def fitted(job) -> list[tuple[str, str, list[float]]]:
    """Scores of the predictor fitted on `rows` random cells (seed `seed`), alone and mixed with the
    ± training noise reference by each weight in `mix`."""
    accuracy_column, rows, seed, mix = job
    from fleetnas.predictors import fit_predictor
    from fleetnas.search.objectives import Objective
    from fleetnas.search.tactics.linas import _fit_options

    features, views, accuracy, latencies, _ = load(accuracy_column)
    train = np.random.default_rng(seed).choice(len(accuracy), rows, replace=False)
    predictor = fit_predictor(features[train], accuracy[train], seed=seed, views=views,
                              **_fit_options(Objective(accuracy_column, "max"), "auto"))
    predicted = predictor.predict(features, bounded=False)
    out = [(accuracy_column, f"{rows} rows", scores(predicted, accuracy, latencies))]
    noisy = noisy_accuracy(accuracy_column, seed) if mix else None
    for weight in mix:
        out.append((accuracy_column, f"{rows} rows mix {weight:g}",
                    scores(weight * noisy + (1 - weight) * predicted, accuracy, latencies)))
    return out


def noisy_accuracy(accuracy_column: str, seed: int) -> np.ndarray:
    """The recorded accuracy plus a fresh draw (seeded) of retraining noise: the "± training noise" reference,
    drawn as search_ceiling.py draws its "accuracy ± noise" ceiling."""
    from search_ceiling import with_training_noise

    return with_training_noise(load(accuracy_column)[2], training_noise(accuracy_column), seed)


@lru_cache(maxsize=None)  # grouping the 15,625 cells takes a third of a second; every seed draws with it
def training_noise(accuracy_column: str) -> float:
    from search_ceiling import function_groups, training_noise_sd

    _, _, accuracy, _, cells = load(accuracy_column)
    return training_noise_sd(function_groups(cells), accuracy)


def references(accuracy_column: str, seeds: int) -> list[tuple[str, str, list[float]]]:
    from fleetnas.supernets.nb201 import SUPERNET, SPACE

    _, _, accuracy, latencies, cells = load(accuracy_column)
    params = np.array([SUPERNET.analytic_features(SPACE.from_key(c))["params"] for c in cells])
    out = [(accuracy_column, "params", scores(params, accuracy, latencies))]
    for seed in range(seeds):
        noisy = noisy_accuracy(accuracy_column, seed)
        out.append((accuracy_column, "± training noise", scores(noisy, accuracy, latencies)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="50,100,200,400", help="comma-separated training sizes")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default=",".join(ACCURACIES), help="comma-separated accuracy columns")
    parser.add_argument("--mix", type=mix_weights, default=[], help="comma-separated weights in [0, 1] of the "
                        "± training noise reference mixed into the predictor's output")
    args = parser.parse_args()
    columns = args.only.split(",")
    sizes = [int(n) for n in args.rows.split(",")]
    jobs = [(column, n, seed, args.mix) for column in columns for n in sizes for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = [result for job in pool.map(fitted, jobs) for result in job]
    for column in columns:
        results += references(column, args.seeds)
    print(f"{'accuracy':16s} {'predictor':18s} {'τ':>6s} {'τ top10%':>8s}  one-shot front HV: "
          + " ".join(f"{lat[7:]:>12s}" for lat in LATENCIES))
    for column in columns:
        for name in dict.fromkeys(name for c, name, _ in results if c == column):
            mean = np.mean([s for c, n, s in results if (c, n) == (column, name)], axis=0)
            print(f"{column:16s} {name:18s} {mean[0]:6.3f} {mean[1]:8.3f}                    "
                  + " ".join(f"{v:12.4f}" for v in mean[2:]))


if __name__ == "__main__":
    main()
