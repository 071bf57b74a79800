"""Predictor accuracy on every latency column of the recorded tables in ../shared/data, and refit time.

    .venv/bin/python benchmarks/bench_predictors.py [--sizes 100,200,500] [--seeds 3] [--only fbnet,nb201]
                                                   [--ceiling 2000] [--drift] [--data ../shared/data] [--out DIR]

The figures of the last full run are in benchmarks/results/predictors.txt.

Runs `fleetnas bench predictor` once per table (JSON per table under --out), then prints one summary table
(table x column x train size: medians over seeds of within ±10 %, within ±5 %, MAPE, Kendall tau, models
chosen), the noise floors readable from the data itself, and the refit time on 500 rows.
`--ceiling N` adds one run with N training rows: what the same method reaches with plenty of data, which
separates "needs more data" from "the table's own noise". `--drift` tests the residuals for drift along
the order the table was recorded in.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HAT_FEATURES = ("encoder_embed_dim,encoder_layer_num,encoder_ffn_embed_dim_avg,encoder_self_attention_heads_avg,"
                "decoder_embed_dim,decoder_layer_num,decoder_ffn_embed_dim_avg,decoder_self_attention_heads_avg,"
                "decoder_ende_attention_heads_avg,decoder_arbitrary_ende_attn_avg")
HAT_TARGETS = ["--target", "latency_mean_encoder", "--target", "latency_mean_decoder",
               "--target-sum", "latency_mean_encoder+latency_mean_decoder"]
TABLES = {
    "fbnet": ("fbnet_latency.csv", ["--space", "fbnet", "--key", "op_idx_list", "--target", "lat_ms_pixel3",
                                    "--target", "lat_ms_gold_6226", "--target", "lat_ms_titanxp_1"]),
    "nb201": ("nb201_accuracy_latency.csv", ["--space", "nb201", "--key", "cellstr", "--target", "lat_ms_pixel3",
                                             "--target", "lat_ms_gold_6226", "--target", "lat_ms_titanxp_1",
                                             "--target", "lat_ms_titan_rtx_32"]),
    "ofa_mbv3": ("ofa_mbv3_latency.csv", ["--space", "ofa_mbv3", "--key", "ks,e,d,r", "--target", "lat_ms_2080ti_1",
                                          "--target", "lat_ms_titan_xp_1", "--target", "lat_ms_titan_rtx_32"]),
    "hat_cpu_xeon": ("wmt14ende_cpu_xeon_all.csv", ["--features", HAT_FEATURES, *HAT_TARGETS]),
    "hat_gpu_titanxp": ("wmt14ende_gpu_titanxp_all.csv", ["--features", HAT_FEATURES, *HAT_TARGETS]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    # Per-run JSON (every test row's truth and prediction) is tens of MB: outside the repository by default.
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fleetnas-bench-predictors")
    ap.add_argument("--sizes", default="100,200,500")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ceiling", type=int, default=0, help="also one seed with this many training rows")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ", ".join(TABLES))
    ap.add_argument("--summary-only", action="store_true", help="summarise the JSON files already in --out")
    ap.add_argument("--drift", action="store_true",
                    help="also test the residuals of the FBNet Gold and HAT columns for drift along the row order "
                         "(cross-fitted on half of each table: tens of minutes)")
    args = ap.parse_args()
    names = [n for n in (args.only.split(",") if args.only else TABLES)]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for name in names:
            run_table(name, args)
    summarise(names, args.out)
    noise_floors(args.data)
    if args.drift:
        drift_along_row_order(args.data)
    if not args.summary_only:
        fit_time(args.data)
    return 0


def run_table(name: str, args) -> None:
    file, options = TABLES[name]
    sizes = [s for s in args.sizes.split(",") if s]
    for label, sizes_, seeds in [("", sizes, args.seeds)] + ([("_ceiling", [str(args.ceiling)], 1)] if args.ceiling else []):
        cmd = [sys.executable, "-m", "fleetnas.cli", "bench", "predictor", "--table", str(args.data / file), *options,
               *[a for s in sizes_ for a in ("--train-size", s)], "--seeds", str(seeds),
               "--json", str(args.out / f"{name}{label}.json")]
        print(f"$ fleetnas {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


def summarise(names: list[str], out: Path) -> None:
    from fleetnas.cli.bench import summarise as medians

    print("\ntable            column                                      train  ±10 %   ±5 %   MAPE %  Kendall τ  fit s  models")
    for name in names:
        for label in ("", "_ceiling"):
            path = out / f"{name}{label}.json"
            if not path.exists():
                continue
            for row in medians(json.loads(path.read_text())["runs"]):
                print(f"{name:16s} {row['target']:42s} {row['train_size']:6d} {row['within_10']:6.1%} {row['within_5']:6.1%} "
                      f"{row['mape']:7.2f}  {row['kendall_tau']:8.3f}  {row['fit_seconds']:5.2f}  {row['models']}")


def noise_floors(data: Path) -> None:
    """What the tables' own measurements allow, read from the data alone."""
    print("\nNoise floors read from the data")
    for file in ("wmt14ende_cpu_xeon_all.csv", "wmt14ende_gpu_titanxp_all.csv"):
        rows = list(csv.DictReader((data / file).open()))
        for part in ("encoder", "decoder"):
            mean = np.array([float(r[f"latency_mean_{part}"]) for r in rows])
            std = np.array([float(r[f"latency_std_{part}"]) for r in rows])
            cv = std / mean
            # If one more measurement of the same config were drawn from the recorded spread, how often
            # would it land within ±10 % / ±5 % of the recorded mean?  (normal model of the spread)
            from scipy.stats import norm
            within10 = np.mean(2 * norm.cdf(0.10 / cv) - 1)
            within5 = np.mean(2 * norm.cdf(0.05 / cv) - 1)
            print(f"  {file} {part}: per-run std / mean median {np.median(cv):.2%}, p90 {np.percentile(cv, 90):.2%}; "
                  f"a single run lands within ±10 % of the mean {within10:.1%}, ±5 % {within5:.1%}")
    same_features_spread(data)
    rows = list(csv.DictReader((data / "nb201_accuracy_latency.csv").open()))
    from fleetnas.supernets import get_supernet
    from fleetnas.supernets.nb201 import live_edges
    space = get_supernet("nb201").space
    constant = [r for r in rows if not live_edges(space.from_key(r["cellstr"]))]
    for column in ("lat_ms_pixel3", "lat_ms_gold_6226", "lat_ms_titanxp_1", "lat_ms_titan_rtx_32"):
        v = np.array([float(r[column]) for r in constant])
        print(f"  nb201 {column}: {len(constant)} cells whose output cannot depend on the input (no non-none path "
              f"to node 3) measure {np.percentile(v, 10):.3g} / {np.median(v):.3g} / {np.percentile(v, 90):.3g} ms "
              f"(p10 / median / p90); min {v.min():.3g}, max {v.max():.3g}")
    same_graph_spread(rows, space)
    same_work_spread(rows)


