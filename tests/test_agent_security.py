"""Who may use an agent: bearer tokens, TLS and mutual TLS, and refusing plaintext beyond loopback."""
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agents import running_agent
from certs import CertificateAuthority
from fleetnas_agent.client import AgentClient, Credentials
from fleetnas_agent.server import AgentConfig, check_security


def refused(client: AgentClient) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        client.describe()
    return err.value.code()


def test_token_is_required_for_everything_but_health(tmp_path):
    with running_agent(tmp_path, token="s3cret") as (address, _):
        with AgentClient(address) as anonymous:
            assert refused(anonymous) == grpc.StatusCode.UNAUTHENTICATED
            assert anonymous.health() == "SERVING"  # the health standard is open to probes
            stub = reflection_pb2_grpc.ServerReflectionStub(anonymous.channel)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                anonymous.put_artifact(b"x" * 10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with AgentClient(address, Credentials(token="wrong")) as wrong:
            assert refused(wrong) == grpc.StatusCode.UNAUTHENTICATED
        with AgentClient(address, Credentials(token="s3cret")) as right:
            assert right.describe().label == "test-agent"


@pytest.fixture(scope="module")
def pki():
    ca, other_ca = CertificateAuthority(), CertificateAuthority("someone-else")
    return {"ca": ca, "server": ca.issue("agent", server=True), "client": ca.issue("host", server=False),
            "stranger": other_ca.issue("intruder", server=False)}


def test_tls_agent_refuses_plaintext_and_serves_tls(tmp_path, pki):
    server = pki["server"]
    with running_agent(tmp_path, tls_cert=server.cert, tls_key=server.key) as (address, _):
        with AgentClient(address, timeout_s=5) as plaintext:
            assert refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        with AgentClient(address, Credentials(tls_ca=pki["ca"].cert_pem)) as tls:
            assert tls.describe().label == "test-agent"
        untrusted = CertificateAuthority("not-the-agents-ca")
        with AgentClient(address, Credentials(tls_ca=untrusted.cert_pem), timeout_s=5) as wrong_ca:
            assert refused(wrong_ca) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_right_ca(tmp_path, pki):
    server, client, stranger = pki["server"], pki["client"], pki["stranger"]
    ca = pki["ca"].cert_pem
    with running_agent(tmp_path, tls_cert=server.cert, tls_key=server.key, tls_client_ca=ca) as (address, _):
        with AgentClient(address, Credentials(tls_ca=ca), timeout_s=5) as no_cert:
            assert refused(no_cert) == grpc.StatusCode.UNAVAILABLE
        with AgentClient(address, Credentials(tls_ca=ca, tls_cert=stranger.cert, tls_key=stranger.key),
                         timeout_s=5) as wrong_cert:
            assert refused(wrong_cert) == grpc.StatusCode.UNAVAILABLE
        with AgentClient(address, Credentials(tls_ca=ca, tls_cert=client.cert, tls_key=client.key)) as good:
            assert good.describe().label == "test-agent"
            channel_health = health_pb2_grpc.HealthStub(good.channel)
            assert channel_health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_plaintext_without_token_is_refused_beyond_loopback():
    with pytest.raises(ValueError, match="refusing to serve plaintext without a token on 0.0.0.0"):
        check_security(AgentConfig(host="0.0.0.0"))
    check_security(AgentConfig(host="0.0.0.0", token="t"))
    check_security(AgentConfig(host="0.0.0.0", insecure=True))
    check_security(AgentConfig(host="::1"))
