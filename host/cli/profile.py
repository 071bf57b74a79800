"""`fleetnas profile`: measure one model on one agent, or many models / sub-networks on a device farm."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import grpc

from .common import (AGENT_MAX_TIMEOUT_S, FARM_GIVE_UP_S, CliError, add_credential_options, add_stopping_options,
                     agent_address, agent_error, count_up_to, credentials_from, deadline_seconds, existing_file,
                     no_empty_store_if_refused, positive_int, positive_seconds, print_json, seed, stopping_from,
                     thread_count)
from .space import MAX_SAMPLE


def register(sub) -> None:
    p = sub.add_parser(
        "profile", help="measure models on an agent or on a device farm",
        description="One agent: upload a model (if the agent lacks it), measure it, print the figures.\n"
                    "A farm (--device-kind): measure many models, or N sampled sub-networks of a space, on every "
                    "healthy agent of that kind; results go to the database, and what it already holds is not "
                    "measured again.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--agent", type=agent_address, metavar="HOST:PORT", help="one agent's address")
    where.add_argument("--device-kind", metavar="KIND", help="measure on every agent of this kind in the inventory")
    p.add_argument("--model", nargs="+", type=existing_file, metavar="FILE",
                   help=".tflite or .onnx model (farm mode: one or more)")
    p.add_argument("--space", metavar="NAME", help="farm mode: a super-network's space to sample sub-networks from")
    p.add_argument("--sample", type=count_up_to(MAX_SAMPLE), metavar="N",
                   help=f"farm mode: how many sub-networks to sample (at most {MAX_SAMPLE:,})")
    p.add_argument("--seed", type=seed, help="farm mode: sampling seed (default 0)")
    p.add_argument("--runtime", default="", help="litert, onnxruntime or torch (default: from the model's format; "
                                                 "farm mode: from the inventory)")
    p.add_argument("--threads", type=thread_count, default=1, help="intra-op threads (default 1; farm mode: from "
                                                                   "the inventory)")
    add_stopping_options(p)
    f = p.add_argument_group("farm mode")
    f.add_argument("--inventory", type=Path, metavar="FILE",
                   help="farm inventory (default: fleetnas.toml in the working directory)")
    f.add_argument("--db", metavar="FILE", help="measurement database (default: fleetnas.db, or $FLEETNAS_DB)")
    f.add_argument("--remeasure", action="store_true", help="measure again even what the database already holds")
    p.add_argument("--deadline", type=deadline_seconds, metavar="SECONDS",
                   help=f"per-measurement deadline, load included, at most {AGENT_MAX_TIMEOUT_S:g} (default: twice "
                        "--max-seconds plus a minute)")
    f.add_argument("--max-attempts", type=positive_int, help="agents one job may be tried on (default 3)")
    f.add_argument("--reprobe", type=positive_seconds, metavar="SECONDS",
                   help="how long an agent that failed waits before it is checked again (default 30; at most a "
                        "third of --give-up)")
    f.add_argument("--give-up", type=positive_seconds, metavar="SECONDS",
                   help="fail the waiting jobs once no agent of the kind has answered for this long "
                        f"(default {FARM_GIVE_UP_S:g})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    add_credential_options(p)
    p.set_defaults(handler=run)


#: Options only a farm uses, with their defaults there (None in the parser, so that one agent can refuse them).
FARM_DEFAULTS = {"seed": 0, "inventory": Path("fleetnas.toml"), "db": None, "remeasure": False,
                 "max_attempts": 3, "reprobe": 30.0, "give_up": FARM_GIVE_UP_S}


def run(args: argparse.Namespace) -> int:
    stopping_from(args)  # a negative value is a usage error in either mode
    if args.device_kind:
        for name, default in FARM_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        return run_farm(args)
    if args.space or args.sample:
        raise CliError("--space and --sample need --device-kind (a farm), not --agent", 2)
    farm_only = [name for name in FARM_DEFAULTS if getattr(args, name) not in (None, False)]
    if farm_only:
        raise CliError(f"--{farm_only[0].replace('_', '-')} is a farm-mode option (--device-kind); one --agent "
                       "measures without an inventory or a database", 2)
    if not args.model or len(args.model) != 1:
        raise CliError("--agent measures exactly one --model FILE", 2)
    return run_single(args, args.model[0])


# ----- one agent ------------------------------------------------------------------------------------
def run_single(args: argparse.Namespace, model: Path) -> int:
    from fleetnas_agent.client import CALL_TIMEOUT_S, AgentClient, result_to_dict
    from fleetnas_agent.proto import agent_pb2 as pb

    from ..farm.jobs import JobError, deadline_for, sniff

    rule = stopping_from(args)
    stopping = pb.StoppingRule(**rule)
    # The agent's deadline on the model comes first, with its cause; a call that sees no progress a little
    # longer than that (an agent frozen, a link cut without a word) is cancelled instead of waited on for ever.
    deadline_s = args.deadline or deadline_for(rule)
    data = model.read_bytes()
    try:
        sniff(data, model)  # a file named for one format holding another is refused by name, before the upload
    except JobError as exc:
        raise CliError(str(exc)) from None
    live = not args.json and sys.stderr.isatty()  # a progress line only where it can be redrawn
    # The calls before the measurement (connecting, the upload) are bounded so too: an agent frozen before it
    # answered would otherwise hold the command for the connection timeout, 20 s, whatever --deadline said.
    with AgentClient(args.agent, credentials_from(args), timeout_s=min(CALL_TIMEOUT_S, deadline_s + 5.0)) as client:
        try:
            sha = client.put_artifact(data, name=model.name)
            result = client.profile(sha, runtime=args.runtime, threads=args.threads, stopping=stopping,
                                    timeout_s=deadline_s, stall_s=deadline_s + 5.0,
                                    on_progress=_show_progress if live else None)
        except grpc.RpcError as exc:
            raise agent_error(exc, args.agent, client.hint(exc)) from None
        except ValueError as exc:
            raise CliError(str(exc)) from None
        finally:
            if live:
                sys.stderr.write("\r\033[K")
    summary = result_to_dict(result)
    if args.json:
        print_json(summary)
    else:
        print(format_summary(model.name, summary))
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
    from fleetnas_agent.measure import MIN_CI_RUNS, NO_INTERVAL

    lat, mem = s["latency_ms"], s["memory"]
    before, after = s["env"]["before"], s["env"]["after"]
    precision = (f"no 95% CI of the median below {MIN_CI_RUNS} runs" if lat["rel_ci_half_width"] >= NO_INTERVAL
                 else f"median 95% CI ±{lat['rel_ci_half_width'] * 100:.2f}%")
    lines = [
        f"{name} on {s['device']['label'] or s['device']['id']} with {s['runtime']['name']} "
        f"{s['runtime']['version']}, {s['threads']} thread(s)",
        f"  latency  median {lat['median']:.3f} ms  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
        f"mean {lat['mean']:.3f} ± {lat['std']:.3f}  [{lat['min']:.3f} … {lat['max']:.3f}]",
        f"           n={lat['n']}, {precision} "
        f"({'target met' if lat['target_met'] else 'target NOT met'})",
    ]
    if mem["measured"]:
        lines.append(f"  memory   peak {mem['peak_bytes'] / 2**20:.1f} MiB above a {mem['baseline_rss_bytes'] / 2**20:.1f}"
                     f" MiB baseline; model file {mem['model_bytes'] / 2**20:.2f} MiB")
    else:
        lines.append(f"  memory   not measured: {mem['note']}")
    temp = lambda e: f"{e['cpu_temp_max_c']:.0f} °C" if e["cpu_temp_max_c"] is not None else "n/a"  # noqa: E731
    lines.append(f"  device   temperature {temp(before)} → {temp(after)}, load {after['load_1m']:.2f}"
                 + ("  THROTTLED: " + (after["throttle_reason"] or before["throttle_reason"]) if s["env"]["throttled"]
                    else ""))
    return "\n".join(lines)


# ----- a farm ---------------------------------------------------------------------------------------
def run_farm(args: argparse.Namespace) -> int:
    from fleetnas.farm import ArtifactSource, Farm, FarmError, Inventory, InventoryError, JobError
    from fleetnas.store import StoreError, open_store

    if bool(args.space) != bool(args.sample):
        raise CliError("--space and --sample go together", 2)
    if bool(args.space) == bool(args.model):
        raise CliError("farm mode measures either --model FILE... or --space NAME --sample N", 2)
    if args.runtime or args.threads != 1:
        raise CliError("in farm mode the runtime and threads come from the inventory (one kind, one way of "
                       "measuring): drop --runtime/--threads", 2)
    if args.token_file or args.tls_ca or args.tls_cert:
        raise CliError("in farm mode credentials come from the inventory: drop --token-file/--tls-*", 2)
    logging.basicConfig(level=logging.WARNING, format="fleetnas: %(message)s")
    with no_empty_store_if_refused(args.db):
        try:
            inventory = Inventory.load(args.inventory)
            inventory.of_kind(args.device_kind)
            configs, keys, space = _configs(args) if args.space else (None, None, None)
            store = open_store(args.db)
        except (InventoryError, StoreError, JobError) as exc:
            raise CliError(str(exc)) from None
        farm = Farm(inventory, store, deadline_s=args.deadline, max_attempts=args.max_attempts,
                    reprobe_s=args.reprobe, give_up_s=args.give_up, progress=sys.stderr.isatty())
        try:
            with farm:
                # Every agent of the kind down while something is left to measure: refuse at once, as `search`
                # does, instead of waiting --give-up; what the store holds is still answered with no agent up.
                if configs is not None:
                    results = farm.measure(configs, args.device_kind, space=space, stopping=stopping_from(args),
                                           remeasure=args.remeasure, answering_first=True)
                    names = keys
                else:
                    artifacts = [ArtifactSource.from_file(path) for path in args.model]
                    results = farm.measure_artifacts(artifacts, args.device_kind, stopping=stopping_from(args),
                                                     remeasure=args.remeasure, answering_first=True)
                    names = [str(path) for path in args.model]
        except (FarmError, StoreError, JobError, InventoryError) as exc:
            raise CliError(str(exc)) from None
    rows = []
    for name, config, result in zip(names, configs or [None] * len(names), results):
        row = {"key": name, **({"config": config} if config is not None else {}), **result.to_dict()}
        rows.append(row)
    if args.json:
        print_json(rows)
    else:
        _print_farm_results(rows, args.device_kind)
    return 0 if all(r["ok"] for r in rows) else 1


def _configs(args: argparse.Namespace):
    from fleetnas.supernets import get_supernet

    try:
        supernet = get_supernet(args.space)
    except KeyError as exc:
        raise CliError(exc.args[0]) from None
    configs = supernet.space.sample(args.sample, rng=args.seed)
    return configs, [supernet.space.key(c) for c in configs], supernet.space.id


def _print_farm_results(rows: list[dict], kind: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .devices import console

    # Keys, file names, agent names and errors are plain text: escaped, "[/b]" in a file name is not markup.
    table = Table(title=escape(f"{len(rows)} job(s) on {kind}"))
    for column in ("key", "agent", "median ms", "p90 ms", "peak MiB", "note"):
        table.add_column(column, justify="right" if column.endswith(("ms", "MiB")) else "left",
                         overflow="fold")
    for r in rows:
        lat, mem = r["latency_ms"], r["memory"]
        peak = f"{mem['peak_bytes'] / 2**20:.1f}" if mem.get("measured") else ""
        note = ("[red]" + escape(r["error"] or "failed") + "[/]" if not r["ok"]
                else "stored before" if r["from_store"] else "throttled" if r["throttled"] else "")
        table.add_row(escape(r["key"]), escape(r["device"]["agent"] or ""), f"{lat['median']:.3f}" if lat else "",
                      f"{lat['p90']:.3f}" if lat else "", peak, note)
    console().print(table)
    # A model or config given twice is one job (the farm measures it once): counted once, whatever came of it.
    first = list({r["artifact_sha256"]: r for r in reversed(rows)}.values())
    measured = sum(r["ok"] and not r["from_store"] for r in first)
    stored = sum(r["ok"] and r["from_store"] for r in first)
    failed = sum(not r["ok"] for r in first)
    repeats = len(rows) - len(first)
    print(f"{measured} measured, {stored} already stored, {failed} failed"
          + (f" ({repeats} repeated)" if repeats else ""))
