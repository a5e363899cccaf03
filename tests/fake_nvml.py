"""A stand-in for the pynvml module: one GPU with an energy counter that grows at ``power_w``."""

from __future__ import annotations

import time
from types import SimpleNamespace


class FakeNvml:
    def __init__(self, power_w: float = 300.0, energy_counter: bool = True,
                 name: str = "NVIDIA H100 80GB HBM3"):
        self.power_w = power_w
        self.energy_counter = energy_counter
        self.name = name
        self.t0 = time.perf_counter()
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        if index != 0:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return "handle0"

    def nvmlDeviceGetName(self, handle):
        return self.name.encode()  # old bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 * 2**30, free=79 * 2**30, used=2**30)

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetMaxClockInfo(self, handle, kind):
        return {1: 1980, 2: 2619}[kind]

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return {1: 1755, 2: 2619}[kind]

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return 700_000

    def nvmlDeviceGetUUID(self, handle):
        return "GPU-00000000-fake"

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 41

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x4 | 0x20

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_counter:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return int((time.perf_counter() - self.t0) * self.power_w * 1000)  # mJ

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.power_w * 1000)  # mW
