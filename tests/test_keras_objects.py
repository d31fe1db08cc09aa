"""The service's custom Keras classes behave as their specs say."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from kerasrpc.service.keras import (
    AffineDense,
    BinaryTruePositives,
    InverseStepDecay,
    LastAxisMeanSquaredError,
    SingleDenseModel,
)


def test_loss_is_mean_over_last_axis_of_squared_error() -> None:
    target = np.array([[0.0, 1.0], [0.0, 0.0]], dtype="float32")
    prediction = np.array([[1.0, 1.0], [1.0, 0.0]], dtype="float32")

    loss = LastAxisMeanSquaredError()

    assert float(loss(target, prediction)) == pytest.approx(0.5)
    per_example = loss.call(target, prediction)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_example), [0.5, 0.5])


def test_loss_casts_integer_target_to_prediction_dtype() -> None:
    loss = LastAxisMeanSquaredError()

    value = loss(np.array([[0, 1]], dtype="int32"), np.array([[1.0, 3.0]]))

    assert float(value) == pytest.approx((1.0 + 4.0) / 2)


def test_metric_counts_binary_true_positives_and_resets() -> None:
    metric = BinaryTruePositives()

    metric.update_state([0, 1, 1, 1], [1, 0, 1, 1])
    assert float(metric.result()) == 2.0

    metric.update_state([1], [1])
    assert float(metric.result()) == 3.0

    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_metric_treats_non_zero_as_positive() -> None:
    metric = BinaryTruePositives()

    metric.update_state([0.0, 0.3, 2.0], [0.7, 0.0, -1.0])

    assert float(metric.result()) == 1.0


def test_metric_weights_each_position_by_its_sample_weight() -> None:
    metric = BinaryTruePositives()

    metric.update_state([1, 1, 1, 0], [1, 1, 0, 1], sample_weight=[0.5, 2.0, 3.0, 4.0])

    assert float(metric.result()) == pytest.approx(2.5)


def test_metric_broadcasts_per_example_weights_to_every_position() -> None:
    metric = BinaryTruePositives()
    y = np.ones((2, 3))

    metric.update_state(y, y, sample_weight=np.array([1.0, 10.0]))

    assert float(metric.result()) == pytest.approx(3 * 1.0 + 3 * 10.0)


def test_schedule_is_initial_rate_over_step_plus_one() -> None:
    schedule = InverseStepDecay(initial_learning_rate=0.1)

    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(9)) == pytest.approx(0.01)


@pytest.mark.parametrize("rate", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_schedule_rejects_a_rate_that_is_not_a_positive_number(rate: object) -> None:
    expected = f"initial_learning_rate expected a positive number, received {rate!r}"

    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        InverseStepDecay(initial_learning_rate=rate)


def test_one_sgd_step_with_schedule_moves_weight_from_4_to_3_4() -> None:
    w = tf.Variable(4.0)
    with tf.GradientTape() as tape:
        cost = (w - 1.0) ** 2
    (gradient,) = tape.gradient(cost, [w])
    optimizer = keras.optimizers.SGD(learning_rate=InverseStepDecay(0.1))

    optimizer.apply_gradients([(gradient, w)])

    assert float(gradient) == pytest.approx(6.0)
    assert float(w.numpy()) == pytest.approx(3.4)


def test_affine_dense_maps_last_axis_with_45_parameters() -> None:
    model = keras.Sequential([AffineDense(units=5, name="CustomLayer")])

    output = model(np.random.normal(size=(32, 2, 8)).astype("float32"))

    assert tuple(output.shape) == (32, 2, 5)
    assert model.count_params() == 45
    assert [tuple(w.shape) for w in model.trainable_weights] == [(8, 5), (5,)]


def test_affine_dense_computes_x_dot_w_plus_b() -> None:
    layer = AffineDense(units=3)
    x = np.random.normal(size=(4, 2)).astype("float32")

    output = keras.ops.convert_to_numpy(layer(x))

    w, b = (keras.ops.convert_to_numpy(v) for v in (layer.w, layer.b))
    np.testing.assert_allclose(output, x @ w + b, rtol=1e-5)


def test_affine_dense_config_round_trips_name_dtype_and_units() -> None:
    layer = AffineDense(units=7, name="affine", dtype="float64")

    copy = AffineDense.from_config(layer.get_config())

    assert (copy.units, copy.name, copy.dtype) == (7, "affine", "float64")


def test_affine_dense_rejects_non_positive_units() -> None:
    with pytest.raises(ValueError, match="units=0"):
        AffineDense(units=0)


@pytest.mark.parametrize("units", [0, -3, True, 2.5, "5"])
def test_single_dense_model_rejects_units_that_are_not_a_positive_integer(
    units: object,
) -> None:
    expected = f"SingleDenseModel expected a positive integer, received units={units!r}"

    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        SingleDenseModel(units=units)


def test_single_dense_model_wraps_one_named_dense_layer() -> None:
    model = SingleDenseModel(units=5, activation="relu", layer_name="CustomLayer")

    output = model(np.random.normal(size=(32, 2, 8)).astype("float32"))

    assert tuple(output.shape) == (32, 2, 5)
    assert float(keras.ops.min(output)) >= 0.0
    assert [layer.name for layer in model.layers] == ["CustomLayer"]
    copy = SingleDenseModel.from_config(model.get_config())
    assert (copy.units, copy.activation, copy.layer_name) == (5, "relu", "CustomLayer")
