"""The Keras objects a spec describes: builders, custom classes and checks.

Importing this package registers the service's custom Keras classes under
the "kerasrpc" package, so models that use them load with
`keras.saving.load_model(path, safe_mode=True)` and nothing else.
"""

from kerasrpc.service.keras.affine_dense import AffineDense
from kerasrpc.service.keras.binary_true_positives import BinaryTruePositives
from kerasrpc.service.keras.inverse_step_decay import InverseStepDecay
from kerasrpc.service.keras.last_axis_mean_squared_error import (
    LastAxisMeanSquaredError,
)
from kerasrpc.service.keras.losses import build_loss
from kerasrpc.service.keras.metrics import build_metrics
from kerasrpc.service.keras.models import build_model
from kerasrpc.service.keras.optimizers import build_optimizer
from kerasrpc.service.keras.schedules import build_learning_rate
from kerasrpc.service.keras.single_dense_model import SingleDenseModel
from kerasrpc.service.keras.summary import summarize
from kerasrpc.service.keras.validation import validate_compile

__all__ = [
    "AffineDense",
    "BinaryTruePositives",
    "InverseStepDecay",
    "LastAxisMeanSquaredError",
    "SingleDenseModel",
    "build_learning_rate",
    "build_loss",
    "build_metrics",
    "build_model",
    "build_optimizer",
    "summarize",
    "validate_compile",
]
