"""What a search optimises: objectives such as `accuracy:max` or `latency@rpi4:min`, and constraints
such as `latency@rpi4 <= 30ms`.

An objective's `metric` says what is measured (accuracy, latency, memory, macs, params, or a table
column); `device_kind`, after `@`, says where. Values stay in their natural units (accuracy as given by the
evaluator, latency in ms, memory in bytes); `minimised()` turns them into the all-minimise form that
pymoo and the hypervolume work in.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

DEVICE_METRICS = ("latency", "memory")
_TIME = {"ms": 1.0, "s": 1000.0, "us": 0.001}
_BYTES = {"B": 1.0, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024.0, "MiB": 1024.0 ** 2,
          "GiB": 1024.0 ** 3}
_COUNT = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
#: The units a constraint may use on each metric, as factors to its natural unit. "%" divides by 100 (an
#: accuracy given as a fraction); a metric not listed (a table's column) takes a bare number only. Case
#: matters, as in SI: "Mb" would be megabits and "m" milli, so neither is read as its capital.
UNITS = {"latency": _TIME, "memory": _BYTES, "activation_bytes": _BYTES, "peak_activation_bytes": _BYTES,
         "macs": _COUNT, "params": _COUNT, "accuracy": {"%": 0.01}}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str               # "max" or "min"
    device_kind: str | None = None

    @property
    def name(self) -> str:
        return f"{self.metric}@{self.device_kind}" if self.device_kind else self.metric

    @property
    def sign(self) -> float:
        return -1.0 if self.direction == "max" else 1.0

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


@dataclass(frozen=True)
class Constraint:
    objective: str               # an objective's name, e.g. "latency@rpi4"
    op: str                      # "<=" or ">="
    value: float                 # in the objective's natural unit (ms for latency, bytes for memory)
    written: str = field(default="", compare=False)  # the bound as the user wrote it ("2MiB", "95%"), for messages

    def violation(self, values: np.ndarray) -> np.ndarray:
        """pymoo's convention: <= 0 where satisfied."""
        return values - self.value if self.op == "<=" else self.value - values

    def __str__(self) -> str:
        return f"{self.objective} {self.op} {self.written or format(self.value, 'g')}"

    def in_its_unit(self, value: float) -> str:
        """A value of its objective (natural units) written in the unit the bound was written in ("12.3us"
        where the bound is `5us`), or in the natural unit where it was a bare number ("0.0123ms"). Accuracy
        stays as the evaluator gave it: fractions or percentages, which a warning may be about."""
        metric = self.objective.split("@")[0]
        units = {} if metric == "accuracy" else UNITS.get(metric, {})
        unit = re.sub(r"^[0-9.eE+\-]+", "", self.written)
        if unit not in units:  # a bare number: its metric's natural unit, where it has a name
            unit = next((u for u, factor in units.items() if factor == 1.0), "")
        return f"{value / units.get(unit, 1.0):.4g}{unit}"


_OBJECTIVE = re.compile(r"^(?P<metric>[A-Za-z_][\w.\-]*)(@(?P<kind>[\w.\-]+))?:(?P<dir>max|min)$")
_CONSTRAINT = re.compile(r"^\s*(?P<name>[A-Za-z_][\w.\-]*(@[\w.\-]+)?)\s*(?P<op><=|>=)\s*"
                         r"(?P<value>[0-9.eE+\-]+)\s*(?P<unit>[A-Za-z%]*)\s*$")


def parse_objective(text: str) -> Objective:
    m = _OBJECTIVE.match(text.strip())
    if not m:
        raise ValueError(f"objective {text!r} must look like NAME:max, NAME:min or METRIC@DEVICE_KIND:min "
                         "(e.g. accuracy:max, latency@rpi4:min)")
    if m["kind"] and m["metric"] not in DEVICE_METRICS:
        raise ValueError(f"objective {text!r}: only {' and '.join(DEVICE_METRICS)} are measured on a device")
    return Objective(m["metric"], m["dir"], m["kind"])


