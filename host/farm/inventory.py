"""The farm's inventory: a TOML file naming each agent, where it is, what kind of device it is, how to reach it.

```toml
[agents.rpi4-a]
address = "192.168.1.20:50051"
kind = "rpi4-litert-1t"      # agents of one kind are interchangeable for measurement
runtime = "litert"           # optional: litert | onnxruntime | torch; empty = from the artifact's format
threads = 1
token_file = "tokens/rpi4-a" # optional credentials; relative paths are relative to this file
tls_ca = "ca.pem"
```
Interchangeable means measured the same way: every agent of a kind must name the same runtime and threads.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

DEFAULT_INVENTORY = "fleetnas.toml"
RUNTIMES = ("", "litert", "onnxruntime", "torch")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole names only (fullmatch): "$" lets "a\n" through
CREDENTIAL_FIELDS = ("token_file", "tls_ca", "tls_cert", "tls_key")


class InventoryError(ValueError):
    """A bad inventory file or entry; the message names the agent and the field."""


@dataclass(frozen=True)
class AgentEntry:
    name: str
    address: str
    kind: str
    runtime: str = ""
    threads: int = 1
    token_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise InventoryError(f"agent name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        where = f"agent {self.name!r}"
        if not isinstance(self.kind, str) or not NAME.fullmatch(self.kind):
            raise InventoryError(f"{where}: kind {self.kind!r} must be 1-64 letters, digits, '.', '_' or '-' "
                                 "(e.g. rpi4-litert-1t)")
        check_address(self.address, where)
        if self.runtime not in RUNTIMES:
            raise InventoryError(f"{where}: runtime {self.runtime!r} is not one of "
                                 f"{', '.join(r for r in RUNTIMES if r)} (or empty: from the artifact's format)")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 256:
            raise InventoryError(f"{where}: threads must be an integer from 1 to 256, got {self.threads!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InventoryError(f"{where}: tls_cert and tls_key go together")
        for name in (*CREDENTIAL_FIELDS, "tls_server_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InventoryError(f"{where}: {name} must be a string, got {value!r}")

    def credentials(self, base_dir: Path = Path(".")):
        """The agent client's Credentials, reading the files named here (relative to `base_dir`)."""
        from fleetnas_agent.client import Credentials

        paths = {}
        for name in CREDENTIAL_FIELDS:
            value = getattr(self, name)
            if value:
                path = Path(value) if Path(value).is_absolute() else base_dir / value
                if not path.is_file():
                    raise InventoryError(f"agent {self.name!r}: {name} {path} does not exist")
                paths[name] = path
        try:
            return Credentials.from_files(paths.get("token_file"), paths.get("tls_ca"), paths.get("tls_cert"),
                                          paths.get("tls_key"), self.tls_server_name)
        except ValueError as exc:
            raise InventoryError(f"agent {self.name!r}: {exc}") from None

    def to_toml(self) -> dict:
        """The entry's table, without its name and without fields left at their defaults."""
        defaults = AgentEntry.__dataclass_fields__
        return {k: v for k, v in asdict(self).items()
                if k != "name" and v is not None and (k in ("address", "kind") or v != defaults[k].default)}


def check_address(address, where: str = "address") -> None:
    if not isinstance(address, str):
        raise InventoryError(f"{where}: address must be a string HOST:PORT, got {address!r}")
    host, sep, port = address.rpartition(":")
    # ASCII digits only: str.isdigit() also takes '²' (which int() refuses) and '５' (which gRPC does).
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise InventoryError(f"{where}: address {address!r} is not HOST:PORT with a port from 1 to 65535")


