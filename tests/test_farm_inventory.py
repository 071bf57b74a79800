"""The farm inventory (TOML) and the `fleetnas devices` commands that edit and check it."""
import json
import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest

from fleetnas.cli import main
from fleetnas.farm import AgentEntry, Inventory, InventoryError
from fleetnas.farm.inventory import HEADER
from agents import running_agent


def test_entries_round_trip_through_the_file(tmp_path):
    path = tmp_path / "farm.toml"
    inv = Inventory(path)
    inv.add(AgentEntry("pi-a", "10.0.0.5:50051", "rpi4-litert-1t", runtime="litert", token_file="tokens/pi-a"))
    inv.add(AgentEntry("pi-b", "pi-b.local:50051", "rpi4-litert-1t", runtime="litert"))
    inv.add(AgentEntry("jetson", "[::1]:50051", "orin-ort-4t", runtime="onnxruntime", threads=4, tls_ca="/etc/ca.pem"))
    inv.save()
    again = Inventory.load(path)
    assert again.agents == inv.agents
    assert [e.name for e in again.of_kind("rpi4-litert-1t")] == ["pi-a", "pi-b"]
    assert "token_file" not in path.read_text().split("[agents.pi-b]")[1]  # defaults are not written
    again.remove("pi-b")
    again.save()
    assert [e.name for e in Inventory.load(path).agents] == ["pi-a", "jetson"]


def test_the_example_inventory_in_devices_is_valid():
    from pathlib import Path
    example = Inventory.load(Path(__file__).parents[1] / "devices" / "fleetnas.example.toml")
    assert {e.kind for e in example.agents} == {"rpi4-litert-1t", "pixel7-litert-4t", "orin-ort-4t"}
    assert example.get("pixel7").threads == 4 and example.get("pi4-a").token_file == "tokens/pi4-a"


def test_a_missing_file_is_an_empty_inventory_and_unknown_kinds_are_named(tmp_path):
    inv = Inventory.load(tmp_path / "none.toml")
    assert len(inv) == 0
    with pytest.raises(InventoryError, match="no agent of kind 'rpi4': there is no inventory at"):
        inv.of_kind("rpi4")
    (tmp_path / "none.toml").write_text("# no agents yet\n")
    with pytest.raises(InventoryError, match="no agent of kind 'rpi4' .* kinds: none"):
        Inventory.load(tmp_path / "none.toml").of_kind("rpi4")


@pytest.mark.parametrize("fields, message", [
    ({"name": "bad name"}, "agent name 'bad name'"),
    ({"address": "10.0.0.5"}, "address '10.0.0.5' is not HOST:PORT"),
    ({"address": "host:99999"}, "is not HOST:PORT"),
    ({"kind": ""}, "kind ''"),
    ({"runtime": "tensorflow"}, "runtime 'tensorflow' is not one of"),
    ({"threads": 0}, "threads must be an integer from 1 to 256, got 0"),
    ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
])
def test_bad_entries_are_refused_with_the_bad_value(fields, message):
    base = {"name": "pi", "address": "h:1", "kind": "k"}
    with pytest.raises(InventoryError, match=message):
        AgentEntry(**{**base, **fields})


def test_agents_of_one_kind_must_be_measured_the_same_way(tmp_path):
    inv = Inventory(tmp_path / "f.toml", [AgentEntry("a", "h:1", "rpi4", runtime="litert")])
    with pytest.raises(InventoryError, match="must be measured the same way"):
        inv.add(AgentEntry("b", "h:2", "rpi4", runtime="onnxruntime"))
    with pytest.raises(InventoryError, match="already has address h:1"):
        inv.add(AgentEntry("c", "h:1", "other"))
    with pytest.raises(InventoryError, match="'a' is already in"):
        inv.add(AgentEntry("a", "h:3", "rpi4", runtime="litert"))


