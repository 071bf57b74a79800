"""Analytic features of a sub-network: MACs, parameters and activation bytes, counted by FleetNAS itself.

What is counted (for one forward pass at the config's input shapes, `batch` samples):
- `macs`: multiply-accumulates of convolutions (any groups, stride, dilation), linear layers and matrix
  products (matmul, bmm, baddbmm, the two products inside scaled-dot-product and multi-head attention),
  counted on aten ops by torch's own `torch.utils.flop_counter.FlopCounterMode` (MACs = its FLOPs / 2).
  Normalisation (BatchNorm, LayerNorm), activations, pooling, residual adds and softmax count 0 MACs: they are
  elementwise (O(n), not O(n*k)), and BatchNorm folds into the preceding convolution in every deployed
  runtime. This is the convention behind the well-known "ResNet-50 = 4.1 G MACs".
- `params`: the module's parameters (each shared tensor once). Buffers (BatchNorm statistics) are not counted.
- `activation_bytes`: the bytes of every tensor a leaf module outputs, summed (a leaf that hands back its
  input unchanged, like Identity or eval-mode Dropout, adds nothing). Functional operations between modules
  (residual adds, `x.mean`, attention written with torch.matmul) are not leaf modules and are not counted.
- `peak_activation_bytes`: the largest (inputs + outputs) bytes of any single leaf module: the working set
  that layer alone needs, a lower bound of the real peak.

Counting builds the module on the `meta` device (no weight initialisation), gives it zeroed CPU storage and
runs real forward passes on the CPU, with attention forced through its plain matmul path so that the
counter sees its products; a builder that cannot be built on `meta` is built on the CPU as usual. Passes run
at batches 1 to 3 only: a larger batch's figures are extended from theirs, every count being affine in the
batch (`_count_at`), so that counting for batch 1024 takes no more memory than for batch 3.
Results are cached in memory and on disk (`<cache root>/analytic/<space>-<builder fingerprint>-b<batch>.jsonl`);
the fingerprint hashes the builder's source, so a changed builder never reads stale figures.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

from .base import BuildError, SuperNetwork, built, get_supernet
from .space import Config

ANALYTIC_VERSION = 1
FEATURES = ("macs", "params", "activation_bytes", "peak_activation_bytes")
#: The batches a forward pass is counted at; a larger batch's features are extended from them (`_count_at`).
SMALL_BATCHES = (1, 2, 3)

_lock = threading.Lock()
_memory: dict[Path, dict[str, dict]] = {}
_fingerprints: dict[type, str] = {}
_by_id: dict[str, SuperNetwork] = {}
_RELATIVE_IMPORT = re.compile(r"^[ \t]*from[ \t]+\.(\w*)[ \t]+import[ \t]+(\([^)]*\)|[\w \t,]+)", re.M)


def analytic_features(supernet_or_space_id: SuperNetwork | str, config: Config, batch: int = 1, *,
                      cache: bool = True, cache_dir: Path | None = None) -> dict:
    """{"macs", "params", "activation_bytes", "peak_activation_bytes"} (ints) of `config`'s sub-network."""
    supernet = _resolve(supernet_or_space_id)
    key = supernet.space.key(config)  # validates: InvalidConfig names the bad variable
    if not cache:
        return _compute(supernet, supernet.space.from_key(key), batch)
    table, path = _table(supernet, batch, cache_dir)
    found = table.get(key)
    if found is None:
        found = _compute(supernet, supernet.space.from_key(key), batch)
        with _lock:
            table[key] = found
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as f:  # one short line per append: O_APPEND keeps concurrent writers whole
                    f.write(json.dumps({"key": key, "features": found}, separators=(",", ":")) + "\n")
            except OSError:
                pass  # a read-only cache folder: the figures stay cached in memory
    return dict(found)


def analytic_features_many(supernet_or_space_id: SuperNetwork | str, configs: Iterable[Config], batch: int = 1,
                           **kwargs) -> list[dict]:
    supernet = _resolve(supernet_or_space_id)
    return [analytic_features(supernet, c, batch, **kwargs) for c in configs]


def count_module(module, inputs: list) -> dict:
    """Counts one forward pass of `module` on `inputs` (tensors on any device, `meta` included)."""
    counts = _count_calls(module, inputs)
    return {"macs": counts["macs"], "params": counts["params"], "activation_bytes": counts["activation_bytes"],
            "peak_activation_bytes": max(counts["calls"], default=0)}


