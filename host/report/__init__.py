"""Reports of search runs: a self-contained HTML page with its figures, and the front as CSV and JSON.

    write_report(store, run_id, out_dir) -> Path of index.html

Figures (PNG, also embedded in the page): the Pareto front of every pair of objectives (all measured
points, the measured front with its configurations numbered, the predictors' final front), hypervolume
after each real evaluation, and one parity plot per objective (what the predictor expected of each
candidate before it was measured, against what was measured).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np

from ..export.artifact import atomic_write
from ..store import canonical_json
from ..search.hypervolume import non_dominated
from ..search.objectives import minimised, shown, shown_unit, stored_unit
from ..search.run import (HV_REFERENCE_AFTER, constraint_warnings, feasible, load_spec, measured_front, member_values,
                          run_state)


def write_report(store, run_id: int, out_dir: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")

    spec = load_spec(store, run_id)  # an unknown run stops here, before any folder is made
    out = Path(out_dir)
    _refuse_foreign_folder(out)  # before the figures: a large run's take tens of seconds to draw
    run = store.run(run_id)
    state = run_state(store, run)  # "interrupted" where the stored "running" has no process behind it
    objectives = spec.parsed_objectives()
    members = store.run_members(run_id, source="measured")
    values = member_values(members, objectives)
    predicted_values = member_values(store.run_members(run_id, source="predicted"), objectives)
    met = values[feasible(values, objectives, spec.parsed_constraints())]
    front_configs, front_values, _ = measured_front(store, run_id)
    failed = [{"config": json.dumps(e.payload.get("config")), "error": str(e.payload.get("error"))}
              for e in store.run_events(run_id, "failed")]  # configs that could not be evaluated

    figures = {}
    for i, j in combinations(range(len(objectives)), 2):
        figures[f"front_{i}_{j}.png"] = (
            _front_figure(objectives, i, j, values, met, front_values, predicted_values) if len(values)
            else _note_figure(f"no evaluation gave values ({len(failed)} failed): nothing to draw"))
    figures["hypervolume.png"] = _hypervolume_figure(store.run_events(run_id, "hypervolume"), len(values))
    parity = _parity_pairs(store, run_id, members, objectives)
    if parity:
        figures["parity.png"] = _parity_figure(objectives, parity)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"rank": k + 1, **{o.name: float(v) for o, v in zip(objectives, row)}, "config": json.dumps(c)}
            for k, (c, row) in enumerate(zip(front_configs, front_values))]
    # First, so that a report interrupted after it is still known for a report's folder and rewritten.
    # State, budget and evaluations: a front read from an unfinished run must not pass for a final one.
    # Files are written whole and as UTF-8 whatever the locale (the page says so).
    atomic_write(out / "front.json", json.dumps({
        "run": run_id, "name": run.name, "state": state, "budget": spec.budget,
        "evaluations": len(members) + len(failed), "failed": len(failed), "space": spec.space,
        "objectives": spec.objectives, "constraints": spec.constraints,
        "units": {o.name: stored_unit(o) for o in objectives if stored_unit(o)},
        "front": [{**r, "config": c} for r, c in zip(rows, front_configs)]}, indent=2, allow_nan=False).encode())
    _remove_stale_figures(out, figures)
    for name, png in figures.items():  # each whole or not at all: a full disk leaves no cut-off figure
        atomic_write(out / name, png)
    heads = {o.name: f"{o.name} ({stored_unit(o)})" if stored_unit(o) else o.name for o in objectives}
    _write_csv(out / "front.csv", [{heads.get(k, k): v for k, v in r.items()} for r in rows],
               ["rank", *heads.values(), "config"])
    known = store.run_events(run_id, "known")
    warnings = constraint_warnings(store, run_id)
    page = _page(run, state, spec, len(members), _shown_rows(rows, objectives), warnings, failed, figures,
                 _device_rows(store, spec, objectives, [m.config for m in members]),
                 known[0].payload if known else {})
    atomic_write(out / "index.html", page.encode("utf-8"))
    return out / "index.html"


def _shown_rows(rows: list[dict], objectives) -> list[dict]:
    """The front's rows as the page shows them: each objective in its shown unit (MiB, not bytes), named in
    its column's head; front.csv and front.json keep the stored units."""
    heads = {}
    for o in objectives:
        unit, factor = shown_unit(o)
        heads[o.name] = (f"{o.name} ({unit})" if unit else o.name, factor)
    return [{heads[k][0] if k in heads else k: v * heads[k][1] if k in heads else v for k, v in r.items()}
            for r in rows]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _front_figure(objectives, i, j, values, met, front, predicted) -> bytes:
    """Objective i against objective j (x): every measured point, the staircase of those that meet the
    constraints (`met`), the run's front numbered, and the predictors' final front."""
    import matplotlib.pyplot as plt

    (y_label, y_factor), (x_label, x_factor) = shown(objectives[i]), shown(objectives[j])
    scale = np.array([1.0] * len(objectives))
    scale[[i, j]] = y_factor, x_factor
    values, met, front, predicted = (np.asarray(v).reshape(-1, len(objectives)) * scale
                                     for v in (values, met, front, predicted))
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(values[:, j], values[:, i], s=14, color="#b0b7c3", label=f"measured ({len(values)})")
    if len(predicted):
        ax.scatter(predicted[:, j], predicted[:, i], s=10, marker="x", color="#e39b3b", alpha=0.7,
                   label="predicted front (final predictors)")
    if len(met):  # the staircase of this pair alone; with more objectives the front has points off it
        x, y, where = staircase(met[:, j], met[:, i], objectives[j], objectives[i])
        ax.step(x, y, where=where, color="#1f5fa8", lw=1.2, alpha=0.6)
    if len(front):
        ax.scatter(front[:, j], front[:, i], s=36, color="#1f5fa8", zorder=3, label=f"measured front ({len(front)})")
        for k, (x, y) in enumerate(zip(front[:, j], front[:, i])):
            ax.annotate(str(k + 1), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color="#1f5fa8")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{objectives[i].name} against {objectives[j].name}")
    return _png(fig)


