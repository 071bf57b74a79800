"""Pieces shared by sub-commands: credential options, agent errors, JSON output."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import grpc


class CliError(Exception):
    """A failure to report on stderr without a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def no_empty_store_if_refused(db, may_make: bool = True):
    """Removes the store at `db` if this block made it and was then refused (a bad option, a device kind with
    no agent) with nothing stored: a new, empty store would read as one that holds no runs or measurements.
    A store with any row stays, and so does one that was there before (or a link that --db named)."""
    from fleetnas.store import store_file
    from fleetnas.store.sqlite import remove_if_empty

    made = may_make and not _store_exists(db)
    folders = missing_folders(store_file(db).parent) if made else []
    try:
        yield
    except BaseException:
        if made and remove_if_empty(store_file(db)):
            remove_empty(folders)
        raise


def missing_folders(folder: Path) -> list[Path]:
    """The folders on the way to `folder` (itself included) that are not there yet, deepest first: those a
    command makes, and removes again when it is refused (`remove_empty`)."""
    missing, folder = [], Path(os.path.abspath(folder))
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Removes each folder, deepest first, while they are empty: one something was written to stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _store_exists(db) -> bool:
    """Whether --db names something already there: a file, or a link (even one that leads nowhere yet)."""
    from fleetnas.store import StoreError, store_file

    try:
        return os.path.lexists(store_file(db))
    except (StoreError, OSError, ValueError):
        return True  # not ours to remove: open_store says what is wrong with it


def existing_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    if path.exists() and not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file (a device or a pipe); give a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def output_file(text: str) -> Path:
    """A file to write: "out/" names a folder, which Path("out/") would forget, writing a file named "out"; a
    device (/dev/null) is refused before the work, since results are written to a temporary file beside the
    target and moved into place, which a device cannot take."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; give a file name")
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if Path(text).exists() and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file; give a file name")
    return Path(text)


def refuse_overwriting_inputs(out: Path, option: str, inputs: dict[str, Path | None]) -> None:
    """An output that is one of the command's inputs (`inputs`: what it is called -> its path) would replace
    it: a store or a table, gone. A store's -wal, -shm and -journal files count as the store."""
    target = out.absolute().resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        source = Path(path).absolute().resolve()
        companions = [Path(f"{source}{end}") for end in ("", "-wal", "-shm", "-journal")]
        same = target in companions or (target.exists() and source.exists() and os.path.samefile(target, source))
        if same:
            raise CliError(f"{option} {out} is {what} ({path}): writing there would replace it; give another file",
                           2)


