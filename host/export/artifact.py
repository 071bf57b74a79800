"""`export_artifact`: a sub-network as a file an agent can run, made once and then served from a cache.

The cache key is the sha256 of everything the bytes depend on: space, config, input shapes, format, opset,
tool versions, the builder's source fingerprint and the weight seed. An artifact lives at
`<cache dir>/<space>/<key>.<ext>` beside `<key>.json` (the Artifact's fields); both are written to a
temporary file first and moved into place with os.replace, so a reader never sees half a file and two
processes exporting the same thing at once both end with the same complete file.

Weights are random from a fixed seed: latency does not depend on their values, and a fixed seed makes
an export reproducible (the TorchScript ONNX exporter then writes identical bytes).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..paths import cache_root
from ..supernets.analytic import builder_fingerprint, one_thread, resolve_supernet
from ..supernets.base import BuildError, built, described_inputs
from . import formats
from .formats import ExportError

FORMATS = {"onnx": ".onnx", "tflite": ".tflite", "spec": ".json"}


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    format: str          # "onnx" | "tflite" | "spec"
    space: str
    config: dict = field(hash=False)
    size_bytes: int = 0
    # exporter, opset, tools (versions), inputs, batch, seed, builder, key, export_s, from_cache
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def artifact_cache_dir(cache_dir: Path | None = None) -> Path:
    """The argument, else $FLEETNAS_CACHE_DIR/artifacts, else ~/.cache/fleetnas/artifacts."""
    return Path(cache_dir) if cache_dir is not None else cache_root() / "artifacts"


def export_artifact(space_id: str, config: dict, fmt: str = "onnx", batch: int = 1, cache_dir: Path | None = None,
                    *, seed: int = 0) -> Artifact:
    """The artifact of `config`'s sub-network in format `fmt`, exported unless the cache already has it.

    Raises KeyError for an unknown space, InvalidConfig for a config outside it, ValueError for an unknown
    format or batch, ExportError when the format cannot be made here (a table-only space; TFLite without
    the `tflite-export` extra).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    supernet = resolve_supernet(space_id)
    if supernet.table_only:
        raise ExportError(f"{space_id} is a table-only space: its sub-networks cannot be built or exported")
    if fmt == "tflite":
        formats.tflite_converter()  # fail before any work when the extra is missing
    config = supernet.space.validate(config)
    inputs = described_inputs(supernet, config, batch)
    described = {"space": space_id, "config": supernet.space.key(config), "inputs": inputs, "format": fmt,
                 "fleetnas": __version__, "tools": formats.tools(fmt), "seed": seed,
                 "builder": builder_fingerprint(supernet) if fmt != "spec" else "",
                 "opset": formats.ONNX_OPSET if fmt == "onnx" else None}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    folder = artifact_cache_dir(cache_dir) / space_id
    path = folder / f"{key}{FORMATS[fmt]}"
    cached = _read_cached(path, folder / f"{key}.meta.json", config)
    if cached is not None:
        return cached

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if fmt == "spec":
        atomic_write(path, formats.spec_bytes(space_id, config, inputs))
        made = {}
    else:
        made = _export_module(supernet, config, inputs, fmt, path, seed)
    export_s = time.perf_counter() - start
    data = path.read_bytes()
    artifact = Artifact(path, hashlib.sha256(data).hexdigest(), fmt, space_id, config, len(data),
                        {**made, "tools": described["tools"], "fleetnas": __version__, "inputs": inputs,
                         "batch": batch, "seed": seed, "builder": described["builder"], "key": key,
                         "export_s": round(export_s, 4), "from_cache": False})
    atomic_write(folder / f"{key}.meta.json", json.dumps(artifact.to_dict(), sort_keys=True).encode())
    return artifact


def _export_module(supernet, config: dict, inputs: list[dict], fmt: str, path: Path, seed: int) -> dict:
    import torch

    tmp = temp_file_beside(path)
    try:
        try:
            with torch.random.fork_rng():  # a fixed seed without disturbing the caller's random state
                torch.manual_seed(seed)
                module = built(supernet, config).eval()
                args = tuple(torch.randn(i["shape"], dtype=getattr(torch, i["dtype"]))
                             if i["dtype"].startswith("float")
                             else torch.zeros(i["shape"], dtype=getattr(torch, i["dtype"])) for i in inputs)
            with torch.no_grad(), one_thread():
                made = (formats.write_onnx(module, args, [i["name"] for i in inputs], tmp) if fmt == "onnx"
                        else formats.write_tflite(module, args, tmp))
        except (ExportError, BuildError):
            raise
        except Exception as exc:  # noqa: BLE001 - a plug-in's network that fails on its inputs (a shape mismatch,
            # say) or whose input specs do not describe tensors: that config fails alone
            raise ExportError(f"the {supernet.space.id} network of {config} could not be exported to {fmt}: "
                              f"{exc!r}"[:2000]) from exc
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return made


def _read_cached(path: Path, meta_path: Path, config: dict) -> Artifact | None:
    """The artifact the cache holds, if its file is whole (the size its record gives)."""
    try:
        saved = json.loads(meta_path.read_text())
        if path.stat().st_size != saved["size_bytes"]:
            return None
        return Artifact(path, saved["sha256"], saved["format"], saved["space"], config, saved["size_bytes"],
                        {**saved["meta"], "from_cache": True})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def temp_file_beside(path: Path) -> Path:
    """A fresh file beside `path`, with the permissions a plain open() would give (mkstemp's are 0600, and the
    file is renamed into place). Refuses to stand in for anything but a regular file (a FIFO, a device)."""
    if path.exists() and not path.is_file():
        raise OSError(f"{path} exists and is not a regular file")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(name)


def atomic_write(path: Path, data: bytes, durable: bool = False) -> None:
    """`data` at `path`, all or nothing: a temporary file beside it, renamed into place. `durable`: flushed to
    disk first, and the folder after the rename, so that the file survives a power cut too."""
    tmp = temp_file_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut only once the folder is on disk
        finally:
            os.close(folder)
