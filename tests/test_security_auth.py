"""Who may use an agent, end to end: credentials from the host's inventory to a real agent process.

Token and mutual-TLS agents are each tried with every wrong way in (no token, a wrong token, no client
certificate, a certificate from another CA, plaintext to TLS, TLS to plaintext): each is refused with
UNAUTHENTICATED or a TLS failure, and the agent's log records it. Health checks are the only thing open
without credentials; reflection and unknown methods are not. The agent listens on one port and no other.
(tests/test_agent_security.py covers the same rules on an in-process agent, method by method.)
"""
import ipaddress
import subprocess
import sys
from dataclasses import dataclass

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agents import AgentProcess
from certs import CertificateAuthority
from faults import wait_until
from models import onnx_mlp
from fleetnas.farm import AgentEntry, ArtifactSource, Farm, Inventory
from fleetnas.farm.check import check_agent
from fleetnas.store import SqliteStore
from fleetnas_agent.server import AgentConfig, check_security

TOKEN = "correct-horse-battery-staple"
FAST = {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}
AREA = "auth"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A farm CA with the agent's and the host's certificates, a stranger's from another CA, and tokens."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority("farm-ca"), CertificateAuthority("someone-elses-ca")
    files = {"ca.pem": ca.cert_pem, "other-ca.pem": other.cert_pem}
    for name, pem in {"agent": ca.issue("agent", server=True), "host": ca.issue("host", server=False),
                      "stranger": other.issue("host", server=False)}.items():
        files[f"{name}.pem"], files[f"{name}.key"] = pem.cert, pem.key
    files["token"], files["wrong-token"] = f"{TOKEN}\n".encode(), b"guess\n"
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def token_agent(pki):
    with AgentProcess(pki / "token-cache", args=["--label", "token-box", "--token-file", str(pki / "token")]) as a:
        yield a


@pytest.fixture(scope="module")
def mtls_agent(pki):
    args = ["--label", "mtls-box", "--tls-cert", str(pki / "agent.pem"), "--tls-key", str(pki / "agent.key"),
            "--tls-client-ca", str(pki / "ca.pem")]
    with AgentProcess(pki / "mtls-cache", args=args) as a:
        yield a


@dataclass(frozen=True)
class Way:
    """One way of calling an agent: inventory credential fields, and the status it must get."""
    agent: str
    credentials: dict
    expected: str           # SERVING, or the refusal's status
    logged: str = ""        # what the agent's log must show for a refusal
    hint: str = ""          # what the host adds to gRPC's words, where TLS is on one side only


TOKEN_REFUSED = "missing or wrong bearer token"
# TLS refusals are logged by gRPC core as "Handshake failed with error ...: <the TLS library's reason>".
PLAINTEXT, NO_CERTIFICATE, UNKNOWN_CA = "WRONG_VERSION_NUMBER", "PEER_DID_NOT_RETURN_A_CERTIFICATE", \
    "CERTIFICATE_VERIFY_FAILED"
WAYS = {
    "token: right": Way("token", {"token_file": "token"}, "SERVING"),
    "token: missing": Way("token", {}, "UNAUTHENTICATED", TOKEN_REFUSED),
    "token: wrong": Way("token", {"token_file": "wrong-token"}, "UNAUTHENTICATED", TOKEN_REFUSED),
    "token: TLS to a plaintext agent": Way("token", {"tls_ca": "ca.pem", "token_file": "token"}, "UNAVAILABLE",
                                           hint="the agent answered in plaintext: it serves no TLS"),
    "mtls: right": Way("mtls", {"tls_ca": "ca.pem", "tls_cert": "host.pem", "tls_key": "host.key"}, "SERVING"),
    "mtls: plaintext": Way("mtls", {}, "UNAVAILABLE", PLAINTEXT, hint="if the agent serves TLS, connect with its CA"),
    "mtls: plaintext with the token": Way("mtls", {"token_file": "token"}, "UNAVAILABLE", PLAINTEXT),
    "mtls: no client certificate": Way("mtls", {"tls_ca": "ca.pem"}, "UNAVAILABLE", NO_CERTIFICATE),
    "mtls: certificate from another CA": Way("mtls", {"tls_ca": "ca.pem", "tls_cert": "stranger.pem",
                                                      "tls_key": "stranger.key"}, "UNAVAILABLE", UNKNOWN_CA),
    "mtls: agent not trusted by the host": Way("mtls", {"tls_ca": "other-ca.pem", "tls_cert": "host.pem",
                                                        "tls_key": "host.key"}, "UNAVAILABLE"),
}


