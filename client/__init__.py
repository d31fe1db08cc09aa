"""The kerasrpc client: call the service from Python with numpy arrays."""

from kerasrpc.client.client import Client
from kerasrpc.client.errors import FieldViolation, KerasRpcError
from kerasrpc.client.tensors import to_array, to_tensor

__all__ = ["Client", "FieldViolation", "KerasRpcError", "to_array", "to_tensor"]