def same_features_spread(data: Path) -> None:
    """HAT's tables give averages over layers, not each layer's choices. Rows that agree on every feature of
    the encoder (or decoder) are the same as far as any predictor of these tables can tell: how far their
    latencies spread around their group's mean bounds what any such predictor can score."""
    from collections import defaultdict

    for file in ("wmt14ende_cpu_xeon_all.csv", "wmt14ende_gpu_titanxp_all.csv"):
        rows = list(csv.DictReader((data / file).open()))
        for part in ("encoder", "decoder"):
            columns = [c for c in HAT_FEATURES.split(",") if c.startswith(part)]
            groups = defaultdict(list)
            for r in rows:
                groups[tuple(round(float(r[c]), 4) for c in columns)].append(float(r[f"latency_mean_{part}"]))
            # Deviation from the group's mean, scaled so that small groups do not look tighter than they are.
            spread = np.concatenate([(np.array(v) / np.mean(v) - 1) * np.sqrt(len(v) / (len(v) - 1))
                                     for v in groups.values() if len(v) > 1])
            print(f"  {file} {part}: {len(spread)} rows share all {len(columns)} {part} features with another row; "
                  f"around their group's mean {np.mean(np.abs(spread) <= 0.10):.1%} lie within ±10 %, "
                  f"{np.mean(np.abs(spread) <= 0.05):.1%} within ±5 %")


