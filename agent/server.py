"""The gRPC service `fleetnas.agent.v1.ProfilerAgent`, with standard health checking and reflection."""
from __future__ import annotations

import bisect
import hmac
import ipaddress
import itertools
import logging
import math
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import device
from .cache import SNIFF_BYTES, ArtifactCache, CacheError, FolderLock, sniff_format
from .measure import MAX_SECONDS, MAX_THREADS, StoppingRule
from .profiler import DeviceLock, DeviceQueue, Outbox, ProfileError, run_child
from .proto import FAILURE_CAUSE_KEY
from .proto import agent_pb2 as pb
from .proto import agent_pb2_grpc as pb_grpc
from .runtimes import RUNTIMES, describe_runtimes, resolve

log = logging.getLogger("fleetnas_agent")
SERVICE = pb.DESCRIPTOR.services_by_name["ProfilerAgent"].full_name
# Health checks stay open to unauthenticated callers (that is the standard's purpose: probes and load
# balancers); everything else, reflection included, needs the token.
OPEN_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
MIB = 1024 * 1024
#: A cancelled upload's stream ends a moment before gRPC reports the cancel; a client that ended its stream
#: on purpose is still waiting for the answer, so its call cannot end before the agent answers.
CANCEL_GRACE_S = 0.5
#: Uploads taken at once. The server's other call slots stay free for measurements, Describe and health checks,
#: so hosts that upload slowly (a poor link, or one stuck sending a byte now and then) cannot lock others out.
MAX_UPLOADS = 8
#: Beyond its time limits, how long a measurement may hold this agent's queue (stopping its child, stats):
#: its waiters are told their place while it is within that (DeviceQueue.wait_turn).
HOLD_MARGIN_S = 30.0


#: A host that vanishes (power cut, cable pulled) sends no FIN: without pings the agent would notice only after
#: TCP gives up, hours later, and until then keep its calls, upload reservations and queue places. A ping
#: every minute, unanswered for 20 s, ends its connection and cancels its calls within a minute and a half.
#: Pings go on while a call waits without data (queued, or blocked by a client that does not read).
#: Hosts may ping too (keepalive on their channel), as often as every 10 s, even with no call open (without
#: permit_without_calls, a server allows that only every two hours), and are not sent away for it (GOAWAY
#: too_many_pings); this package's AgentClient sends none.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                     ("grpc.http2.max_pings_without_data", 0),
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                     ("grpc.http2.max_ping_strikes", 2)]


def time_limit_s(max_s: float) -> float:
    """How long a measurement whose rule caps its timed phase at `max_s` may hold the device: the warm-up may
    take as long again, and loading gets two minutes."""
    return 2 * max_s + 120


#: The longest timeout_s a request may ask for: the limit of the longest rule.
MAX_TIMEOUT_S = time_limit_s(MAX_SECONDS)


