"""Model inputs generated on the device from the model's declared shapes and dtypes, seeded."""
from __future__ import annotations

import numpy as np

# Integer inputs are usually indices (tokens, positions): keep them valid for any table of two or more rows.
INT_HIGH = 2


def resolve(declared: list[dict], overrides: list[dict]) -> list[dict]:
    """Fills open (-1) dimensions from `overrides` (by input name), else with 1."""
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
        dtype = (given or {}).get("dtype") or spec["dtype"]
        resolved.append({"name": spec["name"], "shape": [d if d >= 0 else 1 for d in shape], "dtype": dtype})
    return resolved


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
    arrays = {}
    for spec in specs:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        if dtype.kind == "f":
            arrays[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec["name"]] = rng.integers(0, INT_HIGH, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec["name"]] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ValueError(f"input {spec['name']!r} has dtype {dtype.name}, which the agent cannot generate")
    return arrays
