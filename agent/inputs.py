"""Model inputs generated on the device from the model's declared shapes and dtypes, seeded."""
from __future__ import annotations

from collections import Counter

import numpy as np

# Integer inputs are usually indices (tokens, positions): keep them valid for any table of two or more rows.
INT_HIGH = 2
#: Elements drawn at a time for a float type filled in chunks: bounds the temporary (256 KiB of float32).
CHUNK = 1 << 16


def resolve(declared: list[dict], overrides: list[dict]) -> list[dict]:
    """Fills open (-1) dimensions from `overrides` (by input name), else with 1; dtypes by numpy's name."""
    twice = [name for name, n in Counter(o["name"] for o in overrides).items() if n > 1]
    if twice:
        raise ValueError(f"input {twice[0]!r} is given more than once")
    by_name = {o["name"]: o for o in overrides}
    unknown = set(by_name) - {d["name"] for d in declared}
    if unknown:
        names = ", ".join(repr(d["name"]) for d in declared)
        raise ValueError(f"the model has no input named {sorted(unknown)[0]!r}; its inputs are {names}")
    resolved = []
    for spec in declared:
        shape = list(spec["shape"])
        given = by_name.get(spec["name"])
        if given and given.get("shape"):
            wanted = [int(x) for x in given["shape"]]
            if len(wanted) != len(shape) or any(d >= 0 and w != d for d, w in zip(shape, wanted)):
                raise ValueError(f"input {spec['name']!r} is declared {shape}; shape {wanted} does not fit it")
            if any(w <= 0 for w in wanted):
                raise ValueError(f"input {spec['name']!r}: every dimension must be positive, got {wanted}")
            shape = wanted
        dtype = _dtype_name(spec["name"], spec["dtype"])
        wanted = (given or {}).get("dtype")
        if wanted and _dtype_name(spec["name"], wanted) != dtype:
            raise ValueError(f"input {spec['name']!r} is declared {dtype}; dtype {wanted!r} does not fit it")
        resolved.append({"name": spec["name"], "shape": [d if d >= 0 else 1 for d in shape], "dtype": dtype})
    return resolved


def _dtype_name(name: str, dtype: str) -> str:
    """numpy's name of `dtype` ("f" and "<f4" are "float32"): one spelling in every result; other byte orders
    are refused, since the runtime reads the machine's."""
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"input {name!r}: {dtype!r} is not a dtype") from None
    if parsed.byteorder not in "=|":
        raise ValueError(f"input {name!r}: dtype {dtype!r} is not in this device's byte order")
    return parsed.name


def check_size(specs: list[dict], max_bytes: int) -> None:
    total = 0
    for spec in specs:
        size = int(np.prod(spec["shape"], dtype=np.float64)) * np.dtype(spec["dtype"]).itemsize
        total += size
        if total > max_bytes:
            raise ValueError(f"input {spec['name']!r} of shape {spec['shape']} ({spec['dtype']}) needs {size} bytes; "
                             f"this device allows at most {max_bytes} bytes of inputs")


def generate(specs: list[dict], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {spec["name"]: _array(rng, spec) for spec in specs}


def _array(rng: np.random.Generator, spec: dict) -> np.ndarray:
    """Drawn straight in the input's dtype: check_size bounds the inputs, and an int64 or float64 draw cast
    afterwards would take up to 8 times that."""
    dtype = np.dtype(spec["dtype"])  # in the machine's byte order (resolve), the only one numpy draws in
    shape = tuple(spec["shape"])
    if dtype.kind in "iub":
        return rng.integers(0, 2 if dtype.kind == "b" else INT_HIGH, size=shape, dtype=dtype)
    if dtype.type in (np.float32, np.float64):
        return rng.standard_normal(shape, dtype=dtype)
    if dtype.kind == "f":
        return _normal_in_chunks(rng, shape, dtype)
    raise ValueError(f"input {spec['name']!r} has dtype {dtype.name}, which the agent cannot generate")


def _normal_in_chunks(rng: np.random.Generator, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A float type numpy cannot draw in (float16, long double), filled a chunk at a time."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)  # a view: np.empty is contiguous
    source = np.float32 if dtype.itemsize <= 4 else np.float64
    for start in range(0, flat.size, CHUNK):
        flat[start:start + CHUNK] = rng.standard_normal(min(CHUNK, flat.size - start), dtype=source)
    return out