@pytest.mark.parametrize("first, second", [
    ("localhost:50095", "127.0.0.1:050095"),
    ("LocalHost.:7", "[::1]:7"),
    ("Pi4.Lab:50051", "pi4.lab:50051"),
    ("[0:0::1]:9", "[::1]:9"),
])
def test_one_agent_under_two_spellings_of_its_address_is_refused(tmp_path, first, second):
    inv = Inventory(tmp_path / "f.toml", [AgentEntry("a", first, "k")])
    with pytest.raises(InventoryError, match=rf"'a' already has address .* \(the same agent as"):
        inv.add(AgentEntry("b", second, "k"))
    inv.add(AgentEntry("c", "127.0.0.2:50095", "k"))  # another address, or another port, is another agent
    inv.add(AgentEntry("d", "pi4.lab:50052", "k"))


@pytest.mark.parametrize("text, message", [
    ("[agents.pi\naddress = 1", "is not valid TOML"),
    ("[agents.pi]\naddress = 'h:1'\nkind = 'k'\ncolour = 'red'\n", "unknown field.*colour"),
    ("[agents.pi]\naddress = 'h:1'\n", "'pi' lacks kind"),
    ("[machines.pi]\n", "unknown top-level key"),
    ("[agents.pi]\naddress = 'h:1'\nkind = 'k'\nthreads = 'four'\n", "threads must be an integer"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InventoryError, match=message):
        Inventory.load(path)


def test_credentials_are_read_relative_to_the_inventory(tmp_path):
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "pi").write_text("s3cret\n")
    entry = AgentEntry("pi", "h:1", "k", token_file="tokens/pi")
    assert entry.credentials(tmp_path).token == "s3cret"
    with pytest.raises(InventoryError, match="token_file .*missing.* does not exist"):
        AgentEntry("pi", "h:1", "k", token_file="missing").credentials(tmp_path)


def test_devices_add_list_remove_through_the_cli(tmp_path, capsys):
    inv = tmp_path / "farm.toml"
    token = tmp_path / "pi.token"
    token.write_text("t0ken\n")
    assert main(["devices", "add", "pi-a", "--address", "127.0.0.1:50051", "--kind", "rpi4-litert-1t",
                 "--runtime", "litert", "--token-file", str(token), "--inventory", str(inv)]) == 0
    assert main(["devices", "add", "pi-b", "--address", "127.0.0.1:50052", "--kind", "rpi4-litert-1t",
                 "--runtime", "litert", "--inventory", str(inv)]) == 0
    assert Inventory.load(inv).get("pi-a").token_file == "pi.token"  # stored relative to the inventory
    capsys.readouterr()
    assert main(["devices", "list", "--inventory", str(inv), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["credentials"]) for r in rows] == [("pi-a", "token"), ("pi-b", "none")]
    assert main(["devices", "add", "pi-c", "--address", "127.0.0.1:50053", "--kind", "rpi4-litert-1t",
                 "--runtime", "onnxruntime", "--inventory", str(inv)]) == 1
    assert "must be measured the same way" in capsys.readouterr().err
    assert main(["devices", "remove", "pi-b", "--inventory", str(inv)]) == 0
    assert main(["devices", "remove", "pi-b", "--inventory", str(inv)]) == 1
    assert "no agent named 'pi-b'" in capsys.readouterr().err
    assert main(["devices", "list", "--inventory", str(inv)]) == 0
    assert "pi-a" in capsys.readouterr().out


def test_devices_check_reports_health_environment_and_reference_latency(tmp_path, capsys):
    inv = tmp_path / "farm.toml"
    db = tmp_path / "fleet.db"
    with running_agent(tmp_path / "cache") as (address, _):
        main(["devices", "add", "local", "--address", address, "--kind", "cpu-ort-1t", "--inventory", str(inv)])
        # a port nobody listens on: the agent that vanished
        main(["devices", "add", "gone", "--address", "127.0.0.1:9", "--kind", "cpu-ort-1t", "--inventory", str(inv)])
        capsys.readouterr()
        code = main(["devices", "check", "--inventory", str(inv), "--db", str(db), "--json", "--timeout", "3"])
        checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
        assert code == 1  # one agent is not fit to measure
        local, gone = checks["local"], checks["gone"]
        assert local["healthy"] and local["status"] == "SERVING"
        assert any(r.startswith("onnxruntime ") for r in local["runtimes"])
        assert local["throttled"] is False and local["reference_runtime"] == "onnxruntime"
        assert 0 < local["reference_latency_ms"] < 1000
        assert not gone["healthy"] and gone["status"].startswith("UNAVAILABLE")
        from fleetnas.store import open_store
        with open_store(db) as store:
            assert store.latest_device("cpu-ort-1t").id == local["device_id"]
        main(["devices", "remove", "gone", "--inventory", str(inv)])
        capsys.readouterr()
        assert main(["devices", "check", "--inventory", str(inv), "--no-reference"]) == 0
        table = capsys.readouterr().out
        assert "local" in table and "SERVING" in table


@pytest.mark.parametrize("address", ["127.0.0.1:²", "127.0.0.1:５００５１", "127.0.0.1:4710²", "h:-1", "h:+80"])
def test_a_port_of_anything_but_ascii_digits_is_refused(tmp_path, address):
    with pytest.raises(InventoryError, match="is not HOST:PORT"):
        AgentEntry("pi", address, "k")
    path = tmp_path / "farm.toml"
    path.write_text(f'[agents.pi]\naddress = "{address}"\nkind = "k"\n')
    with pytest.raises(InventoryError, match=f"{path}: agent 'pi': address .* is not HOST:PORT"):
        Inventory.load(path)


@pytest.mark.parametrize("address, message", [
    ("local host:44663", "host 'local host' is not a host name or an IP address"),
    ("http://127.0.0.1:44663", "without a scheme"),
    ("::1:44663", "an IPv6 address goes in brackets: [::1]:PORT"),
    ("[not-v6]:5", "[not-v6] is not an IPv6 address in brackets"),
])
def test_a_host_grpc_cannot_reach_is_refused_when_added_not_when_first_called(tmp_path, capsys, address, message):
    """Taken as they were, they failed only at connect time, as a device that does not answer."""
    assert main(["devices", "add", "pi", "--address", address, "--kind", "k",
                 "--inventory", str(tmp_path / "f.toml")]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "f.toml").exists()


@pytest.mark.parametrize("address", ["[::1]:50051", "[fe80::1%eth0]:50051", "pi4-a.lab:50051", "localhost:1",
                                     "10.0.0.7:50051", "pi_4.local:50051"])
def test_host_names_and_ip_addresses_are_taken(address):
    assert AgentEntry("pi", address, "k").address == address


def test_devices_add_with_a_non_ascii_port_is_a_one_line_error(tmp_path, capsys):
    assert main(["devices", "add", "pi", "--address", "127.0.0.1:²", "--kind", "k",
                 "--inventory", str(tmp_path / "f.toml")]) == 1
    err = capsys.readouterr().err
    assert "address '127.0.0.1:²' is not HOST:PORT" in err and "Traceback" not in err


@pytest.mark.parametrize("field", ["name", "kind"])
def test_names_and_kinds_ending_in_a_newline_are_refused(field):
    fields = {"name": "pi", "address": "h:1", "kind": "k", field: "a\n"}
    with pytest.raises(InventoryError, match=rf"{field} 'a\\n' must be 1-64 letters"):
        AgentEntry(**fields)


@pytest.mark.parametrize("inventory", [".", "", "/"])
@pytest.mark.parametrize("action", [["add", "pi", "--address", "127.0.0.1:1", "--kind", "k"], ["remove", "pi"]])
def test_an_inventory_that_is_a_folder_is_a_usage_error(tmp_path, monkeypatch, capsys, inventory, action):
    monkeypatch.chdir(tmp_path)
    assert main(["devices", *action, "--inventory", inventory]) == 2
    assert f"--inventory {inventory or '.'} is a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("action", [["add", "pi", "--address", "127.0.0.1:1", "--kind", "k"], ["remove", "pi"],
                                    ["list"]])
