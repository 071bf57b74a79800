"""`fleetnas profile`: measure one model file on one agent."""
from __future__ import annotations

import argparse
import sys

import grpc

from .common import CliError, add_credential_options, agent_error, credentials_from, existing_file, positive_int
from .common import print_json


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure a model file on an agent",
                       description="Upload a model to an agent (if it lacks it), measure it, print the figures.")
    p.add_argument("--agent", required=True, metavar="HOST:PORT", help="the agent's address")
    p.add_argument("--model", required=True, type=existing_file, metavar="FILE", help=".tflite or .onnx model")
    p.add_argument("--runtime", default="", help="litert, onnxruntime or torch (default: from the model's format)")
    p.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--target-rel-ci", type=float, default=0.0,
                   help="stop when the median's 95%% CI half-width is below this fraction (default 0.01)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="time cap of the timed phase (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    add_credential_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas_agent.client import AgentClient, result_to_dict
    from fleetnas_agent.proto import agent_pb2 as pb

    stopping = pb.StoppingRule(target_rel_ci=args.target_rel_ci, max_s=args.max_seconds)
    with AgentClient(args.agent, credentials_from(args)) as client:
        try:
            sha = client.put_file(args.model)
            result = client.profile(sha, runtime=args.runtime, threads=args.threads, stopping=stopping,
                                    on_progress=None if args.json else _show_progress)
        except grpc.RpcError as exc:
            raise agent_error(exc, args.agent) from None
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if not args.json:
        sys.stderr.write("\r\033[K")
    summary = result_to_dict(result)
    if args.json:
        print_json(summary)
    else:
        print(format_summary(args.model.name, summary))
    return 0


PHASES = {1: "queued", 2: "loading", 3: "warming up", 4: "measuring"}


def _show_progress(progress) -> None:
    text = PHASES.get(progress.phase, "working")
    if progress.phase == 1:
        text += f" ({progress.queue_position} ahead)"
    elif progress.runs_done:
        text += f": {progress.runs_done} runs"
    sys.stderr.write(f"\r\033[K{text}")
    sys.stderr.flush()


def format_summary(name: str, s: dict) -> str:
    lat, mem = s["latency_ms"], s["memory"]
    before, after = s["env"]["before"], s["env"]["after"]
    lines = [
        f"{name} on {s['device']['label'] or s['device']['id']} with {s['runtime']['name']} "
        f"{s['runtime']['version']}, {s['threads']} thread(s)",
        f"  latency  median {lat['median']:.3f} ms  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
        f"mean {lat['mean']:.3f} ± {lat['std']:.3f}  [{lat['min']:.3f} … {lat['max']:.3f}]",
        f"           n={lat['n']}, median 95% CI ±{lat['rel_ci_half_width'] * 100:.2f}% "
        f"({'target met' if lat['target_met'] else 'target NOT met'})",
    ]
    if mem["measured"]:
        lines.append(f"  memory   peak {mem['peak_bytes'] / 2**20:.1f} MiB above a {mem['baseline_rss_bytes'] / 2**20:.1f}"
                     f" MiB baseline; model file {mem['model_bytes'] / 2**20:.2f} MiB")
    else:
        lines.append(f"  memory   not measured: {mem['note']}")
    temp = lambda e: f"{e['cpu_temp_max_c']:.0f} °C" if e["cpu_temp_max_c"] else "n/a"  # noqa: E731
    lines.append(f"  device   temperature {temp(before)} → {temp(after)}, load {after['load_1m']:.2f}"
                 + ("  THROTTLED: " + (after["throttle_reason"] or before["throttle_reason"]) if s["env"]["throttled"]
                    else ""))
    return "\n".join(lines)