def endpoints(address: str) -> set[tuple[str, int]]:
    """The (host, port) pairs `address` may reach, in one spelling: a host name in lower case, an IP address
    in its compressed form, the port as a number, and localhost as both loopback addresses. Two entries for
    one agent would have the farm run two measurements at once on one device, each slowing the other."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]").rstrip(".").lower()
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    hosts = {"127.0.0.1", "::1"} if host == "localhost" else {host}
    return {(h, int(port)) for h in hosts}


class Inventory:
    """The agents of one inventory file, by name. Changes are written back with save()."""

    def __init__(self, path: str | Path = DEFAULT_INVENTORY, agents: list[AgentEntry] = ()):
        self.path = Path(path)
        self._agents: dict[str, AgentEntry] = {}
        for entry in agents:
            self.add(entry)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_INVENTORY) -> "Inventory":
        """Reads the file; a missing file is an empty inventory (so `devices add` can create it)."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InventoryError(f"{path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise InventoryError(f"cannot read inventory {path}: {exc}") from None
        unknown = set(data) - {"agents"}
        if unknown:
            raise InventoryError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                                 "expected [agents.NAME] tables")
        tables = data.get("agents", {})
        if not isinstance(tables, dict):
            raise InventoryError(f"{path}: 'agents' must be tables [agents.NAME]")
        allowed = {f.name for f in fields(AgentEntry)} - {"name"}
        inventory = cls(path)
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise InventoryError(f"{path}: agents.{name} must be a table")
            extra = set(table) - allowed
            if extra:
                raise InventoryError(f"{path}: agent {name!r} has unknown field(s) {', '.join(sorted(extra))}; "
                                     f"known: {', '.join(sorted(allowed))}")
            missing = {"address", "kind"} - set(table)
            if missing:
                raise InventoryError(f"{path}: agent {name!r} lacks {', '.join(sorted(missing))}")
            try:
                inventory.add(AgentEntry(name=name, **table))
            except InventoryError as exc:
                raise InventoryError(f"{path}: {exc}") from None
        return inventory

    def save(self) -> None:
        """Writes the file atomically (a temporary file renamed over it); through a symbolic link, the file it
        points to (renaming over the link would replace it with a copy, and leave the real inventory as it was)."""
        import tomli_w

        body = tomli_w.dumps({"agents": {e.name: e.to_toml() for e in self._agents.values()}})
        text = "# FleetNAS device farm inventory: `fleetnas devices add|remove|list|check` edit and read it.\n" + body
        target = self.path.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)

    # ----- queries and edits ----------------------------------------------------------------------
    @property
    def agents(self) -> list[AgentEntry]:
        return list(self._agents.values())

    @property
    def base_dir(self) -> Path:
        """What relative credential paths are relative to: the folder of the file itself, also when it is
        reached through a symbolic link (so the file means the same whichever way it is opened)."""
        return self.path.resolve().parent

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, name: str) -> bool:
        return name in self._agents

    def get(self, name: str) -> AgentEntry:
        try:
            return self._agents[name]
        except KeyError:
            raise InventoryError(f"no agent named {name!r} in {self.path}; known: "
                                 f"{', '.join(self._agents) or 'none'}") from None

    def kinds(self) -> dict[str, list[AgentEntry]]:
        by_kind: dict[str, list[AgentEntry]] = {}
        for entry in self._agents.values():
            by_kind.setdefault(entry.kind, []).append(entry)
        return by_kind

    def of_kind(self, kind: str) -> list[AgentEntry]:
        agents = self.kinds().get(kind)
        if not agents:
            raise InventoryError(f"no agent of kind {kind!r} in {self.path}; kinds: "
                                 f"{', '.join(sorted(self.kinds())) or 'none (add one with `fleetnas devices add`)'}")
        return agents

    def add(self, entry: AgentEntry, replace: bool = False) -> None:
        if entry.name in self._agents and not replace:
            raise InventoryError(f"agent {entry.name!r} is already in {self.path} (remove it first)")
        for other in self._agents.values():
            if other.name == entry.name:
                continue
            if endpoints(other.address) & endpoints(entry.address):
                same = "" if other.address == entry.address else f" (the same agent as {entry.address})"
                raise InventoryError(f"agent {other.name!r} already has address {other.address}{same}")
            if other.kind == entry.kind and (other.runtime, other.threads) != (entry.runtime, entry.threads):
                raise InventoryError(
                    f"agent {entry.name!r} has kind {entry.kind!r} with runtime {entry.runtime or '(auto)'} and "
                    f"{entry.threads} thread(s), but {other.name!r} of the same kind has {other.runtime or '(auto)'} "
                    f"and {other.threads}: agents of one kind must be measured the same way; use another kind name")
        self._agents[entry.name] = entry

    def remove(self, name: str) -> AgentEntry:
        entry = self.get(name)
        del self._agents[name]
        return entry
