"""Where FleetNAS keeps what it can recompute: one cache root, FLEETNAS_CACHE_DIR or ~/.cache/fleetnas.

Below it: `artifacts/` (exported models, see fleetnas.export) and `analytic/` (MACs, parameters and
activation bytes per config, see fleetnas.supernets.analytic). Deleting the folder loses nothing but time.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FLEETNAS_CACHE_DIR"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fleetnas"
