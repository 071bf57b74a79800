"""FleetNAS device agent: measures models on the device it runs on and serves the results over gRPC.

Importing this package imports nothing heavy: runtimes (LiteRT, ONNX Runtime, PyTorch) are imported
only inside the child process that measures with them.
"""
__version__ = "0.1.0"
