"""The model registry: named models, numbered versions, on local disk.

Versions are written atomically under one directory, loaded lazily and kept
in a least-recently-used cache bounded by bytes of weights.
"""

from kerasrpc.service.registry.export import ExportedFile, export_version
from kerasrpc.service.registry.names import check_model_name, check_version
from kerasrpc.service.registry.registry import LoadedVersion, ModelRegistry

__all__ = [
    "ExportedFile",
    "LoadedVersion",
    "ModelRegistry",
    "check_model_name",
    "check_version",
    "export_version",
]