def test_an_inventory_that_is_a_pipe_is_refused_not_read_or_replaced(tmp_path, capsys, action):
    """Reading a pipe waits for a writer for ever, and a save renames a new file over what is there: as root,
    `--inventory /dev/null` replaced the system's /dev/null with a TOML file."""
    pipe = tmp_path / "farm.toml"
    os.mkfifo(pipe)
    link = tmp_path / "link.toml"
    link.symlink_to(pipe)
    for given in (pipe, link):
        assert main(["devices", *action, "--inventory", str(given)]) != 0
        assert f"inventory {given} is not a regular file (a device or a pipe)" in capsys.readouterr().err
    assert stat.S_ISFIFO(pipe.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["farm.toml", "link.toml"]
    with pytest.raises(InventoryError, match="not a regular file"):
        Inventory.load(pipe)
    with pytest.raises(InventoryError, match="is a folder"):
        Inventory.load(tmp_path)


def test_a_missing_inventory_is_named_as_missing(tmp_path):
    with pytest.raises(InventoryError, match=r"no agent of kind 'k': there is no inventory at .*nosuch.toml"):
        Inventory.load(tmp_path / "nosuch.toml").of_kind("k")
    with pytest.raises(InventoryError, match=r"no agent of kind 'k' in .*kinds: other"):
        Inventory(tmp_path / "nosuch.toml", [AgentEntry("pi", "h:1", "other")]).of_kind("k")


def test_editing_through_a_symbolic_link_updates_the_inventory_it_points_to(tmp_path, capsys):
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    real, link = real_dir / "farm.toml", link_dir / "farm.toml"
    (real_dir / "pi.token").write_text("t0ken\n")
    assert main(["devices", "add", "a", "--address", "127.0.0.1:1", "--kind", "k", "--inventory", str(real)]) == 0
    link.symlink_to(real)
    assert main(["devices", "add", "b", "--address", "127.0.0.1:2", "--kind", "k", "--token-file",
                 str(real_dir / "pi.token"), "--inventory", str(link)]) == 0
    assert link.is_symlink() and sorted(e.name for e in Inventory.load(real).agents) == ["a", "b"]
    # stored relative to the file itself, and read so through either path
    assert Inventory.load(real).get("b").token_file == "pi.token"
    for path in (real, link):
        inventory = Inventory.load(path)
        assert inventory.get("b").credentials(inventory.base_dir).token == "t0ken"
    assert main(["devices", "remove", "a", "--inventory", str(link)]) == 0
    assert link.is_symlink() and [e.name for e in Inventory.load(real).agents] == ["b"]
    ahead = link_dir / "shared.toml"  # a link made before the inventory, or its folder, exists
    ahead.symlink_to(tmp_path / "later" / "farm.toml")
    assert main(["devices", "add", "c", "--address", "127.0.0.1:3", "--kind", "k", "--inventory", str(ahead)]) == 0
    assert ahead.is_symlink() and [e.name for e in Inventory.load(tmp_path / "later" / "farm.toml").agents] == ["c"]


def test_addresses_are_listed_as_they_are_not_as_markup(tmp_path, capsys):
    """An IPv6 address in brackets that starts with a letter reads as a markup tag to rich ('[fd00::1]')."""
    inv = tmp_path / "farm[/x].toml"
    assert main(["devices", "add", "v6", "--address", "[fd00::1]:50051", "--kind", "k", "--inventory", str(inv)]) == 0
    capsys.readouterr()
    assert main(["devices", "list", "--inventory", str(inv)]) == 0
    out = capsys.readouterr().out
    assert "[fd00::1]:50051" in out and "farm[/x].toml" in "".join(out.split())  # title wraps
    # check: the address cannot be reached (a private IPv6 address), and its row says so instead of failing to print
    assert main(["devices", "check", "--inventory", str(inv), "--no-reference", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "[fd00::1]:50051" in out.split("\n", 3)[3] and ("UNAVAILABLE" in out or "DEADLINE_EXCEEDED" in out)


# ----- editing keeps the file as the user wrote it ------------------------------------------------------------------
EXAMPLE = Path(__file__).parents[1] / "devices" / "fleetnas.example.toml"


def _table_text(text, name):
    """The text of [agents.NAME] up to the next table header (or the end)."""
    start = text.index(f"[agents.{name}]")
    following = text.find("\n[", start)
    return text[start:following + 1 if following >= 0 else len(text)]


def test_editing_the_example_keeps_its_comments_and_untouched_agents(tmp_path, caplog):
    path = tmp_path / "fleetnas.toml"
    shutil.copyfile(EXAMPLE, path)
    original = path.read_text()
    inv = Inventory.load(path)
    inv.remove("pi4-b")
    inv.add(AgentEntry("pi4-c", "192.168.1.23:50051", "rpi4-litert-1t", runtime="litert", token_file="tokens/pi4-c"))
    inv.save()
    edited = path.read_text()
    removed = _table_text(original, "pi4-b")
    comments = [line for line in original.splitlines() if "#" in line and line not in removed.splitlines()]
    assert comments and [line for line in comments if line not in edited.splitlines()] == []
    assert "[agents.pi4-b]" not in edited and 'token_file = "tokens/pi4-b"' not in edited
    for name in ("pi4-a", "pixel7", "orin"):
        assert _table_text(original, name).rstrip("\n") in edited
    assert edited.startswith(original[:original.index("[agents.")])  # the header, as it was
    assert edited.index("[agents.orin]") < edited.index("[agents.pi4-c]")  # new agents go at the end
    data = tomllib.loads(edited)["agents"]
    assert list(data) == ["pi4-a", "pixel7", "orin", "pi4-c"]
    assert data["pi4-c"] == {"address": "192.168.1.23:50051", "kind": "rpi4-litert-1t", "runtime": "litert",
                             "token_file": "tokens/pi4-c"}
    assert "rewriting it" not in caplog.text  # edited in place, not written anew
    assert {name: table for name, table in data.items() if name != "pi4-c"} == \
        {name: table for name, table in tomllib.loads(original)["agents"].items() if name != "pi4-b"}


def test_loading_and_saving_without_changes_leaves_the_file_byte_identical(tmp_path):
    path = tmp_path / "fleetnas.toml"
    odd = EXAMPLE.read_bytes() + b"\n\n# a footer   \n[agents.z]  # spaced\n  address   =  'h:9'\nkind='k'\n"
    path.write_bytes(odd)
    Inventory.load(path).save()
    assert path.read_bytes() == odd
    crlf = EXAMPLE.read_bytes().replace(b"\n", b"\r\n")
    path.write_bytes(crlf)
    Inventory.load(path).save()
    assert path.read_bytes() == crlf


def test_changing_an_agent_edits_only_its_values(tmp_path):
    path = tmp_path / "fleetnas.toml"
    shutil.copyfile(EXAMPLE, path)
    original = path.read_text()
    inv = Inventory.load(path)
    old = inv.get("orin")
    inv.add(AgentEntry("orin", "192.168.1.61:50051", old.kind, old.runtime, old.threads, old.token_file,
                       tls_server_name="orin.lab"), replace=True)  # as `devices add --replace` does
    inv.save()
    edited = path.read_text()
    assert edited.replace(_table_text(edited, "orin"), "") == original.replace(_table_text(original, "orin"), "")
    orin = _table_text(edited, "orin")
    assert 'address = "192.168.1.61:50051"' in orin and 'tls_ca' not in orin
    assert 'token_file = "tokens/orin"        # TLS encrypts; the token says who may call' in orin
    assert Inventory.load(path).get("orin") == inv.get("orin")


def test_removing_an_agent_takes_its_own_comments_and_leaves_its_neighbours(tmp_path):
    path = tmp_path / "farm.toml"
    path.write_text('# the farm\n\n'
                    '# a: by the window\n[agents.a]\naddress = "h:1"  # fixed lease\nkind = "k"\n# a: new SD card\n'
                    '\n# ---- lab 2 ----\n\n'
                    '# b: on the desk\n[agents.b]\naddress = "h:2"\nkind = "k"\n\n'
                    '# c: in the rack\n[agents.c]\naddress = "h:3"\nkind = "k"\n')
    inv = Inventory.load(path)
    inv.remove("b")
    inv.save()
    assert path.read_text() == ('# the farm\n\n'
                                '# a: by the window\n[agents.a]\naddress = "h:1"  # fixed lease\nkind = "k"\n'
                                '# a: new SD card\n\n# ---- lab 2 ----\n\n'
                                '# c: in the rack\n[agents.c]\naddress = "h:3"\nkind = "k"\n')
    inv.remove("a")  # the first agent: the file's opening comment is its header, and stays
    inv.save()
    assert path.read_text() == ('# the farm\n\n# ---- lab 2 ----\n\n'
                                '# c: in the rack\n[agents.c]\naddress = "h:3"\nkind = "k"\n')
    inv.remove("c")
    inv.save()
    assert path.read_text() == '# the farm\n\n# ---- lab 2 ----\n'
    assert len(Inventory.load(path)) == 0


def test_removing_an_agent_from_tables_out_of_order_takes_its_own_comments(tmp_path, caplog):
    path = tmp_path / "farm.toml"
    path.write_text('# lab farm\n\n'
                    '# Pi 4 on the shelf, fan broken\n[agents.pi]\naddress = "10.0.0.1:50051"\nkind = "rpi4"\n\n'
                    '# Orin on the bench: token rotated monthly\n[agents.orin]\naddress = "10.0.0.2:50051"\n'
                    'kind = "orin"\n\n'
                    '[agents]\npixel = { address = "10.0.0.3:50051", kind = "pixel7" }  # phone via adb forward\n')
    inv = Inventory.load(path)
    inv.remove("pi")  # [agents] after [agents.NAME]: tomlkit holds the agents in two places
    inv.save()
    assert path.read_text() == (
        '# lab farm\n\n'
        '# Orin on the bench: token rotated monthly\n[agents.orin]\naddress = "10.0.0.2:50051"\nkind = "orin"\n\n'
        '[agents]\npixel = { address = "10.0.0.3:50051", kind = "pixel7" }  # phone via adb forward\n')
    inv.remove("orin")
    inv.save()
    assert path.read_text() == ('# lab farm\n\n'
                                '[agents]\npixel = { address = "10.0.0.3:50051", kind = "pixel7" }  # phone via adb '
                                'forward\n')
    assert "rewriting it" not in caplog.text


def test_an_opening_comment_touching_the_first_agent_is_that_agents(tmp_path, caplog):
    path = tmp_path / "farm.toml"
    path.write_text('# Pi 4 in the lab, fan broken\n[agents.pi]\naddress = "h:1"\nkind = "k"\n\n'
                    '# Orin on the bench\n[agents.orin]\naddress = "h:2"\nkind = "o"\n')
    inv = Inventory.load(path)
    inv.remove("pi")  # no blank line under the opening comment: it is pi's, not the file's header
    inv.save()
    assert path.read_text() == '# Orin on the bench\n[agents.orin]\naddress = "h:2"\nkind = "o"\n'
    path.write_text('# the farm\n\n# Pi 4 in the lab\n[agents.pi]\naddress = "h:1"\nkind = "k"\n\n'
                    '# Orin on the bench\n[agents.orin]\naddress = "h:2"\nkind = "o"\n')
    inv = Inventory.load(path)
    inv.remove("pi")  # a header, and the next agent's comment: both stay, a blank line between them
    inv.save()
    assert path.read_text() == '# the farm\n\n# Orin on the bench\n[agents.orin]\naddress = "h:2"\nkind = "o"\n'
    assert "rewriting it" not in caplog.text


def test_agents_written_as_dotted_keys_are_edited_in_place(tmp_path, caplog):
    path = tmp_path / "farm.toml"
    path.write_text('# farm\nagents.pi.address = "10.0.0.1:1"  # the pi\nagents.pi.kind = "k"\n')
    inv = Inventory.load(path)
    inv.add(AgentEntry("new", "10.0.0.3:1", "n"))  # a table at the end, not among pi's keys
    inv.save()
    assert path.read_text() == ('# farm\nagents.pi.address = "10.0.0.1:1"  # the pi\nagents.pi.kind = "k"\n\n'
                                '[agents.new]\naddress = "10.0.0.3:1"\nkind = "n"\n')
    inv.add(AgentEntry("pi", "10.0.0.2:1", "k"), replace=True)  # as `devices add --replace` does
    inv.save()
    assert path.read_text() == ('# farm\nagents.pi.address = "10.0.0.2:1"  # the pi\nagents.pi.kind = "k"\n\n'
                                '[agents.new]\naddress = "10.0.0.3:1"\nkind = "n"\n')
    inv.remove("pi")
    inv.save()
    assert path.read_text() == '# farm\n\n[agents.new]\naddress = "10.0.0.3:1"\nkind = "n"\n'
    assert "rewriting it" not in caplog.text


@pytest.mark.parametrize("text", [
    'agents.pi = {address = "h:1", kind = "k"}  # the pi\nagents.orin = {address = "h:2", kind = "o"}\n',
    '[agents]\npi = {address = "h:1", kind = "k"}  # the pi\norin.address = "h:2"\norin.kind = "o"\n',
])
def test_inline_tables_and_dotted_keys_can_be_edited(tmp_path, text):
    path = tmp_path / "farm.toml"
    path.write_text(text)
    inv = Inventory.load(path)
    inv.add(AgentEntry("pi", "h:1", "k", threads=2), replace=True)
    inv.remove("orin")
    inv.add(AgentEntry("new", "h:3", "n"))
    inv.save()
    edited = path.read_text()
    assert "# the pi" in edited and "orin" not in edited
    assert tomllib.loads(edited)["agents"] == {"pi": {"address": "h:1", "kind": "k", "threads": 2},
                                               "new": {"address": "h:3", "kind": "n"}}
    assert Inventory.load(path).agents == inv.agents


def test_removing_the_first_agent_of_a_file_it_wrote_keeps_its_header(tmp_path):
    path = tmp_path / "farm.toml"
    inv = Inventory.load(path)
    inv.add(AgentEntry("a", "10.0.0.1:1", "k"))
    inv.add(AgentEntry("b", "10.0.0.2:1", "k"))
    inv.save()
    inv = Inventory.load(path)
    inv.remove("a")
    inv.save()
    assert path.read_text() == HEADER + '[agents.b]\naddress = "10.0.0.2:1"\nkind = "k"\n'


def test_a_new_file_gets_its_header_comment(tmp_path):
    path = tmp_path / "sub" / "farm.toml"
    inv = Inventory.load(path)
    inv.add(AgentEntry("pi", "h:1", "k", runtime="litert"))
    inv.add(AgentEntry("orin", "h:2", "o", threads=4))
    inv.save()
    assert path.read_text() == ("# FleetNAS device farm inventory: `fleetnas devices add|remove|list|check` edit "
                                "and read it.\n"
                                '[agents.pi]\naddress = "h:1"\nkind = "k"\nruntime = "litert"\n\n'
                                '[agents.orin]\naddress = "h:2"\nkind = "o"\nthreads = 4\n')
    inv.add(AgentEntry("third", "h:3", "k", runtime="litert"))  # saved again: edited, not duplicated
    inv.save()
    assert [e.name for e in Inventory.load(path).agents] == ["pi", "orin", "third"]
    assert path.read_text().count("# FleetNAS device farm inventory") == 1


def test_a_file_that_cannot_be_edited_in_place_is_still_written_whole(tmp_path, monkeypatch, caplog):
    from fleetnas.farm import inventory as module

    path = tmp_path / "farm.toml"
    shutil.copyfile(EXAMPLE, path)
    inv = Inventory.load(path)
    inv.remove("orin")

    def broken(*_):
        raise RuntimeError("tomlkit could not")
    monkeypatch.setattr(module, "_edited", broken)
    inv.save()
    assert "rewriting it without its comments" in caplog.text and "tomlkit could not" in caplog.text
    assert path.read_text().startswith("# FleetNAS device farm inventory")
    assert Inventory.load(path).agents == inv.agents