def parse_column_objective(text: str) -> Objective:
    """A recorded table's objective, COLUMN:max or COLUMN:min: a column holds its values, no device measures them."""
    column, _, direction = text.strip().rpartition(":")
    if not column or direction not in ("max", "min") or "@" in column:
        raise ValueError(f"objective {text!r} must look like COLUMN:max or COLUMN:min, naming a column of the table "
                         "(e.g. imagenet16_test:max, lat_ms_pixel3:min)")
    return Objective(column, direction, None)


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m:
        raise ValueError(f"constraint {text!r} must look like 'latency@rpi4 <= 30ms' or 'accuracy >= 0.9'")
    metric, unit = m["name"].split("@")[0], m["unit"]
    units = {"": 1.0, **UNITS.get(metric, {})}
    named = [known for known in UNITS if known.lower() == metric.lower()]
    if unit and metric not in UNITS and named:
        raise ValueError(f"constraint {text!r}: metric names are case-sensitive: did you mean {named[0]!r}?")
    if unit not in units:
        allowed = ", ".join(u for u in units if u) or "none: give a bare number"
        meant = [u for u in units if u and u.lower() == unit.lower()]
        hint = f" (units are case-sensitive: did you mean {meant[0]!r}?)" if meant else ""
        raise ValueError(f"constraint {text!r}: unit {unit!r} does not fit {metric}{hint}; units: {allowed}")
    try:
        value = float(m["value"])
    except ValueError:
        raise ValueError(f"constraint {text!r}: {m['value']!r} is not a number") from None
    if not math.isfinite(value * units[unit]):
        raise ValueError(f"constraint {text!r}: {m['value']}{unit} is beyond any finite bound")
    constraint = Constraint(m["name"], m["op"], value * units[unit], written=m["value"] + m["unit"])
    _refuse_unmeetable(constraint, metric, unit, text)
    return constraint


#: Metrics that count or time something: never below zero.
NON_NEGATIVE = ("latency", "memory", "macs", "params", "activation_bytes", "peak_activation_bytes")
#: Of those, the ones no network has at zero either (memory above the baseline can read 0 B).
POSITIVE = ("latency", "macs", "params", "activation_bytes", "peak_activation_bytes")


def _refuse_unmeetable(c: Constraint, metric: str, unit: str, text: str) -> None:
    """A bound no value can meet would spend the whole budget on a run whose front stays empty."""
    never_negative = metric in NON_NEGATIVE or unit == "%"
    if never_negative and c.op == "<=" and (c.value < 0 or (metric in POSITIVE and c.value <= 0)):
        raise ValueError(f"constraint {text!r}: no {metric} is {'at or ' if metric in POSITIVE else ''}below 0; "
                         "no configuration could meet it")
    if unit == "%" and c.op == ">=" and c.value > 1.0:
        raise ValueError(f"constraint {text!r}: no {metric} is above 100%; no configuration could meet it")


def with_unit_case(text: str) -> str:
    """A constraint with its unit spelt as `parse_constraint` reads it ("2mb" as "2MB"): runs stored while
    units were read in any case must resume with the bound they started with."""
    m = _CONSTRAINT.match(text)
    if not m or not m["unit"]:
        return text
    units = UNITS.get(m["name"].split("@")[0], {})
    if m["unit"] in units:
        return text
    meant = [u for u in units if u.lower() == m["unit"].lower()]
    return text[:m.start("unit")] + meant[0] + text[m.end("unit"):] if meant else text


#: The unit a metric's values are stored in, where it has one (front.csv's heads and front.json say it).
STORED_UNITS = {"latency": "ms", "memory": "bytes", "activation_bytes": "bytes", "peak_activation_bytes": "bytes"}


#: How a metric's values are shown to a reader (figures, the report's table): the unit, and the factor from the
#: unit values are stored in (ms, bytes, counts) to it. Others are shown as stored.
SHOWN_UNITS = {"latency": ("ms", 1.0), "memory": ("MiB", 2.0 ** -20), "macs": ("M", 1e-6), "params": ("M", 1e-6),
               "activation_bytes": ("MiB", 2.0 ** -20), "peak_activation_bytes": ("MiB", 2.0 ** -20)}


def _has_known_unit(objective: "Objective") -> bool:
    """Whether FleetNAS measured or counted the objective, and so knows its unit: a table's column named
    `latency` may hold anything."""
    return objective.metric in NON_NEGATIVE and (bool(objective.device_kind) or objective.metric not in DEVICE_METRICS)


def stored_unit(objective: "Objective") -> str:
    """The unit the objective's values are stored in ("ms", "bytes"), or "" where it has none or none is known."""
    return STORED_UNITS.get(objective.metric, "") if _has_known_unit(objective) else ""


def shown_unit(objective: "Objective") -> tuple[str, float]:
    """(unit, factor): the unit the objective is shown in ("MiB"; "" for none) and what to multiply its stored
    values by to show them."""
    return SHOWN_UNITS.get(objective.metric, ("", 1.0)) if _has_known_unit(objective) else ("", 1.0)


def shown(objective: Objective) -> tuple[str, float]:
    """(label, factor): what to call an objective's axis or column, unit and better direction included
    ("latency on rpi4 (ms), lower is better"), and what to multiply its stored values by to show them."""
    unit, factor = shown_unit(objective)
    where = f" on {objective.device_kind}" if objective.device_kind else ""
    better = "higher" if objective.direction == "max" else "lower"
    return f"{objective.metric}{where}{f' ({unit})' if unit else ''}, {better} is better", factor


def minimised(values: np.ndarray, objectives: list[Objective]) -> np.ndarray:
    """Natural-unit values (rows × objectives) in all-minimise form."""
    return np.atleast_2d(values) * np.array([o.sign for o in objectives])
