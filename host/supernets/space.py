"""SearchSpace: named variables with finite choices, and everything search and predictors need from them.

A configuration is a dict {variable name: chosen value}. Its integer encoding (what pymoo sees) is the
index of each chosen value; its one-hot encoding is what linear predictors see. Spaces are pure numpy:
no torch needed to sample, encode or search.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

Config = dict[str, Any]


class InvalidConfig(ValueError):
    """A configuration outside its space; the message names the variable and the allowed choices."""


@dataclass(frozen=True)
class Variable:
    name: str
    choices: tuple

    def __post_init__(self):
        if not self.choices:
            raise ValueError(f"variable {self.name!r} has no choices")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"variable {self.name!r} repeats a choice: {self.choices}")

    def index(self, value) -> int:
        """The position of the choice equal to `value`; InvalidConfig naming the variable and value if none is.

        Python has `True == 1` and `False == 0`, so equality alone would take a JSON true for the choice 1 (or
        1.0): a choice matches only when it and `value` also agree on being booleans. Choices are distinct
        (`__post_init__`), so the first equal one is the only candidate.
        """
        try:
            i = self.choices.index(value)
        except ValueError:
            i = None
        if i is None or not _same_kind(self.choices[i], value):
            raise InvalidConfig(self._refusal(value))
        return i

    def _refusal(self, value) -> str:
        hint = (" (a boolean is not a number here)" if _is_bool(value) and not any(map(_is_bool, self.choices))
                else "")
        return (f"{self.name}={_shown(value)} is not allowed{hint}; choose one of "
                f"{', '.join(map(repr, self.choices))}")

    @property
    def numeric(self) -> bool:
        return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices)


#: Spaces with a validity rule and up to this many configs have their valid ones counted (`valid_size`).
COUNTED_UP_TO = 200_000


class NoValidConfig(ValueError):
    """A space whose validity rule (nearly) nothing meets: no valid config was found in many draws."""


class SearchSpace:
    """A product of finite choices, optionally narrowed by a validity rule.

    `rule(config)` returns None for a valid config, else a message saying what is wrong; sampling,
    mutation and crossover only ever return configs the rule accepts.
    """

    def __init__(self, space_id: str, variables: Sequence[Variable], rule: Callable[[Config], str | None] | None = None,
                 description: str = ""):
        names = [v.name for v in variables]
        if len(set(names)) != len(names):
            raise ValueError(f"space {space_id!r} repeats a variable name")
        self.id = space_id
        self.variables = tuple(variables)
        self.names = tuple(names)
        self.rule = rule
        self.description = description
        self._by_name = {v.name: v for v in self.variables}
        self._offsets = np.cumsum([0] + [len(v.choices) for v in self.variables])

    # ----- basic facts ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"SearchSpace({self.id!r}, {len(self.variables)} variables, {self.size:.3g} configs)"

    @property
    def n_var(self) -> int:
        return len(self.variables)

    @property
    def upper(self) -> np.ndarray:
        """Largest index of each variable (pymoo's xu; xl is all zeros)."""
        return np.array([len(v.choices) - 1 for v in self.variables])

    @property
    def size(self) -> float:
        """The product of the choices: every config, or an upper bound on the valid ones where a rule narrows it."""
        return float(np.prod([float(len(v.choices)) for v in self.variables]))

    @functools.cached_property
    def valid_size(self) -> float | None:
        """How many configs the rule accepts: `size` without a rule; counted one by one up to COUNTED_UP_TO
        configs (a second or two); None (unknown) beyond."""
        if self.rule is None:
            return self.size
        if self.size > COUNTED_UP_TO:
            return None
        return float(sum(1 for _ in self.valid_configs()))

    def valid_configs(self) -> Iterator[Config]:
        """Every config the rule accepts, one by one: for spaces small enough to count (COUNTED_UP_TO)."""
        for x in itertools.product(*(range(len(v.choices)) for v in self.variables)):
            config = self.decode(x)
            if self.rule is None or self.rule(config) is None:
                yield config

    def variable(self, name: str) -> Variable:
        return self._by_name[name]

    # ----- validation and encodings --------------------------------------------------------------
    def validate(self, config: Config) -> Config:
        if not isinstance(config, dict):
            raise InvalidConfig(f"a {self.id} config must be a JSON object, got {type(config).__name__}")
        missing = [n for n in self.names if n not in config]
        extra = [k for k in config if k not in self._by_name]
        if missing:
            raise InvalidConfig(f"{self.id} config lacks {', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}")
        if extra:
            raise InvalidConfig(f"{self.id} has no variable {extra[0]!r}")
        # The stored choice, not the value given: 4 and 4.0 are one choice and must give one key.
        valid = {v.name: v.choices[v.index(_plain(config[v.name]))] for v in self.variables}
        problem = self.rule(valid) if self.rule else None
        if problem:
            raise InvalidConfig(f"invalid {self.id} config: {problem}")
        return valid

    def is_valid(self, config: Config) -> bool:
        try:
            self.validate(config)
            return True
        except InvalidConfig:
            return False

    def encode(self, config: Config) -> np.ndarray:
        config = self.validate(config)
        return np.array([v.index(config[v.name]) for v in self.variables], dtype=np.int64)

    def decode(self, x: Iterable[int]) -> Config:
        x = np.asarray(x).round().astype(np.int64)
        if x.shape != (self.n_var,) or (x < 0).any() or (x > self.upper).any():
            raise InvalidConfig(f"encoding {x.tolist()} does not fit {self.id} ({self.n_var} indices within {self.upper.tolist()})")
        return {v.name: v.choices[i] for v, i in zip(self.variables, x)}

    def encode_many(self, configs: Sequence[Config]) -> np.ndarray:
        return np.stack([self.encode(c) for c in configs]) if configs else np.zeros((0, self.n_var), np.int64)

    def one_hot(self, X: np.ndarray) -> np.ndarray:
        """One-hot features of integer encodings (rows of X)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.int64))
        out = np.zeros((len(X), int(self._offsets[-1])), dtype=np.float32)
        rows = np.arange(len(X))[:, None]
        out[rows, self._offsets[:-1] + X] = 1.0
        return out

    def ordinal(self, X: np.ndarray) -> np.ndarray:
        """Each variable as a number: its value where numeric, else its index."""
        X = np.atleast_2d(np.asarray(X, dtype=np.int64))
        cols = []
        for j, v in enumerate(self.variables):
            cols.append(np.asarray(v.choices, dtype=np.float64)[X[:, j]] if v.numeric else X[:, j].astype(np.float64))
        return np.stack(cols, axis=1) if cols else np.zeros((len(X), 0))

    # ----- keys and JSON -------------------------------------------------------------------------
    def key(self, config: Config) -> str:
        """A stable string naming the config: compact JSON of its values in variable order."""
        config = self.validate(config)
        return json.dumps([config[n] for n in self.names], separators=(",", ":"))

    def from_key(self, key: str) -> Config:
        try:
            values = json.loads(key)
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the interpreter's stack
            raise InvalidConfig(f"{key!r:.80} is not a {self.id} key") from None
        if not isinstance(values, list) or len(values) != self.n_var:
            raise InvalidConfig(f"a {self.id} key lists {self.n_var} values")
        return self.validate(dict(zip(self.names, values)))

    def to_json(self, config: Config) -> str:
        return json.dumps(self.validate(config), sort_keys=True)

    def from_json(self, text: str) -> Config:
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise InvalidConfig(f"not JSON: {exc}") from None
        except RecursionError:
            raise InvalidConfig("JSON nested too deeply to read (deeper than the interpreter's recursion limit)") \
                from None
        return self.validate(config)

    def describe(self) -> dict:
        return {"id": self.id, "description": self.description, "size": self.size,
                "variables": [{"name": v.name, "choices": list(v.choices)} for v in self.variables]}

    # ----- sampling and variation ----------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> list[Config]:
        """`n` configs drawn uniformly (per variable) among the valid ones."""
        rng = np.random.default_rng(rng)
        return [self._valid(lambda: rng.integers(0, self.upper + 1), rng) for _ in range(n)]

    def latin_hypercube(self, n: int, rng: np.random.Generator | int | None = None) -> list[Config]:
        """`n` configs that cover every variable's choices as evenly as `n` allows (stratified per variable)."""
        rng = np.random.default_rng(rng)
        columns = []
        for v in self.variables:
            k = len(v.choices)
            strata = (np.arange(n) + rng.random(n)) / max(n, 1)
            columns.append(rng.permutation(np.minimum((strata * k).astype(np.int64), k - 1)))
        X = np.stack(columns, axis=1) if columns else np.zeros((n, 0), np.int64)
        return [self._valid(lambda row=row: row, rng) for row in X]

    def mutate(self, config: Config, rng: np.random.Generator | int | None = None, rate: float | None = None) -> Config:
        """Changes each variable with probability `rate` (default 1/n_var), at least one; always valid."""
        rng = np.random.default_rng(rng)
        rate = 1.0 / self.n_var if rate is None else rate
        base = self.encode(config)

        def draw():
            x = base.copy()
            flip = rng.random(self.n_var) < rate
            if not flip.any():
                flip[rng.integers(self.n_var)] = True
            x[flip] = (x[flip] + rng.integers(1, self.upper[flip] + 1)) % (self.upper[flip] + 1)
            return x

        return self._valid(draw, rng)

    def crossover(self, a: Config, b: Config, rng: np.random.Generator | int | None = None) -> Config:
        """Uniform crossover: each variable from either parent; always valid."""
        rng = np.random.default_rng(rng)
        xa, xb = self.encode(a), self.encode(b)
        return self._valid(lambda: np.where(rng.random(self.n_var) < 0.5, xa, xb), rng)

    def _valid(self, draw: Callable[[], np.ndarray], rng: np.random.Generator, tries: int = 1000) -> Config:
        for _ in range(tries):
            config = self.decode(draw())
            if self.rule is None or self.rule(config) is None:
                return config
        # A rule that rejects almost everything: fall back to uniform draws before giving up.
        for _ in range(tries):
            config = self.decode(rng.integers(0, self.upper + 1))
            if self.rule(config) is None:
                return config
        raise NoValidConfig(f"could not find a valid {self.id} config in {2 * tries} draws; is its rule satisfiable?")


def _plain(value):
    """JSON round-trips turn tuples into lists; choices compare as tuples."""
    return tuple(value) if isinstance(value, list) else value


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _same_kind(choice, value) -> bool:
    """Whether two equal values also agree on being booleans, element by element inside tuples."""
    if isinstance(choice, tuple) and isinstance(value, tuple):
        return all(_same_kind(c, v) for c, v in zip(choice, value))
    return _is_bool(choice) == _is_bool(value)


def _shown(value, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: a user's config may hold any JSON, however large or deep."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else text[:limit - 1] + "…"