def same_work_spread(rows: list[dict]) -> None:
    """On the machines that ran the cell eagerly (PyTorch: a `none` edge is a multiplication by zero, nothing
    folds), cells with the same multiset of operations do the same work whatever edge holds which. The
    leave-one-out median of the other cells of a cell's multiset is then the best an architecture-only
    predictor can say of it; what stays is the recording's own noise, and whether that noise drifts along the
    table's row order (the order it was recorded in) says whether the machine changed while it was recorded."""
    groups = operation_groups([r["cellstr"] for r in rows])
    for column in ("lat_ms_gold_6226", "lat_ms_titanxp_1", "lat_ms_titan_rtx_32"):
        y = np.array([float(r[column]) for r in rows])
        best, residual = leave_one_out_median(groups, y), np.empty(len(y))
        for members in groups:
            residual[members] = y[members] / np.median(y[members]) - 1
        known = ~np.isnan(best)
        lag1 = np.corrcoef(residual[:-1], residual[1:])[0, 1]
        drift = _running_median(residual, 51)
        steady = (1 + residual) / (1 + drift) - 1
        print(f"  nb201 {column}: {len(groups)} operation multisets; the leave-one-out median of a cell's multiset "
              f"predicts {np.mean(np.abs(best[known] / y[known] - 1) <= 0.10):.1%} within ±10 %; residuals along the row order: "
              f"lag-1 autocorrelation {lag1:.2f}, within ±10 % once a 51-row running median is divided out "
              f"{np.mean(np.abs(steady) <= 0.10):.1%}")


def operation_groups(cellstrs: list[str]) -> list[np.ndarray]:
    """Row indices of the NB201 cells that share a multiset of operations, one array per multiset."""
    import re

    return groups_by([tuple(sorted(re.findall(r"\|([a-z0-9_]+)~\d", cell))) for cell in cellstrs])


