"""The host's handle on one agent: a thin, typed client over the wire contract."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .cache import sniff_format
from .proto import FAILURE_CAUSE_KEY
from .proto import agent_pb2 as pb
from .proto import agent_pb2_grpc as pb_grpc

# Well under the smallest message limit an agent can be given (--max-message-mb 1): a 1 MiB chunk plus its
# framing would be refused by such an agent.
CHUNK_BYTES = 512 * 1024
# gRPC's refusal when a server already runs as many calls as it allows (an agent: --max-queue + 16). The call
# never reached the agent's code, so it is safe to send again once others have ended.
LOAD_SHED = "Concurrent RPC limit exceeded!"
RETRY_PAUSES_S = (0.1, 0.2, 0.4, 0.8, 1.6)


@dataclass(frozen=True)
class Credentials:
    """How to reach an agent that requires a token, TLS, or both (all optional)."""
    token: str | None = None
    tls_ca: bytes | None = None       # trust this CA (PEM) for the agent's certificate
    tls_cert: bytes | None = None     # client certificate for mutual TLS
    tls_key: bytes | None = None
    server_name: str | None = None    # expected name in the agent's certificate, if not its address

    @classmethod
    def from_files(cls, token_file=None, tls_ca=None, tls_cert=None, tls_key=None, server_name=None) -> "Credentials":
        """ValueError names a file that cannot be read, or TLS files gRPC could not use (it would only log a
        handshake failure and report the agent UNAVAILABLE)."""
        token = read_token(token_file) if token_file else None
        files = (_read_file(tls_ca, "TLS CA file"), _read_file(tls_cert, "TLS certificate"),
                 _read_file(tls_key, "TLS key"))  # each named if it cannot be read, before ssl (which does not)
        _check_tls_files(tls_ca, tls_cert, tls_key)
        return cls(token, *files, server_name)

    @property
    def secure(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


def _read_file(path, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _check_tls_files(tls_ca, tls_cert, tls_key) -> None:
    problem = tls_file_problem(tls_cert, tls_key, tls_ca)
    if problem is None:
        return
    which, reason = problem
    files, wanted = {"pair": (f"TLS certificate {tls_cert} and key {tls_key}",
                              "a PEM certificate and the unencrypted key it was issued for"),
                     "ca": (f"TLS CA file {tls_ca}", "a PEM CA certificate")}[which]
    raise ValueError(f"{files}: not usable for TLS: {reason} ({wanted})")


def tls_file_problem(cert=None, key=None, ca=None) -> tuple[str, str] | None:
    """The first of the TLS files that ssl cannot load, as ("pair" or "ca", ssl's reason), or None: a key that
    does not match its certificate, an encrypted key (an empty password fails instead of prompting; gRPC cannot
    use one), a file that is not PEM. The agent and the host check their files alike with it."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loads = []
    if cert and key:
        loads.append(("pair", lambda: context.load_cert_chain(cert, key, password=b"")))
    if ca:
        loads.append(("ca", lambda: context.load_verify_locations(cafile=str(ca))))
    for which, load in loads:
        try:
            load()
        except ssl.SSLError as exc:
            return which, str(exc.reason or exc)
    return None


def read_token(path) -> str:
    """The bearer token of a file: one line of visible ASCII, which is what a gRPC header may carry (anything
    else failed later, inside gRPC, as 'Invalid metadata' with no word of the file; an empty file sent none)."""
    raw = _read_file(path, "token file").strip()
    if not raw:
        raise ValueError(f"token file {path} is empty")
    if not all(0x21 <= b <= 0x7E for b in raw):
        raise ValueError(f"token file {path} holds characters a token cannot carry (only visible ASCII, one line)")
    return raw.decode("ascii")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: How long a simple call (Describe, HasArtifact, a health check) waits, connecting included.
CALL_TIMEOUT_S = 30.0


class AgentClient:
    def __init__(self, address: str, credentials: Credentials = Credentials(), timeout_s: float = CALL_TIMEOUT_S,
                 max_message_bytes: int = 8 * 1024 * 1024):
        self.address = address
        self.timeout_s = timeout_s
        self.secure = credentials.secure
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if credentials.server_name:
            options.append(("grpc.ssl_target_name_override", credentials.server_name))
        if credentials.secure:
            tls = grpc.ssl_channel_credentials(credentials.tls_ca, credentials.tls_key, credentials.tls_cert)
            self.channel = grpc.secure_channel(address, tls, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self._metadata = (("authorization", f"Bearer {credentials.token}"),) if credentials.token else ()
        self.stub = pb_grpc.ProfilerAgentStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def hint(self, exc: grpc.RpcError) -> str:
        """What a failed connection likely means where gRPC's own words do not say: TLS on one side only."""
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        if self.secure and "WRONG_VERSION_NUMBER" in details:
            return "the agent answered in plaintext: it serves no TLS; connect without a CA certificate"
        connecting = "failed to connect to all addresses" in details  # not an agent gone mid-call
        if not self.secure and connecting and "Socket closed" in details and exc.code() == grpc.StatusCode.UNAVAILABLE:
            return "if the agent serves TLS, connect with its CA certificate: --tls-ca, or tls_ca in an inventory"
        return ""

    # ----- simple calls --------------------------------------------------------------------------
    def describe(self) -> pb.DeviceDescription:
        return _retrying(lambda: self.stub.Describe(pb.DescribeRequest(), timeout=self.timeout_s,
                                                    metadata=self._metadata))

    def environment(self) -> pb.EnvironmentSnapshot:
        return _retrying(lambda: self.stub.Environment(pb.EnvironmentRequest(), timeout=self.timeout_s,
                                                       metadata=self._metadata))

    def has_artifact(self, sha256: str) -> pb.HasArtifactResponse:
        return _retrying(lambda: self.stub.HasArtifact(pb.HasArtifactRequest(sha256=sha256), timeout=self.timeout_s,
                                                       metadata=self._metadata))

    def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = _retrying(lambda: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ----- artifacts -----------------------------------------------------------------------------
    def put_artifact(self, data: bytes, artifact_format: int = pb.ARTIFACT_FORMAT_UNSPECIFIED,
                     name: str = "") -> str:
        """Sends the artifact unless the agent has it, resuming an interrupted upload; returns its sha256.

        ABORTED (another upload of the same artifact is still in flight, e.g. one this host just
        abandoned) is retried with a growing pause: the agent releases it within moments.
        """
        return _retrying(lambda: self._put_once(data, artifact_format, name), also=frozenset({grpc.StatusCode.ABORTED}),
                         busy=True)

    def _put_once(self, data: bytes, artifact_format: int, name: str) -> str:
        sha = sha256_of(data)
        state = self.has_artifact(sha)
        if state.present:
            return sha
        offset = state.resume_offset_bytes if state.resume_offset_bytes <= len(data) else 0
        header = pb.ArtifactHeader(sha256=sha, size_bytes=len(data), name=name, offset_bytes=offset,
                                   format=artifact_format or sniff_format(data))

        def chunks():
            yield pb.ArtifactChunk(header=header)
            for start in range(offset, len(data), CHUNK_BYTES):
                yield pb.ArtifactChunk(data=data[start:start + CHUNK_BYTES])

        timeout = self.timeout_s + len(data) / (1024 * 1024)  # allow about 1 MiB/s on a slow link
        self.stub.PutArtifact(chunks(), timeout=timeout, metadata=self._metadata)
        return sha

    def put_file(self, path: str | Path) -> str:
        return self.put_artifact(Path(path).read_bytes(), name=Path(path).name)

    # ----- measurement ---------------------------------------------------------------------------
    def profile(self, sha256: str, runtime: str = "", threads: int = 1, stopping: pb.StoppingRule | None = None,
                inputs: list[pb.TensorSpec] = (), seed: int = 0, timeout_s: float = 0.0,
                on_progress: Callable[[pb.ProfileProgress], None] | None = None,
                wait_s: float | None = None, stall_s: float | None = None) -> pb.ProfileResult:
        """Measures a cached artifact. `wait_s` bounds the whole call, queueing included; `stall_s` bounds each
        stretch without progress instead: in the agent's queue, until it moves (other hosts' measurements ahead
        end); once the device is this call's, the whole measurement. A call behind a long queue then waits for
        its turn while a frozen agent is still found, and the agent's own deadline on the model (timeout_s)
        comes first, with its cause, if the model itself hangs."""
        request = pb.ProfileRequest(artifact_sha256=sha256, runtime=runtime, threads=threads, inputs=inputs,
                                    stopping=stopping or pb.StoppingRule(), seed=seed, timeout_s=timeout_s)
        return _retrying(lambda: self._profile_once(request, on_progress, wait_s, stall_s))

    def _profile_once(self, request: pb.ProfileRequest, on_progress, wait_s: float | None,
                      stall_s: float | None) -> pb.ProfileResult:
        events = self.stub.Profile(request, timeout=wait_s, metadata=self._metadata)
        watchdog = _Watchdog(events.cancel, stall_s)
        try:
            for event in events:
                if event.HasField("result"):
                    return event.result
                if event.progress.phase in (pb.ProfileProgress.PHASE_QUEUED, pb.ProfileProgress.PHASE_LOADING):
                    watchdog.restart()  # the queue moved, or the device became this call's
                if on_progress is not None:
                    on_progress(event.progress)
        except grpc.RpcError:
            if watchdog.fired:
                raise Stalled(f"no progress for {stall_s:g} s: the agent's queue did not move, or the measurement "
                              "did not end; the call was cancelled") from None
            raise
        finally:
            watchdog.stop()
            events.cancel()
        raise IncompleteStream("the agent ended the profile stream without a result")


class _Watchdog:
    """Calls `cancel` once `seconds` pass without a restart(); does nothing when seconds is None."""

    def __init__(self, cancel: Callable[[], object], seconds: float | None):
        self.cancel, self.seconds, self.fired = cancel, seconds, False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        if self.seconds is None:
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self.cancel()

    def stop(self) -> None:
        """Cancels the timer and waits for its thread: the timer refers back to this watchdog, which holds the
        call, so a thread still ending kept the call alive past its use, and at exit the interpreter collected
        it while stopping gRPC's threads, one of which could hold the call's lock: `fleetnas profile` hung so."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()


class IncompleteStream(grpc.RpcError):
    """A Profile stream that ended without a result or a status: an agent's fault, coded as such."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return str(self)


class Stalled(IncompleteStream):
    """A Profile call cancelled by its `stall_s` watchdog: as a deadline the call missed."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


def _retrying(call: Callable, also: frozenset = frozenset(), busy: bool = False):
    """call(), sent again after a growing pause while the agent sheds load (or fails with a code in `also`).
    `busy`: also while the agent says it is busy (DEVICE_BUSY), as it does when it takes all the uploads it takes at
    once; a measurement refused so (its queue is full) is the caller's to place elsewhere instead."""
    for pause in (*RETRY_PAUSES_S, None):
        try:
            return call()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            shed = code == grpc.StatusCode.RESOURCE_EXHAUSTED and (
                exc.details() == LOAD_SHED or (busy and failure_cause(exc) == "DEVICE_BUSY"))
            if pause is None or not (shed or code in also):
                raise
            time.sleep(pause)


def failure_cause(exc: BaseException) -> str:
    """The `FailureCause` an agent gave a failed call, without its prefix ("MODEL_OUT_OF_MEMORY", say), or
    "UNSPECIFIED" where it gave none (an older agent, a failure before the agent's code ran) or one this
    client does not know (a newer agent)."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == FAILURE_CAUSE_KEY and value in pb.FailureCause.keys():
            return value.removeprefix("FAILURE_CAUSE_")
    return "UNSPECIFIED"


def result_to_dict(result: pb.ProfileResult) -> dict:
    """The JSON shape the CLI prints and the store keeps: latency_ms, memory, env, runtime, device.

    What the device could not tell is None (JSON null), never 0: a temperature without a sensor, a runtime's
    arena size where it gives none, and every memory figure but the model's size where memory could not be
    measured. A predictor or a search must not learn a 0 that was never measured."""
    latency = message_dict(result.latency)
    latency_ms = {key.removesuffix("_ms"): value for key, value in latency.items()}
    memory = message_dict(result.memory)
    if not result.memory.measured:
        memory.update({key: None for key in ("peak_bytes", "baseline_rss_bytes", "peak_rss_bytes")})
    return {
        "artifact_sha256": result.artifact_sha256,
        "latency_ms": latency_ms,
        "memory": memory,
        "env": {"before": message_dict(result.env_before), "after": message_dict(result.env_after),
                "throttled": result.throttled},
        "runtime": {"name": result.runtime.name, "version": result.runtime.version},
        "device": {"id": result.device.device_id, "label": result.device.label},
        "threads": result.threads,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in result.inputs],
        "load_ms": result.load_ms,
        "started_unix_s": result.started_unix_s,
        "finished_unix_s": result.finished_unix_s,
    }


#: Field types that JSON (and so MessageToDict) writes as strings.
WIDE_INTEGERS = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                 FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def message_dict(message) -> dict:
    """Every field by its proto name, 64-bit integers as numbers (not JSON's strings), and an `optional`
    field the sender left unset (unknown) as None."""
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    _plain(message, as_dict)
    return as_dict


def _plain(message, as_dict: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.type == field.TYPE_MESSAGE:
            inner = getattr(message, field.name)
            for sub, sub_dict in zip(inner, as_dict.get(field.name, [])) if field.is_repeated else (
                    [(inner, as_dict[field.name])] if field.name in as_dict else []):
                _plain(sub, sub_dict)
        elif field.name not in as_dict:
            as_dict[field.name] = None  # only a field with presence is ever left out
        elif field.type in WIDE_INTEGERS and not field.is_repeated:
            as_dict[field.name] = int(as_dict[field.name])