@pytest.mark.parametrize("way", WAYS.values(), ids=list(WAYS))
def test_each_way_in_from_the_inventory_is_served_or_refused_and_logged(way, pki, token_agent, mtls_agent, counts):
    agent = {"token": token_agent, "mtls": mtls_agent}[way.agent]
    entry = AgentEntry("a", agent.address, "k", **way.credentials)
    refusals = lambda: [line for line in agent.log_lines if way.logged in line]  # noqa: E731
    logged_before = len(refusals()) if way.logged else 0
    check = check_agent(entry, pki, timeout_s=5, reference=False)
    counts.add(AREA, requests=1, failures=int(check.status != way.expected))
    assert check.status == way.expected, check.detail
    assert way.hint in check.detail
    if way.expected == "SERVING":
        assert check.healthy and check.label == f"{way.agent}-box"
    else:
        assert not check.healthy and not check.device_id  # nothing about the device leaked
    if way.logged == TOKEN_REFUSED:  # the agent logs each refused call, and who made it
        wait_until(lambda: len(refusals()) > logged_before, timeout_s=10, what="the agent to log the refusal")
        assert "from ipv4:127.0.0.1:" in refusals()[-1]
    elif way.logged:  # gRPC may reuse a refused connection attempt of the same kind: the reason is in the log
        wait_until(lambda: any("Handshake failed" in line for line in refusals()), timeout_s=10,
                   what=f"the agent to log a failed TLS handshake ({way.logged})")


def test_a_farm_measures_with_the_inventorys_credentials_and_stores_nothing_for_a_refused_one(
        tmp_path, pki, token_agent, mtls_agent, counts):
    inventory = Inventory(pki / "farm.toml", [
        AgentEntry("pi", token_agent.address, "token-kind", token_file="token"),
        AgentEntry("phone", mtls_agent.address, "mtls-kind", tls_ca="ca.pem", tls_cert="host.pem",
                   tls_key="host.key", tls_server_name="localhost"),
    ])
    # The pi's agent again, in another farm's inventory with a wrong token (one inventory refuses one agent twice).
    stolen = Inventory(pki / "stolen.toml", [
        AgentEntry("intruder", token_agent.address, "stolen-kind", token_file="wrong-token")])
    artifact = ArtifactSource.from_bytes(onnx_mlp(width=16, layers=1, seed=7))
    with Farm(stolen, SqliteStore(tmp_path / "auth.db"), give_up_s=1.0, reprobe_s=60, rpc_timeout_s=5) as farm:
        [refused] = farm.measure_artifacts([artifact], "stolen-kind", stopping=FAST)
    with Farm(inventory, SqliteStore(tmp_path / "auth.db"), give_up_s=1.0, reprobe_s=60, rpc_timeout_s=5) as farm:
        good = [farm.measure_artifacts([artifact], kind, stopping=FAST)[0] for kind in ("token-kind", "mtls-kind")]
        counts.add(AREA, requests=3, failures=sum(not r.ok for r in good) + int(refused.ok))
        assert all(r.ok and r.latency_ms["median"] > 0 for r in good)
        assert {r.measurement.agent for r in good} == {"pi", "phone"}
        assert not refused.ok and "UNAUTHENTICATED" in refused.error
        rows = farm.store.measurements(ok=None, include_stale=True)
        assert {r.device_kind for r in rows} == {"token-kind", "mtls-kind"}  # nothing under the refused kind
        assert farm.store.devices("stolen-kind") == []


RAW_IDENTITY = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}


