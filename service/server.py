"""The server's lifecycle: build it, start it, stop it gracefully."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from kerasrpc.client import codec
from kerasrpc.service.compat import add_compat_services
from kerasrpc.service.device import Device, configure_device
from kerasrpc.service.inference import InferenceEngine
from kerasrpc.service.interceptors import (
    ServiceInterceptor,
    StreamSlots,
    stream_limit,
)
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.metrics_http import MetricsEndpoint, start_metrics_endpoint
from kerasrpc.service.registration import add_servicer
from kerasrpc.service.registry import ModelRegistry
from kerasrpc.service.servicers.inference import InferenceServicer
from kerasrpc.service.servicers.models import ModelServicer
from kerasrpc.service.servicers.training import TrainingServicer
from kerasrpc.service.settings import Settings
from kerasrpc.service.training import JobManager
from kerasrpc.v1 import (
    inference_service_pb2,
    model_service_pb2,
    training_service_pb2,
)
from prometheus_client import CollectorRegistry

logger = logging.getLogger("kerasrpc.service")


@dataclass
class Application:
    """The server's parts, shared by its servicers."""

    settings: Settings
    metrics: ServiceMetrics
    device: Device
    registry: ModelRegistry
    jobs: JobManager
    inference: InferenceEngine

    def close(self, timeout: float, drained: threading.Event) -> None:
        """Checkpoint running jobs; once calls have drained, stop serving."""
        self.jobs.close(timeout)
        drained.wait(timeout + 1.0)
        self.inference.close()
        self.registry.close()


@dataclass
class RunningServer:
    """A started server, the port it is bound to, and its parts."""

    server: grpc.Server
    port: int
    app: Application
    health: health.HealthServicer
    metrics_endpoint: MetricsEndpoint | None = None

    @property
    def address(self) -> str:
        """Return the host:port the server listens on."""
        host = self.app.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace`, then close."""
        grace = self.app.settings.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        drained = self.server.stop(grace)
        self.app.close(grace, drained)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        logger.info("server stopped")


def create_application(
    settings: Settings, registry: CollectorRegistry | None = None
) -> Application:
    """Build the server's parts on the given (or a fresh) metrics registry."""
    metrics = ServiceMetrics(
        registry or CollectorRegistry(), settings.job_series_retention_seconds
    )
    device = configure_device(
        settings.device, settings.intra_op_threads, settings.inter_op_threads
    )
    metrics.set_device(device.name, device.description)
    models = ModelRegistry(
        settings.state_dir / "models",
        cache_bytes=settings.model_cache_bytes,
        metrics=metrics,
    )
    jobs = JobManager(settings, metrics, models, device)
    inference = InferenceEngine(settings, metrics, models)
    return Application(settings, metrics, device, models, jobs, inference)


def create_server(
    settings: Settings, registry: CollectorRegistry | None = None
) -> RunningServer:
    """Build and start the server; return it with the port it is bound to.

    Raises:
        OSError: the listen address cannot be bound.
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = create_application(settings, registry)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="kerasrpc-rpc"
        ),
        interceptors=[
            ServiceInterceptor(app.metrics, StreamSlots(stream_limit(settings.workers)))
        ],
        options=_channel_options(settings),
        maximum_concurrent_rpcs=None,
    )
    health_servicer = _add_services(server, app)
    try:
        port = _bind(server, settings.listen)
        endpoint = _start_metrics(settings, app)
    except (OSError, ValueError):
        app.close(0.0, threading.Event())
        raise
    # Jobs on disk are loaded before the first call can submit another.
    app.jobs.start()
    server.start()
    running = RunningServer(server, port, app, health_servicer, endpoint)
    logger.info(
        "listening on %s, computing on %s (%s)",
        running.address,
        app.device.name,
        app.device.description,
    )
    return running


def _start_metrics(settings: Settings, app: Application) -> MetricsEndpoint | None:
    if not settings.metrics_address:
        return None
    return start_metrics_endpoint(settings.metrics_address, app.metrics.registry)


def _bind(server: grpc.Server, address: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or invalid")
    return port


def _channel_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def _add_services(server: grpc.Server, app: Application) -> health.HealthServicer:
    add_servicer(
        server,
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
        ModelServicer(app),
    )
    add_servicer(
        server,
        training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"],
        TrainingServicer(app),
    )
    add_servicer(
        server,
        inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
        InferenceServicer(app),
        {
            "Predict": codec.decode_predict_request,
            "PredictStream": codec.decode_predict_stream_request,
        },
    )
    names = [
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
        training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
        inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    ]
    names += add_compat_services(server, app)

    # grpcio's own servicers go through add_servicer too, so that bytes that
    # are no request get INVALID_ARGUMENT from them as well.
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    add_servicer(
        server, health_pb2.DESCRIPTOR.services_by_name["Health"], health_servicer
    )
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    add_servicer(
        server,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        reflection.ReflectionServicer(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        ),
    )
    return health_servicer


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM or SIGINT, then stop gracefully; return 0."""
    running = create_server(settings)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    running.stop()
    return 0