def groups_by(keys: list) -> list[np.ndarray]:
    """Row indices grouped by equal key, one array per key, in order of first appearance."""
    from collections import defaultdict

    groups: dict[object, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return [np.array(members) for members in groups.values()]


def leave_one_out_median(groups: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Per row, the median of `y` over the other rows of its group (NaN for a lone row: none to go by)."""
    best = np.full(len(y), np.nan)
    for members in groups:
        if len(members) < 2:
            continue
        for i in members:
            best[i] = np.median(y[members[members != i]])
    return best


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    padded = np.pad(values, (width // 2, width // 2), mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)


def drift_along_row_order(data: Path) -> None:
    """Did the machine drift while a table was recorded? Each row is predicted by a model fitted on the other
    half of the table (alternate rows), and the residuals are read in the table's row order: measurement
    noise is independent from row to row, a drifting machine makes neighbours err alike. Dividing out a
    51-row running median of the residual shows what the predictions would score against a steady machine."""
    from fleetnas.predictors import fit_predictor
    from fleetnas.predictors.features import config_features, feature_views
    from fleetnas.supernets import get_supernet
    from fleetnas.tables import read_table

    print("\nDrift along the row order (cross-fitted on alternate rows)")
    fbnet = get_supernet("fbnet")
    rows = list(csv.DictReader((data / "fbnet_latency.csv").open()))
    X, names = config_features(fbnet, [fbnet.space.from_key(r["op_idx_list"]) for r in rows])
    cases = {"fbnet lat_ms_gold_6226": (X[:, feature_views(names)["compact"]],
                                        np.array([float(r["lat_ms_gold_6226"]) for r in rows]))}
    for file, label in (("wmt14ende_cpu_xeon_all.csv", "hat_cpu_xeon"), ("wmt14ende_gpu_titanxp_all.csv", "hat_gpu_titanxp")):
        hat = read_table(data / file)
        for part in ("encoder", "decoder"):
            cases[f"{label} latency_mean_{part}"] = (hat.features(HAT_FEATURES.split(",")),
                                                     hat.column(f"latency_mean_{part}"))
    for label, (X, y) in cases.items():
        predicted, rows_ = np.empty(len(y)), np.arange(len(y))
        for half in (0, 1):
            train, test = rows_[rows_ % 2 != half], rows_[rows_ % 2 == half]
            predicted[test] = fit_predictor(X[train], y[train], models=("ridge", "svr")).predict(X[test])
        residual = y / predicted - 1
        steady = (1 + residual) / (1 + _running_median(residual, 51)) - 1
        print(f"  {label}: {len(y) // 2} training rows, within ±10 % {np.mean(np.abs(residual) <= 0.10):.1%}; "
              f"lag-1 autocorrelation of the residuals {np.corrcoef(residual[:-1], residual[1:])[0, 1]:.2f}; "
              f"within ±10 % once their 51-row running median is divided out {np.mean(np.abs(steady) <= 0.10):.1%}")


def same_graph_spread(rows: list[dict], space) -> None:
    """Pixel 3 ran converted graphs, and the converter folds what is constant (the input-independent cells
    above measure microseconds): cells with the same live edges and operations run the same graph, so how far
    they spread around their group's median is the recording's own noise."""
    from collections import defaultdict

    from fleetnas.supernets.nb201 import edge_name, live_edges
    groups = defaultdict(list)
    for r in rows:
        config = space.from_key(r["cellstr"])
        live = live_edges(config)
        if live:
            groups[tuple((t, s, config[edge_name(t, s)]) for t, s in live)].append(float(r["lat_ms_pixel3"]))
    ratios = np.concatenate([np.array(v) / np.median(v) for v in groups.values() if len(v) > 1])
    shared = sum(len(v) > 1 for v in groups.values())
    print(f"  nb201 lat_ms_pixel3: {len(ratios)} cells in {shared} groups that run one graph each; within ±10 % of "
          f"their group's median {np.mean(np.abs(ratios - 1) <= 0.10):.1%}, ±5 % {np.mean(np.abs(ratios - 1) <= 0.05):.1%}")


def fit_time(data: Path) -> None:
    """Wall and CPU seconds of one fit_predictor (model selection included) on 500 rows, median of 3."""
    from fleetnas.predictors import fit_predictor
    from fleetnas.predictors.features import config_features, feature_views
    from fleetnas.supernets import get_supernet

    print("\nRefit time on 500 rows (5-fold CV selection over ridge, SVR, LightGBM, MLP, raw and log y, feature views)")
    rows = list(csv.DictReader((data / "fbnet_latency.csv").open()))[:500]
    fbnet = get_supernet("fbnet")
    X, names = config_features(fbnet, [fbnet.space.from_key(r["op_idx_list"]) for r in rows])
    views = feature_views(names)
    cases = {"fbnet pixel3": (X, np.array([float(r["lat_ms_pixel3"]) for r in rows]), views),
             "fbnet gold_6226": (X, np.array([float(r["lat_ms_gold_6226"]) for r in rows]), views)}
    hat = list(csv.DictReader((data / "wmt14ende_gpu_titanxp_all.csv").open()))[:500]
    cases["hat gpu decoder"] = (np.array([[float(r[c]) for c in HAT_FEATURES.split(",")] for r in hat]),
                                np.array([float(r["latency_mean_decoder"]) for r in hat]), None)
    for label, (X, y, views) in cases.items():
        wall, cpu, chosen = [], [], None
        for seed in range(3):
            t, c = time.perf_counter(), time.process_time()
            p = fit_predictor(X, y, seed=seed, views=views)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            chosen = p.model_name
        print(f"  {label} ({X.shape[1]} features): median {np.median(wall):.2f} s wall, {np.median(cpu):.2f} s CPU; "
              f"chose {chosen}")


if __name__ == "__main__":
    sys.exit(main())
