"""`fleetnas space`: the search spaces installed (built-in and users' own), and configs sampled from them."""
from __future__ import annotations

import argparse
import json

from .common import CliError, positive_int, print_json


def register(sub) -> None:
    p = sub.add_parser("space", help="list search spaces, sample configs")
    ssub = p.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    ls = ssub.add_parser("list", help="the installed search spaces: id, size, buildable or table-only")
    ls.add_argument("--json", action="store_true", help="print one JSON array")
    ls.set_defaults(handler=list_spaces)
    s = ssub.add_parser("sample", help="sample configs (with MACs, parameters, activation bytes where buildable)")
    s.add_argument("name", metavar="NAME", help="space id, as `fleetnas space list` shows it")
    s.add_argument("--n", type=positive_int, default=5, help="how many configs (default 5)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--batch", type=positive_int, default=1, help="batch size the features are counted for")
    s.add_argument("--json", action="store_true", help="print one JSON array instead of one JSON object a line")
    s.set_defaults(handler=sample)


def load_supernet(name: str):
    from fleetnas.supernets import get_supernet, list_supernets

    if name not in list_supernets():
        raise CliError(f"unknown space {name!r}; installed: {', '.join(list_supernets())}")
    try:
        return get_supernet(name)
    except ImportError as exc:
        raise CliError(f"space {name!r} is registered but cannot be loaded: {exc}") from None


def list_spaces(args: argparse.Namespace) -> int:
    from fleetnas.supernets import get_supernet, list_supernets

    rows = []
    for name in list_supernets():
        try:
            supernet = get_supernet(name)
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
            rows.append({"id": name, "size": None, "kind": "unavailable", "description": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"id": name, "size": supernet.space.size, "variables": supernet.space.n_var,
                     "kind": "table-only" if supernet.table_only else "buildable",
                     "description": supernet.space.description})
    if args.json:
        print_json(rows)
        return 0
    width = max((len(r["id"]) for r in rows), default=2)
    for r in rows:
        size = f"{r['size']:.3g}" if r["size"] is not None else "-"
        print(f"{r['id']:<{width}}  {size:>9}  {r['kind']:<11}  {r['description']}")
    return 0


def sample(args: argparse.Namespace) -> int:
    supernet = load_supernet(args.name)
    configs = supernet.space.sample(args.n, args.seed)
    rows = []
    for config in configs:
        row = {"config": config}
        if not supernet.table_only:
            from fleetnas.supernets.analytic import analytic_features

            row.update(analytic_features(supernet, config, args.batch))
        rows.append(row)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(json.dumps(row, separators=(",", ":")))
    return 0