@dataclass
class AgentConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    label: str = ""
    cache_dir: Path = Path.home() / ".cache" / "fleetnas-agent"
    cache_max_bytes: int = 2048 * MIB
    max_artifact_bytes: int = 512 * MIB
    max_message_bytes: int = 8 * MIB
    max_queued: int = 8
    max_input_bytes: int = 256 * MIB  # generated model inputs; also never more than a quarter of free memory
    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_client_ca: bytes | None = None
    insecure: bool = False
    # Test aid: stretch every timed run by this fraction (simulates a device that got slower).
    test_slowdown: float = 0.0
    # An upload that sends nothing for this long is stopped (its bytes kept for a resume): a stalled host
    # would otherwise keep its artifact from every other host for as long as it lives.
    upload_idle_s: float = 60.0
    # A profile whose result is ready but not read for this long is cancelled, freeing its call slot.
    result_unread_s: float = 300.0
    # The file every agent on this device locks while it measures (`DeviceLock`); None: this agent measures
    # without it (the command line's default is profiler.DEFAULT_DEVICE_LOCK).
    device_lock: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProfilerAgent(pb_grpc.ProfilerAgentServicer):
    def __init__(self, config: AgentConfig, folder_lock: FolderLock | None = None):
        self.config = config
        self.cache = ArtifactCache(config.cache_dir, config.cache_max_bytes, config.max_artifact_bytes, folder_lock)
        self.queue = DeviceQueue(config.max_queued)
        self.device_lock = DeviceLock(config.device_lock)
        self.device_lock.check()
        self._upload_slots = threading.BoundedSemaphore(MAX_UPLOADS)
        self.device_id = device.device_id(config.cache_dir)
        device.environment()  # primes psutil's CPU-percent counter so the first real snapshot means something

    def _limits(self) -> pb.Limits:
        return pb.Limits(max_artifact_bytes=self.cache.max_artifact_bytes, cache_max_bytes=self.config.cache_max_bytes,
                         cache_used_bytes=self.cache.used_bytes(), max_queued_profiles=self.config.max_queued,
                         max_message_bytes=self.config.max_message_bytes)

    def Describe(self, request, context):
        return device.describe(self.config.label, self._limits(), describe_runtimes(), self.device_id)

    def Environment(self, request, context):
        return device.environment()

    def HasArtifact(self, request, context):
        try:
            return self.cache.has(request.sha256)
        except CacheError as exc:
            _abort(context, exc.code, str(exc))

    def PutArtifact(self, request_iterator, context):
        if not self._upload_slots.acquire(blocking=False):
            _abort(context, "RESOURCE_EXHAUSTED", f"{MAX_UPLOADS} uploads are in progress, the most this agent "
                                                  "takes at once; retry shortly", cause="DEVICE_BUSY")
        try:
            return self._put(request_iterator, context)
        finally:
            self._upload_slots.release()

    def _put(self, request_iterator, context):
        upload = None
        call_ended = threading.Event()
        if not context.add_callback(call_ended.set):
            call_ended.set()
        messages = _Messages(request_iterator, self.config.upload_idle_s)
        try:
            first = messages.next()
            if first is None or first.WhichOneof("payload") != "header":
                raise CacheError("INVALID_ARGUMENT", "the first message of an upload must be its header")
            header = first.header
            upload = self.cache.begin(header)
            if upload is None:  # answered at once: the rest of the stream is not read, so not sent in vain
                return pb.PutArtifactResponse(sha256=header.sha256, size_bytes=header.size_bytes, already_present=True)
            while (chunk := messages.next()) is not None:
                if chunk.WhichOneof("payload") != "data":
                    raise CacheError("INVALID_ARGUMENT", "only data chunks may follow the header")
                self.cache.write(upload, chunk.data)
            if upload.received < upload.size_bytes and call_ended.wait(CANCEL_GRACE_S):
                self.cache.abort(upload, keep_partial=True)  # cancelled, not truncated: keep it for a resume
                return pb.PutArtifactResponse()  # nobody is listening
            self.cache.commit(upload)
            log.info("stored artifact %s (%d bytes)", header.sha256[:12], header.size_bytes)
            return pb.PutArtifactResponse(sha256=header.sha256, size_bytes=header.size_bytes)
        except CacheError as exc:
            if upload is not None:
                self.cache.abort(upload, keep_partial=False)
            _abort(context, exc.code, str(exc))
        except UploadStalled as exc:
            kept = 0
            if upload is not None:
                kept = upload.received
                self.cache.abort(upload, keep_partial=True)  # the host may come back: it resumes from here
            log.warning("upload from %s stopped: %s", context.peer(), shortened(str(exc)))
            _abort(context, "DEADLINE_EXCEEDED", f"{exc}; the upload was stopped ({kept} bytes kept for a resume)")
        except BaseException:  # the client went away mid-upload: keep what arrived, so that it can resume
            if upload is not None:
                self.cache.abort(upload, keep_partial=True)
            raise
        finally:
            messages.close()

    def Profile(self, request, context):
        """Relays a measurement that runs in a thread of its own (see `_profile_job`).

        Sending an event blocks while the client does not read (HTTP/2 flow control); were the measurement run
        here, a client that stops reading would hold the device with no deadline enforced.
        """
        outbox = Outbox()
        context.add_callback(self.queue.wake)
        cancelled = lambda: outbox.closed.is_set() or not context.is_active()  # noqa: E731
        threading.Thread(target=self._profile_job, args=(request, context, outbox, cancelled), daemon=True,
                         name=f"profile-{request.artifact_sha256[:12]}").start()
        try:
            while True:
                final, event = outbox.take()
                if isinstance(event, (CacheError, ProfileError)):
                    _abort(context, event.code, str(event), getattr(event, "cause", None))
                yield event
                if final:
                    return
        finally:  # also when the client leaves mid-stream (GeneratorExit): the job stops at its next check
            outbox.closed.set()
            self.queue.wake()

    def _profile_job(self, request, context, outbox: Outbox, cancelled) -> None:
        """Measures and puts the outcome in `outbox`; the device lock is released here, whatever the client does."""
        try:
            outbox.finish(pb.ProfileEvent(result=self._profile(request, outbox, cancelled)))
        except (CacheError, ProfileError) as exc:
            log.warning("profile %s refused: %s: %s", request.artifact_sha256[:12], exc.code, shortened(str(exc)))
            outbox.finish(exc)
        except BaseException as exc:  # noqa: BLE001 - a bug of the agent's: answered, not left waiting for ever
            log.exception("profile %s failed", request.artifact_sha256[:12])
            outbox.finish(ProfileError("INTERNAL", f"the agent failed: {type(exc).__name__}: {exc}"))
        # A client that never reads its result would hold one of the server's few call slots for ever.
        if not outbox.closed.wait(self.config.result_unread_s):
            log.warning("profile %s: the client did not read its result within %g s; call ended",
                        request.artifact_sha256[:12], self.config.result_unread_s)
            context.cancel()

    def _profile(self, request, outbox: Outbox, cancelled) -> pb.ProfileResult:
        def post(event: pb.ProfileEvent) -> None:
            outbox.progress(event.progress.phase, event)

        with self.cache.pinned(request.artifact_sha256) as path:
            entry, child_request = self._child_request(request, path)
            # Held for at most the wait on another agent's lock and the measurement, each bounded by the time limit.
            for ahead in self.queue.wait_turn(cancelled, hold_s=2 * child_request["timeout_s"] + HOLD_MARGIN_S):
                post(_progress(pb.ProfileProgress.PHASE_QUEUED, queue_position=ahead))
            try:
                # Next in line here, the device may still be another agent's: it is said once, as next in line.
                # Waited for no longer than the model itself may run: the host's watchdog allows about that.
                with self.device_lock.held(cancelled, lambda: post(_progress(pb.ProfileProgress.PHASE_QUEUED,
                                                                             queue_position=0)),
                                           wait_s=child_request["timeout_s"]):
                    started = time.time()
                    result = self._measure(request, entry, child_request, cancelled, post)
                    # Stamped before the locks are released: the next measurement's start comes after it.
                    result.started_unix_s, result.finished_unix_s = started, time.time()
            finally:
                self.queue.release()
            return result

    def _child_request(self, request: pb.ProfileRequest, path: Path):
        with path.open("rb") as f:
            fmt = sniff_format(f.read(SNIFF_BYTES))
        try:
            entry = resolve(request.runtime, fmt)
        except ValueError as exc:
            raise ProfileError("INVALID_ARGUMENT", str(exc)) from exc
        if entry.installed() is None:
            providers = " or ".join(dist for _, dist in entry.packages)
            raise ProfileError("FAILED_PRECONDITION", f"runtime {entry.name!r} is not installed on this device "
                                                      f"(install {providers})", cause="RUNTIME_UNAVAILABLE")
        threads = request.threads or 1
        if threads > MAX_THREADS:
            raise ProfileError("INVALID_ARGUMENT", f"threads must be at most {MAX_THREADS}, got {threads}")
        stopping = {f.name: v for f, v in request.stopping.ListFields()}
        try:  # here, not only in the child: the deadline below depends on it, and a refusal costs no process
            rule = StoppingRule.from_message(stopping)
        except (TypeError, ValueError) as exc:
            raise ProfileError("INVALID_ARGUMENT", f"bad stopping rule: {exc}") from exc
        if not math.isfinite(request.timeout_s) or not 0 <= request.timeout_s <= MAX_TIMEOUT_S:
            raise ProfileError("INVALID_ARGUMENT", f"timeout_s must be from 0 (from the stopping rule) to "
                                                   f"{MAX_TIMEOUT_S:g} s, got {request.timeout_s}")
        if request.timeout_s and request.timeout_s < rule.warmup_min_s + rule.min_s:
            # Every such measurement would be killed, and its model blamed for a timeout it cannot help.
            raise ProfileError("INVALID_ARGUMENT", f"timeout_s {request.timeout_s:g} s is shorter than the stopping "
                                                   f"rule's own minimum: a warm-up of {rule.warmup_min_s:g} s and "
                                                   f"timed runs of {rule.min_s:g} s, loading aside")
        if request.extra_delay_ms:
            raise ProfileError("INVALID_ARGUMENT", "extra_delay_ms is a test aid this agent does not allow")
        child_request = {
            "artifact": str(path), "runtime": entry.name, "threads": threads, "seed": request.seed,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in request.inputs],
            "stopping": stopping, "slowdown": self.config.test_slowdown, "model_bytes": path.stat().st_size,
            # Inputs near free memory would only get the child killed by the OOM killer.
            "max_input_bytes": min(self.config.max_input_bytes, psutil.virtual_memory().available // 4),
            "timeout_s": request.timeout_s or time_limit_s(rule.max_s),
        }
        return entry, child_request

    def _measure(self, request, entry, child_request, cancelled, post) -> pb.ProfileResult:
        timeout_s = child_request["timeout_s"]
        before = device.environment()
        out = _drain(run_child(child_request, child_request["threads"], timeout_s, cancelled), post)
        after = device.environment()
        try:
            return self._result(request, entry, child_request, out, before, after)
        except (TypeError, ValueError, KeyError) as exc:
            # A runtime's values that a message cannot hold (an input named by a number): refused by name, not
            # left to escape from the stream as UNKNOWN.
            what = f"it has no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ProfileError("INTERNAL", f"the {entry.name} runtime reported a result the agent cannot send: "
                                           f"{what}") from None

    def _result(self, request, entry, child_request, out: dict, before, after) -> pb.ProfileResult:
        info = entry.info()
        if out["runtime_version"]:
            info.MergeFrom(_message(pb.RuntimeInfo, "runtime", {"version": out["runtime_version"]}))
        return _message(pb.ProfileResult, "result", dict(
            artifact_sha256=request.artifact_sha256, runtime=info,
            device=pb.DeviceRef(device_id=self.device_id, label=self.config.label),
            threads=child_request["threads"],
            inputs=[_message(pb.TensorSpec, "input spec", spec) for spec in out["inputs"]],
            latency=_message(pb.LatencyStats, "latency", out["latency"]),
            memory=_message(pb.MemoryStats, "memory", out["memory"]),
            env_before=before, env_after=after, throttled=before.throttled or after.throttled,
            load_ms=out["load_ms"]))