def staircase(x: np.ndarray, y: np.ndarray, x_objective, y_objective) -> tuple[np.ndarray, np.ndarray, str]:
    """The front of the points (x, y) as matplotlib's `step` draws it: its points in x order, and `where` its
    corners go. They lie on the dominated side, whatever the directions: after each point when x is minimised
    (the next point is worse in x), before it when x is maximised."""
    pair = np.column_stack([x, y])
    pair = pair[non_dominated(minimised(pair, [x_objective, y_objective]))]
    order = np.argsort(pair[:, 0], kind="stable")
    return pair[order, 0], pair[order, 1], "post" if x_objective.direction == "min" else "pre"


def _note_figure(text: str) -> bytes:
    """A figure that says why there is nothing to draw, where axes alone would read as data."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#666")
    return _png(fig)


def _hypervolume_figure(events, n_with_values: int) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not events:
        return _note_figure("no hypervolume: no evaluation gave values" if not n_with_values else
                            f"no hypervolume yet: it is recorded from the {HV_REFERENCE_AFTER}th evaluation with "
                            "values on\n(under constraints, from the first that meets them), or when the run ends")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    # markers as well as the line: a run of one evaluation is one point, which a line alone does not draw
    evaluations = [e.payload["evaluations"] for e in events]
    ax.plot(evaluations, [e.payload["hv"] for e in events], color="#1f5fa8", marker="o", markersize=3)
    if max(evaluations) - min(evaluations) < 2:  # room for whole numbers either side of one or two points
        ax.set_xlim(min(evaluations) - 1, max(evaluations) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # evaluations are counted: no tick at 0.5
    ax.set_xlabel("real evaluations")
    ax.set_ylabel("hypervolume (normalised)")
    ax.grid(alpha=0.3)
    ax.set_title("hypervolume of the measured front after each real evaluation")
    return _png(fig)


def _parity_pairs(store, run_id, members, objectives) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{objective: (predicted before measuring, measured)} for every candidate LINAS predicted."""
    measured = {json.dumps(m.config, sort_keys=True): m.objectives for m in members}
    pairs: dict[str, list[tuple[float, float]]] = {o.name: [] for o in objectives}
    for event in store.run_events(run_id, "prediction"):
        truth = measured.get(json.dumps(event.payload["config"], sort_keys=True))
        if truth is not None:
            for o in objectives:
                pairs[o.name].append((event.payload["mean"][o.name], truth[o.name]))
    return {name: tuple(np.array(p).T) for name, p in pairs.items() if len(p) >= 2}


