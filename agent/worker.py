"""The measuring child process: `python -m fleetnas_agent.worker`, one measurement, then exit.

Runs in its own process so that a model that crashes or hangs cannot take the agent down, and so that
the peak memory it reports is this process's alone. Reads one JSON request on stdin; writes JSON lines
on a private copy of stdout ({"progress": ...}, then {"result": ...} or {"error": {"code", "message"}}):
fd 1 itself is pointed at stderr, because runtimes print to it.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import inputs
from .measure import StoppingRule, measure
from .profiler import AGENT_PID_VAR

STATUS = Path("/proc/self/status")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main() -> int:
    _bind_to_agent()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(kind: str, payload: dict) -> None:
        out.write(json.dumps({kind: payload}) + "\n")

    try:
        request = json.loads(sys.stdin.read())
        send("result", run(request, lambda **p: send("progress", p)))
    except Failure as failure:
        send("error", {"code": failure.code, "message": str(failure), "cause": failure.cause})
    except MemoryError:
        send("error", {"code": "RESOURCE_EXHAUSTED", "message": "the device ran out of memory",
                       "cause": "MODEL_OUT_OF_MEMORY"})
    out.flush()
    return 0


def _bind_to_agent() -> None:
    """On Linux: die with the agent, and be the first process the kernel kills when memory runs out.

    The agent kills this process on a deadline or a cancelled request; an agent that is itself killed
    (SIGKILL, the OOM killer) cleans nothing up, and a hanging model would then hold the device forever.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")  # a model's appetite must not cost the agent
    except OSError:
        pass
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    agent = os.environ.get(AGENT_PID_VAR)
    if agent and os.getppid() != int(agent):  # the agent died before the line above took effect
        os._exit(1)


class Failure(Exception):
    def __init__(self, code: str, message: str, cause: str | None = None):
        super().__init__(message)
        self.code, self.cause = code, cause


#: How runtimes say an allocation failed (onnxruntime's arena, torch's and TFLite's allocators, C++'s
#: std::bad_alloc): raised as their own exceptions, not MemoryError, yet the model's running out of memory.
ALLOCATION_FAILED = re.compile(r"failed to allocate|can't allocate memory|cannot allocate memory|bad_alloc|"
                               r"out of memory", re.IGNORECASE)


def _model_failure(what: str, exc: Exception) -> Failure:
    """The model's failure while loading or running: out of memory where the runtime says so, else a bad model."""
    message = f"{what}: {type(exc).__name__}: {exc}"
    if ALLOCATION_FAILED.search(str(exc)):
        return Failure("RESOURCE_EXHAUSTED", f"the device ran out of memory ({message})", "MODEL_OUT_OF_MEMORY")
    return Failure("INVALID_ARGUMENT", message)


def run(request: dict, progress) -> dict:
    from .runtimes import load_adapter

    progress(phase="loading", runs_done=0, elapsed_s=0.0, rel_ci_half_width=0.0)
    try:
        rule = StoppingRule.from_message(request.get("stopping", {}))
    except (TypeError, ValueError) as exc:
        raise Failure("INVALID_ARGUMENT", f"bad stopping rule: {exc}") from exc
    try:
        adapter = load_adapter(request["runtime"])
    except Exception as exc:  # noqa: BLE001 - a runtime installed yet broken (a NumPy it was not built for, a
        # missing shared library): this device's install, not the model; a peer of the kind may measure it
        raise Failure("FAILED_PRECONDITION", f"runtime {request['runtime']!r} is installed but cannot be used on "
                                             f"this device: {type(exc).__name__}: {exc}", "RUNTIME_UNAVAILABLE") from exc
    with _load_errors(request["runtime"]):  # what the model needs besides itself, imported before the baseline
        source = adapter.prepare(request["artifact"]) if hasattr(adapter, "prepare") else request["artifact"]
    baseline = _reset_peak()

    load_start = time.perf_counter()
    with _load_errors(request["runtime"]):
        model = adapter.load(source, request["threads"])
    try:  # the request's input shapes, or what they add up to: the caller's to change, not the model's
        specs = inputs.resolve(model.input_specs(), request.get("inputs", []))
        inputs.check_size(specs, request["max_input_bytes"])
        model.set_inputs(inputs.generate(specs, request.get("seed", 0)))
    except MemoryError:
        raise
    except Exception as exc:
        raise Failure("INVALID_ARGUMENT", f"bad inputs for the model: {type(exc).__name__}: {exc}") from exc
    load_ms = (time.perf_counter() - load_start) * 1000

    def on_progress(phase: str, runs: int, elapsed: float, rel: float) -> None:
        progress(phase=phase, runs_done=runs, elapsed_s=elapsed, rel_ci_half_width=min(rel, 1e9))

    try:
        latency = measure(model.run, rule, on_progress, slowdown=request.get("slowdown", 0.0))
    except MemoryError:
        raise
    except Exception as exc:
        raise _model_failure("the model failed while running", exc) from exc

    memory = _memory(baseline, request.get("model_bytes", 0))
    memory.update(model.memory_figures())
    return {"latency": latency, "memory": memory, "inputs": specs, "load_ms": load_ms,
            "runtime_version": adapter.version()}


@contextmanager
def _load_errors(runtime: str) -> Iterator[None]:
    """Any failure to load is the artifact's fault, reported to the client; running out of memory is not."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        raise _model_failure(f"cannot load the model with {runtime}", exc) from exc


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> int | None:
    """Resident bytes now, after the runtime import; the peak counter restarts from here where Linux allows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
    except OSError:
        pass
    rss = _status_kib("VmRSS")
    return rss * 1024 if rss is not None else None


def _memory(baseline: int | None, model_bytes: int) -> dict:
    peak = _status_kib("VmHWM")
    if baseline is None or peak is None:
        return {"measured": False, "model_bytes": model_bytes, "method": "none",
                "note": f"per-process peak memory (VmHWM) is not readable on {platform.system()}; not measured"}
    peak_bytes = peak * 1024
    return {"measured": True, "peak_bytes": max(peak_bytes - baseline, 0), "baseline_rss_bytes": baseline,
            "peak_rss_bytes": peak_bytes, "model_bytes": model_bytes, "method": "VmHWM-minus-baseline",
            "note": "child's peak resident set minus its resident set after the runtime import"}


if __name__ == "__main__":
    sys.exit(main())
