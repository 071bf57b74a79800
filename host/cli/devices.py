"""`fleetnas devices`: the agents a host knows about."""
from __future__ import annotations

import argparse

import grpc

from .common import add_credential_options, agent_error, credentials_from, print_json


def register(sub) -> None:
    p = sub.add_parser("devices", help="inspect agents")
    dsub = p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    d = dsub.add_parser("describe", help="describe one agent's device")
    d.add_argument("address", metavar="HOST:PORT")
    d.add_argument("--json", action="store_true")
    add_credential_options(d)
    d.set_defaults(handler=describe)


def describe(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from fleetnas_agent.client import AgentClient

    with AgentClient(args.address, credentials_from(args)) as client:
        try:
            d = client.describe()
        except grpc.RpcError as exc:
            raise agent_error(exc, args.address) from None
    if args.json:
        print_json(json_format.MessageToDict(d, preserving_proto_field_name=True))
        return 0
    runtimes = ", ".join(f"{r.name} {r.version}" for r in d.runtimes if r.available) or "none"
    print(f"{d.label or '(no label)'}  id {d.device_id}  on {d.hostname}\n"
          f"  {d.os} {d.machine}, {d.cpu_model}, {d.cpu_cores_logical} cores, {d.ram_bytes / 2**30:.1f} GiB RAM\n"
          f"  accelerators: {', '.join(d.accelerators) or 'none'}\n"
          f"  runtimes: {runtimes}\n"
          f"  agent {d.agent_version} (Python {d.python_version}); cache {d.limits.cache_used_bytes / 2**20:.1f} of "
          f"{d.limits.cache_max_bytes / 2**20:.0f} MiB; queue bound {d.limits.max_queued_profiles}")
    return 0
