"""`fleetnas profile` in farm mode (--device-kind), against real in-process agents."""
import json
import re

import pytest

from agents import running_agent
from models import onnx_huge_input, onnx_mlp
from fleetnas.cli import main

FLAGS = ["--warmup-runs", "1", "--warmup-seconds", "0.001", "--min-runs", "3", "--min-seconds", "0.001",
         "--max-seconds", "0.05"]


@pytest.fixture
def farm(tmp_path):
    """An inventory with two live agents of kind cpu-ort-1t, and its database path."""
    inv, db = tmp_path / "farm.toml", tmp_path / "fleet.db"
    with running_agent(tmp_path / "c0", label="pc-a") as (a, _), running_agent(tmp_path / "c1", label="pc-b") as (b, _):
        for name, address in (("pc-a", a), ("pc-b", b)):
            assert main(["devices", "add", name, "--address", address, "--kind", "cpu-ort-1t",
                         "--inventory", str(inv)]) == 0
        yield inv, db


def models(tmp_path, n):
    paths = []
    for seed in range(n):
        path = tmp_path / f"m{seed}.onnx"
        path.write_bytes(onnx_mlp(width=16, layers=1, seed=seed))
        paths.append(str(path))
    return paths


def test_model_files_on_a_farm_then_again_from_the_database(tmp_path, farm, capsys):
    inv, db = farm
    files = models(tmp_path, 3)
    base = ["profile", "--device-kind", "cpu-ort-1t", "--model", *files, "--inventory", str(inv), "--db", str(db),
            *FLAGS]
    capsys.readouterr()
    assert main([*base, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == files
    for r in rows:
        assert r["ok"] and not r["from_store"] and r["device"]["agent"] in ("pc-a", "pc-b")
        assert r["device"]["kind"] == "cpu-ort-1t" and r["device"]["id"]
        assert {"median", "p90", "p99", "mean", "std", "n", "target_met"} <= set(r["latency_ms"])
        assert "peak_bytes" in r["memory"] and r["runtime"]["name"] == "onnxruntime"
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "0 measured, 3 already stored, 0 failed" in out and "stored before" in out
    assert main([*base, "--remeasure"]) == 0
    assert "3 measured, 0 already stored" in capsys.readouterr().out
    down = tmp_path / "down.toml"  # the same kind, every agent down: what the store holds is still answered
    assert main(["devices", "add", "gone", "--address", "127.0.0.1:9", "--kind", "cpu-ort-1t",
                 "--inventory", str(down)]) == 0
    capsys.readouterr()
    assert main([str(down) if a == str(inv) else a for a in base]) == 0
    assert "0 measured, 3 already stored, 0 failed" in capsys.readouterr().out
    # A file given twice is one measurement, counted once.
    twice = ["profile", "--device-kind", "cpu-ort-1t", "--model", files[0], files[1], files[0], "--inventory", str(inv),
             "--db", str(db), "--remeasure", *FLAGS]
    assert main(twice) == 0
    assert "2 measured, 0 already stored, 0 failed (1 repeated)" in capsys.readouterr().out
    huge = tmp_path / "huge.onnx"  # a 4 GB input the agents refuse: a repeated failure counts once too
    huge.write_bytes(onnx_huge_input())
    twice[twice.index(files[1])] = str(huge)
    twice[twice.index(files[0], twice.index(str(huge)))] = str(huge)
    assert main(twice) == 1
    assert "1 measured, 0 already stored, 1 failed (1 repeated)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--device-kind", "cpu-ort-1t"], "either --model FILE... or --space NAME --sample N"),
    (["--device-kind", "cpu-ort-1t", "--space", "demo"], "--space and --sample go together"),
    (["--device-kind", "cpu-ort-1t", "--model", "{m}", "--runtime", "litert"], "drop --runtime/--threads"),
    (["--device-kind", "gpu-trt", "--model", "{m}"], "no agent of kind 'gpu-trt' .* kinds: cpu-ort-1t"),
    (["--device-kind", "cpu-ort-1t", "--space", "no-such-space", "--sample", "2"], "unknown space 'no-such-space'"),
    (["--agent", "127.0.0.1:1", "--model", "{m}", "{m}"], "--agent measures exactly one --model FILE"),
    (["--agent", "127.0.0.1:1", "--space", "demo", "--sample", "2"], "need --device-kind"),
    (["--agent", "127.0.0.1:1", "--model", "{m}", "--min-runs", "-3"], "--min-runs must not be negative"),
])
def test_bad_farm_requests_get_clear_errors(tmp_path, farm, capsys, args, message):
    inv, db = farm
    [model] = models(tmp_path, 1)
    args = [a.replace("{m}", model) for a in args]
    capsys.readouterr()
    farm_options = ["--inventory", str(inv), "--db", str(db)] if "--device-kind" in args else []
    code = main(["profile", *args, *farm_options])
    assert code != 0
    assert re.search(message, capsys.readouterr().err)


