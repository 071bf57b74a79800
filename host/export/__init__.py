"""Config -> artifact: ONNX always, TFLite when the `tflite-export` extra is installed, a spec for torch agents.

    from fleetnas.export import export_artifact
    artifact = export_artifact("ofa_mbv3", config, fmt="onnx")   # cached: a second call costs a file read
    client.put_artifact(artifact.read_bytes())

See artifact.py for the cache and what its key covers.
"""
from .artifact import FORMATS, Artifact, ExportError, artifact_cache_dir, export_artifact

__all__ = ["FORMATS", "Artifact", "ExportError", "artifact_cache_dir", "export_artifact"]
