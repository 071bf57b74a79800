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

`fleetnas devices add|remove` edit the file in place: comments, key order and layout are kept, and only the
tables of the agents that changed are touched (see Inventory.save).
"""
from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fleetnas_agent.measure import MAX_THREADS

DEFAULT_INVENTORY = "fleetnas.toml"
RUNTIMES = ("", "litert", "onnxruntime", "torch")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole names only (fullmatch): "$" lets "a\n" through
CREDENTIAL_FIELDS = ("token_file", "tls_ca", "tls_cert", "tls_key")
HEADER = "# FleetNAS device farm inventory: `fleetnas devices add|remove|list|check` edit and read it.\n"

log = logging.getLogger("fleetnas.farm")


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
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= MAX_THREADS:
            raise InventoryError(f"{where}: threads must be an integer from 1 to {MAX_THREADS}, got {self.threads!r}")
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
    problem = _host_problem(host)
    if problem:  # else it would be taken here and fail only at connect time, as a device that does not answer
        raise InventoryError(f"{where}: address {address!r}: {problem}")


#: A host name as DNS spells it (letters, digits, '-', '.', and '_' as some local names use), or an IPv4 address.
HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def _host_problem(host: str) -> str | None:
    """What is wrong with the HOST of HOST:PORT, or None."""
    if "://" in host:
        return "give HOST:PORT without a scheme (the agent speaks gRPC; TLS comes from --tls-ca)"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address in brackets"
        return None
    if ":" in host:
        return f"an IPv6 address goes in brackets: [{host}]:PORT"
    if not HOST_NAME.fullmatch(host):
        return f"host {host!r} is not a host name or an IP address (letters, digits, '-' and '.')"
    return None


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


def refuse_unusable_file(path: Path) -> None:
    """InventoryError where `path` is there but no regular file: reading a pipe would wait for a writer for ever,
    and saving renames a new file over a device (as root, over /dev/null itself)."""
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device or a pipe)"
        raise InventoryError(f"inventory {path} is {kind}; give the inventory's TOML file")


class Inventory:
    """The agents of one inventory file, by name. Changes are written back with save()."""

    def __init__(self, path: str | Path = DEFAULT_INVENTORY, agents: list[AgentEntry] = ()):
        self.path = Path(path)
        self._agents: dict[str, AgentEntry] = {}
        # The file's text as last read or written, and its agents as they were then: save() edits that text
        # (None: no file yet, save() writes a new one).
        self._source: str | None = None
        self._saved: dict[str, AgentEntry] = {}
        for entry in agents:
            self.add(entry)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_INVENTORY) -> "Inventory":
        """Reads the file; a missing file is an empty inventory (so `devices add` can create it)."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        refuse_unusable_file(path)
        try:
            text = path.read_bytes().decode("utf-8")  # as it is: TOML is UTF-8, and CRLF line ends stay CRLF
            data = tomllib.loads(text)
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
        inventory._source, inventory._saved = text, dict(inventory._agents)
        return inventory

    def save(self) -> None:
        """Writes the file atomically (a temporary file renamed over it); through a symbolic link, the file it
        points to (renaming over the link would replace it with a copy, and leave the real inventory as it was).

        A loaded file is edited, not rewritten: the tables of removed agents go, those of changed agents are
        updated value by value, new agents are appended at its end as [agents.NAME] tables; everything else
        (comments, blank lines, key order, unchanged agents) stays byte for byte. A new file gets a one-line
        header."""
        text = self._new_text()
        refuse_unusable_file(self.path)
        target = self.path.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(target)
        self._source, self._saved = text, dict(self._agents)

    def _new_text(self) -> str:
        fresh = HEADER + _tables(self._agents.values())
        if self._source is None:
            return fresh
        try:
            text = _edited(self._source, self._saved, self._agents)
            if _read_back(text) == self._agents:
                return text
            problem = "the edited text does not read back as the inventory's agents"
        except Exception as exc:  # a layout tomlkit cannot edit: the inventory itself must still be written
            problem = f"{type(exc).__name__}: {exc}"
        log.warning("%s: cannot edit the inventory in place (%s); rewriting it without its comments",
                    self.path, problem)
        return fresh

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
        if not self._agents and self._source is None and not self.path.exists():
            raise InventoryError(f"no agent of kind {kind!r}: there is no inventory at {self.path} (give --inventory "
                                 "FILE, or add an agent with `fleetnas devices add`)")
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