def _status(call) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def test_only_the_standard_health_check_is_open_without_the_token(token_agent, counts):
    with grpc.insecure_channel(token_agent.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        checks = {
            "health check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
            "health of the service": lambda: health.Check(health_pb2.HealthCheckRequest(
                service="fleetnas.agent.v1.ProfilerAgent"), timeout=5),
            "health of an unknown service": lambda: health.Check(health_pb2.HealthCheckRequest(service="x"),
                                                                 timeout=5),
            "reflection": lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)),
        }
        # Method names that look like the open ones, and names that do not exist: none may pass unauthenticated.
        for path in ("/grpc.health.v1.Health/check", "/grpc.health.v1.Health/Check/", "//grpc.health.v1.Health/Check",
                     "/grpc.health.v1.health/Check", "/fleetnas.agent.v1.ProfilerAgent/Nope", "/x/y", "/"):
            checks[path] = lambda p=path: channel.unary_unary(p, **RAW_IDENTITY)(b"", timeout=5)
        statuses = {name: _status(call) for name, call in checks.items()}
        first_watch = next(iter(watch))
        watch.cancel()
    expected = {name: "UNAUTHENTICATED" for name in checks}
    expected.update({"health check": "OK", "health of the service": "OK", "health of an unknown service": "NOT_FOUND"})
    counts.add(AREA, requests=len(checks) + 1,
               failures=sum(statuses[n] != expected[n] for n in checks) + int(first_watch.status != 1))
    assert statuses == expected
    assert first_watch.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(token_agent.address) as channel:
        unknown = channel.unary_unary("/fleetnas.agent.v1.ProfilerAgent/Nope", **RAW_IDENTITY)
        assert _status(lambda: unknown(b"", timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),))) == \
            "UNIMPLEMENTED"  # with the token, the same call is merely unknown


def test_near_misses_of_the_token_are_refused(token_agent, counts):
    near = [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f" {TOKEN}", ""]
    headers = [f"Bearer {t}" for t in near] + [TOKEN, f"bearer {TOKEN}", f"Bearer  {TOKEN}", f"Basic {TOKEN}"]
    with grpc.insecure_channel(token_agent.address) as channel:
        describe = channel.unary_unary("/fleetnas.agent.v1.ProfilerAgent/Describe", **RAW_IDENTITY)
        statuses = [_status(lambda h=h: describe(b"", timeout=5, metadata=(("authorization", h),))) for h in headers]
        right = _status(lambda: describe(b"", timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)))
    counts.add(AREA, requests=len(headers) + 1, failures=sum(s != "UNAUTHENTICATED" for s in statuses))
    assert statuses == ["UNAUTHENTICATED"] * len(headers) and right == "OK"


def _ipv4(ip: str) -> str:
    """gRPC listens on an IPv6 socket bound to the IPv4-mapped address (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    return str(getattr(address, "ipv4_mapped", None) or address)


def test_the_agent_opens_only_its_port_and_connects_nowhere(token_agent, counts):
    sockets = [c for c in psutil.Process(token_agent.proc.pid).net_connections(kind="inet")]
    listening = [c for c in sockets if c.status == psutil.CONN_LISTEN]
    outgoing = [c for c in sockets if c.status != psutil.CONN_LISTEN and c.laddr.port != token_agent.port]
    counts.add(AREA, requests=1, failures=int(len(listening) != 1) + len(outgoing))
    assert [(_ipv4(c.laddr.ip), c.laddr.port) for c in listening] == [("127.0.0.1", token_agent.port)]
    assert outgoing == []  # every connection is one a caller opened to its port


@pytest.mark.parametrize("config, refusal", [
    (AgentConfig(host="0.0.0.0", tls_cert=b"cert", tls_key=b"key"), "without client authentication"),
    (AgentConfig(host="192.168.1.20", token=""), "empty token"),
    (AgentConfig(host="127.0.0.1", token=""), "empty token"),
])
def test_an_agent_that_would_let_anyone_in_refuses_to_start(config, refusal, counts):
    counts.add(AREA, requests=1)
    with pytest.raises(ValueError, match=refusal):
        check_security(config)


def test_tls_without_client_authentication_is_refused_beyond_loopback_unless_insecure(pki, counts):
    # An address of no interface here (198.18.0.0/15 is for tests): were the check missing, binding would fail
    # rather than open a port to the network.
    base = [sys.executable, "-m", "fleetnas_agent.cli", "serve", "--host", "198.18.255.1", "--port", "0",
            "--cache-dir", str(pki / "unused-cache"), "--tls-cert", str(pki / "agent.pem"),
            "--tls-key", str(pki / "agent.key")]
    out = subprocess.run(base, capture_output=True, text=True, timeout=60)
    counts.add(AREA, requests=1, failures=int(out.returncode != 2))
    assert out.returncode == 2 and "without client authentication" in out.stderr
    # TLS plus a token, or mutual TLS, is enough; so is TLS alone on loopback.
    check_security(AgentConfig(host="0.0.0.0", tls_cert=b"c", tls_key=b"k", token="t"))
    check_security(AgentConfig(host="0.0.0.0", tls_cert=b"c", tls_key=b"k", tls_client_ca=b"ca"))
    check_security(AgentConfig(host="127.0.0.1", tls_cert=b"c", tls_key=b"k"))
    check_security(AgentConfig(host="0.0.0.0", tls_cert=b"c", tls_key=b"k", insecure=True))


def test_health_watchers_without_credentials_do_not_starve_the_farm(token_agent, counts):
    """The open Watch stream must not hold one of the agent's few call slots (--max-queue + 16) for good."""
    channels = [grpc.insecure_channel(token_agent.address) for _ in range(40)]
    try:
        watches = [health_pb2_grpc.HealthStub(c).Watch(health_pb2.HealthCheckRequest(), timeout=60) for c in channels]
        serving = sum(next(w).status == health_pb2.HealthCheckResponse.SERVING for w in watches)
        with grpc.insecure_channel(token_agent.address) as channel:
            describe = channel.unary_unary("/fleetnas.agent.v1.ProfilerAgent/Describe", **RAW_IDENTITY)
            status = _status(lambda: describe(b"", timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)))
        for watch in watches:
            watch.cancel()
    finally:
        for channel in channels:
            channel.close()
    counts.add(AREA, requests=41, failures=int(status != "OK") + 40 - serving)
    assert serving == 40 and status == "OK"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\xff\xfe", "characters a token cannot carry"),
    (b"two words\n", "characters a token cannot carry"),
])
def test_a_token_file_a_header_cannot_carry_is_refused_naming_the_file(tmp_path, capsys, content, message):
    from fleetnas.cli import main
    from fleetnas_agent.client import Credentials

    path = tmp_path / "t.token"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Credentials.from_files(token_file=path)
    assert main(["devices", "describe", "127.0.0.1:9", "--token-file", str(path)]) != 0
    assert f"token file {path}" in capsys.readouterr().err
    (tmp_path / "ok.token").write_text("s3cr3t-T0ken_~+/=\n")
    assert Credentials.from_files(token_file=tmp_path / "ok.token").token == "s3cr3t-T0ken_~+/="


