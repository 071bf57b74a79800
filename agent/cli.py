"""`fleetnas-agent`: the device-side command."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .cache import FolderLock
from .client import message_dict, read_token, tls_file_problem
from .profiler import DEFAULT_DEVICE_LOCK
from .server import MIB, AgentConfig, build_server


#: Bounds of the options Describe reports (Limits): a count is a uint32 on the wire, a size in bytes a uint64.
MAX_UINT32 = 2**32 - 1
MAX_MB_UINT64 = (2**64 - 1) // MIB
#: How long a stopping agent lets requests in flight run on.
STOP_GRACE_S = 5


def _positive(kind, at_most=None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, got {text}")
        return value
    return parse


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _readable(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetnas-agent", description="FleetNAS on-device profiling agent")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the profiling API")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=50051, help="port (default 50051; 0 picks a free one)")
    s.add_argument("--label", default="", help="a name for this device, shown in the host's tables")
    s.add_argument("--cache-dir", type=Path, default=AgentConfig.cache_dir, help="artifact cache directory")
    s.add_argument("--cache-max-mb", type=_positive(int, at_most=MAX_MB_UINT64),
                   default=AgentConfig.cache_max_bytes // MIB,
                   help="artifact cache size cap in MiB (least recently used evicted first)")
    s.add_argument("--max-artifact-mb", type=_positive(int, at_most=MAX_MB_UINT64),
                   default=AgentConfig.max_artifact_bytes // MIB, help="largest artifact accepted, in MiB")
    s.add_argument("--max-message-mb", type=_positive(int, at_most=2047),  # gRPC's limit is a signed 32-bit int
                   default=AgentConfig.max_message_bytes // MIB, help="largest single gRPC message, in MiB")
    s.add_argument("--max-input-mb", type=_positive(int), default=AgentConfig.max_input_bytes // MIB,
                   help="largest total size of a model's generated inputs, in MiB")
    s.add_argument("--max-queue", type=_positive(int, at_most=MAX_UINT32), default=AgentConfig.max_queued,
                   help="measurements allowed to wait for the device; more get RESOURCE_EXHAUSTED")
    s.add_argument("--token-file", type=_readable, help="require this bearer token (file holds the token)")
    s.add_argument("--tls-cert", type=_readable, help="server certificate (PEM) to serve TLS")
    s.add_argument("--tls-key", type=_readable, help="server private key (PEM)")
    s.add_argument("--tls-client-ca", type=_readable, help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--insecure", action="store_true",
                   help="allow plaintext without a token on a non-loopback address")
    s.add_argument("--port-file", type=Path, help="write the listening port here once serving (for scripts)")
    s.add_argument("--device-lock", default=str(DEFAULT_DEVICE_LOCK), metavar="FILE",
                   help="the file every agent on this device locks while it measures, so that two agents (another "
                        "runtime, another thread count) never measure at once (default: %(default)s; 'none': "
                        "measure without it, for an agent that stands for a device of its own)")
    s.add_argument("--test-slowdown", type=float, default=0.0, help=argparse.SUPPRESS)
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    d = sub.add_parser("describe", help="print this device's description as JSON and exit")
    d.add_argument("--cache-dir", type=Path, default=AgentConfig.cache_dir)
    return p


def config_from(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration; a ValueError names what is wrong with the options."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    # The rule the host's client reads tokens by: what one side accepts, the other can send.
    token = read_token(args.token_file) if args.token_file else None
    if not 0 <= args.test_slowdown < 10:
        raise ValueError(f"--test-slowdown must be in [0, 10), got {args.test_slowdown}")
    if args.tls_cert:
        _check_tls(args)
    if args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise ValueError(f"--cache-dir {args.cache_dir} is a file, not a folder")
    return AgentConfig(
        host=args.host, port=args.port, label=args.label, cache_dir=args.cache_dir,
        cache_max_bytes=args.cache_max_mb * MIB, max_artifact_bytes=args.max_artifact_mb * MIB,
        max_message_bytes=args.max_message_mb * MIB, max_queued=args.max_queue, token=token,
        max_input_bytes=args.max_input_mb * MIB,
        tls_cert=args.tls_cert.read_bytes() if args.tls_cert else None,
        tls_key=args.tls_key.read_bytes() if args.tls_key else None,
        tls_client_ca=args.tls_client_ca.read_bytes() if args.tls_client_ca else None,
        insecure=args.insecure, test_slowdown=args.test_slowdown,
        device_lock=None if args.device_lock == "none" else Path(args.device_lock))


def _check_tls(args: argparse.Namespace) -> None:
    """A key that does not match its certificate, or a file that is not PEM, named now: gRPC would only say
    that it cannot bind the port."""
    problem = tls_file_problem(args.tls_cert, args.tls_key, args.tls_client_ca)
    if problem is None:
        return
    which, reason = problem
    if which == "pair":
        raise ValueError(f"--tls-cert {args.tls_cert} and --tls-key {args.tls_key} cannot serve TLS: {reason} "
                         "(a PEM certificate and the unencrypted PEM key it was issued for)")
    raise ValueError(f"--tls-client-ca {args.tls_client_ca} is not a PEM certificate: {reason}")


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


def _start_up_error(exc: OSError, cache_dir: Path) -> str:
    path = Path(exc.filename) if exc.filename else None
    if path is None:
        return f"cannot start: {exc.strerror or exc}"
    if path == cache_dir or cache_dir in path.parents:
        return f"cannot use --cache-dir {cache_dir}: {exc.strerror}" + ("" if path == cache_dir else f" ({path})")
    return f"cannot use {path}: {exc.strerror}"


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from(args)
        server, port = build_server(config, FolderLock.hold(config.cache_dir))
    except ValueError as exc:
        print(f"fleetnas-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # named with the reason, not as "[Errno 13] Permission denied: '...'"
        print(f"fleetnas-agent: {_start_up_error(exc, args.cache_dir)}", file=sys.stderr)
        return 2
    if args.port_file:  # before the line below: whoever waits for it may read the file at once
        try:
            _write_port_file(args.port_file, port)
        except OSError as exc:
            server.stop(grace=None)
            print(f"fleetnas-agent: cannot write --port-file {args.port_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    # Scripts and tests wait for this line instead of polling the port.
    host = f"[{config.host}]" if ":" in config.host else config.host  # an IPv6 address as --address takes it
    print(f"fleetnas-agent: serving on {host}:{port}", flush=True)
    stopped_by: list[str] = []
    stop = threading.Event()

    def on_signal(number, _frame) -> None:
        stopped_by.append(signal.Signals(number).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    stop.wait()
    # A service manager's log shows why the agent went away, and that it let measurements in flight finish.
    logging.getLogger("fleetnas_agent").info("stopping on %s: requests in flight get up to %d s to finish",
                                             stopped_by[0], STOP_GRACE_S)
    server.stop(grace=STOP_GRACE_S).wait()
    logging.getLogger("fleetnas_agent").info("stopped")
    if args.port_file:  # a relaunch script must not read a port nobody listens on any more
        args.port_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "describe":
        from . import device
        from .runtimes import describe_runtimes
        try:
            device_id = device.device_id(args.cache_dir)
        except OSError as exc:  # an id file it may not read: named, as serve names it
            print(f"fleetnas-agent: {_start_up_error(exc, args.cache_dir)}", file=sys.stderr)
            return 2
        description = device.describe("", None, describe_runtimes(), device_id)
        try:
            print(json.dumps(message_dict(description), indent=2), flush=True)
        except BrokenPipeError:  # `fleetnas-agent describe | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes again at exit
            return 141
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
