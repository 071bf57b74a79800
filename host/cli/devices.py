"""`fleetnas devices`: the farm's inventory (add, list, remove, check) and one agent's description."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import grpc

from .common import (CliError, add_credential_options, agent_address, agent_error, credentials_from, thread_count,
                     positive_seconds, print_json)

RUNTIME_CHOICES = ("litert", "onnxruntime", "torch")


def register(sub) -> None:
    p = sub.add_parser("devices", help="the farm's agents: add, list, remove, check, describe",
                       description="Edit and check the farm inventory (a TOML file), or describe one agent.")
    dsub = p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")

    a = dsub.add_parser("add", help="add an agent to the inventory")
    a.add_argument("name", help="a name for this agent, e.g. rpi4-a")
    a.add_argument("--address", required=True, metavar="HOST:PORT")
    a.add_argument("--kind", required=True, help="device kind: agents of one kind are interchangeable "
                                                 "(e.g. rpi4-litert-1t)")
    a.add_argument("--runtime", choices=RUNTIME_CHOICES, default="",
                   help="runtime to measure with (default: from each artifact's format)")
    a.add_argument("--threads", type=thread_count, default=1, help="intra-op threads (default 1)")
    a.add_argument("--replace", action="store_true", help="replace an agent of the same name")
    add_credential_options(a)
    _inventory_option(a)
    a.set_defaults(handler=add)

    ls = dsub.add_parser("list", help="list the inventory's agents")
    _inventory_option(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_agents)

    r = dsub.add_parser("remove", help="remove an agent from the inventory")
    r.add_argument("name")
    _inventory_option(r)
    r.set_defaults(handler=remove)

    c = dsub.add_parser("check", help="health, runtimes, temperature, throttling and a reference latency of "
                                      "every agent")
    _inventory_option(c)
    _db_option(c, "also record each device's description in this database")
    c.add_argument("--no-reference", action="store_true", help="skip measuring the reference model")
    c.add_argument("--timeout", type=positive_seconds, default=10.0, metavar="SECONDS", help="per-call timeout (default 10)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=check)

    d = dsub.add_parser("describe", help="describe one agent's device")
    d.add_argument("address", type=agent_address, metavar="HOST:PORT")
    d.add_argument("--json", action="store_true")
    add_credential_options(d)
    d.set_defaults(handler=describe)


def _inventory_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inventory", type=Path, default=Path("fleetnas.toml"), metavar="FILE",
                   help="farm inventory (default: fleetnas.toml in the working directory)")


def _db_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--db", metavar="FILE", help=text)


def load_inventory(path: Path):
    from fleetnas.farm import Inventory, InventoryError

    try:
        return Inventory.load(path)
    except InventoryError as exc:
        raise CliError(str(exc)) from None


def _stored_path(path: Path | None, inventory_dir: Path) -> str | None:
    """Credential paths as the inventory keeps them: relative to its folder when inside it, else absolute."""
    if path is None:
        return None
    full = path.resolve()
    try:
        return str(full.relative_to(inventory_dir.resolve()))
    except ValueError:
        return str(full)


@contextmanager
def editing_inventory(path: Path):
    """The inventory, read and written back under a lock (`<inventory>.lock`): two `devices add` at once
    would otherwise each write the file as they read it, and one agent would be lost."""
    from fleetnas.farm import InventoryError
    from fleetnas.farm.inventory import refuse_unusable_file
    from fleetnas.locks import exclusive

    if not path.name or path.is_dir():  # '.', '' and '/' have no file name to write, nor to lock beside
        raise CliError(f"--inventory {path} is a folder; give the inventory's file, e.g. "
                       f"{path / 'fleetnas.toml'}", 2)
    try:
        refuse_unusable_file(path)  # before its lock file is made beside it
    except InventoryError as exc:
        raise CliError(str(exc), 2) from None
    # Locked beside the file itself: an edit through a symbolic link and one through its target exclude each other.
    target = path.resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # a link's target folder too, where it is not there yet
        with exclusive(target.with_name(target.name + ".lock"), f"inventory {path}", wait=True):
            inventory = load_inventory(path)
            yield inventory
            inventory.save()
    except InventoryError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write inventory {path}: {exc.strerror or exc}") from None


def add(args: argparse.Namespace) -> int:
    from fleetnas.farm import AgentEntry

    credentials_from(args)  # files that cannot be read or used are named now, not at the first call to the agent
    with editing_inventory(args.inventory) as inventory:
        base = inventory.base_dir
        entry = AgentEntry(args.name, args.address, args.kind, args.runtime, args.threads,
                           _stored_path(args.token_file, base), _stored_path(args.tls_ca, base),
                           _stored_path(args.tls_cert, base), _stored_path(args.tls_key, base), args.tls_server_name)
        inventory.add(entry, replace=args.replace)
    print(f"added {entry.name} ({entry.kind} at {entry.address}) to {inventory.path}")
    return 0


def remove(args: argparse.Namespace) -> int:
    if not args.inventory.exists():
        raise CliError(f"no inventory at {args.inventory}")
    with editing_inventory(args.inventory) as inventory:
        entry = inventory.remove(args.name)
    print(f"removed {entry.name} from {inventory.path}")
    return 0


def _credential_summary(entry) -> str:
    parts = []
    if entry.token_file:
        parts.append("token")
    if entry.tls_cert:
        parts.append("mTLS")
    elif entry.tls_ca:
        parts.append("TLS")
    return "+".join(parts) or "none"


def list_agents(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    rows = [{"name": e.name, "address": e.address, "kind": e.kind, "runtime": e.runtime or "auto",
             "threads": e.threads, "credentials": _credential_summary(e)} for e in inventory.agents]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no agents in {inventory.path}; add one with "
              "`fleetnas devices add NAME --address HOST:PORT --kind KIND`")
        return 0
    from rich.markup import escape
    from rich.table import Table

    # Plain text, escaped: "[fd00::1]:50051" is an address, not markup.
    table = Table(title=escape(str(inventory.path)))
    for column in ("name", "kind", "address", "runtime", "threads", "credentials"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(str(row[c])) for c in ("name", "kind", "address", "runtime", "threads", "credentials")))
    console().print(table)
    return 0


def check(args: argparse.Namespace) -> int:
    from fleetnas.farm.check import check_inventory
    from fleetnas.store import StoreError, open_store

    inventory = load_inventory(args.inventory)
    if not len(inventory):
        raise CliError(f"no agents in {inventory.path}; add one with `fleetnas devices add`")
    try:
        store = open_store(args.db) if args.db else None
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        results = check_inventory(inventory, timeout_s=args.timeout, reference=not args.no_reference, store=store)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        if store is not None:
            store.close()
    if args.json:
        print_json([r.to_dict() for r in results])
    else:
        _print_checks(results)
    return 0 if all(r.healthy for r in results) else 1


def console():
    """A rich console; as wide as a table needs when the output is a file or a pipe."""
    from rich.console import Console

    plain = Console()
    return plain if plain.is_terminal else Console(width=200)


def _print_checks(results) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("name", "kind", "address", "health", "runtimes", "temp °C", "throttled", "load",
                   "reference ms"):
        table.add_column(column, justify="right" if column in ("temp °C", "load", "reference ms") else "left",
                         no_wrap=column in ("name", "kind", "address", "health"))
    problems = []
    for r in results:
        # What agents and the inventory say is plain text, escaped: only the colours here are markup.
        health = "[green]SERVING[/]" if r.healthy else f"[red]{escape(r.status)}[/]"
        temperature = f"{r.cpu_temp_max_c:.0f}" if r.cpu_temp_max_c is not None else "n/a"
        throttled = ("" if r.throttled is None else f"[red]yes: {escape(r.throttle_reason)}[/]" if r.throttled
                     else "no")
        load = "" if r.load_1m is None else f"{r.load_1m:.2f}"
        reference = f"{r.reference_latency_ms:.3f}" if r.reference_latency_ms is not None else "n/a"
        table.add_row(escape(r.name), escape(r.kind), escape(r.address), health, escape(", ".join(r.runtimes)),
                      temperature, throttled, load, reference)
        if r.detail:
            problems.append(f"{r.name}: {r.status}: {r.detail}")
        if r.reference_note:
            problems.append(f"{r.name}: reference model: {r.reference_note}")
    out = console()
    out.print(table)
    for line in problems:
        out.print(line, markup=False, highlight=False)


def describe(args: argparse.Namespace) -> int:
    from fleetnas_agent.client import AgentClient, message_dict

    with AgentClient(args.address, credentials_from(args)) as client:
        try:
            d = client.describe()
        except grpc.RpcError as exc:
            raise agent_error(exc, args.address, client.hint(exc)) from None
    if args.json:
        print_json(message_dict(d))
        return 0
    runtimes = ", ".join(f"{r.name} {r.version}" for r in d.runtimes if r.available) or "none"
    print(f"{d.label or '(no label)'}  id {d.device_id}  on {d.hostname}\n"
          f"  {d.os} {d.machine}, {d.cpu_model}, {d.cpu_cores_logical} cores, {d.ram_bytes / 2**30:.1f} GiB RAM\n"
          f"  accelerators: {', '.join(d.accelerators) or 'none'}\n"
          f"  runtimes: {runtimes}\n"
          f"  agent {d.agent_version} (Python {d.python_version}); cache {d.limits.cache_used_bytes / 2**20:.1f} of "
          f"{d.limits.cache_max_bytes / 2**20:.0f} MiB; queue bound {d.limits.max_queued_profiles}")
    return 0
