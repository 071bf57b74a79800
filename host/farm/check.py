"""`fleetnas devices check`: is each agent of the inventory fit to measure, and how fast is it today?"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import grpc

from .inventory import AgentEntry, Inventory, InventoryError
from .jobs import FORMAT_RUNTIME, RUNTIME_FORMAT
from .reference import reference_model

# Short: a check must answer in seconds, not measure to 1 %.
REFERENCE_STOPPING = {"warmup_min_runs": 3, "warmup_min_s": 0.05, "min_runs": 10, "min_s": 0.2, "max_s": 1.0,
                      "target_rel_ci": 0.05}


@dataclass
class AgentCheck:
    name: str
    kind: str
    address: str
    healthy: bool = False
    status: str = ""                 # SERVING, or a short reason: UNAVAILABLE, UNAUTHENTICATED, CREDENTIALS, ...
    detail: str = ""                 # the long form of a problem
    device_id: str = ""
    label: str = ""
    runtimes: list = field(default_factory=list)   # "name version" of each available runtime
    cpu_temp_max_c: float | None = None
    throttled: bool | None = None
    throttle_reason: str = ""
    load_1m: float | None = None
    reference_runtime: str = ""
    reference_latency_ms: float | None = None   # median
    reference_note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_agent(entry: AgentEntry, base_dir, timeout_s: float = 10.0, reference: bool = True,
                store=None) -> AgentCheck:
    from fleetnas_agent.client import AgentClient, message_dict

    result = AgentCheck(entry.name, entry.kind, entry.address)
    try:
        credentials = entry.credentials(base_dir)
    except InventoryError as exc:
        result.status, result.detail = "CREDENTIALS", str(exc)
        return result
    with AgentClient(entry.address, credentials, timeout_s) as client:
        try:
            result.status = client.health()
            description = client.describe()
            env = client.environment()
        except grpc.RpcError as exc:
            result.status = exc.code().name if exc.code() else "UNKNOWN"
            hint = client.hint(exc)
            result.detail = (exc.details() or "") + (f" ({hint})" if hint else "")
            return result
        result.healthy = result.status == "SERVING"
        result.device_id, result.label = description.device_id, description.label
        result.runtimes = [f"{r.name} {r.version}" for r in description.runtimes if r.available]
        result.cpu_temp_max_c = env.cpu_temp_max_c if env.HasField("cpu_temp_max_c") else None
        result.throttled, result.throttle_reason, result.load_1m = env.throttled, env.throttle_reason, env.load_1m
        if store is not None:
            store.upsert_device(description.device_id, description.label or entry.name, entry.kind,
                                message_dict(description))
        if reference and result.healthy:
            _reference_latency(client, entry, result)
    return result


def _reference_latency(client, entry: AgentEntry, result: AgentCheck) -> None:
    from fleetnas_agent.proto import agent_pb2 as pb

    fmt = RUNTIME_FORMAT[entry.runtime] if entry.runtime else "onnx"
    model = reference_model(fmt)
    result.reference_runtime = entry.runtime or FORMAT_RUNTIME[fmt]
    if model is None:
        result.reference_note = f"no reference model for {result.reference_runtime} on this host"
        return
    try:
        sha = client.put_artifact(model)
        measured = client.profile(sha, runtime=result.reference_runtime, threads=entry.threads,
                                  stopping=pb.StoppingRule(**REFERENCE_STOPPING), wait_s=120.0)
    except grpc.RpcError as exc:
        result.reference_note = f"{exc.code().name if exc.code() else 'UNKNOWN'}: {exc.details()}"
        return
    result.reference_latency_ms = measured.latency.median_ms


def check_inventory(inventory: Inventory, timeout_s: float = 10.0, reference: bool = True,
                    store=None) -> list[AgentCheck]:
    """Checks every agent concurrently (each agent measures its own reference model)."""
    agents = inventory.agents
    if not agents:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(agents))) as pool:
        return list(pool.map(lambda e: check_agent(e, inventory.base_dir, timeout_s, reference, store), agents))
