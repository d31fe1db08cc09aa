"""The errors the client raises, with the server's field violations."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """A request field the server rejected, and why."""

    field: str
    description: str


class KerasRpcError(Exception):
    """A call the server refused or failed: its status code and message."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> KerasRpcError:
        """Build the error from a failed call, reading google.rpc details."""
        call: grpc.Call = error  # type: ignore[assignment]
        violations: list[FieldViolation] = []
        status = rpc_status.from_call(call)
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [
                        FieldViolation(v.field, v.description)
                        for v in bad.field_violations
                    ]
        return cls(call.code(), call.details() or "", tuple(violations))
