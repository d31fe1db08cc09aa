"""The inference engine: validate, batch and compute predictions."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy.typing as npt
import tensorflow as tf
from kerasrpc.client.tensors import TensorFormatError
from kerasrpc.service.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ServiceError,
    Unavailable,
    status_code,
)
from kerasrpc.service.inference.batcher import Batcher, BatchHooks, PendingRequest
from kerasrpc.service.inference.forward import Forward
from kerasrpc.service.inference.policy import BatchPolicies
from kerasrpc.service.inference.signature import check_inputs, select_outputs
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.op_errors import summarize_op_error
from kerasrpc.service.settings import Settings

if TYPE_CHECKING:
    from kerasrpc.service.registry import LoadedVersion, ModelRegistry

logger = logging.getLogger("kerasrpc.service.inference")

Array = npt.NDArray[Any]


@dataclass
class Prediction:
    """The outputs a model version computed for one request."""

    model_name: str
    version: int
    outputs: dict[str, Array]


class _Served:
    """A loaded version with its compiled forward pass and batcher."""

    def __init__(self, loaded: LoadedVersion, batcher: Batcher) -> None:
        self.loaded = loaded
        self.batcher = batcher


class InferenceEngine:
    """Compute predictions for stored model versions.

    Each version in use gets one compiled forward pass and one batcher that
    merges concurrent requests (see Batcher). Everything here is thread-safe.
    """

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, registry: ModelRegistry
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self._policies = BatchPolicies(settings)
        self._served: dict[tuple[str, int], _Served] = {}
        self._compile_locks: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False
        registry.add_unload_listener(self._unloaded)

    def predict(
        self,
        model_name: str,
        version: int,
        inputs: Mapping[str, Array],
        *,
        output_names: Sequence[str] = (),
        deadline: float | None = None,
        protocol: str = "kerasrpc",
        cancelled: Callable[[], bool] | None = None,
    ) -> Prediction:
        """Predict one batch with a version (0: the latest) of a model.

        Args:
            model_name: the model.
            version: the version number; 0 means the latest.
            inputs: arrays by input name, batch dimension first.
            output_names: the outputs to return; all when empty.
            deadline: a time.monotonic() value; once passed, the request is
                not computed.
            protocol: the API the request came through, for the metrics.
            cancelled: returns True once the caller gave up; such a request
                is not computed.

        Raises:
            NotFound: no such model or version.
            InvalidArgument: the inputs or output names do not fit the model.
            ResourceExhausted: the version's batching queue is full.
            DeadlineExceeded: the deadline passed before computing.
        """
        started = time.perf_counter()
        # Labels name a model and version only once they resolved, so bad
        # requests cannot grow the number of series.
        labels = _unresolved(protocol)
        code = "OK"
        try:
            _check_deadline(deadline)
            served = self._serve(model_name, version)
            labels.update(model=model_name, version=str(served.loaded.version))
            return self._predict(served, inputs, output_names, deadline, cancelled)
        except ServiceError as error:
            code = status_code(error).name
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            self._record(labels, code, started)

    @contextmanager
    def counting_refusals(self, protocol: str) -> Iterator[None]:
        """Count requests refused before predict(), such as undecodable ones.

        They are counted under an empty model and version, like requests
        for unknown models, so that bad requests cannot add series.
        """
        started = time.perf_counter()
        try:
            yield
        except ServiceError as error:
            self._record(_unresolved(protocol), status_code(error).name, started)
            raise
        except TensorFormatError:
            self._record(_unresolved(protocol), "INVALID_ARGUMENT", started)
            raise

    def warm(self, model_name: str, version: int = 0) -> int:
        """Load and compile a version (0: the latest) for serving; return its number.

        Raises:
            NotFound: no such model or version.
            FailedPrecondition: the version cannot be loaded.
        """
        return self._serve(model_name, version).loaded.version

    def close(self) -> None:
        """Stop the batching threads; requests still queued fail as unavailable."""
        with self._lock:
            self._closed = True
            served = list(self._served.values())
            self._served.clear()
        for entry in served:
            entry.batcher.close()

    def _predict(
        self,
        served: _Served,
        inputs: Mapping[str, Array],
        output_names: Sequence[str],
        deadline: float | None,
        cancelled: Callable[[], bool] | None,
    ) -> Prediction:
        loaded = served.loaded
        names = select_outputs(loaded.outputs, output_names)
        arrays, size = check_inputs(loaded.inputs, inputs)
        logger.debug(
            "predict %s v%d: batch of %d", loaded.model_name, loaded.version, size
        )
        request = PendingRequest(arrays, size, deadline, cancelled)
        outputs = _model_errors(served.batcher.run, request)
        return Prediction(
            loaded.model_name, loaded.version, {name: outputs[name] for name in names}
        )

    def _serve(self, model_name: str, version: int) -> _Served:
        """Return the served entry of a version, loading and compiling it if new."""
        loaded = self.registry.load(model_name, version)
        key = (loaded.model_name, loaded.version)
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            served = self._served.get(key)
            if served is not None and served.loaded is loaded:
                return served
        with self._compiling(key):
            with self._lock:
                current = self._served.get(key)
                if current is not None and current.loaded is loaded:
                    return current
            fresh = _Served(loaded, self._batcher(loaded))
            with self._lock:
                self._served[key] = fresh
        logger.info("serving %s version %d", loaded.model_name, loaded.version)
        return fresh

    def _compiling(self, key: tuple[str, int]) -> threading.Lock:
        """Return the lock that lets one request at a time compile a version."""
        with self._lock:
            return self._compile_locks.setdefault(key, threading.Lock())

    def _batcher(self, loaded: LoadedVersion) -> Batcher:
        try:
            forward = Forward(loaded.model, loaded.inputs, loaded.outputs)
        except (TypeError, ValueError, tf.errors.OpError) as error:
            logger.exception(
                "cannot compile %s version %d", loaded.model_name, loaded.version
            )
            raise Internal(
                f"model {loaded.model_name!r} version {loaded.version} cannot be "
                f"compiled for serving: {error}"
            ) from None
        name = loaded.model_name
        return Batcher(
            forward,
            self._policies.for_model(name),
            BatchHooks(
                batch_size=self.metrics.predict_batch_size.labels(name).observe,
                queue_delay=self.metrics.predict_queue_delay.labels(name).observe,
                queue_depth=self.metrics.predict_queue_depth.labels(name).inc,
            ),
            name=f"{name}-v{loaded.version}",
            on_idle=self._forget,
        )

    def _unloaded(self, model_name: str, version: int) -> None:
        """Let go of a version the registry evicted or deleted.

        Requests already running or queued on it finish; the next request
        loads it again (or finds it deleted).
        """
        with self._lock:
            served = self._served.pop((model_name, version), None)
            self._compile_locks.pop((model_name, version), None)
        if served is not None:
            served.batcher.retire()

    def _forget(self, batcher: Batcher) -> None:
        """Drop an idle batcher, releasing its model for the registry's cache."""
        with self._lock:
            for key, served in list(self._served.items()):
                if served.batcher is batcher:
                    del self._served[key]
                    self._compile_locks.pop(key, None)

    def _record(self, labels: Mapping[str, str], code: str, started: float) -> None:
        self.metrics.predict_requests.labels(
            labels["model"], labels["version"], labels["protocol"], code
        ).inc()
        self.metrics.predict_latency.labels(
            labels["model"], labels["protocol"]
        ).observe(time.perf_counter() - started)


def _unresolved(protocol: str) -> dict[str, str]:
    """Return the labels of a request before its model and version resolved."""
    return {"model": "", "version": "", "protocol": protocol}


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("the request's deadline passed before it was read")


def _model_errors(
    run: Callable[[PendingRequest], dict[str, Array]], request: PendingRequest
) -> dict[str, Array]:
    """Run the request; report inputs the model cannot compute as InvalidArgument."""
    try:
        return run(request)
    except tf.errors.InvalidArgumentError as error:
        raise InvalidArgument.field(
            "inputs",
            f"the model cannot compute these inputs: {summarize_op_error(error)}",
        ) from None
