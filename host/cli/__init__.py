"""`fleetnas`: the host command. Each sub-command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from .common import CliError

# Modules under fleetnas.cli that add sub-commands, in the order `fleetnas --help` lists them.
COMMAND_MODULES = ["profile", "devices", "bench", "space", "export", "search", "runs", "report", "calibrate", "predict",
                   "demo"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetnas", description="Hardware-aware NAS measured on real devices")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except CliError as exc:
        print(f"fleetnas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleetnas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fleetnas space sample ... | head`: the reader has what it wanted
        # Python flushes stdout again at exit, into the closed pipe: point it at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process that SIGPIPE ended
    finally:
        # A gRPC call left in a reference cycle (a failed call is its own exception, whose traceback holds it)
        # is collected now, while gRPC's threads still run: at exit its finaliser waits for its lock, which a
        # daemon thread stopped by the interpreter's shutdown may hold for ever (`fleetnas profile` hung so).
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
