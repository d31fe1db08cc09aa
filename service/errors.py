"""The service's error hierarchy and its one mapping to gRPC status codes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what is wrong with it."""

    field: str
    description: str


class ServiceError(Exception):
    """An error the caller can act on. Its message is shown to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed; `violations` name the fields at fault."""

    def __init__(self, message: str, violations: Iterable[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @classmethod
    def field(cls, path: str, description: str) -> InvalidArgument:
        """Build the error for a single bad field."""
        return cls(f"{path}: {description}", [FieldViolation(path, description)])

    @classmethod
    def fields(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """Build the error for several bad fields."""
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        return cls(f"{first.field}: {first.description}{more}", violations)


class NotFound(ServiceError):
    """A named model, version, job or dataset does not exist."""


class AlreadyExists(ServiceError):
    """The thing to create exists already."""


class FailedPrecondition(ServiceError):
    """The request is valid but the system is not in a state to run it."""


class ResourceExhausted(ServiceError):
    """A limit is reached: a queue, a size or a count."""


class Unavailable(ServiceError):
    """The service cannot answer now; the caller may retry."""


class Cancelled(ServiceError):
    """The operation was cancelled."""


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work was done."""


class Internal(ServiceError):
    """An invariant broke inside the service."""


STATUS_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Cancelled: grpc.StatusCode.CANCELLED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Internal: grpc.StatusCode.INTERNAL,
}


def status_code(error: ServiceError) -> grpc.StatusCode:
    """Return the gRPC status code for a service error."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_rpc_status(error: ServiceError) -> status_pb2.Status:
    """Convert a service error to a google.rpc.Status with its details."""
    code = status_code(error)
    status = status_pb2.Status(code=_rpc_code(code), message=error.message)
    if isinstance(error, InvalidArgument) and error.violations:
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(details)
        status.details.append(packed)
    return status


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = getattr(code_pb2, code.name)
    return value
