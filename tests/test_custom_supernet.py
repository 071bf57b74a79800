"""The worked example in examples/custom-supernet registers through the entry point group and works end to end."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom-supernet"


def installed_like_pip(root: Path) -> dict:
    """The example as pip would install it: its package on the path, its entry points in a dist-info."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = root / "tiny_mlp_supernet-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: 0.1.0\n")
    points = project["entry-points"]["fleetnas.supernets"]
    (info / "entry_points.txt").write_text("[fleetnas.supernets]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return {"PYTHONPATH": f"{EXAMPLE}:{root}"}


def fleetnas(env: dict, *args) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "fleetnas.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_a_user_supernet_is_listed_sampled_exported_and_searched(tmp_path):
    env = installed_like_pip(tmp_path / "site")
    listed = fleetnas(env, "space", "list")
    assert listed.returncode == 0 and "tiny_mlp" in listed.stdout
    sampled = fleetnas(env, "space", "sample", "tiny_mlp", "--n", "2", "--json")
    assert sampled.returncode == 0, sampled.stderr
    assert all(row["macs"] > 0 for row in json.loads(sampled.stdout))
    out = tmp_path / "mlp.onnx"
    exported = fleetnas(env, "export", "--space", "tiny_mlp", "--sample", "--format", "onnx", "--out", str(out))
    assert exported.returncode == 0 and out.stat().st_size > 0, exported.stderr
    bad = fleetnas(env, "export", "--space", "tiny_mlp", "--config", '{"depth": 1, "width_0": 32, "width_1": 64, '
                   '"width_2": 32, "width_3": 32}', "--format", "onnx", "--out", str(out))
    assert bad.returncode != 0 and "width_1 is beyond depth 1" in bad.stderr
    searched = fleetnas(env, "search", "--space", "tiny_mlp", "--objective", "params:min", "--objective", "macs:min",
                        "--budget", "12", "--db", str(tmp_path / "s.db"), "--json")
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout)["evaluations"] == 12


@pytest.mark.parametrize("algorithm", ["nsga2", "agemoea", "unsga3", "ctaea", "moead"])
def test_every_algorithm_drives_linas_on_a_space_with_a_validity_rule(tmp_path, algorithm):
    """The example's rule leaves 340 of 1,024 configs valid: MOEA/D once proposed invalid ones (it had no
    repair), and C-TAEA looped forever on a first population with fewer distinct members than it needs."""
    env = installed_like_pip(tmp_path / "site")
    searched = fleetnas(env, "search", "--space", "tiny_mlp", "--objective", "params:min", "--objective", "macs:min",
                        "--tactic", "linas", "--algorithm", algorithm, "--budget", "30",
                        "--db", str(tmp_path / "s.db"), "--json")
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout)["evaluations"] == 30