CHILD_PHASES = {"loading": pb.ProfileProgress.PHASE_LOADING, "warmup": pb.ProfileProgress.PHASE_WARMUP,
                "measuring": pb.ProfileProgress.PHASE_MEASURING}


def _drain(child_events, post):
    """Posts the child's progress dicts as ProfileEvents; returns the child's result."""
    while True:
        try:
            event = next(child_events)
        except StopIteration as done:
            return done.value
        post(_progress(CHILD_PHASES.get(event.pop("phase"), 0), **event))


def _message(kind, what: str, values: dict):
    """`kind(**values)`; a ValueError naming the field whose value `kind` cannot hold (protobuf's own TypeError
    says only "bad argument type for built-in operation")."""
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        fields = values.items() if isinstance(values, dict) else ()
        bad = [f"{key}={value!r:.80}" for key, value in fields if not _holds(kind, key, value)]
        raise ValueError(f"{what} {', '.join(bad) or repr(values)[:200]}: {exc}") from None


def _holds(kind, key: str, value) -> bool:
    try:
        kind(**{key: value})
        return True
    except (TypeError, ValueError):
        return False


class UploadStalled(Exception):
    """An upload's client sent nothing for longer than the agent waits."""


class _Messages:
    """A client stream read by a helper thread, so that the handler can stop waiting for a client that sends
    nothing: gRPC's blocking read has no timeout, and a stalled upload holds its artifact's reservation."""

    _END = object()

    def __init__(self, request_iterator, idle_s: float):
        self.idle_s = idle_s
        # One message ahead at most: the reader does not take chunks faster than they are stored, so HTTP/2 flow
        # control still paces the sender.
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        threading.Thread(target=self._read, args=(request_iterator,), daemon=True, name="upload-reader").start()

    def _read(self, request_iterator) -> None:
        try:
            for message in request_iterator:
                if self._closed.is_set():
                    return
                self._queue.put(message)
            item = self._END
        except BaseException as exc:  # noqa: BLE001 - the call was cancelled: re-raised by next()
            item = exc
        if not self._closed.is_set():
            self._queue.put(item)

    def next(self):
        """The next message; None at the end of the stream. Raises UploadStalled after idle_s without one."""
        try:
            item = self._queue.get(timeout=self.idle_s)
        except queue.Empty:
            raise UploadStalled(f"no data for {self.idle_s:g} s") from None
        if isinstance(item, BaseException):
            raise item
        return None if item is self._END else item

    def close(self) -> None:
        """Lets the reader end: it ends with the call, and a put it is blocked in (the handler is gone, no more
        gets) is freed by taking the one message waiting. Each put is preceded by a look at `_closed`, so at
        most one more happens after this, and the queue has room for it."""
        self._closed.set()
        try:
            self._queue.get_nowait()
        except queue.Empty:
            pass