# ----- editing the file in place (tomlkit keeps comments and layout) ---------------------------------------------
#
# Which comments go with a removed agent. tomlkit stores the comment lines and blank lines that follow a table's
# last value, up to the next [header], in that table, so a comment written directly above [agents.b] is stored at
# the end of [agents.a]. Deleting a table as tomlkit holds it would therefore take the next agent's comment with
# it, and leave the removed agent's own comment behind, above its neighbour. Instead, comment lines are grouped in
# paragraphs (runs of comment lines between blank lines) and a removed agent takes:
#   - its header, its values and the comments among them;
#   - the paragraph directly under its last value (no blank line between), unless that paragraph also runs up to
#     the next [header], which makes it that table's;
#   - the paragraph directly above its [header] (no blank line between). The file's opening paragraph is its
#     header only when a blank line separates it from the first table (or when it is HEADER, which a new file
#     has right above its first agent); one touching the first header is that agent's.
# Every other comment and blank line stays where it was; the blank lines that separated the removed table from the
# next one go, so that no double gap is left.


def _edited(source: str, saved: dict[str, AgentEntry], agents: dict[str, AgentEntry]) -> str:
    """`source` edited from the agents in `saved` to those in `agents`."""
    import tomlkit
    from tomlkit.items import InlineTable

    doc = tomlkit.parse(source)
    for name in saved:
        if name not in agents:
            _remove_agent(doc, name)
            doc = tomlkit.parse(doc.as_string())  # the next removal sees the layout as a file has it
    for name, entry in agents.items():
        if name in saved and entry != saved[name]:
            _update_agent(doc["agents"][name], entry)
    new = [entry for name, entry in agents.items() if name not in saved]
    if isinstance(doc.get("agents"), InlineTable):  # agents = {pi = {...}}: a new agent joins it the same way
        for entry in new:
            table = tomlkit.inline_table()
            table.update(entry.to_toml())
            doc["agents"][entry.name] = table
        new = []
    text = doc.as_string()
    if new:  # [agents.NAME] tables at the end of the file (valid after any layout of the others), a blank line above
        ends = text[len(text.rstrip("\r\n")):].count("\n")
        text += "\n" * (max(0, 2 - ends) if text.strip() else 0) + _tables(new)
    if "\r\n" in source and "\n" not in source.replace("\r\n", ""):  # tomlkit writes new lines as \n
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return text


def _tables(entries) -> str:
    """One [agents.NAME] table per agent, a blank line between them."""
    import tomlkit

    agents = tomlkit.table(is_super_table=True)
    for entry in entries:
        table = tomlkit.table()
        table.update(entry.to_toml())
        agents.append(entry.name, table)
    doc = tomlkit.document()
    doc.append("agents", agents)
    return doc.as_string()


def _read_back(text: str) -> dict[str, AgentEntry]:
    data = tomllib.loads(text)
    if set(data) - {"agents"}:
        raise ValueError(f"unexpected top-level key(s) {', '.join(sorted(set(data) - {'agents'}))}")
    return {name: AgentEntry(name=name, **table) for name, table in data.get("agents", {}).items()}


def _update_agent(table, entry: AgentEntry) -> None:
    """Changes the values of an agent's table (a table, an inline table or dotted keys) that differ from
    `entry`; the lines of values that stay, and the comments after changed values, are kept."""
    from tomlkit.items import Table

    values = entry.to_toml()
    for key in list(table):
        if key in values:
            if table[key] != values[key]:
                table[key] = values[key]
        elif table[key] != getattr(entry, key):  # a default written out (threads = 1) stays while it holds
            del table[key]
    missing = [key for key in values if key not in table]
    if not missing:
        return
    # New values go after the last value, above the comments that end the table (tomlkit would append them after
    # those, under a comment that introduces the next table).
    tail = _trailing(table.value.body) if isinstance(table, Table) else []
    items = [body[i][1] for body, i in tail]
    _drop(tail)
    for key in missing:
        table[key] = values[key]
    for item in items:
        table.raw_append(None, item)


