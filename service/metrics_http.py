"""The HTTP endpoint Prometheus scrapes, serving one registry on host:port.

The endpoint runs on prometheus_client's own threaded HTTP server, so a scrape
never waits on training or on Predict calls: it only reads metric values.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from kerasrpc.service.settings import SettingsError
from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger("kerasrpc.service.metrics")


@dataclass(frozen=True)
class MetricsEndpoint:
    """A running metrics endpoint: where it listens, and how to stop it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def address(self) -> str:
        """Return the bound address as host:port (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """Return the URL Prometheus scrapes."""
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        logger.info("metrics endpoint %s stopped", self.address)


def parse_address(address: str) -> tuple[str, int]:
    """Split host:port (or [v6-host]:port) into its host and port.

    Raises:
        SettingsError: The address is not host:port with a port in 0..65535.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise SettingsError(
            f"metrics_address expected host:port with a port in 0..65535, "
            f"received {address!r}"
        )
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def start_metrics_endpoint(
    address: str, registry: CollectorRegistry
) -> MetricsEndpoint:
    """Serve the registry at http://address/metrics; port 0 picks a free port.

    Raises:
        SettingsError: The address is not host:port.
        OSError: The address cannot be listened on.
    """
    host, port = parse_address(address)

    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise OSError(
            error.errno,
            f"metrics_address {address!r}: cannot listen there: {error.strerror}",
        ) from error

    bound_host, bound_port = server.server_address[:2]
    endpoint = MetricsEndpoint(str(bound_host), int(bound_port), server, thread)
    logger.info("serving Prometheus metrics at %s", endpoint.url)
    return endpoint