def _progress(phase, **fields) -> pb.ProfileEvent:
    return pb.ProfileEvent(progress=pb.ProfileProgress(phase=phase, **fields))


def _abort(context, code: str, message: str, cause: str | None = None):
    if cause is not None:  # the wire contract's FailureCause, by its name
        name = "FAILURE_CAUSE_" + cause
        pb.FailureCause.Value(name)  # a name the contract lacks fails here, in tests, not on a host
        context.set_trailing_metadata(((FAILURE_CAUSE_KEY, name),))
    context.abort(getattr(grpc.StatusCode, code), shortened(message))


#: The most a status message may take on the wire, percent-encoded. It travels as a header: past 8 KiB the
#: client may, past 16 KiB it must, drop the call and report RESOURCE_EXHAUSTED ("metadata size exceeds limit")
#: in place of the agent's status, its failure cause and its reason.
STATUS_MESSAGE_BYTES = 4096


def shortened(message: str, limit: int = STATUS_MESSAGE_BYTES) -> str:
    """`message`, its middle left out where it would take more than `limit` bytes as a gRPC status message
    (a long value echoed back, a model's load error naming a 20,000-character operator): the start says what
    failed, the end often why."""
    cost = [1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "surrogatepass")) for ch in message]
    if sum(cost) <= limit:
        return message
    budget = limit - 64  # room for the marker
    head = bisect.bisect_right(list(itertools.accumulate(cost)), budget * 3 // 4)
    tail = bisect.bisect_right(list(itertools.accumulate(reversed(cost[head:]))), budget - sum(cost[:head]))
    left_out = len(message) - head - tail
    return f"{message[:head]} [… {left_out} characters left out …] {message[len(message) - tail:]}"


class TokenAuth(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except standard health checks."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        if details.method in OPEN_METHODS:
            return continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(details)
        return _denial(continuation(details), details.method)


def _denial(handler, method: str):
    """A handler of the same streaming shape that logs who called and answers UNAUTHENTICATED.

    Unknown methods are denied the same way, so that a caller without the token learns nothing.
    """
    def deny(request, context):
        # Logged here rather than in the interceptor: only the call's context knows who called.
        log.warning("refused %s from %s: missing or wrong bearer token", method, context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(deny)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    return grpc.unary_stream_rpc_method_handler(deny)


def check_security(config: AgentConfig) -> None:
    """Refuses to let anyone beyond loopback use the agent without proving who they are, unless told to.

    A caller proves it with the bearer token or a client certificate (mutual TLS). TLS alone only
    encrypts: it does not tell the farm's host from anyone else on the network.
    """
    if config.token is not None and not config.token.strip():
        raise ValueError("refusing an empty token: it would let anyone in (a token file must hold the token)")
    if is_loopback(config.host) or config.insecure or config.token is not None:
        return
    if config.tls_cert is None:
        raise ValueError(f"refusing to serve plaintext without a token on {config.host}: give --token-file, "
                         "--tls-cert/--tls-key with --tls-client-ca, or --insecure to accept the risk")
    if config.tls_client_ca is None:
        raise ValueError(f"refusing to serve TLS without client authentication on {config.host}: anyone could "
                         "use this device; add --tls-client-ca (mutual TLS) or --token-file, or --insecure to "
                         "accept the risk")


def build_server(config: AgentConfig, folder_lock: FolderLock | None = None) -> tuple[grpc.Server, int]:
    """A started server and the port it listens on (useful with port 0). `folder_lock`: the cache folder's, held
    (`FolderLock.hold`), kept by the cache where the folder is removed and made again."""
    check_security(config)
    # Call slots: the queued and the running measurement, MAX_UPLOADS uploads, and 7 for quick calls (Describe,
    # HasArtifact, health checks) that neither of those may take.
    workers = config.max_queued + 16
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes),
               # gRPC sets SO_REUSEPORT by default: a second agent on a busy port would start, and the kernel
               # would share the callers between the two (an upload to one, its profile to the other).
               ("grpc.so_reuseport", 0),
               *KEEPALIVE_OPTIONS]
    interceptors = [TokenAuth(config.token)] if config.token is not None else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent"),
                         interceptors=interceptors, options=options, maximum_concurrent_rpcs=workers)
    pb_grpc.add_ProfilerAgentServicer_to_server(ProfilerAgent(config, folder_lock), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    # gRPC binds "localhost" on both 127.0.0.1 and [::1] and goes on when one of them is taken: a second agent on
    # a busy port then started, serving [::1] alone, and callers of "localhost" reached the one, callers of
    # 127.0.0.1 the other. The name means the machine itself: its IPv4 loopback ("::1" asks for IPv6).
    host = "127.0.0.1" if config.host.rstrip(".").lower() == "localhost" else config.host
    address = f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"
    try:
        if config.tls_cert is not None:
            credentials = grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)],
                                                      root_certificates=config.tls_client_ca,
                                                      require_client_auth=config.tls_client_ca is not None)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # this gRPC raises where older ones returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the port is in use, or the address is not this machine's")
    server.start()
    log.info("agent %s listening on %s (%s%s); runtimes: %s", config.label or "(no label)",
             address.rsplit(":", 1)[0] + f":{port}",
             "TLS" if config.tls_cert else "plaintext", ", token" if config.token else "",
             ", ".join(r.name for r in describe_runtimes() if r.available) or "none")
    return server, port


__all__ = ["AgentConfig", "build_server", "ProfilerAgent", "RUNTIMES"]
