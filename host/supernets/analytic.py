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
runs one real forward pass on the CPU, with attention forced through its plain matmul path so that the
counter sees its products; a builder that cannot be built on `meta` is built on the CPU as usual.
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

from .base import SuperNetwork, get_supernet
from .space import Config

ANALYTIC_VERSION = 1
FEATURES = ("macs", "params", "activation_bytes", "peak_activation_bytes")

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
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    totals = {"activation_bytes": 0, "peak_activation_bytes": 0}

    def tensor_bytes(value) -> tuple[int, set]:
        tensors = list(_tensors(value))
        return sum(t.numel() * t.element_size() for t in tensors), {id(t) for t in tensors}

    def hook(_module, args, output):
        in_bytes, in_ids = tensor_bytes(args)
        out_bytes = sum(t.numel() * t.element_size() for t in _tensors(output) if id(t) not in in_ids)
        totals["activation_bytes"] += out_bytes
        totals["peak_activation_bytes"] = max(totals["peak_activation_bytes"], in_bytes + out_bytes)

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
    return {"macs": int(counter.get_total_flops()) // 2, "params": int(params), **totals}


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
    a real forward pass; a builder that cannot be built on `meta` is built on the CPU as usual."""
    import torch

    inputs = [torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in supernet.input_specs(config, batch)]
    try:
        with torch.device("meta"):
            module = supernet.build(config)
        module = module.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.zero_()
        return count_module(module, inputs)
    except Exception:  # noqa: BLE001 - e.g. a builder that keeps unregistered tensors: count it built normally
        pass
    return count_module(supernet.build(config), inputs)


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