def _count_calls(module, inputs: list) -> dict:
    """`count_module`'s figures, with the (inputs + outputs) bytes of each leaf call in order ("calls") in place
    of their maximum: what extending counts from small batches to a large one needs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    calls: list[int] = []
    totals = {"activation_bytes": 0}

    def hook(_module, args, output):
        in_tensors = list(_tensors(args))
        in_ids = {id(t) for t in in_tensors}
        out_bytes = sum(t.numel() * t.element_size() for t in _tensors(output) if id(t) not in in_ids)
        totals["activation_bytes"] += out_bytes
        calls.append(sum(t.numel() * t.element_size() for t in in_tensors) + out_bytes)

    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    counter = FlopCounterMode(display=False)
    try:
        with one_thread(), _attention_as_matmuls(), torch.no_grad(), counter:
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in module.parameters())
    return {"macs": int(counter.get_total_flops()) // 2, "params": int(params), **totals, "calls": calls}


def builder_fingerprint(supernet: SuperNetwork) -> str:
    """A hash of the source that builds `supernet`: its module and the package modules it imports, transitively."""
    cls = type(supernet)
    if cls not in _fingerprints:
        h = hashlib.sha256(f"analytic-v{ANALYTIC_VERSION}:{cls.__module__}.{cls.__qualname__}".encode())
        for source in _sources(sys.modules.get(cls.__module__)):
            h.update(source.encode())
        _fingerprints[cls] = h.hexdigest()[:16]
    return _fingerprints[cls]


def clear_memory_cache() -> None:
    with _lock:
        _memory.clear()


def resolve_supernet(supernet_or_space_id: SuperNetwork | str) -> SuperNetwork:
    """The super-network itself, or the one registered under an id (looked up once: scanning the installed
    entry points costs about 10 ms, which thousands of calls by id would otherwise pay each time)."""
    if not isinstance(supernet_or_space_id, str):
        return supernet_or_space_id
    with _lock:
        found = _by_id.get(supernet_or_space_id)
    if found is None:
        found = get_supernet(supernet_or_space_id)
        with _lock:
            _by_id[supernet_or_space_id] = found
    return found


# ----- internals ---------------------------------------------------------------------------------------------
def _resolve(supernet_or_space_id) -> SuperNetwork:
    supernet = resolve_supernet(supernet_or_space_id)
    if supernet.table_only:
        raise ValueError(f"{supernet.id} is a table-only space: its sub-networks cannot be built or counted")
    return supernet


def _table(supernet: SuperNetwork, batch: int, cache_dir: Path | None) -> tuple[dict, Path]:
    from ..paths import cache_root

    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "analytic"
    path = folder / f"{supernet.id}-{builder_fingerprint(supernet)}-b{int(batch)}.jsonl"
    with _lock:
        if path not in _memory:
            _memory[path] = _read_table(path)
        return _memory[path], path


def _read_table(path: Path) -> dict[str, dict]:
    table = {}
    try:
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    table[row["key"]] = {name: int(row["features"][name]) for name in FEATURES}
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: recomputed when asked for
    except OSError:  # none yet, or unreadable: start empty
        pass
    return table


def _compute(supernet: SuperNetwork, config: Config, batch: int) -> dict:
    """Builds on the `meta` device (no weight initialisation), then gives the module zeroed CPU storage and counts
    it (`_count_at`); a builder that cannot be built on `meta` is built on the CPU as usual."""
    import torch

    try:
        with torch.device("meta"):
            module = supernet.build(config)
        module = module.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.zero_()
        return _count_at(supernet, module, config, batch)
    except Exception:  # noqa: BLE001 - e.g. a builder that keeps unregistered tensors: count it built normally
        pass
    module = built(supernet, config)
    try:
        return _count_at(supernet, module, config, batch)
    except Exception as exc:  # noqa: BLE001 - a plug-in's network that fails on its inputs (a shape mismatch), or
        # whose input_specs raise: that config fails alone
        raise BuildError(f"the {supernet.space.id} network of {config} could not be counted: {exc!r}"[:2000]) from exc


def _count_at(supernet: SuperNetwork, module, config: Config, batch: int) -> dict:
    """The features of one forward pass at `batch`, without running one at a large batch.

    A pass at batch 1024 would hold every activation of 1024 samples at once (GBs for an image network at
    224). Every tensor a forward pass makes has either a batch dimension or none (a position embedding's
    output), so each count is affine in the batch: a + b·batch. Counts at batches 1, 2 and 3 fix a and b and
    check that; `peak_activation_bytes` is extended call by call, as the largest call may change with the
    batch. A module whose counts are not affine (one that compares every sample with every other, say) is
    counted at `batch` itself."""
    if batch <= max(SMALL_BATCHES):
        return count_module(module, _zeros(supernet.input_specs(config, batch)))
    small = [_count_calls(module, _zeros(supernet.input_specs(config, b))) for b in SMALL_BATCHES]
    extended = _extend(small, batch)
    if extended is None:
        return count_module(module, _zeros(supernet.input_specs(config, batch)))
    return extended


def _extend(counts: list[dict], batch: int) -> dict | None:
    """The features at `batch` from `_count_calls` at SMALL_BATCHES (1, 2, 3); None where a count is not affine
    in the batch (or the calls differ from one batch to the next)."""
    def at_batch(values: list[int]) -> int | None:
        first, second, third = values
        if second - first != third - second:
            return None
        return first + (batch - 1) * (second - first)

    if len({len(c["calls"]) for c in counts}) != 1 or len({c["params"] for c in counts}) != 1:
        return None
    features = {"params": counts[0]["params"]}
    for name in ("macs", "activation_bytes"):
        features[name] = at_batch([c[name] for c in counts])
    calls = [at_batch(list(call)) for call in zip(*(c["calls"] for c in counts))]
    if None in features.values() or None in calls:
        return None
    features["peak_activation_bytes"] = max(calls, default=0)
    return {name: features[name] for name in FEATURES}


def _zeros(specs: list[dict]) -> list:
    import torch

    return [torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in specs]


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread for a while: counting and exporting need no speed-up, and spare threads
    spin and stall on a busy machine (a 2-core host running tests took 3x longer with 2)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _attention_as_matmuls():
    """On the CPU, fused attention kernels hide their products from the counter: use the plain math path."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _tensors(value) -> Iterable[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _sources(module) -> list[str]:
    """The source of `module` and of every module of its package it imports with a relative import."""
    if module is None:
        return []
    seen, todo, sources = set(), [module.__name__], []
    package = module.__name__.rpartition(".")[0]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name, fromlist=["_"])
            except ImportError:
                continue
        try:
            text = inspect.getsource(mod)
        except (OSError, TypeError):
            continue
        sources.append(f"{name}\n{text}")
        for sub, names in _RELATIVE_IMPORT.findall(text):
            if sub:
                todo.append(f"{package}.{sub}")
            else:
                todo.extend(f"{package}.{n.strip()}" for n in names.strip("() \n").split(",") if n.strip())
    return sorted(sources)
