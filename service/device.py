"""Pin the process to one device before TensorFlow starts, and describe it."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("kerasrpc.service")


class DeviceError(ValueError):
    """The device setting cannot be used."""


@dataclass(frozen=True)
class Device:
    """The device the server computes on."""

    name: str
    description: str

    @property
    def is_gpu(self) -> bool:
        """Return whether the device is a GPU."""
        return "GPU" in self.name


def pin_device(choice: str) -> None:
    """Make only the chosen GPU visible to TensorFlow, or none for 'cpu'.

    Must run before TensorFlow is imported: visibility is read once at start.

    Args:
        choice: a GPU index such as "0", "cpu", or "auto" (GPU 0 when one
            exists, unless CUDA_VISIBLE_DEVICES already narrows the choice).

    Raises:
        DeviceError: the choice is not an index, "cpu" or "auto", or
            TensorFlow was imported already with another device visible.
    """
    visible = _visible_devices(choice.strip().lower())
    if visible is None:
        return
    if (
        "tensorflow" in sys.modules
        and os.environ.get("CUDA_VISIBLE_DEVICES") != visible
    ):
        raise DeviceError(
            f"device {choice!r} must be chosen before TensorFlow starts; "
            "it was imported already"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = visible


def _visible_devices(choice: str) -> str | None:
    if choice == "auto":
        return None if "CUDA_VISIBLE_DEVICES" in os.environ else "0"
    if choice == "cpu":
        return "-1"
    if choice.removeprefix("gpu:").isdigit():
        return choice.removeprefix("gpu:")
    raise DeviceError(
        f"device expected a GPU index (such as 0), 'cpu' or 'auto', received {choice!r}"
    )


def configure_device(
    choice: str, intra_op_threads: int = 0, inter_op_threads: int = 0
) -> Device:
    """Size TensorFlow's CPU thread pools and set up the GPU; return the device.

    Memory growth is enabled on the visible GPU. Falls back to the CPU, with
    a warning, where no GPU is visible.

    Raises:
        DeviceError: thread counts other than this process's, once
            TensorFlow has started computing in it (a server built in a
            process that computed before).
    """
    import tensorflow as tf

    threads = _configure_threads(tf, intra_op_threads, inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        if choice.strip().lower() != "cpu":
            logger.warning("no GPU is visible; computing on the CPU")
        return Device("/CPU:0", _cpu_description() + threads)
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            logger.debug("memory growth already fixed for %s", gpu.name)
    details = tf.config.experimental.get_device_details(gpus[0])
    return Device("/GPU:0", str(details.get("device_name", gpus[0].name)))


def _configure_threads(tf: Any, intra_op: int, inter_op: int) -> str:
    """Set the thread pools' sizes (0: TensorFlow's choice); describe them."""
    threading = tf.config.threading
    wanted = {
        "intra_op_threads": (intra_op, threading.get_intra_op_parallelism_threads,
                             threading.set_intra_op_parallelism_threads),
        "inter_op_threads": (inter_op, threading.get_inter_op_parallelism_threads,
                             threading.set_inter_op_parallelism_threads),
    }  # fmt: skip
    for name, (count, get, set_) in wanted.items():
        if count == get():
            continue
        try:
            set_(count)
        except RuntimeError:
            raise DeviceError(
                f"{name} expected {get()}, as TensorFlow already runs with it in "
                f"this process, received {count}; start a new process"
            ) from None
    intra_op = threading.get_intra_op_parallelism_threads()
    inter_op = threading.get_inter_op_parallelism_threads()
    parts = []
    if intra_op:
        parts.append(f"{intra_op} thread{'s' if intra_op > 1 else ''} per op")
    if inter_op:
        parts.append(f"{inter_op} op{'s' if inter_op > 1 else ''} at once")
    return f" ({', '.join(parts)})" if parts else ""


def _cpu_description() -> str:
    return f"{os.cpu_count() or 1} CPU cores"