def _parity_figure(objectives, parity) -> bytes:
    import matplotlib.pyplot as plt

    from ..predictors import regression_metrics

    drawn = [o for o in objectives if o.name in parity]
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 4), squeeze=False, layout="constrained")
    for ax, o in zip(axes[0], drawn):
        predicted, measured = parity[o.name]
        m = regression_metrics(measured, predicted)
        label, factor = shown(o)
        label = label.split(",")[0]  # which way is better says nothing here
        predicted, measured = predicted * factor, measured * factor
        ax.scatter(measured, predicted, s=12, color="#1f5fa8")
        low, high = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
        ax.plot([low, high], [low, high], color="#888", lw=1)
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"predicted {label} (before measuring)")
        ax.set_title(f"{o.name}: τ={m['kendall_tau']:.2f}, ±10% {m['within_10']:.0%}", fontsize=10)
        ax.locator_params(nbins=5)  # a narrow panel's tick labels (100000, 120000…) would run together
        ax.ticklabel_format(style="sci", scilimits=(-3, 4))
        ax.grid(alpha=0.3)
    return _png(fig)


def _device_rows(store, spec, objectives, configs) -> list[dict]:
    """The devices that measured `configs` (the run's) on each of the run's kinds with the run's settings,
    read from the measurements: one machine may serve several kinds (one agent per thread count, say), and the
    devices table keeps only its latest. Another run's or a calibration's devices of the kind are left out,
    unless they measured a config of this run as the run measures it, which the farm then answered from the
    store. Configs are compared by the network they build: an artifact is stored under the first config of its
    network that was exported."""
    space = spec.space
    network = _network_of_space(space)
    wanted = {canonical_json(network(c)) for c in configs}
    artifact_config: dict[str, str] = {}
    rows = []
    for kind in sorted({o.device_kind for o in objectives if o.device_kind}):
        agents = {}
        for m in store.measurements(space=space, device_kind=kind, include_stale=True,  # stale: a later drift's
                                    settings_hash=_settings_hash(spec, kind)):
            if m.artifact not in artifact_config:
                artifact = store.artifact(m.artifact)
                known = artifact is not None and artifact.config is not None
                artifact_config[m.artifact] = canonical_json(network(artifact.config)) if known else ""
            if artifact_config[m.artifact] in wanted:
                agents.setdefault(m.device_id, m.agent)
        for device_id, agent in agents.items():
            device = store.device(device_id)
            d = (device.description if device else None) or {}
            rows.append({"kind": kind, "label": agent or (device.label if device else ""), "id": device_id,
                         "cpu": d.get("cpu_model", ""), "os": d.get("os", ""),
                         "runtimes": ", ".join(f"{r['name']} {r.get('version', '')}" for r in d.get("runtimes", [])
                                               if r.get("available"))})
    return rows


def _settings_hash(spec, kind: str) -> str | None:
    """The settings hash the run's measurements on `kind` carry (runtime and threads as the run started with,
    its stopping rule, seed 0); None for a run stored before it noted how it measured."""
    from ..farm.jobs import JobError, Settings

    measured = (spec.measured_with or {}).get(kind)
    if not measured:
        return None
    try:
        return Settings(measured["runtime"], measured["threads"], spec.stopping or {}, 0).hash
    except (JobError, KeyError, TypeError):  # settings this version cannot read: no filter, rather than no row
        return None


