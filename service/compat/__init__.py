"""The inference protocols other clients speak: Open Inference and TF Serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application


def add_compat_services(server: grpc.Server, app: Application) -> list[str]:
    """Add the compatibility servicers to `server`; return their full names."""
    return []
