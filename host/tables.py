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
from typing import Sequence

import numpy as np

from .supernets import Config, SuperNetwork


@dataclass
class Table:
    path: Path
    rows: list[dict]
    #: The file's line number of each row, for error messages (blank lines are skipped).
    lines: list[int]

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def column(self, name: str) -> np.ndarray:
        """A numeric column; `A+B` sums columns (e.g. encoder and decoder latency). A value that is not a
        finite number (blank, text, nan, inf) is refused with its line: it would poison every fit and front."""
        if name in self.columns:  # a column named "enc+dec" is itself, not a sum
            return self._numbers(name)
        parts = [self._numbers(p) for p in name.split("+")]
        with np.errstate(over="ignore"):  # refused below, with its line
            total = sum(parts)
        overflow = np.flatnonzero(~np.isfinite(total))
        if len(overflow):
            raise ValueError(f"{self.path.name} line {self.lines[overflow[0]]}: the sum {name!r} is beyond a float")
        return total

    def features(self, columns: Sequence[str]) -> np.ndarray:
        """Numeric `columns` as a feature matrix (rows × columns), refused as `column` refuses."""
        return np.column_stack([self._numbers(c) for c in columns])

    def _numbers(self, column: str) -> np.ndarray:
        if column not in self.columns:
            raise ValueError(f"{self.path.name} has no column {column!r}; it has {', '.join(self.columns)}")
        values = np.empty(len(self.rows))
        for i, row in enumerate(self.rows):
            try:
                values[i] = float(row[column])
            except ValueError:
                values[i] = np.nan
            if not np.isfinite(values[i]):
                raise ValueError(f"{self.path.name} line {self.lines[i]}, column {column!r}: {row[column]!r} is not a "
                                 "finite number")
        return values


def read_table(path: str | Path) -> Table:
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (as spreadsheets write) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            _refuse_repeated_names(path, header)
            rows, lines = [], []
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise ValueError(f"{path.name} line {reader.line_num} has {len(fields)} fields where the "
                                     f"header has {len(header)}")
                rows.append(dict(zip(header, fields)))
                lines.append(reader.line_num)
    except OSError as exc:
        raise ValueError(f"cannot read table {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"table {path} is not UTF-8 text: {_undecodable(path)}; save it as UTF-8") from None
    except csv.Error as exc:
        raise ValueError(f"table {path} line {reader.line_num} is not CSV that can be read: {exc}") from None
    if not rows:
        raise ValueError(f"table {path} has no rows")
    return Table(path, rows, lines)


def _refuse_repeated_names(path: Path, header: list[str]) -> None:
    """Two columns of one name (two devices' `latency`, say) would be read as one: the later would win unsaid."""
    for i, name in enumerate(header):
        if name and name in header[:i]:
            raise ValueError(f"{path.name} line 1 names column {name!r} twice (fields {header.index(name) + 1} and "
                             f"{i + 1}); rename one")


def _undecodable(path: Path) -> str:
    """Where the first byte that is not UTF-8 lies (the reader's own error counts within its buffer)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"line {line} holds byte {data[exc.start]:#04x}"
    return "it cannot be decoded"


def table_configs(table: Table, supernet: SuperNetwork, key: str) -> list[Config]:
    """Each row's configuration, from `key`: one key column in the space's key format, or comma-separated
    columns that the super-network's `config_from_row` reads (an attribute of it, or a function of its module)."""
    columns = [c.strip() for c in key.split(",")]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{table.path.name} has no column {missing[0]!r}; it has {', '.join(table.columns)}")
    if len(columns) == 1:
        def read(row: dict) -> Config:
            return supernet.space.from_key(row[columns[0]])
    else:
        module = sys.modules[type(supernet).__module__]
        from_row = getattr(supernet, "config_from_row", None) or getattr(module, "config_from_row", None)
        if from_row is None:
            raise ValueError(f"space {supernet.id!r} cannot read a config from several columns; give one key column")

        def read(row: dict) -> Config:
            return from_row({c: row[c] for c in columns})
    configs = []
    for row, line in zip(table.rows, table.lines):
        try:
            configs.append(read(row))
        except ValueError as exc:  # InvalidConfig is one: say where, in a table of thousands of rows
            raise ValueError(f"{table.path.name} line {line}, column {key!r}: {exc}") from None
    return configs
