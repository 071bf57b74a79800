"""The three exporters: a built torch module (or a spec) -> one file."""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import re
import sys
import warnings
from pathlib import Path

ONNX_OPSET = 17            # HardSwish (14+) and LayerNormalization (17+); ONNX Runtime 1.18 runs it
DYNAMO_MIN_OPSET = 18      # torch.onnx's dynamo exporter writes opset 18 or later
TFLITE_EXTRA_HINT = "pip install 'fleetnas[tflite-export]'"


class ExportError(RuntimeError):
    """An artifact that cannot be made here; the message says why and what to install."""


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=None)
def _tools(fmt: str) -> tuple:
    return tuple(tools_uncached(fmt).items())


def tools(fmt: str) -> dict[str, str]:
    """The versions an artifact's bytes depend on (part of its cache key); read once per process."""
    return dict(_tools(fmt))


def tools_uncached(fmt: str) -> dict[str, str]:
    if fmt == "onnx":
        return {"torch": version("torch"), "onnx": version("onnx"), "onnxscript": version("onnxscript")}
    if fmt == "tflite":
        return {"torch": version("torch"), "litert-torch": version("litert-torch") or version("ai-edge-torch")}
    return {}


def tflite_converter():
    """litert-torch (or its former name, ai-edge-torch); a clear error naming the extra when neither is there."""
    for name in ("litert_torch", "ai_edge_torch"):
        try:
            return __import__(name)
        except ImportError:
            continue
    raise ExportError(f"TFLite export needs the optional extra 'tflite-export' (litert-torch): {TFLITE_EXTRA_HINT}")


def write_onnx(module, args: tuple, input_names: list[str], path: Path) -> dict:
    """One self-contained .onnx file. The TorchScript exporter is used while torch has it: it is about ten times
    faster than the dynamo exporter and writes byte-identical files for identical modules; the dynamo exporter
    (saved with external_data=False, so still one file) is the fallback."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                              output_names=["output"], opset_version=ONNX_OPSET, do_constant_folding=True)
        return {"exporter": "torchscript", "opset": ONNX_OPSET}
    except (TypeError, NotImplementedError, AttributeError, RuntimeError) as legacy_error:
        fallback_reason = _reason(legacy_error)
    module(*args)  # a network that fails on its inputs raises that here, before the dynamo exporter's pages of logs
    try:
        # The dynamo exporter prints its progress: on stderr, where a command's --json output is not.
        with contextlib.redirect_stdout(sys.stderr):
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=["output"], opset_version=DYNAMO_MIN_OPSET)
            program.save(str(path), external_data=False)
    except Exception as dynamo_error:  # noqa: BLE001 - both failed: the first exporter's error is the cause
        raise RuntimeError(f"the TorchScript exporter failed ({fallback_reason}), and so did the dynamo exporter "
                           f"({_reason(dynamo_error)})") from dynamo_error
    return {"exporter": "dynamo", "opset": DYNAMO_MIN_OPSET, "fallback_reason": fallback_reason}


def _reason(error: BaseException) -> str:
    """An exporter's error in one short plain line (the dynamo exporter's are pages long, in colour)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")
    return " ".join(text.split())[:300]


def write_tflite(module, args: tuple, path: Path) -> dict:
    converter = tflite_converter()
    converter.convert(module, args).export(str(path))
    return {"exporter": converter.__name__}


def spec_bytes(space: str, config: dict, inputs: list[dict]) -> bytes:
    """What a torch agent builds from (see fleetnas_agent.runtimes.torch_spec): no code, no weights."""
    return json.dumps({"space": space, "config": config, "inputs": inputs}, sort_keys=True,
                      separators=(",", ":")).encode()
