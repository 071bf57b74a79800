"""`fleetnas export`: one sub-network as an ONNX, TFLite or torch-spec file."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .common import CliError, batch_size, output_file, positive_int, refuse_overwriting_inputs, seed
from .space import load_supernet


def register(sub) -> None:
    p = sub.add_parser("export", help="export a sub-network as ONNX, TFLite or a torch spec",
                       description="Build a config's sub-network (fixed-seed random weights) and write it in the "
                                   "given format; exports are cached by content, so repeating one is free.")
    p.add_argument("--space", metavar="NAME", help="space id (see `fleetnas space list`); a --run knows its own")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", metavar="JSON", help="the config as a JSON object, or @FILE holding one")
    which.add_argument("--sample", action="store_true", help="export a config sampled with --seed")
    which.add_argument("--run", metavar="RUN", help="export a member of search run RUN's measured front (its id "
                                                    "or --name; see --rank)")
    p.add_argument("--seed", type=seed, help="seed of --sample (default 0)")
    p.add_argument("--rank", type=positive_int, help="with --run: the front member, as ranked in the report's "
                                                     "front.csv (default 1)")
    p.add_argument("--db", help="with --run: the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--format", required=True, choices=["onnx", "tflite", "spec"], dest="fmt")
    p.add_argument("--batch", type=batch_size, default=1, help="batch size of the model's inputs (default 1)")
    p.add_argument("--out", required=True, type=output_file, metavar="PATH", help="file to write")
    p.add_argument("--cache-dir", type=Path, help="artifact cache (default $FLEETNAS_CACHE_DIR/artifacts)")
    p.set_defaults(handler=run)


def parse_config(text: str) -> dict:
    """The --config JSON object, given inline or as @FILE; a CliError naming the file (or --config) if it is not one."""
    where = "--config"
    if text.startswith("@"):
        where = f"--config file {text[1:]!r}"
        text = _read_config_file(text[1:])
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{where} is not JSON ({exc}): {text!r:.200}") from None
    except RecursionError:  # json's parser recurses once per level: a few thousand nested [ exhaust the stack
        raise CliError(f"{where} nests its JSON too deeply to read (a config is one flat JSON object)") from None
    if not isinstance(config, dict):
        raise CliError(f"{where} must hold a JSON object, got {type(config).__name__}")
    return config


def _read_config_file(name: str) -> str:
    try:
        return Path(name).read_text()
    except OSError as exc:
        raise CliError(f"cannot read --config file {name!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"--config file {name!r} is not UTF-8 text") from None


def run(args: argparse.Namespace) -> int:
    from fleetnas.export import ExportError, export_artifact
    from fleetnas.supernets import InvalidConfig
    from fleetnas.supernets.base import BuildError
    from fleetnas.supernets.space import NoValidConfig

    from fleetnas.store import store_file

    out = args.out
    refuse_overwriting_inputs(out, "--out", {
        "the --config file": Path(args.config[1:]) if args.config and args.config.startswith("@") else None,
        "the run's store": store_file(args.db) if args.run is not None else None})
    _check_out(out)  # before the export, which may take a while; it creates nothing
    args.space, config = _what_to_export(args)
    supernet = load_supernet(args.space)
    try:
        if config is None:
            config = supernet.space.sample(1, args.seed or 0)[0] if args.sample else parse_config(args.config)
        artifact = export_artifact(args.space, config, args.fmt, args.batch, args.cache_dir)
        # --out's folders only now, the export done: a refused config or export leaves nothing behind.
        out.parent.mkdir(parents=True, exist_ok=True)
        _copy_into_place(artifact.path, out)
    except InvalidConfig as exc:
        raise CliError(f"bad config for {args.space}: {exc}") from None
    except (ExportError, BuildError, NoValidConfig) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    made = "from the cache" if artifact.meta.get("from_cache") else f"exported in {artifact.meta['export_s']:.2f} s"
    # What was written goes to stderr: stdout is the config alone, for a script to read.
    print(f"wrote {out} ({artifact.format}, {artifact.size_bytes / 2**20:.2f} MiB, sha256 {artifact.sha256[:16]}…, "
          f"{made}; cached at {artifact.path})", file=sys.stderr)
    print(json.dumps(supernet.space.validate(config), separators=(",", ":")))
    return 0


def _check_out(out: Path) -> None:
    """Refuses an --out that cannot be written, without creating anything: its nearest existing folder must be
    a writable directory (the folders missing below it are made once the export is done)."""
    try:
        problem = _out_problem(out)
    except OSError as exc:  # a folder on the way that cannot be looked into, say
        problem = f"cannot write --out {str(out)!r}: {exc.strerror or exc}"
    if problem:
        raise CliError(problem)


def _out_problem(out: Path) -> str | None:
    if out.exists() and not out.is_file():
        return f"--out {str(out)!r} exists and is not a regular file"
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot write --out {str(out)!r}: {str(folder)!r} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write --out {str(out)!r}: {str(folder)!r} is not writable"
    return None


def _what_to_export(args: argparse.Namespace) -> tuple[str, dict | None]:
    """(space, config or None): a --run's space and front member; else --space, the config still to make."""
    for option, needs in (("seed", "sample"), ("rank", "run"), ("db", "run")):
        if getattr(args, option) is not None and getattr(args, needs) in (None, False):
            raise CliError(f"--{option} goes with --{needs}", 2)
    if args.run is None:
        if not args.space:
            raise CliError("give --space NAME (or --run RUN, whose space is known)", 2)
        return args.space, None
    from fleetnas.search.run import find_run, load_spec, measured_front
    from fleetnas.store import StoreError, open_store

    try:
        with open_store(args.db, read_only=True) as store:
            run_id = find_run(store, args.run).id
            space = load_spec(store, run_id).space
            configs, _, _ = measured_front(store, run_id)
    except (KeyError, StoreError) as exc:
        raise CliError(exc.args[0] if exc.args else str(exc)) from None
    if args.space and args.space != space:
        raise CliError(f"run {args.run} searched {space}, not --space {args.space}", 2)
    rank = args.rank or 1
    if rank > len(configs):
        raise CliError(f"run {args.run}'s measured front has {len(configs)} member(s); --rank {rank} is beyond it")
    return space, configs[rank - 1]


def _copy_into_place(source: Path, out: Path) -> None:
    """A reader of `out` never sees half a file; it gets the permissions a plain open() would give."""
    from fleetnas.export.artifact import temp_file_beside

    tmp = temp_file_beside(out)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
