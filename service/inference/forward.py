"""The compiled forward pass of one loaded model version."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from kerasrpc.client.tensors import numpy_dtype
from kerasrpc.v1 import tensor_pb2

logger = logging.getLogger("kerasrpc.service.inference")

Array = npt.NDArray[Any]


class Forward:
    """Run a Keras model in inference mode as one traced TensorFlow graph.

    The graph is traced once, with the batch dimension (and any dimension the
    model leaves open) of unknown size, so every batch size reuses it.
    """

    def __init__(
        self,
        model: Any,
        inputs: Sequence[tensor_pb2.TensorSpec],
        outputs: Sequence[tensor_pb2.TensorSpec],
    ) -> None:
        self._input_names = [spec.name for spec in inputs]
        self._output_names = [spec.name for spec in outputs]
        signature = {spec.name: _tensor_spec(spec) for spec in inputs}
        self._function = tf.function(
            self._graph(model),
            input_signature=[signature],
            reduce_retracing=True,
            autograph=False,
        )
        self._function.get_concrete_function()

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Compute the outputs, by name, of one batch of inputs."""
        results = self._function({name: inputs[name] for name in self._input_names})
        return {
            name: np.asarray(result.numpy())
            for name, result in zip(self._output_names, results, strict=True)
        }

    def _graph(self, model: Any) -> Any:
        single = len(self._input_names) == 1
        names = self._output_names

        def forward(inputs: dict[str, tf.Tensor]) -> list[tf.Tensor]:
            fed = next(iter(inputs.values())) if single else inputs
            return _in_order(model(fed, training=False), names)

        return forward


def _in_order(result: Any, names: Sequence[str]) -> list[Any]:
    """Return the model's outputs as a list in the order of `names`."""
    if isinstance(result, Mapping):
        if set(names) <= set(result):
            return [result[name] for name in names]
        return [result[key] for key in sorted(result)]
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


def _tensor_spec(spec: tensor_pb2.TensorSpec) -> tf.TensorSpec:
    shape = [None if size < 0 else int(size) for size in spec.shape]
    if shape:
        shape[0] = None
    return tf.TensorSpec(shape, tf.as_dtype(numpy_dtype(spec.dtype)))
