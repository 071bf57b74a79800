"""Super-networks and their search spaces (see base.py for how they are registered and found)."""
from .base import ENTRY_POINT_GROUP, SuperNetwork, get_supernet, list_supernets
from .space import Config, InvalidConfig, SearchSpace, Variable

__all__ = ["ENTRY_POINT_GROUP", "Config", "InvalidConfig", "SearchSpace", "SuperNetwork", "Variable",
           "get_supernet", "list_supernets"]