def _network_of_space(space: str):
    """`network_of` the space's super-network; each config its own network where there is none to ask (a
    plug-in space this process has not loaded) and where a config no longer fits the space (stored by an older
    version of it)."""
    from ..supernets import get_supernet
    from ..supernets.base import network_of

    try:
        network = network_of(get_supernet(space))
    except KeyError:
        network = None

    def of(config: dict) -> dict:
        try:
            return network(config) if network else config
        except ValueError:  # InvalidConfig
            return config
    return of


#: The files a report writes: its figures (`front_I_J.png` for each pair of objectives), page and front.
REPORT_FILE = re.compile(r"front_\d+_\d+\.png|hypervolume\.png|parity\.png|index\.html|front\.(csv|json)")


class ForeignFolder(ValueError):
    """The output folder holds files that no report wrote: writing there could replace or remove them."""


def _refuse_foreign_folder(out: Path) -> None:
    """A report goes to a new folder, an empty one, or one an earlier report wrote (it is rewritten): a user's
    folder of other files is never written into, since a report replaces and prunes files by name. An earlier
    report's folder holds regular files with a report's names, its front.json a report's (written first);
    hidden files (a file manager's .DS_Store) are neither judged nor touched."""
    if not out.is_dir():
        return
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    foreign = sorted(p.name for p in entries if p.is_symlink() or not p.is_file() or not REPORT_FILE.fullmatch(p.name))
    if entries and not foreign and not _is_report_front(out / "front.json"):
        foreign = sorted(p.name for p in entries)  # a user's index.html, say: names alone do not make a report
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ForeignFolder(f"{out} holds files that are not a FleetNAS report ({shown}); give a new or empty "
                            "folder, or one an earlier report wrote")


def _is_report_front(path: Path) -> bool:
    try:
        front = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(front, dict) and {"run", "front", "objectives"} <= front.keys()


def _remove_stale_figures(out: Path, figures: dict[str, bytes]) -> None:
    """An earlier report in the same folder (another run, other objectives) may have left figures this one
    does not draw; they would sit beside the new page as if they belonged to it."""
    for old in out.glob("*.png"):
        if REPORT_FILE.fullmatch(old.name) and old.name not in figures:
            old.unlink()


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()  # the header even with no rows: readers expect it
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode("utf-8"))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _page(run, state: str, spec, n_measured: int, front_rows, warnings: list[str], failed: list[dict],
          figures: dict[str, bytes], devices, known: dict) -> str:
    images = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     f"<figcaption>{name}</figcaption></figure>" for name, png in figures.items())
    settings = html.escape(json.dumps({k: v for k, v in spec.__dict__.items() if v}, indent=1))
    learned = ("" if not known else " Its predictors also learned from what the store held before it started: "
               + ", ".join(f"{n} values of <b>{html.escape(name)}</b>" for name, n in known.items()) + ".")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FleetNAS run {run.id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1.5rem; }}
td, th {{ border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }}
td:last-child {{ text-align: left; font-family: monospace; font-size: 0.75rem; }}
figure {{ display: inline-block; margin: 0.5rem; }} img {{ max-width: 100%; }}
pre {{ background: #f6f7f9; padding: 0.75rem; font-size: 0.8rem; }}
</style></head><body>
<h1>FleetNAS search run {run.id}{f" ({html.escape(run.name)})" if run.name else ""}</h1>
<p>Space <b>{html.escape(spec.space)}</b>, tactic <b>{html.escape(run.tactic)}</b>, {n_measured + len(failed)} real
evaluations of a budget of {spec.budget}{f", {len(failed)} of which failed" if failed else ""};
state <b>{html.escape(state)}</b>.{learned}</p>
<h2>Best trade-offs (measured Pareto front)</h2>
{_table(front_rows)}{"".join(f"<p>warning: {html.escape(line)}</p>" for line in warnings)}
<h2>Figures</h2>
{images}
{"<h2>Evaluations that failed</h2>" + _table(failed) if failed else ""}
<h2>Devices</h2>
{_table(devices)}
<h2>Settings</h2>
<pre>{settings}</pre>
</body></html>
"""
