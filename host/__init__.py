"""FleetNAS host: super-networks, the device farm, the measurement store, predictors and search.

Submodules are imported on demand; `import fleetnas` itself stays cheap.
"""
__version__ = "0.1.0"
