"""Device memory in use and its peak, read when Prometheus scrapes.

On a GPU the numbers come from TensorFlow's allocator; the host's memory is
reported as the CPU device's, from the process's resident set. Nothing is read
between scrapes, and TensorFlow is never imported here: a GPU is only read
once the server has imported TensorFlow to compute on it.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("kerasrpc.service.metrics")

CPU_DEVICE = "/CPU:0"
MEMORY_NAME = "kerasrpc_device_memory_bytes"
PEAK_NAME = "kerasrpc_device_memory_peak_bytes"
MEMORY_HELP = "Device memory in use."
PEAK_HELP = "Peak device memory in use since the server started."
# ru_maxrss is in kibibytes on Linux and in bytes on macOS.
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class DeviceMemory:
    """Memory in use on one device now, and the most it has held."""

    device: str
    current_bytes: int
    peak_bytes: int


class DeviceMemoryCollector(Collector):
    """Report memory per device at scrape time.

    Args:
        device: The TensorFlow name of the device the server computes on,
            "/GPU:<index>" or "/CPU:0". The CPU device is reported in any case.
    """

    def __init__(self, device: str = CPU_DEVICE) -> None:
        self._device = device
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._peaks: dict[str, int] = {}

    def set_device(self, device: str) -> None:
        """Report the given device from now on, e.g. "/GPU:0"."""
        self._device = device

    def read(self) -> list[DeviceMemory]:
        """Return the memory of the host and of the compute device, if a GPU."""
        found = [self._host()]
        if self._device != CPU_DEVICE:
            gpu = self._gpu(self._device)
            if gpu is not None:
                found.append(gpu)
        return [self._with_peak(memory) for memory in found]

    def collect(self) -> Iterator[Metric]:
        """Yield the memory in use and the peak, one series per device."""
        current, peak = _families()
        for memory in self.read():
            current.add_metric([memory.device], memory.current_bytes)
            peak.add_metric([memory.device], memory.peak_bytes)
        yield current
        yield peak

    def describe(self) -> list[Metric]:
        """Declare the metric names without reading any device."""
        return list(_families())

    def _host(self) -> DeviceMemory:
        rss = self._process.memory_info().rss
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT
        return DeviceMemory(CPU_DEVICE, rss, max(rss, max_rss))

    def _with_peak(self, memory: DeviceMemory) -> DeviceMemory:
        with self._lock:
            peak = max(self._peaks.get(memory.device, 0), memory.peak_bytes)
            self._peaks[memory.device] = peak
        return DeviceMemory(memory.device, memory.current_bytes, peak)

    @staticmethod
    def _gpu(device: str) -> DeviceMemory | None:
        tf = sys.modules.get("tensorflow")
        if tf is None:
            return None

        try:
            info = tf.config.experimental.get_memory_info(device.lstrip("/"))
        except (ValueError, RuntimeError) as error:
            logger.debug("cannot read the memory of %s: %s", device, error)
            return None
        return DeviceMemory(device, int(info["current"]), int(info["peak"]))


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(MEMORY_NAME, MEMORY_HELP, labels=("device",)),
        GaugeMetricFamily(PEAK_NAME, PEAK_HELP, labels=("device",)),
    )