def test_a_database_that_is_not_one_is_refused(tmp_path, farm, capsys):
    inv, _ = farm
    bad = tmp_path / "not.db"
    bad.write_text("hello\n" * 200)
    [model] = models(tmp_path, 1)
    assert main(["profile", "--device-kind", "cpu-ort-1t", "--model", model, "--inventory", str(inv),
                 "--db", str(bad)]) == 1
    assert "not a usable FleetNAS database" in capsys.readouterr().err


def test_sampled_sub_networks_of_a_space_are_exported_and_measured(tmp_path, farm, capsys, monkeypatch):
    pytest.importorskip("fleetnas.export")
    inv, db = farm
    monkeypatch.setenv("FLEETNAS_CACHE_DIR", str(tmp_path / "cache"))
    capsys.readouterr()
    assert main(["profile", "--device-kind", "cpu-ort-1t", "--space", "demo", "--sample", "2", "--seed", "1",
                 "--inventory", str(inv), "--db", str(db), "--json", *FLAGS]) == 0
    rows = json.loads(capsys.readouterr().out)
    from fleetnas.supernets import get_supernet
    space = get_supernet("demo").space
    assert [r["key"] for r in rows] == [space.key(c) for c in space.sample(2, rng=1)]
    assert all(r["ok"] and r["latency_ms"]["median"] > 0 and r["config"] for r in rows)
    from fleetnas.store import open_store
    with open_store(db) as store:
        values = store.metric_values("demo", "cpu-ort-1t", "onnxruntime", "latency_ms")
    assert sorted(space.key(v.config) for v in values) == sorted({r["key"] for r in rows})


def test_the_one_shot_api_measures_a_sub_network_as_a_torch_spec(tmp_path, monkeypatch):
    pytest.importorskip("fleetnas.export")
    from fleetnas.farm import AgentEntry, Inventory, measure
    from fleetnas.supernets import get_supernet

    monkeypatch.setenv("FLEETNAS_CACHE_DIR", str(tmp_path / "cache"))
    with running_agent(tmp_path / "torch-cache") as (address, _):
        Inventory(tmp_path / "farm.toml", [AgentEntry("pc", address, "cpu-torch-1t", runtime="torch")]).save()
        [config] = get_supernet("demo").space.sample(1, rng=0)
        stopping = {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}
        [result] = measure([config], "cpu-torch-1t", space="demo", inventory=tmp_path / "farm.toml",
                           db=tmp_path / "fleet.db", stopping=stopping)
    assert result.ok, result.error
    assert result.job.artifact.format == "spec" and result.measurement.runtime == "torch"
    assert result.value("latency_ms") > 0


def test_concurrent_devices_add_keeps_every_agent(tmp_path):
    import subprocess
    import sys

    inventory = tmp_path / "farm.toml"
    adds = [subprocess.Popen([sys.executable, "-m", "fleetnas.cli", "devices", "add", f"n{i}", "--address",
                              f"127.0.0.1:{2000 + i}", "--kind", "k", "--inventory", str(inventory)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(6)]
    assert all(p.wait(timeout=120) == 0 for p in adds), [p.stderr.read() for p in adds]
    assert inventory.read_text().count("[agents.") == 6


@pytest.mark.parametrize("args, message", [
    (["devices", "describe", "127.0.0.1:115631"], "port from 1 to 65535"),
    (["profile", "--agent", "127.0.0.1", "--model", "m.onnx"], "port from 1 to 65535"),
    (["devices", "check", "--timeout", "0"], "--timeout: must be a positive number of seconds"),
    (["profile", "--device-kind", "k", "--deadline", "nan", "--model", "m.onnx"], "--deadline: must be a positive"),
    (["profile", "--device-kind", "k", "--space", "demo", "--sample", "1", "--seed", "-1"], "--seed: must be from 0 to 2147483647, got -1"),
])
def test_addresses_seconds_and_seeds_are_checked_as_arguments(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--db", "x.db"], ["--inventory", "farm.toml"], ["--remeasure"],
                                    ["--max-attempts", "2"], ["--give-up", "5"], ["--seed", "3"]])
def test_one_agent_refuses_the_options_only_a_farm_uses(tmp_path, capsys, option):
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_mlp(width=4, layers=1, seed=0))
    assert main(["profile", "--agent", "127.0.0.1:9", "--model", str(model), *option]) == 2
    assert f"{option[0]} is a farm-mode option" in capsys.readouterr().err


