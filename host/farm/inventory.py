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
        updated value by value, new agents are appended as [agents.NAME] tables; everything else (comments,
        blank lines, key order, unchanged agents) stays byte for byte. A new file gets a one-line header."""
        text = self._new_text()
        target = self.path.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(target)
        self._source, self._saved = text, dict(self._agents)

    def _new_text(self) -> str:
        fresh = _fresh(self._agents.values())
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
#   - the paragraph directly above its [header], unless that is the file's opening paragraph (its header).
# Every other comment and blank line stays where it was; the blank lines that separated the removed table from the
# next one go, so that no double gap is left.


def _edited(source: str, saved: dict[str, AgentEntry], agents: dict[str, AgentEntry]) -> str:
    """`source` edited from the agents in `saved` to those in `agents`."""
    import tomlkit

    doc = tomlkit.parse(source)
    for name in saved:
        if name not in agents:
            _remove_agent(doc, name)
            doc = tomlkit.parse(doc.as_string())  # the next removal sees the layout as a file has it
    for name, entry in agents.items():
        if name not in saved:
            _append_agent(doc, entry)
        elif entry != saved[name]:
            _update_agent(doc["agents"][name], entry)
    text = doc.as_string()
    if "\r\n" in source and "\n" not in source.replace("\r\n", ""):  # tomlkit writes new lines as \n
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return text


def _fresh(entries) -> str:
    """A new file: the header line, then one [agents.NAME] table per agent."""
    import tomlkit

    agents = tomlkit.table(is_super_table=True)
    for entry in entries:
        table = tomlkit.table()
        table.update(entry.to_toml())
        agents.append(entry.name, table)
    doc = tomlkit.document()
    doc.append("agents", agents)
    return HEADER + doc.as_string()


def _read_back(text: str) -> dict[str, AgentEntry]:
    data = tomllib.loads(text)
    if set(data) - {"agents"}:
        raise ValueError(f"unexpected top-level key(s) {', '.join(sorted(set(data) - {'agents'}))}")
    return {name: AgentEntry(name=name, **table) for name, table in data.get("agents", {}).items()}


def _append_agent(doc, entry: AgentEntry) -> None:
    import tomlkit
    from tomlkit.items import InlineTable

    agents = doc.get("agents")
    if agents is None:
        doc.append("agents", tomlkit.table(is_super_table=True))
        agents = doc["agents"]
    if isinstance(agents, InlineTable):  # agents = {pi = {...}}: a new agent joins it the same way
        table = tomlkit.inline_table()
    else:
        table = tomlkit.table()
    table.update(entry.to_toml())
    agents[entry.name] = table


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
    tail = []
    if isinstance(table, Table):
        body = table.value.body
        tail = [body[i][1] for i in _trailing(body)]
        _drop(body, _trailing(body))
    for key in missing:
        table[key] = values[key]
    for item in tail:
        table.raw_append(None, item)


def _remove_agent(doc, name: str) -> None:
    """Removes agent `name`'s table with its own comments (see the note above)."""
    from tomlkit.items import Table, Whitespace

    agents = doc["agents"]
    place = _own_table(agents, name)
    if place is None:  # an inline table, dotted keys, a table split in parts: tomlkit's own removal
        del agents[name]
        return
    body = agents.value.body
    table = body[place][1]
    later = any(key is not None for key, _ in body[place + 1:])
    # Where the lines just above the table's header are stored: the end of the previous agent's table, or, for
    # the first agent, the top of the file, whose first paragraph is its header.
    above: tuple[list, list[int], bool] | None = None
    before = [(key, item) for key, item in body[:place] if not _is_null(item)]
    if before and isinstance(before[-1][1], Table) and _own_table(agents, before[-1][0].key) is not None:
        previous = before[-1][1].value.body
        above = previous, _trailing(previous), False
    elif not before and agents.is_super_table() and _own_table(doc, "agents") is not None:
        top = doc.body
        at = next(i for i, (key, _) in enumerate(top) if key is not None and key.key == "agents")
        region = []
        for i in range(at - 1, -1, -1):
            if top[i][0] is not None:
                break
            if not _is_null(top[i][1]):
                region.insert(0, i)
        above = top, region, True
    if above is not None and "\n" not in table.trivia.indent:
        container, region, header_first = above
        paragraphs = _paragraphs(container, region)
        if paragraphs and paragraphs[-1][-1] == region[-1] and not (header_first and len(paragraphs) == 1):
            _drop(container, paragraphs[-1])  # the paragraph directly above the header: this agent's
        if not later:  # the last table: the blank lines that separated it from the rest go too
            region = [i for i in region if not _is_null(container[i][1])]
            while region and _is_blank(container[region[-1]][1]):
                _drop(container, [region.pop()])
    own_body = table.value.body
    region = _trailing(own_body)
    paragraphs = _paragraphs(own_body, region)
    gone = 0
    if paragraphs and paragraphs[0][0] == region[0] and not (later and paragraphs[0][-1] == region[-1]):
        gone = len(paragraphs[0])  # the paragraph directly under the last value: this agent's
    kept = [own_body[i][1] for i in region[gone:]]
    if later:  # (the last table's separation went above)
        while kept and _is_blank(kept[0]):
            kept.pop(0)
    agents.remove(name)
    if kept:  # in the table's place, as written (tomlkit reads them back as part of the table above)
        body[place] = (None, Whitespace("".join(item.as_string() for item in kept)))


def _own_table(container, name: str) -> int | None:
    """Where in `container`'s body `name` is, when it is one [header] table (not dotted keys, not inline, not
    split in parts); None otherwise."""
    from tomlkit.container import Container
    from tomlkit.items import Table

    value = container.value if isinstance(container, Table) else container
    if not isinstance(value, Container):
        return None
    places = [i for i, (key, _) in enumerate(value.body) if key is not None and key.key == name]
    if len(places) != 1:
        return None
    key, item = value.body[places[0]]
    if not isinstance(item, Table) or key.is_dotted():
        return None
    return places[0]


def _trailing(body: list) -> list[int]:
    """The places of the comments and blank lines after the last value of a table's body."""
    places = []
    for i in range(len(body) - 1, -1, -1):
        if body[i][0] is not None:
            break
        if not _is_null(body[i][1]):
            places.insert(0, i)
    return places


def _paragraphs(body: list, places: list[int]) -> list[list[int]]:
    """`places` (comment lines and blank lines) in runs of lines between blank lines."""
    runs, run = [], []
    for i in places:
        if _is_blank(body[i][1]):
            if run:
                runs.append(run)
            run = []
        else:
            run.append(i)
    if run:
        runs.append(run)
    return runs


def _drop(body: list, places: list[int]) -> None:
    """Empties keyless places (comments, blank lines) the way tomlkit itself removes: positions stay, so its
    index of the keys stays right."""
    from tomlkit.items import Null

    for i in places:
        assert body[i][0] is None
        body[i] = (None, Null())


def _is_null(item) -> bool:
    from tomlkit.items import Null

    return isinstance(item, Null)


def _is_blank(item) -> bool:
    from tomlkit.items import Whitespace

    return isinstance(item, Whitespace) and "\n" in item.as_string()
