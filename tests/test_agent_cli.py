"""The two commands as a user types them: `fleetnas-agent serve` and `fleetnas profile` / `devices describe`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import models
from agents import AgentProcess

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-seconds", "0.3"]


def fleetnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetnas.cli", *args], capture_output=True, text=True, timeout=300)


def test_profile_and_describe_through_a_real_agent_process(tmp_path):
    model = tmp_path / "mlp.onnx"
    model.write_bytes(models.onnx_mlp(width=64, layers=2))
    with AgentProcess(tmp_path / "cache", args=["--label", "cli-box"]) as agent:
        out = fleetnas("profile", "--agent", agent.address, "--model", str(model), "--json", *FAST)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert set(result["latency_ms"]) >= {"n", "mean", "median", "p90", "p99", "std", "min", "max", "target_met"}
        assert result["memory"]["peak_bytes"] > 0 and result["device"]["label"] == "cli-box"
        assert result["runtime"]["name"] == "onnxruntime" and set(result["env"]) >= {"before", "after"}
        text = fleetnas("profile", "--agent", agent.address, "--model", str(model), *FAST)
        assert text.returncode == 0 and "median" in text.stdout and "cli-box" in text.stdout
        assert "\033[K" not in text.stderr  # no progress line redrawn into a file or a pipe
        once = fleetnas("profile", "--agent", agent.address, "--model", str(model), "--max-runs", "1", *FAST)
        assert once.returncode == 0, once.stderr
        assert "n=1, no 95% CI of the median below 6 runs (target NOT met)" in once.stdout
        described = json.loads(fleetnas("devices", "describe", agent.address, "--json").stdout)
        assert described["label"] == "cli-box"
        # 64-bit sizes as JSON numbers, as `profile --json` gives them, not JSON's strings
        assert isinstance(described["ram_bytes"], int) and isinstance(described["limits"]["cache_max_bytes"], int)
    on_the_device = subprocess.run([sys.executable, "-m", "fleetnas_agent.cli", "describe", "--cache-dir",
                                    str(tmp_path / "cache")], capture_output=True, text=True, timeout=120)
    local = json.loads(on_the_device.stdout)  # the same message, the same shape, read on the device itself
    assert local["device_id"] == described["device_id"] and local["ram_bytes"] == described["ram_bytes"]


def test_profile_failures_exit_non_zero_with_the_status(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"definitely not a model" * 10)
    with AgentProcess(tmp_path / "cache") as agent:
        out = fleetnas("profile", "--agent", agent.address, "--model", str(garbage), *FAST)
    assert out.returncode != 0 and "INVALID_ARGUMENT" in out.stderr and "cannot load" in out.stderr
    assert out.stderr.startswith("fleetnas: error:")  # on its own line, after no progress text
    missing = fleetnas("profile", "--agent", "127.0.0.1:1", "--model", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unreachable = fleetnas("profile", "--agent", "127.0.0.1:1", "--model", str(garbage))
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr


def test_agent_refuses_an_open_plaintext_port_unless_told(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fleetnas_agent.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                          "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to serve plaintext" in out.stderr
    bad_port = subprocess.run([sys.executable, "-m", "fleetnas_agent.cli", "serve", "--port", "http"],
                              capture_output=True, text=True, timeout=60)
    assert bad_port.returncode == 2 and "'http' is not a port number" in bad_port.stderr


def test_generated_code_matches_the_proto():
    import importlib.util

    if importlib.util.find_spec("grpc_tools") is None:  # it holds protobuf below 7, so .venv goes without it
        pytest.skip("grpcio-tools (the protos extra) is not installed: make test-oldest runs this check")
    out = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_dependency_floors_are_what_the_generated_code_accepts():
    """The generated code refuses a grpcio or protobuf older than its generator's; the floors must say so, and
    stay at Termux's python-grpcio (1.81.1), which the phone's setup keeps instead of building grpcio."""
    import re

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    grpc_code = (ROOT / "agent" / "proto" / "agent_pb2_grpc.py").read_text()
    proto_code = (ROOT / "agent" / "proto" / "agent_pb2.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_code)[1]
    # What protobuf enforces: the gencode version passed to its runtime check.
    numbers = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
                        proto_code)
    protobuf_version = ".".join(numbers.groups())

    def specifiers(lines) -> dict[str, str]:
        requirements = [Requirement(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return {r.name: str(r.specifier) for r in requirements}

    floors = specifiers(project["dependencies"])
    for package in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert floors[package] == f"<2,>={grpc_version}"
    assert floors["protobuf"] == f"<8,>={protobuf_version}"
    assert specifiers(project["optional-dependencies"]["protos"]) == {"grpcio-tools": f"=={grpc_version}"}
    assert tuple(int(p) for p in grpc_version.split(".")) <= (1, 81, 1)
    # `make test-oldest` tests the agent on exactly these floors.
    oldest = specifiers((ROOT / "tests" / "oldest-runtimes.txt").read_text().splitlines())
    assert oldest == {"grpcio": f"=={grpc_version}", "grpcio-health-checking": f"=={grpc_version}",
                      "grpcio-reflection": f"=={grpc_version}", "protobuf": f"=={protobuf_version}"}


def test_the_agent_imports_no_runtime_and_no_host_code_until_asked():
    probe = ("import sys, fleetnas_agent.server, fleetnas_agent.cli; "
             "heavy = ('torch', 'onnxruntime', 'ai_edge_litert', 'tflite_runtime', 'fleetnas', 'pymoo', 'sklearn'); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetnas_agent.cli", "serve", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_second_agent_on_a_busy_port_or_a_busy_cache_folder_is_refused(tmp_path):
    port_file = tmp_path / "run" / "port"
    port_file.parent.mkdir()
    agent = AgentProcess(tmp_path / "cache", args=["--port-file", str(port_file), "--log-level", "INFO"])
    with agent:
        assert port_file.read_text().strip() == str(agent.port)  # written before the "serving on" line
        same_port = _serve("--port", str(agent.port), "--cache-dir", str(tmp_path / "other"))
        assert same_port.returncode == 2 and f"cannot listen on 127.0.0.1:{agent.port}" in same_port.stderr
        assert "Traceback" not in same_port.stderr
        by_name = _serve("--host", "localhost", "--port", str(agent.port), "--cache-dir", str(tmp_path / "other"))
        assert by_name.returncode == 2 and f"cannot listen on 127.0.0.1:{agent.port}" in by_name.stderr
        same_cache = _serve("--port", "0", "--cache-dir", str(tmp_path / "cache"))
        assert same_cache.returncode == 2 and "another agent uses the cache folder" in same_cache.stderr
    assert not port_file.exists()  # a relaunch script must not read a port nobody listens on
    assert agent.proc.returncode == 0 and "stopping on SIGTERM" in agent.log and agent.log.endswith("stopped")


def test_serve_names_bad_tls_files_message_sizes_and_port_files(tmp_path):
    garbage = tmp_path / "not.pem"
    garbage.write_text("not a certificate")
    tls = _serve("--port", "0", "--cache-dir", str(tmp_path), "--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert tls.returncode == 2 and "cannot serve TLS" in tls.stderr and "Traceback" not in tls.stderr
    big = _serve("--port", "0", "--cache-dir", str(tmp_path), "--max-message-mb", "2048")
    assert big.returncode == 2 and "must be at most 2047" in big.stderr
    nowhere = _serve("--port", "0", "--cache-dir", str(tmp_path), "--port-file", str(tmp_path / "no" / "dir" / "p"))
    assert nowhere.returncode == 2 and "cannot write --port-file" in nowhere.stderr
    assert "serving on" not in nowhere.stdout  # nobody is told to connect to an agent that is gone
    a_file = _serve("--port", "0", "--cache-dir", str(garbage))
    assert a_file.returncode == 2 and f"--cache-dir {garbage} is a file, not a folder" in a_file.stderr
    below_a_file = _serve("--port", "0", "--cache-dir", str(garbage / "cache"))
    assert below_a_file.returncode == 2 and f"cannot use --cache-dir {garbage / 'cache'}: Not a directory" in \
        below_a_file.stderr and "Errno" not in below_a_file.stderr


def test_an_encrypted_tls_key_is_named_without_a_prompt(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from certs import CertificateAuthority, _key

    pem = CertificateAuthority().issue("localhost", server=True)
    encrypted = _key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"secret"))
    (tmp_path / "cert.pem").write_bytes(pem.cert)
    (tmp_path / "enc.key").write_bytes(encrypted)
    out = subprocess.run([sys.executable, "-m", "fleetnas_agent.cli", "serve", "--port", "0", "--cache-dir",
                          str(tmp_path), "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "enc.key")],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "cannot serve TLS" in out.stderr and "unencrypted" in out.stderr


def test_serve_refuses_limits_that_do_not_fit_the_wire_and_describes_the_largest_that_do(tmp_path):
    """Limits go out in Describe as uint32 (a count) and uint64 (bytes): a larger value would break Describe."""
    base = ["--port", "0", "--cache-dir", str(tmp_path / "cache")]
    for option, value, bound in (("--max-queue", 2**32, 2**32 - 1),
                                 ("--cache-max-mb", 2**44, 2**44 - 1),  # 2^44 MiB is 2^64 bytes
                                 ("--max-artifact-mb", 20_000_000_000_000, 2**44 - 1)):
        out = _serve(*base, option, str(value))
        assert out.returncode == 2, (option, out.stderr)
        assert f"argument {option}: must be at most {bound}, got {value}" in out.stderr
    largest = ["--max-queue", str(2**32 - 1), "--cache-max-mb", str(2**44 - 1), "--max-artifact-mb", str(2**44 - 1)]
    with AgentProcess(tmp_path / "cache", args=largest) as agent:
        described = fleetnas("devices", "describe", agent.address, "--json")
    assert described.returncode == 0, described.stderr
    limits = json.loads(described.stdout)["limits"]
    assert int(limits["max_queued_profiles"]) == 2**32 - 1 and int(limits["cache_max_bytes"]) == (2**44 - 1) * 2**20


def test_agent_describe_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path):
    """`fleetnas-agent describe | head -2`: the reader has what it wanted; the agent says nothing more."""
    proc = subprocess.Popen([sys.executable, "-m", "fleetnas_agent.cli", "describe", "--cache-dir",
                             str(tmp_path / "cache")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head` does once it has its lines
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()


def test_the_command_leaves_no_grpc_call_for_the_collection_at_exit(tmp_path):
    """A gRPC call left in a reference cycle is finalised at exit, where its finaliser can wait for ever on a
    lock that a gRPC daemon thread held when the interpreter stopped it: `main` collects such calls first."""
    import gc

    from fleetnas.cli import main

    model = tmp_path / "mlp.onnx"
    model.write_bytes(models.onnx_mlp(width=16, layers=1))
    with AgentProcess(tmp_path / "cache") as agent:
        assert main(["profile", "--agent", agent.address, "--model", str(model), "--max-runs", "1", *FAST]) == 0
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("grpc")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def test_agent_describe_names_a_device_id_it_cannot_read(tmp_path, monkeypatch, capsys):
    """Where a device has no machine id, the agent keeps its own id file: one it may not read is named."""
    from fleetnas_agent import cli, device

    unreadable = tmp_path / "cache" / "device-id"

    def no_permission(cache_dir):
        raise PermissionError(13, "Permission denied", str(unreadable))

    monkeypatch.setattr(device, "device_id", no_permission)
    assert cli.main(["describe", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert f"cannot use --cache-dir {tmp_path / 'cache'}: Permission denied ({unreadable})" in capsys.readouterr().err
