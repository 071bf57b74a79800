"""Recorded tables (CSV): rows of configurations with measured or trained objective values.

Benchmarks replay them: predictors are fitted on some rows and scored on the rest, and searches treat a
look-up as a real evaluation. Keys map rows to a space's configurations: one column holding the space's
own key format (e.g. NAS-Bench-201's `cellstr`), or several columns that the super-network's
`config_from_row(row)` understands (e.g. OFA's `ks,e,d,r`).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .supernets import Config, SuperNetwork


@dataclass
class Table:
    path: Path
    rows: list[dict]

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def column(self, name: str) -> np.ndarray:
        """A numeric column; `A+B` sums columns (e.g. encoder and decoder latency)."""
        parts = name.split("+")
        missing = [p for p in parts if p not in self.columns]
        if missing:
            raise ValueError(f"{self.path.name} has no column {missing[0]!r}; it has {', '.join(self.columns)}")
        try:
            return sum(np.array([float(row[p]) for row in self.rows]) for p in parts)
        except ValueError as exc:
            raise ValueError(f"column {name!r} of {self.path.name} is not numeric: {exc}") from None


def read_table(path: str | Path) -> Table:
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read table {path}: {exc.strerror}") from None
    if not rows:
        raise ValueError(f"table {path} has no rows")
    return Table(path, rows)


def table_configs(table: Table, supernet: SuperNetwork, key: str) -> list[Config]:
    """Each row's configuration, from `key`: one key column in the space's key format, or comma-separated
    columns that the super-network's `config_from_row` reads (an attribute of it, or a function of its module)."""
    columns = [c.strip() for c in key.split(",")]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{table.path.name} has no column {missing[0]!r}; it has {', '.join(table.columns)}")
    if len(columns) == 1:
        return [supernet.space.from_key(row[columns[0]]) for row in table.rows]
    module = sys.modules[type(supernet).__module__]
    from_row = getattr(supernet, "config_from_row", None) or getattr(module, "config_from_row", None)
    if from_row is None:
        raise ValueError(f"space {supernet.id!r} cannot read a config from several columns; give one key column")
    return [from_row({c: row[c] for c in columns}) for row in table.rows]
