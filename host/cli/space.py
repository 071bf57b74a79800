"""`fleetnas space`: the search spaces installed (built-in and users' own), and configs sampled from them."""
from __future__ import annotations

import argparse
import json

from .common import CliError, batch_size, seed, positive_int, print_json

#: The most configs one `space sample` prints (each may be built to count its features).
MAX_SAMPLE = 100_000


def register(sub) -> None:
    p = sub.add_parser("space", help="list search spaces, sample configs")
    ssub = p.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    ls = ssub.add_parser("list", help="the installed search spaces: id, size, buildable or table-only")
    ls.add_argument("--json", action="store_true", help="print one JSON array")
    ls.set_defaults(handler=list_spaces)
    s = ssub.add_parser("sample", help="sample configs (with MACs, parameters, activation bytes where buildable)")
    s.add_argument("name", metavar="NAME", help="space id, as `fleetnas space list` shows it")
    s.add_argument("--n", type=positive_int, default=5,
                   help=f"how many configs, drawn independently, so a repeat is possible (default 5, at most "
                        f"{MAX_SAMPLE:,})")
    s.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    s.add_argument("--batch", type=batch_size, help="batch size the features are counted for (default 1; "
                   "buildable spaces only)")
    s.add_argument("--json", action="store_true", help="print one JSON array instead of one JSON object a line")
    s.set_defaults(handler=sample)


def load_supernet(name: str):
    from fleetnas.supernets import get_supernet, list_supernets

    if name not in list_supernets():
        raise CliError(f"unknown space {name!r}; installed: {', '.join(list_supernets())}")
    try:
        return get_supernet(name)
    except ImportError as exc:
        raise CliError(str(exc)) from None


def list_spaces(args: argparse.Namespace) -> int:
    from fleetnas.supernets import get_supernet, list_supernets

    rows = []
    for name in list_supernets():
        try:
            supernet = get_supernet(name)
        except ImportError as exc:  # one broken plug-in must not hide the others
            rows.append({"id": name, "size": None, "kind": "unavailable", "description": str(exc)})
            continue
        space = supernet.space
        rows.append({"id": name, "size": _count(space.valid_size), "choices_product": _count(space.size),
                     "variables": space.n_var,
                     "kind": "table-only" if supernet.table_only else "buildable", "description": space.description})
    if args.json:
        print_json(rows)
        return 0
    width = max((len(r["id"]) for r in rows), default=2)
    for r in rows:
        # A space with a validity rule too large to count shows its product of choices as an upper bound.
        size = ("-" if r["kind"] == "unavailable" else f"{r['size']:.3g}" if r["size"] is not None
                else f"≤{r['choices_product']:.3g}")
        print(f"{r['id']:<{width}}  {size:>9}  {r['kind']:<11}  {r['description']}")
    return 0


def _count(size: float | None) -> int | float | None:
    """A number of configurations as a whole number where a float holds it exactly (JSON readers count them)."""
    return int(size) if size is not None and float(size).is_integer() and abs(size) < 2 ** 53 else size


def sample(args: argparse.Namespace) -> int:
    if args.n > MAX_SAMPLE:
        raise CliError(f"--n {args.n} is more than the {MAX_SAMPLE:,} configs one sample prints", 2)
    supernet = load_supernet(args.name)
    if supernet.table_only and args.batch is not None:
        raise CliError(f"--batch: {args.name} is table-only; its configs have no counted features to batch", 2)
    from fleetnas.supernets.base import BuildError
    from fleetnas.supernets.space import NoValidConfig

    try:
        configs = supernet.space.sample(args.n, args.seed)
    except NoValidConfig as exc:  # a validity rule that (nearly) nothing meets
        raise CliError(str(exc)) from None
    rows = (_sampled(supernet, config, args.batch or 1) for config in configs)
    try:
        if args.json:
            print_json(list(_with_progress(rows, len(configs), counted=not supernet.table_only)))
        else:
            for row in rows:  # one line as each is ready: a long sample shows its progress
                print(json.dumps(row, separators=(",", ":")), flush=True)
    except BuildError as exc:  # a plug-in's builder that fails on a config: its features cannot be counted
        raise CliError(str(exc)) from None
    return 0


def _with_progress(rows, total: int, counted: bool):
    """One JSON array prints only at the end, and counting a config's features builds its network (about a
    second each for the Transformer spaces): a bar on the terminal says how far the sample has got."""
    import sys

    from rich.console import Console
    from rich.progress import track

    return track(rows, total=total, description="counting features", console=Console(stderr=True),
                 transient=True, disable=not (counted and sys.stderr.isatty()))


def _sampled(supernet, config: dict, batch: int) -> dict:
    row = {"config": config}
    if not supernet.table_only:
        from fleetnas.supernets.analytic import analytic_features

        row.update(analytic_features(supernet, config, batch))
    return row
