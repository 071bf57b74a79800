"""Generated code for the wire contract fleetnas.agent.v1 (see protos/generate.py)."""
from . import agent_pb2, agent_pb2_grpc

#: The trailing-metadata key of a failed call's `FailureCause` (agent.proto).
FAILURE_CAUSE_KEY = "fleetnas-failure-cause"

__all__ = ["agent_pb2", "agent_pb2_grpc", "FAILURE_CAUSE_KEY"]
