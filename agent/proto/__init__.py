"""Generated code for the wire contract fleetnas.agent.v1 (see protos/generate.py)."""
from . import agent_pb2, agent_pb2_grpc

__all__ = ["agent_pb2", "agent_pb2_grpc"]
