"""Layer specs: checking their arguments and shapes, and building Keras layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
from kerasrpc.service.keras.affine_dense import AffineDense
from kerasrpc.service.keras.seeds import Seeds
from kerasrpc.service.keras.signals import (
    INTEGER_DTYPES,
    ShapeError,
    Signal,
    elements,
    example_axis,
    need_float,
    need_last_axis,
    need_rank,
    same_shapes,
    show,
    window_output,
)
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2

MERGE_KINDS = frozenset({"add", "concatenate"})

_PADDING = {
    spec_pb2.PADDING_UNSPECIFIED: "valid",
    spec_pb2.PADDING_VALID: "valid",
    spec_pb2.PADDING_SAME: "same",
    spec_pb2.PADDING_CAUSAL: "causal",
}
_POOLING_MODES = (
    spec_pb2.POOLING_MODE_UNSPECIFIED,
    spec_pb2.POOLING_MODE_MAX,
    spec_pb2.POOLING_MODE_AVERAGE,
)

# What a layer kind does at each stage: check arguments, infer the output
# signal and parameter count, create the Keras layer.
Check = Callable[[Any, str, Violations], None]
Infer = Callable[[Any, Sequence[Signal]], tuple[Signal, int]]
Create = Callable[[Any, str | None, Seeds], keras.layers.Layer]


@dataclass(frozen=True)
class LayerKind:
    """The three stages of one LayerSpec kind."""

    check: Check
    infer: Infer
    create: Create


# ---------------------------------------------------------------------------
# Dense and AffineDense
# ---------------------------------------------------------------------------


def _check_dense(args: spec_pb2.DenseLayer, path: str, v: Violations) -> None:
    v.positive(path, "units", args.units)
    v.activation(path, "activation", args.activation)


def _infer_dense(
    args: spec_pb2.DenseLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    use_bias = args.use_bias if args.HasField("use_bias") else True
    return _affine(inputs[0], args.units, use_bias)


def _affine(signal: Signal, units: int, use_bias: bool) -> tuple[Signal, int]:
    need_float(signal)
    input_dim = need_last_axis(signal)
    params = input_dim * units + (units if use_bias else 0)
    return Signal((*signal.shape[:-1], units), _float(signal.dtype)), params


def _create_dense(
    args: spec_pb2.DenseLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Dense(
        args.units,
        activation=args.activation or None,
        use_bias=args.use_bias if args.HasField("use_bias") else True,
        kernel_initializer=seeds.initializer("GlorotUniform"),
        name=name,
    )


def _affine_units(args: spec_pb2.AffineDenseLayer) -> int:
    return args.units if args.HasField("units") else 32


def _check_affine_dense(
    args: spec_pb2.AffineDenseLayer, path: str, v: Violations
) -> None:
    v.positive(path, "units", _affine_units(args))


def _infer_affine_dense(
    args: spec_pb2.AffineDenseLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    return _affine(inputs[0], _affine_units(args), use_bias=True)


def _create_affine_dense(
    args: spec_pb2.AffineDenseLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return AffineDense(units=_affine_units(args), seed=seeds.next(), name=name)


# ---------------------------------------------------------------------------
# Layers without weights that keep or rearrange the shape
# ---------------------------------------------------------------------------


def _check_activation(args: spec_pb2.ActivationLayer, path: str, v: Violations) -> None:
    if not args.activation:
        v.add(
            f"{path}.activation",
            "expected an activation name such as 'relu', received an empty one",
        )
        return
    v.activation(path, "activation", args.activation)


def _keep(args: Any, inputs: Sequence[Signal]) -> tuple[Signal, int]:
    signal = inputs[0]
    if signal.dtype in INTEGER_DTYPES or signal.dtype == "bool":
        return Signal(signal.shape, "float32"), 0
    return signal, 0


def _create_activation(
    args: spec_pb2.ActivationLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Activation(args.activation, name=name)


def _check_dropout(args: spec_pb2.DropoutLayer, path: str, v: Violations) -> None:
    v.fraction(path, "rate", args.rate)


def _create_dropout(
    args: spec_pb2.DropoutLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    seed = args.seed or seeds.next()
    return keras.layers.Dropout(args.rate, seed=seed, name=name)


def _check_nothing(args: Any, path: str, v: Violations) -> None:
    """Accept a layer kind without arguments."""


def _infer_flatten(
    args: spec_pb2.FlattenLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    signal = inputs[0]
    return Signal((elements(signal.shape),), signal.dtype), 0


def _create_flatten(
    args: spec_pb2.FlattenLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Flatten(name=name)


def _check_reshape(args: spec_pb2.ReshapeLayer, path: str, v: Violations) -> None:
    target = list(args.target_shape)
    bad = [d for d in target if d != -1 and d <= 0]
    if not target or bad or target.count(-1) > 1:
        v.add(
            f"{path}.target_shape",
            "expected one or more positive sizes with at most one -1, "
            f"received target_shape={target}",
        )


def _infer_reshape(
    args: spec_pb2.ReshapeLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    signal = inputs[0]
    target = list(args.target_shape)
    count = elements(signal.shape)
    known = math.prod(d for d in target if d != -1)
    if count is None:
        shape = tuple(None if d == -1 else d for d in target)
        return Signal(shape, signal.dtype), 0

    fits = count % known == 0 if -1 in target else count == known
    if not fits:
        raise ShapeError(
            f"expected a target shape holding the input's {count} elements "
            f"(input shape {show(signal.shape)}), received target_shape={target}",
            "target_shape",
        )
    shape = tuple(count // known if d == -1 else d for d in target)
    return Signal(shape, signal.dtype), 0


def _create_reshape(
    args: spec_pb2.ReshapeLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Reshape(tuple(args.target_shape), name=name)


# ---------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------


def _check_batch_normalization(
    args: spec_pb2.BatchNormalizationLayer, path: str, v: Violations
) -> None:
    if args.HasField("momentum"):
        v.fraction(path, "momentum", args.momentum)
    if args.HasField("epsilon"):
        v.positive_float(path, "epsilon", args.epsilon)


def _infer_batch_normalization(
    args: spec_pb2.BatchNormalizationLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    signal = inputs[0]
    need_float(signal)
    axis = args.axis if args.HasField("axis") else -1
    size = signal.shape[example_axis(axis, signal.rank, "axis")]
    if size is None:
        raise ShapeError(
            f"expected a known size on axis {axis}, "
            f"received input shape {show(signal.shape)}",
            "axis",
        )
    return Signal(signal.shape, _float(signal.dtype)), 4 * size


def _create_batch_normalization(
    args: spec_pb2.BatchNormalizationLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(
        axis=args.axis if args.HasField("axis") else -1,
        momentum=args.momentum if args.HasField("momentum") else 0.99,
        epsilon=args.epsilon if args.HasField("epsilon") else 1e-3,
        name=name,
    )


def _check_layer_normalization(
    args: spec_pb2.LayerNormalizationLayer, path: str, v: Violations
) -> None:
    if args.HasField("epsilon"):
        v.positive_float(path, "epsilon", args.epsilon)


def _infer_layer_normalization(
    args: spec_pb2.LayerNormalizationLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    signal = inputs[0]
    need_float(signal)
    size = need_last_axis(signal)
    return Signal(signal.shape, _float(signal.dtype)), 2 * size


def _create_layer_normalization(
    args: spec_pb2.LayerNormalizationLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    epsilon = args.epsilon if args.HasField("epsilon") else 1e-3
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


# ---------------------------------------------------------------------------
# Convolution and pooling
# ---------------------------------------------------------------------------


def _check_window(
    values: Sequence[int], spatial: int, path: str, field: str, v: Violations
) -> None:
    """Check a kernel, pool or stride size list: 1 (or `spatial`) positive ints."""
    counts = (1,) if spatial == 1 else (1, spatial)
    if len(values) in counts and all(d > 0 for d in values):
        return
    wanted = "one positive integer" if spatial == 1 else "one or two positive integers"
    v.add(f"{path}.{field}", f"expected {wanted}, received {field}={list(values)}")


def _window(values: Sequence[int], spatial: int, default: Sequence[int]) -> list[int]:
    """Expand a size list to one entry per spatial axis."""
    if not values:
        return list(default)
    return list(values) * spatial if len(values) == 1 else list(values)


def _check_padding(padding: int, spatial: int, path: str, v: Violations) -> None:
    if padding not in _PADDING or (padding == spec_pb2.PADDING_CAUSAL and spatial != 1):
        allowed = "VALID, SAME or CAUSAL" if spatial == 1 else "VALID or SAME"
        v.add(f"{path}.padding", f"expected {allowed}, received padding={padding}")


def _spatial(
    signal: Signal, kernel: Sequence[int], strides: Sequence[int], padding: str
) -> tuple[int | None, ...]:
    sizes = signal.shape[:-1]
    try:
        return tuple(
            window_output(size, k, s, padding)
            for size, k, s in zip(sizes, kernel, strides, strict=True)
        )
    except ShapeError as error:
        raise ShapeError(
            f"{error.description}; input shape {show(signal.shape)}"
        ) from None


def _convolution(spatial: int) -> LayerKind:
    """Return the kind for conv1d (spatial=1) or conv2d (spatial=2)."""
    layout = (
        "(batch, steps, channels)" if spatial == 1 else "(batch, rows, cols, channels)"
    )

    def check(args: spec_pb2.ConvolutionLayer, path: str, v: Violations) -> None:
        v.positive(path, "filters", args.filters)
        _check_window(args.kernel_size, spatial, path, "kernel_size", v)
        if args.strides:
            _check_window(args.strides, spatial, path, "strides", v)
        _check_padding(args.padding, spatial, path, v)
        v.activation(path, "activation", args.activation)

    def infer(
        args: spec_pb2.ConvolutionLayer, inputs: Sequence[Signal]
    ) -> tuple[Signal, int]:
        signal = inputs[0]
        need_rank(signal, spatial + 1, layout)
        need_float(signal)
        channels = need_last_axis(signal)
        kernel = _window(args.kernel_size, spatial, ())
        strides = _window(args.strides, spatial, [1] * spatial)
        sizes = _spatial(signal, kernel, strides, _PADDING[args.padding])
        use_bias = args.use_bias if args.HasField("use_bias") else True
        params = math.prod(kernel) * channels * args.filters
        params += args.filters if use_bias else 0
        return Signal((*sizes, args.filters), _float(signal.dtype)), params

    def create(
        args: spec_pb2.ConvolutionLayer, name: str | None, seeds: Seeds
    ) -> keras.layers.Layer:
        layer = keras.layers.Conv1D if spatial == 1 else keras.layers.Conv2D
        return layer(
            args.filters,
            tuple(_window(args.kernel_size, spatial, ())),
            strides=tuple(_window(args.strides, spatial, [1] * spatial)),
            padding=_PADDING[args.padding],
            activation=args.activation or None,
            use_bias=args.use_bias if args.HasField("use_bias") else True,
            kernel_initializer=seeds.initializer("GlorotUniform"),
            name=name,
        )

    return LayerKind(check, infer, create)


def _check_mode(mode: int, path: str, v: Violations) -> None:
    if mode not in _POOLING_MODES:
        v.add(f"{path}.mode", f"expected MAX or AVERAGE, received mode={mode}")


def _pooling(spatial: int) -> LayerKind:
    """Return the kind for pooling1d (spatial=1) or pooling2d (spatial=2)."""
    layout = (
        "(batch, steps, channels)" if spatial == 1 else "(batch, rows, cols, channels)"
    )

    def check(args: spec_pb2.PoolingLayer, path: str, v: Violations) -> None:
        _check_mode(args.mode, path, v)
        if args.pool_size:
            _check_window(args.pool_size, spatial, path, "pool_size", v)
        if args.strides:
            _check_window(args.strides, spatial, path, "strides", v)
        _check_padding(args.padding, 2, path, v)

    def sizes(args: spec_pb2.PoolingLayer) -> tuple[list[int], list[int]]:
        pool = _window(args.pool_size, spatial, [2] * spatial)
        return pool, _window(args.strides, spatial, pool)

    def infer(
        args: spec_pb2.PoolingLayer, inputs: Sequence[Signal]
    ) -> tuple[Signal, int]:
        signal = inputs[0]
        need_rank(signal, spatial + 1, layout)
        need_float(signal)
        pool, strides = sizes(args)
        out = _spatial(signal, pool, strides, _PADDING[args.padding])
        return Signal((*out, signal.shape[-1]), _float(signal.dtype)), 0

    def create(
        args: spec_pb2.PoolingLayer, name: str | None, seeds: Seeds
    ) -> keras.layers.Layer:
        average = args.mode == spec_pb2.POOLING_MODE_AVERAGE
        layers = keras.layers
        if spatial == 1:
            layer = layers.AveragePooling1D if average else layers.MaxPooling1D
        else:
            layer = layers.AveragePooling2D if average else layers.MaxPooling2D
        pool, strides = sizes(args)
        return layer(
            tuple(pool), tuple(strides), padding=_PADDING[args.padding], name=name
        )

    return LayerKind(check, infer, create)


def _global_rank(args: spec_pb2.GlobalPoolingLayer) -> int:
    return args.rank or 1


def _check_global_pooling(
    args: spec_pb2.GlobalPoolingLayer, path: str, v: Violations
) -> None:
    _check_mode(args.mode, path, v)
    if _global_rank(args) not in (1, 2):
        v.add(f"{path}.rank", f"expected 1 or 2, received rank={args.rank}")


def _infer_global_pooling(
    args: spec_pb2.GlobalPoolingLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    signal = inputs[0]
    rank = _global_rank(args)
    layout = (
        "(batch, steps, channels)" if rank == 1 else "(batch, rows, cols, channels)"
    )
    need_rank(signal, rank + 1, layout)
    need_float(signal)
    return Signal((signal.shape[-1],), _float(signal.dtype)), 0


def _create_global_pooling(
    args: spec_pb2.GlobalPoolingLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    average = args.mode == spec_pb2.POOLING_MODE_AVERAGE
    layers = keras.layers
    if _global_rank(args) == 1:
        layer = layers.GlobalAveragePooling1D if average else layers.GlobalMaxPooling1D
    else:
        layer = layers.GlobalAveragePooling2D if average else layers.GlobalMaxPooling2D
    return layer(name=name)


# ---------------------------------------------------------------------------
# Embedding and recurrent layers
# ---------------------------------------------------------------------------


def _check_embedding(args: spec_pb2.EmbeddingLayer, path: str, v: Violations) -> None:
    v.positive(path, "input_dim", args.input_dim)
    v.positive(path, "output_dim", args.output_dim)


def _infer_embedding(
    args: spec_pb2.EmbeddingLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    signal = inputs[0]
    if signal.dtype not in INTEGER_DTYPES:
        raise ShapeError(
            "expected integer ids (an input of dtype INT32 or INT64), "
            f"received dtype={signal.dtype}"
        )
    shape = (*signal.shape, args.output_dim)
    return Signal(shape, "float32"), args.input_dim * args.output_dim


def _create_embedding(
    args: spec_pb2.EmbeddingLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Embedding(
        args.input_dim,
        args.output_dim,
        embeddings_initializer=seeds.initializer(
            "RandomUniform", minval=-0.05, maxval=0.05
        ),
        mask_zero=args.mask_zero,
        name=name,
    )


def _recurrent(gates: int, extra_bias: int) -> LayerKind:
    """Return the kind for LSTM (4 gates) or GRU (3 gates, a second bias)."""

    def check(args: spec_pb2.RecurrentLayer, path: str, v: Violations) -> None:
        v.positive(path, "units", args.units)
        v.activation(path, "activation", args.activation)
        v.fraction(path, "dropout", args.dropout)

    def infer(
        args: spec_pb2.RecurrentLayer, inputs: Sequence[Signal]
    ) -> tuple[Signal, int]:
        signal = inputs[0]
        need_rank(signal, 2, "(batch, steps, features)")
        need_float(signal)
        features = need_last_axis(signal)
        units = args.units
        params = gates * (features * units + units * units + units * extra_bias)
        shape = (signal.shape[0], units) if args.return_sequences else (units,)
        return Signal(shape, _float(signal.dtype)), params

    def create(
        args: spec_pb2.RecurrentLayer, name: str | None, seeds: Seeds
    ) -> keras.layers.Layer:
        layer = keras.layers.LSTM if gates == 4 else keras.layers.GRU
        return layer(
            args.units,
            activation=args.activation or "tanh",
            return_sequences=args.return_sequences,
            dropout=args.dropout,
            kernel_initializer=seeds.initializer("GlorotUniform"),
            recurrent_initializer=seeds.initializer("Orthogonal"),
            seed=seeds.next(),
            name=name,
        )

    return LayerKind(check, infer, create)


# ---------------------------------------------------------------------------
# Merge layers
# ---------------------------------------------------------------------------


def _infer_add(args: spec_pb2.AddLayer, inputs: Sequence[Signal]) -> tuple[Signal, int]:
    shape = same_shapes(inputs, "inputs of one shape")
    return Signal(shape, inputs[0].dtype), 0


def _create_add(
    args: spec_pb2.AddLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Add(name=name)


def _concatenate_axis(args: spec_pb2.ConcatenateLayer) -> int:
    return args.axis if args.HasField("axis") else -1


def _infer_concatenate(
    args: spec_pb2.ConcatenateLayer, inputs: Sequence[Signal]
) -> tuple[Signal, int]:
    rank = inputs[0].rank
    if any(s.rank != rank for s in inputs):
        shapes = ", ".join(show(s.shape) for s in inputs)
        raise ShapeError(f"expected inputs of one rank, received shapes {shapes}")

    axis = example_axis(_concatenate_axis(args), rank, "axis")
    others = [Signal(s.shape[:axis] + s.shape[axis + 1 :], s.dtype) for s in inputs]
    rest = same_shapes(others, f"inputs whose shapes match except on axis {axis + 1}")
    sizes = [s.shape[axis] for s in inputs]
    joined = None if None in sizes else sum(d for d in sizes if d is not None)
    shape = (*rest[:axis], joined, *rest[axis:])
    return Signal(shape, inputs[0].dtype), 0


def _create_concatenate(
    args: spec_pb2.ConcatenateLayer, name: str | None, seeds: Seeds
) -> keras.layers.Layer:
    return keras.layers.Concatenate(axis=_concatenate_axis(args), name=name)


def _float(dtype: str) -> str:
    """Return the dtype a weighted layer computes in for this input dtype."""
    return dtype if dtype in ("float16", "bfloat16", "float64") else "float32"


KINDS: dict[str, LayerKind] = {
    "dense": LayerKind(_check_dense, _infer_dense, _create_dense),
    "affine_dense": LayerKind(
        _check_affine_dense, _infer_affine_dense, _create_affine_dense
    ),
    "activation": LayerKind(_check_activation, _keep, _create_activation),
    "dropout": LayerKind(_check_dropout, _keep, _create_dropout),
    "flatten": LayerKind(_check_nothing, _infer_flatten, _create_flatten),
    "reshape": LayerKind(_check_reshape, _infer_reshape, _create_reshape),
    "batch_normalization": LayerKind(
        _check_batch_normalization,
        _infer_batch_normalization,
        _create_batch_normalization,
    ),
    "layer_normalization": LayerKind(
        _check_layer_normalization,
        _infer_layer_normalization,
        _create_layer_normalization,
    ),
    "conv1d": _convolution(1),
    "conv2d": _convolution(2),
    "pooling1d": _pooling(1),
    "pooling2d": _pooling(2),
    "global_pooling": LayerKind(
        _check_global_pooling, _infer_global_pooling, _create_global_pooling
    ),
    "embedding": LayerKind(_check_embedding, _infer_embedding, _create_embedding),
    "lstm": _recurrent(gates=4, extra_bias=1),
    "gru": _recurrent(gates=3, extra_bias=2),
    "add": LayerKind(_check_nothing, _infer_add, _create_add),
    "concatenate": LayerKind(_check_nothing, _infer_concatenate, _create_concatenate),
}