def test_credential_files_that_cannot_be_read_or_used_are_named_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A token file that could not be read ended the command with a PermissionError's traceback, and a client
    certificate given in place of its key was accepted, to fail at every call as an unexplained UNAVAILABLE."""
    from fleetnas.cli import main
    from fleetnas_agent.client import Credentials

    unreadable = tmp_path / "folder.token"
    unreadable.mkdir()  # reading it fails as an unreadable file does (an OSError), also for root
    with pytest.raises(ValueError, match=f"cannot read token file {unreadable}: Is a directory"):
        Credentials.from_files(token_file=unreadable)
    import pathlib

    private = tmp_path / "private.token"
    private.write_text("s3cr3t\n")
    read_bytes = pathlib.Path.read_bytes

    def as_another_user(path):  # a file of mode 600 that another user owns (the tests may run as root)
        if path == private:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", as_another_user)
    assert main(["devices", "describe", "127.0.0.1:9", "--token-file", str(private)]) != 0
    assert f"cannot read token file {private}: Permission denied" in capsys.readouterr().err
    monkeypatch.undo()
    ca = CertificateAuthority("farm-ca")
    client = ca.issue("host", server=False)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "c.pem").write_bytes(client.cert)
    (tmp_path / "c.key").write_bytes(client.key)
    good = Credentials.from_files(tls_ca=tmp_path / "ca.pem", tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.key")
    assert good.secure and good.tls_key == client.key
    with pytest.raises(ValueError, match=f"TLS certificate {tmp_path / 'c.key'} and key {tmp_path / 'c.pem'}"):
        Credentials.from_files(tls_cert=tmp_path / "c.key", tls_key=tmp_path / "c.pem")  # swapped
    with pytest.raises(ValueError, match=f"TLS CA file {tmp_path / 'c.key'}: not usable for TLS"):
        Credentials.from_files(tls_ca=tmp_path / "c.key", tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.key")
    with pytest.raises(ValueError, match=f"cannot read TLS CA file {unreadable}: Is a directory"):
        Credentials.from_files(tls_ca=unreadable)  # named: ssl's own error gives no file name
    assert main(["devices", "add", "swapped", "--address", "127.0.0.1:9", "--kind", "cpu", "--tls-cert",
                 str(tmp_path / "c.key"), "--tls-key", str(tmp_path / "c.pem"),
                 "--inventory", str(tmp_path / "farm.toml")]) != 0
    assert "not usable for TLS" in capsys.readouterr().err and not (tmp_path / "farm.toml").exists()