def _number(text: str, convert, kind: str, fits, rule: str):
    """`convert(text)`, or an argparse error saying it is not `kind` or, when it does not `fits`, the `rule`."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if not fits(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def non_negative_int(text: str) -> int:
    return _number(text, int, "an integer", lambda v: v >= 0, "must be 0 or more")


def seed(text: str) -> int:
    """A --seed: the same range for every command, the one a search run keeps (`search.run.MAX_SEED`)."""
    from fleetnas.search.run import MAX_SEED

    return _number(text, int, "an integer", lambda v: 0 <= v <= MAX_SEED, f"must be from 0 to {MAX_SEED}")


def positive_int(text: str) -> int:
    return _number(text, int, "an integer", lambda v: v > 0, "must be positive")


def thread_count(text: str) -> int:
    """A --threads: what an agent accepts (its uint32 on the wire would otherwise fail as 'Value out of range')."""
    from fleetnas_agent.measure import MAX_THREADS

    return _number(text, int, "an integer", lambda v: 1 <= v <= MAX_THREADS, f"must be from 1 to {MAX_THREADS}")


#: The largest batch a model is exported or counted for: beyond it, inputs alone would fill a host's memory.
MAX_BATCH = 1024


def batch_size(text: str) -> int:
    return _number(text, int, "an integer", lambda v: 1 <= v <= MAX_BATCH, f"must be from 1 to {MAX_BATCH}")


def count_up_to(maximum: int):
    """An argparse type: a whole number from 1 to `maximum` (how many configs to sample, say)."""
    def count(text: str) -> int:
        return _number(text, int, "an integer", lambda v: 1 <= v <= maximum, f"must be from 1 to {maximum:,}")
    return count


#: The longest wait any option in seconds may ask for: a year. Beyond it a gRPC deadline overflows (every call
#: fails at once with DEADLINE_EXCEEDED) and a thread's wait raises OverflowError.
MAX_SECONDS = 366 * 86400.0

#: The longest measurement deadline an agent accepts: fleetnas_agent.server.MAX_TIMEOUT_S, that is
#: time_limit_s(measure.MAX_SECONDS) = 2 × 3600 + 120. Mirrored, as the host does not import the agent.
AGENT_MAX_TIMEOUT_S = 7320.0
#: How long a farm's waiting jobs wait for an agent of their kind to come back: fleetnas.farm.scheduler.GIVE_UP_S,
#: the default of every command's --give-up.
FARM_GIVE_UP_S = 300.0


def positive_seconds(text: str) -> float:
    """A positive number of seconds up to a year (timeouts, give-up and re-probe times)."""
    return _number(text, float, "a number of seconds", lambda v: 0 < v <= MAX_SECONDS,
                   f"must be a positive number of seconds, at most {MAX_SECONDS:.0f} (a year)")


def deadline_seconds(text: str) -> float:
    """A per-measurement deadline: positive, and no longer than an agent accepts (it would refuse every job)."""
    return _number(text, float, "a number of seconds", lambda v: 0 < v <= AGENT_MAX_TIMEOUT_S,
                   f"must be a positive number of seconds, at most {AGENT_MAX_TIMEOUT_S:g} (the agent's limit)")


def model_families(text: str):
    """--models as fit_predictor takes it ("auto", or a list of families), refused up front when a family is
    unknown: before any measurement or fit."""
    from fleetnas.predictors import FAMILIES

    if text == "auto":
        return text
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise CliError(f"--models {text!r} names no model; choose from {', '.join(FAMILIES)} or auto", 2)
    unknown = [m for m in models if m not in FAMILIES]
    if unknown:
        raise CliError(f"--models: unknown model {unknown[0]!r}; choose from {', '.join(FAMILIES)} or auto", 2)
    return models


def agent_address(text: str) -> str:
    """HOST:PORT with a port from 1 to 65535 (gRPC would wrap 115631 round to 50095, and default to 443)."""
    from fleetnas.farm.inventory import InventoryError, check_address

    try:
        check_address(text)
    except InventoryError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("address: ")) from None
    return text


# Command-line flag -> StoppingRule field (0 or absent: the agent's default).
STOPPING_FLAGS = {"warmup_runs": "warmup_min_runs", "warmup_seconds": "warmup_min_s", "min_runs": "min_runs",
                  "max_runs": "max_runs", "min_seconds": "min_s", "max_seconds": "max_s",
                  "target_rel_ci": "target_rel_ci"}


def add_stopping_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stopping rule (0 or unset: the agent's default)")
    g.add_argument("--target-rel-ci", type=float, default=0.0,
                   help="stop when the median's 95%% CI half-width is below this fraction (default 0.01)")
    g.add_argument("--max-seconds", type=float, default=0.0, help="time cap of the timed phase (default 30)")
    g.add_argument("--min-seconds", type=float, default=0.0, help="measure at least this long (default 1)")
    g.add_argument("--min-runs", type=int, default=0,
                   help="at least this many timed runs (default 10), unless --max-seconds comes first: the time "
                        "cap bounds every measurement, and a model too slow for both reads 'target NOT met'")
    g.add_argument("--max-runs", type=int, default=0, help="at most this many timed runs (default 100000)")
    g.add_argument("--warmup-runs", type=int, default=0, help="warm-up runs at least (default 5)")
    g.add_argument("--warmup-seconds", type=float, default=0.0, help="warm-up time at least (default 0.5)")


def stopping_from(args: argparse.Namespace) -> dict:
    """The stopping rule the flags give, as StoppingRule fields; a negative value is a usage error."""
    from fleetnas_agent.measure import MAX_RUNS

    for flag in STOPPING_FLAGS:
        value = getattr(args, flag)
        if value < 0:
            raise CliError(f"--{flag.replace('_', '-')} must not be negative, got {value}", 2)
        if not value < float("inf"):  # inf or nan: no measurement would ever stop
            raise CliError(f"--{flag.replace('_', '-')} must be a finite number, got {value}", 2)
        if isinstance(value, int) and value > MAX_RUNS:  # the agent's cap (and beyond the wire's uint32 too)
            raise CliError(f"--{flag.replace('_', '-')} must be at most {MAX_RUNS:,}, got {value}", 2)
    # A lower bound above its upper bound: the agent would refuse every job, one failed measurement at a time.
    for low, high in (("min_runs", "max_runs"), ("min_seconds", "max_seconds")):
        if getattr(args, low) and getattr(args, high) and getattr(args, low) > getattr(args, high):
            raise CliError(f"--{low.replace('_', '-')} {getattr(args, low):g} is above "
                           f"--{high.replace('_', '-')} {getattr(args, high):g}", 2)
    rule = {field: getattr(args, flag) for flag, field in STOPPING_FLAGS.items() if getattr(args, flag)}
    _check_with_the_agents_rule(rule)
    return rule


def _check_with_the_agents_rule(rule: dict) -> None:
    """Refuses a rule the agent would refuse, one failed job at a time (a warm-up longer than max_s, say),
    by the agent's own check, in the flags' names."""
    from fleetnas_agent.measure import StoppingRule

    try:
        StoppingRule.from_message(rule)
    except ValueError as exc:
        message = str(exc)
        for flag, field in STOPPING_FLAGS.items():
            message = re.sub(rf"\b{field}\b", "--" + flag.replace("_", "-"), message)
        raise CliError(f"bad stopping rule: {message}", 2) from None


def add_credential_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("agent credentials")
    g.add_argument("--token-file", type=existing_file, help="bearer token the agent requires")
    g.add_argument("--tls-ca", type=existing_file, help="CA certificate (PEM) that signed the agent's certificate")
    g.add_argument("--tls-cert", type=existing_file, help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", type=existing_file, help="client private key (PEM) for mutual TLS")
    g.add_argument("--tls-server-name", help="name in the agent's certificate, when it differs from the address")


def credentials_from(args: argparse.Namespace):
    from fleetnas_agent.client import Credentials

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together", 2)
    try:
        return Credentials.from_files(args.token_file, args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def agent_error(exc: grpc.RpcError, address: str, hint: str = "") -> CliError:
    code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return CliError(f"agent {address}: {code}: {details}" + (f" ({hint})" if hint else ""))


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