def test_a_model_file_named_for_another_format_is_refused_by_name_before_any_upload(tmp_path, capsys):
    garbage = tmp_path / "m.tflite"
    garbage.write_bytes(bytes(range(256)) * 4)  # no TFL3 tag: onnxruntime would be asked to parse it
    assert main(["profile", "--agent", "127.0.0.1:9", "--model", str(garbage)]) == 1  # refused before connecting
    assert "m.tflite is not a TFLite model (no TFL3 tag)" in capsys.readouterr().err
    onnx = tmp_path / "m.json"
    onnx.write_bytes(onnx_mlp(width=4, layers=1, seed=0))
    assert main(["profile", "--agent", "127.0.0.1:9", "--model", str(onnx)]) == 1
    assert "m.json is not a torch spec" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--warmup-runs", "99999999999"], "--warmup-runs must be at most 1,000,000, got 99999999999"),
    (["--max-runs", "99999999999999999999"], "--max-runs must be at most 1,000,000"),  # beyond the wire's uint32
    (["--max-seconds", "1e9"], "--max-seconds is capped at 3,600 s, got 1e+09"),  # the value named, not every cap
])
def test_a_stopping_rule_beyond_the_agents_caps_is_a_usage_error_naming_the_value(tmp_path, capsys, option, message):
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_mlp(width=4, layers=1, seed=0))
    assert main(["profile", "--agent", "127.0.0.1:9", "--model", str(model), *option]) == 2
    assert message in capsys.readouterr().err


def test_a_model_file_name_that_looks_like_markup_is_printed_as_it_is(tmp_path, farm, capsys):
    inv, db = farm
    model = tmp_path / "mk" / "w[/b]x.onnx"
    model.parent.mkdir(parents=True)  # folder "mk/w[", file "b]x.onnx": "[/b]" closes a tag that was never opened
    model.write_bytes(onnx_mlp(width=16, layers=1, seed=7))
    capsys.readouterr()
    assert main(["profile", "--device-kind", "cpu-ort-1t", "--model", str(model), "--inventory", str(inv),
                 "--db", str(db), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "w[/b]x.onnx" in out.replace("\n", "").replace("│", "").replace(" ", "") and "1 measured" in out


@pytest.mark.parametrize("args, message", [
    (["profile", "--device-kind", "k", "--reprobe", "1e300"],
     "--reprobe: must be a positive number of seconds, at most 31622400 (a year), got 1e300"),
    (["profile", "--device-kind", "k", "--give-up", "9e9"], "--give-up: must be a positive"),
    (["profile", "--device-kind", "k", "--deadline", "8000"],
     "--deadline: must be a positive number of seconds, at most 7320 (the agent's limit), got 8000"),
    (["devices", "check", "--timeout", "1e10"], "--timeout: must be a positive number of seconds, at most"),
    (["profile", "--device-kind", "k", "--space", "demo", "--sample", "1000000000"],
     "--sample: must be from 1 to 100,000, got 1000000000"),
], ids=["reprobe", "give-up", "deadline", "timeout", "sample"])
def test_seconds_and_sample_counts_beyond_what_works_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_deadline_bound_is_the_agents_own():
    from fleetnas.cli.common import AGENT_MAX_TIMEOUT_S
    from fleetnas_agent.server import MAX_TIMEOUT_S

    assert AGENT_MAX_TIMEOUT_S == MAX_TIMEOUT_S


def test_every_commands_give_up_default_is_the_farms_own():
    from fleetnas.cli.common import FARM_GIVE_UP_S
    from fleetnas.farm.scheduler import GIVE_UP_S

    assert FARM_GIVE_UP_S == GIVE_UP_S


def test_profile_refuses_at_once_when_no_agent_of_the_kind_answers(tmp_path, capsys):
    inv = tmp_path / "farm.toml"
    assert main(["devices", "add", "gone", "--address", "127.0.0.1:9", "--kind", "k", "--inventory", str(inv)]) == 0
    [model] = models(tmp_path, 1)
    capsys.readouterr()
    # --give-up 5 bounds the wait without the check: the jobs would fail after it, with another message
    assert main(["profile", "--device-kind", "k", "--model", model, "--inventory", str(inv),
                 "--db", str(tmp_path / "f.db"), "--give-up", "5"]) == 1
    assert "no agent of kind 'k' answers: gone at 127.0.0.1:9: UNAVAILABLE" in capsys.readouterr().err
    assert not list(tmp_path.glob("f.db*"))  # the store it made holds nothing: it would read as an empty farm


def test_a_thread_count_an_agent_would_refuse_is_refused_by_the_command(tmp_path, capsys):
    [model] = models(tmp_path, 1)
    for threads in ("0", "257", "5000000000"):  # the last one does not even fit the wire's uint32
        with pytest.raises(SystemExit) as stop:
            main(["profile", "--agent", "127.0.0.1:1", "--model", model, "--threads", threads])
        assert stop.value.code == 2
        assert f"argument --threads: must be from 1 to 256, got {threads}" in capsys.readouterr().err
