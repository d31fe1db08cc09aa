"""Building losses, learning rates, optimizers and metrics from their specs."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from google.protobuf import json_format
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.service.keras import (
    BinaryTruePositives,
    InverseStepDecay,
    LastAxisMeanSquaredError,
    build_learning_rate,
    build_loss,
    build_metrics,
    build_optimizer,
    validate_compile,
)
from kerasrpc.v1 import spec_pb2


def parse(message: type[Any], document: dict[str, Any]) -> Any:
    return json_format.ParseDict(document, message())


def fields(error: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in error.value.violations}


@pytest.mark.parametrize(
    ("document", "loss_class", "expected"),
    [
        ({"last_axis_mean_squared_error": {}}, LastAxisMeanSquaredError, 0.5),
        ({"mean_squared_error": {}}, keras.losses.MeanSquaredError, 0.5),
        ({"mean_absolute_error": {}}, keras.losses.MeanAbsoluteError, 0.5),
        ({"huber": {"delta": 0.5}}, keras.losses.Huber, 0.1875),
    ],
)
def test_regression_losses(
    document: dict[str, Any], loss_class: type, expected: float
) -> None:
    target = np.array([[0.0, 1.0], [0.0, 0.0]], dtype="float32")
    prediction = np.array([[1.0, 1.0], [1.0, 0.0]], dtype="float32")

    loss = build_loss(parse(spec_pb2.LossSpec, document))

    assert isinstance(loss, loss_class)
    assert float(loss(target, prediction)) == pytest.approx(expected)


def test_crossentropy_losses_take_their_arguments() -> None:
    binary = build_loss(
        parse(
            spec_pb2.LossSpec,
            {"binary_crossentropy": {"from_logits": True, "label_smoothing": 0.1}},
        )
    )
    sparse = build_loss(
        parse(spec_pb2.LossSpec, {"sparse_categorical_crossentropy": {}})
    )

    assert binary.get_config()["from_logits"] is True
    assert binary.get_config()["label_smoothing"] == pytest.approx(0.1)
    assert float(sparse(np.array([1]), np.array([[0.0, 1.0]]))) == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "loss"),
        ({"huber": {"delta": -1}}, "loss.huber.delta"),
        (
            {"categorical_crossentropy": {"label_smoothing": 1}},
            "loss.categorical_crossentropy.label_smoothing",
        ),
        (
            {"sparse_categorical_crossentropy": {"label_smoothing": 0.1}},
            "loss.sparse_categorical_crossentropy.label_smoothing",
        ),
    ],
)
def test_bad_losses(document: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        build_loss(parse(spec_pb2.LossSpec, document))

    assert field in fields(error)
    assert fields(error)[field].startswith("expected ")


def test_learning_rates_and_schedules() -> None:
    def rate(document: dict[str, Any], step: int) -> float:
        built = build_learning_rate(parse(spec_pb2.LearningRateSpec, document), "lr")
        return float(built) if isinstance(built, float) else float(built(step))

    assert rate({"constant": 0.3}, 5) == pytest.approx(0.3)
    assert rate(
        {"inverse_step_decay": {"initial_learning_rate": 0.1}}, 9
    ) == pytest.approx(0.01)
    exponential = {"initial_learning_rate": 1.0, "decay_steps": 2, "decay_rate": 0.5}
    assert rate({"exponential_decay": exponential}, 4) == pytest.approx(0.25)
    cosine = {"initial_learning_rate": 1.0, "decay_steps": 10, "alpha": 0.1}
    assert rate({"cosine_decay": cosine}, 10) == pytest.approx(0.1)
    piecewise = {"boundaries": [2, 5], "values": [1.0, 0.5, 0.1]}
    assert rate({"piecewise_constant": piecewise}, 3) == pytest.approx(0.5)
    schedule = build_learning_rate(
        parse(
            spec_pb2.LearningRateSpec,
            {"inverse_step_decay": {"initial_learning_rate": 1}},
        ),
        "lr",
    )
    assert isinstance(schedule, InverseStepDecay)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "lr"),
        ({"constant": -0.1}, "lr.constant"),
        ({"inverse_step_decay": {}}, "lr.inverse_step_decay.initial_learning_rate"),
        (
            {"exponential_decay": {"initial_learning_rate": 1, "decay_rate": 0.5}},
            "lr.exponential_decay.decay_steps",
        ),
        (
            {
                "cosine_decay": {
                    "initial_learning_rate": 1,
                    "decay_steps": 5,
                    "alpha": 2,
                }
            },
            "lr.cosine_decay.alpha",
        ),
        (
            {"piecewise_constant": {"boundaries": [5, 2], "values": [1, 2, 3]}},
            "lr.piecewise_constant.boundaries",
        ),
        (
            {"piecewise_constant": {"boundaries": [2], "values": [1]}},
            "lr.piecewise_constant.values",
        ),
    ],
)
def test_bad_learning_rates(document: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        build_learning_rate(parse(spec_pb2.LearningRateSpec, document), "lr")

    assert field in fields(error)


def test_default_optimizer_is_sgd_at_0_01() -> None:
    optimizer = build_optimizer(spec_pb2.OptimizerSpec())

    assert isinstance(optimizer, keras.optimizers.SGD)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert optimizer.clipnorm is None


@pytest.mark.parametrize(
    ("document", "optimizer_class", "config"),
    [
        (
            {"sgd": {"momentum": 0.9, "nesterov": True}},
            keras.optimizers.SGD,
            {"momentum": 0.9, "nesterov": True},
        ),
        (
            {"adam": {"beta_1": 0.8, "amsgrad": True}},
            keras.optimizers.Adam,
            {"beta_1": 0.8, "amsgrad": True, "learning_rate": 0.001},
        ),
        ({"adamw": {}}, keras.optimizers.AdamW, {"weight_decay": 0.004}),
        (
            {"rmsprop": {"rho": 0.5, "centered": True}, "clipnorm": 2.0},
            keras.optimizers.RMSprop,
            {"rho": 0.5, "centered": True, "clipnorm": 2.0},
        ),
    ],
)
def test_optimizers(
    document: dict[str, Any], optimizer_class: type, config: dict[str, Any]
) -> None:
    optimizer = build_optimizer(parse(spec_pb2.OptimizerSpec, document))

    assert type(optimizer) is optimizer_class
    actual = optimizer.get_config()
    for key, value in config.items():
        assert actual[key] == pytest.approx(value), key


def test_optimizer_follows_its_schedule() -> None:
    spec = parse(
        spec_pb2.OptimizerSpec,
        {
            "sgd": {},
            "learning_rate": {"inverse_step_decay": {"initial_learning_rate": 0.1}},
        },
    )
    w = keras.Variable(4.0)

    optimizer = build_optimizer(spec)
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(6.0), w)])

    assert float(w.numpy()) == pytest.approx(3.4)


def test_bad_optimizer_reports_every_field() -> None:
    spec = parse(
        spec_pb2.OptimizerSpec,
        {
            "adam": {"beta_1": 1.5, "weight_decay": 0.1, "epsilon": 0},
            "clipnorm": -1,
            "learning_rate": {"constant": -1},
        },
    )

    with pytest.raises(InvalidArgument) as error:
        build_optimizer(spec, path="spec.compile.optimizer")

    found = fields(error)
    prefix = "spec.compile.optimizer"
    assert set(found) == {
        f"{prefix}.adam.beta_1",
        f"{prefix}.adam.weight_decay",
        f"{prefix}.adam.epsilon",
        f"{prefix}.clipnorm",
        f"{prefix}.learning_rate.constant",
    }
    assert "use adamw" in found[f"{prefix}.adam.weight_decay"]


def test_metrics_build_in_order_with_names() -> None:
    specs = [
        parse(spec_pb2.MetricSpec, document)
        for document in [
            {"binary_true_positives": {}},
            {"name": "acc", "accuracy": {}},
            {"binary_accuracy": {"threshold": 0.7}},
            {"categorical_accuracy": {}},
            {"sparse_categorical_accuracy": {}},
            {"mean_absolute_error": {}},
            {"mean_squared_error": {}},
            {"auc": {"curve": "pr", "num_thresholds": 50}},
            {"precision": {"threshold": 0.3}},
            {"recall": {}},
        ]
    ]

    metrics = build_metrics(specs)

    assert isinstance(metrics[0], BinaryTruePositives)
    assert [m.name for m in metrics] == [
        "binary_true_positives",
        "acc",
        "binary_accuracy",
        "categorical_accuracy",
        "sparse_categorical_accuracy",
        "mean_absolute_error",
        "mean_squared_error",
        "auc",
        "precision",
        "recall",
    ]
    assert metrics[2].get_config()["threshold"] == pytest.approx(0.7)
    assert metrics[7].get_config()["curve"] == "PR"
    assert metrics[8].get_config()["thresholds"] == pytest.approx(0.3)


def test_bad_metrics() -> None:
    specs = [
        parse(spec_pb2.MetricSpec, document)
        for document in [
            {"recall": {}},
            {"recall": {}},
            {},
            {"auc": {"curve": "XY", "num_thresholds": 1}},
            {"precision": {"threshold": 2}},
        ]
    ]

    with pytest.raises(InvalidArgument) as error:
        build_metrics(specs)

    assert set(fields(error)) == {
        "metrics[1].name",
        "metrics[2]",
        "metrics[3].auc.curve",
        "metrics[3].auc.num_thresholds",
        "metrics[4].precision.threshold",
    }


def test_validate_compile_collects_loss_optimizer_and_metric_errors() -> None:
    spec = parse(
        spec_pb2.CompileSpec,
        {
            "optimizer": {"sgd": {"momentum": 1.0}},
            "metrics": [{"binary_accuracy": {"threshold": -1}}],
        },
    )

    with pytest.raises(InvalidArgument) as error:
        validate_compile(spec, path="spec.compile")

    found = fields(error)
    assert found["spec.compile.loss"] == "expected a loss for training, received none"
    assert found["spec.compile.optimizer.sgd.momentum"] == (
        "expected a number in [0, 1), received momentum=1.0"
    )
    assert found["spec.compile.metrics[0].binary_accuracy.threshold"] == (
        "expected a number in [0, 1], received threshold=-1.0"
    )
    assert len(found) == 3


def test_validate_compile_accepts_a_good_spec() -> None:
    spec = parse(
        spec_pb2.CompileSpec,
        {
            "loss": {"mean_squared_error": {}},
            "metrics": [{"binary_true_positives": {}}],
        },
    )

    validate_compile(spec)
