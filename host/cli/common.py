"""Pieces shared by sub-commands: credential options, agent errors, JSON output."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc


class CliError(Exception):
    """A failure to report on stderr without a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


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
    return Credentials.from_files(args.token_file, args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def agent_error(exc: grpc.RpcError, address: str) -> CliError:
    code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return CliError(f"agent {address}: {code}: {details}")


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
