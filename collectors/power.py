"""Power and energy readers: one interface, one implementation per source, and a null object.

A reader measures the energy of a window: ``start()`` before the workload, ``stop(token)``
after it. Every result carries ``source`` so a stored figure says where it came from. No reader
estimates: when nothing can be read, :class:`NullPowerReader` says "unavailable".
"""

from __future__ import annotations

import glob
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from collectors import nvml

UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one window. ``energy_j`` and ``power_w`` are None when unavailable."""

    source: str
    duration_s: float
    energy_j: float | None
    note: str | None = None

    @property
    def power_w(self) -> float | None:
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s


class PowerReader(ABC):
    """Reads the energy a device used over a window of wall time."""

    source: str = "abstract"
    #: Shortest window that gives a meaningful figure (counters update every ~100 ms).
    min_window_s: float = 0.0

    @property
    def available(self) -> bool:
        return True

    @abstractmethod
    def start(self) -> Any:
        """Begin a window; returns a token for :meth:`stop`."""

    @abstractmethod
    def stop(self, token: Any) -> EnergyReading:
        """End the window begun by ``token``."""


class NullPowerReader(PowerReader):
    """Nothing can be read here; says so, with why."""

    source = UNAVAILABLE

    def __init__(self, reason: str = "no power sensor readable on this device"):
        self.reason = reason

    @property
    def available(self) -> bool:
        return False

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, token: float) -> EnergyReading:
        return EnergyReading(self.source, time.perf_counter() - token, None, self.reason)


class NvmlEnergyCounter(PowerReader):
    """NVML's total-energy counter (millijoules since driver load; Volta and newer)."""

    source = "nvml_energy_counter"
    min_window_s = 0.5

    def __init__(self, handle: Any):
        self.handle = handle

    @staticmethod
    def supported(handle: Any) -> bool:
        return nvml.call("nvmlDeviceGetTotalEnergyConsumption", handle) is not None

    def start(self) -> tuple[float, int]:
        return time.perf_counter(), nvml.get_nvml().nvmlDeviceGetTotalEnergyConsumption(
            self.handle)

    def stop(self, token: tuple[float, int]) -> EnergyReading:
        mj = nvml.get_nvml().nvmlDeviceGetTotalEnergyConsumption(self.handle)
        t1 = time.perf_counter()
        t0, mj0 = token
        return EnergyReading(self.source, t1 - t0, (mj - mj0) / 1000.0)


class NvmlPowerSampler(PowerReader):
    """Polls ``nvmlDeviceGetPowerUsage`` (mW) on a thread and integrates it (older GPUs)."""

    source = "nvml_power_sampling"
    min_window_s = 1.0

    def __init__(self, handle: Any, interval_s: float = 0.01):
        self.handle = handle
        self.interval_s = interval_s

    def start(self) -> dict:
        state = {"samples": [], "stop": threading.Event()}

        def poll() -> None:
            get = nvml.get_nvml().nvmlDeviceGetPowerUsage
            while not state["stop"].is_set():
                state["samples"].append((time.perf_counter(), get(self.handle) / 1000.0))
                state["stop"].wait(self.interval_s)

        state["t0"] = time.perf_counter()
        state["thread"] = threading.Thread(target=poll, daemon=True)
        state["thread"].start()
        return state

    def stop(self, token: dict) -> EnergyReading:
        t1 = time.perf_counter()
        token["stop"].set()
        token["thread"].join()
        duration = t1 - token["t0"]
        samples = token["samples"]
        if len(samples) < 2:
            return EnergyReading(self.source, duration, None, "too few power samples")
        energy = sum((tb - ta) * (pa + pb) / 2.0
                     for (ta, pa), (tb, pb) in zip(samples, samples[1:], strict=False))
        # Scale the integral to the window: the first and last samples do not sit at its edges.
        covered = samples[-1][0] - samples[0][0]
        if covered > 0:
            energy *= duration / covered
        return EnergyReading(self.source, duration, energy)


class RaplReader(PowerReader):
    """Intel/AMD RAPL package-energy counters under ``/sys/class/powercap`` (microjoules)."""

    source = "rapl"
    min_window_s = 0.5

    def __init__(self, domains: list[str]):
        self.domains = domains
        self.ranges = [self._read(os.path.join(d, "max_energy_range_uj")) for d in domains]

    @staticmethod
    def _read(path: str) -> int:
        with open(path) as f:
            return int(f.read().strip())

    @classmethod
    def discover(cls, root: str = "/sys/class/powercap") -> RaplReader | None:
        """Package domains (``intel-rapl:N``, not sub-zones) that can actually be read."""
        domains = sorted(d for d in glob.glob(os.path.join(root, "intel-rapl:*"))
                         if d.count(":") == 1)
        readable = []
        for d in domains:
            try:
                cls._read(os.path.join(d, "energy_uj"))
                cls._read(os.path.join(d, "max_energy_range_uj"))
                readable.append(d)
            except (OSError, ValueError):
                continue
        return cls(readable) if readable else None

    def _counters(self) -> list[int]:
        return [self._read(os.path.join(d, "energy_uj")) for d in self.domains]

    def start(self) -> tuple[float, list[int]]:
        return time.perf_counter(), self._counters()

    def stop(self, token: tuple[float, list[int]]) -> EnergyReading:
        after = self._counters()
        t1 = time.perf_counter()
        t0, before = token
        total_uj = 0
        for b, a, wrap in zip(before, after, self.ranges, strict=True):
            total_uj += a - b if a >= b else a + wrap - b  # counter wrapped once
        return EnergyReading(self.source, t1 - t0, total_uj / 1e6)


def cpu_power_reader(root: str = "/sys/class/powercap") -> PowerReader:
    if not os.path.isdir(root):
        return NullPowerReader(f"{root} does not exist (no RAPL; usual in VMs and containers)")
    reader = RaplReader.discover(root)
    if reader is None:
        return NullPowerReader(f"no readable RAPL package domain under {root} "
                               "(energy_uj usually needs root)")
    return reader


def gpu_power_reader(handle: Any) -> PowerReader:
    if nvml.get_nvml() is None:
        return NullPowerReader(nvml.unavailable_reason or "NVML unavailable")
    if NvmlEnergyCounter.supported(handle):
        return NvmlEnergyCounter(handle)
    if nvml.call("nvmlDeviceGetPowerUsage", handle) is not None:
        return NvmlPowerSampler(handle)
    return NullPowerReader("this GPU reports neither energy nor power through NVML")