def _remove_agent(doc, name: str) -> None:
    """Removes agent `name`'s table with its own comments (see the note above). tomlkit's index of the keys is
    left behind: parse the text again before the next edit."""
    from tomlkit.items import Table, Whitespace

    flat = list(_walk(doc.body))  # every item, in the file's order
    mine = [n for n, (path, b, i) in enumerate(flat)
            if path == ("agents", name) and isinstance(b[i][1], Table) and not b[i][0].is_dotted()]
    if not mine:  # an inline table, dotted keys: tomlkit's own removal
        del doc["agents"][name]
        return
    n = mine[0]  # its [agents.NAME] table, wherever tomlkit holds it ([agents] tables out of order too)
    _, body, place = flat[n]
    table = body[place][1]
    above = []  # the comment and blank lines between the previous line of TOML and the header
    for _, b, i in reversed(flat[:n]):
        k, item = b[i]
        if k is None:
            above.insert(0, (b, i))
        elif not (isinstance(item, Table) and item.is_super_table() and not k.is_dotted()):
            break  # (a table made by [agents.NAME] headers alone has no line of its own)
    touching = _paragraph(above[::-1])  # the paragraph directly above the header: this agent's
    if "".join(b[i][1].as_string() for b, i in touching).strip() == HEADER.strip():
        touching = []  # the header FleetNAS writes on a new file, right above its first agent: the file's
    _drop(touching)
    del above[len(above) - len(touching):]
    own = table.value.body
    later = any(b[i][0] is not None for _, b, i in flat[n + 1:] if b is not own)
    if not later:  # the last table: the blank lines that separated it from the rest go too
        while above and _is_blank(above[-1]):
            _drop([above.pop()])
    after = _trailing(own)
    under = _paragraph(after)  # the paragraph directly under the last value: this agent's, unless it is the next's
    if not (later and len(under) == len(after)):
        after = after[len(under):]
    while later and after and _is_blank(after[0]):  # (the last table's separation went above)
        after.pop(0)
    # in the table's place, as written (tomlkit reads them back as part of the table above)
    body[place] = (None, Whitespace("".join(b[i][1].as_string() for b, i in after)))


def _walk(body: list, path: tuple = ()):
    """(key path, body, place) of each item of `body` and of the tables in it, in the order of the file; the path
    of a comment or blank line is None."""
    from tomlkit.items import Table

    for place, (key, item) in enumerate(body):
        if not _is_null(item):
            here = None if key is None else (*path, key.key)
            yield here, body, place
            if isinstance(item, Table):
                yield from _walk(item.value.body, here)


def _trailing(body: list) -> list[tuple[list, int]]:
    """The comments and blank lines after the last value of a table's body, as (body, place)."""
    places = []
    for i in range(len(body) - 1, -1, -1):
        if body[i][0] is not None:
            break
        if not _is_null(body[i][1]):
            places.insert(0, (body, i))
    return places


def _paragraph(lines: list) -> list:
    """The comment lines that `lines` (a list of (body, place)) start with, up to the first blank line."""
    run = []
    for line in lines:
        if _is_blank(line):
            break
        run.append(line)
    return run


def _drop(lines: list) -> None:
    """Empties keyless places (comments, blank lines) the way tomlkit itself removes: positions stay, so its
    index of the keys stays right."""
    from tomlkit.items import Null

    for body, i in lines:
        assert body[i][0] is None
        body[i] = (None, Null())


def _is_null(item) -> bool:
    from tomlkit.items import Null

    return isinstance(item, Null)


def _is_blank(line) -> bool:
    from tomlkit.items import Whitespace

    body, i = line
    return isinstance(body[i][1], Whitespace) and "\n" in body[i][1].as_string()
