"""Devices: one abstract class, a CPU implementation and an NVIDIA GPU implementation (NVML).

Devices are named as users see them (``cpu``, ``cuda:0``) and recognised durably by a
fingerprint, so measurements taken on the same hardware on different days join up.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from collectors import nvml
from collectors.power import NullPowerReader, PowerReader, cpu_power_reader, gpu_power_reader


class DeviceError(ValueError):
    """A device name that does not exist here, or a device that cannot be used."""


@dataclass
class DeviceInfo:
    """Static facts about a device. Memory in bytes, clocks in MHz, power in W."""

    name: str
    kind: str  # cpu | gpu
    model: str
    vendor: str | None = None
    host: str = field(default_factory=socket.gethostname)
    driver_version: str | None = None
    cuda_version: str | None = None
    sm_count: int | None = None
    memory_bytes: int | None = None
    max_sm_clock_mhz: float | None = None
    max_mem_clock_mhz: float | None = None
    power_limit_w: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        parts = [self.kind, self.model, str(self.memory_bytes), self.driver_version or "",
                 self.host, str(self.extra.get("uuid", ""))]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeviceState:
    """Clocks (MHz), temperature (°C) and throttle reasons at one moment; None if unknown."""

    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temperature_c: float | None = None
    throttle_reasons: str | None = None


class ComputeDevice(ABC):
    info: DeviceInfo

    @abstractmethod
    def state(self) -> DeviceState: ...

    @abstractmethod
    def power_reader(self) -> PowerReader: ...

    @abstractmethod
    def free_memory_bytes(self) -> int | None: ...


def _read_first(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    text = _read_first("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            out.setdefault(key.strip(), value.strip())
    return out


def _meminfo_bytes(key: str) -> int | None:
    for line in (_read_first("/proc/meminfo") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


class CpuDevice(ComputeDevice):
    def __init__(self) -> None:
        info = _cpuinfo()
        max_khz = _read_first("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        self.info = DeviceInfo(
            name="cpu",
            kind="cpu",
            model=info.get("model name") or platform.processor() or platform.machine(),
            vendor=info.get("vendor_id"),
            sm_count=os.cpu_count(),
            memory_bytes=_meminfo_bytes("MemTotal"),
            max_sm_clock_mhz=int(max_khz) / 1000.0 if max_khz else None,
            extra={"arch": platform.machine(), "flags_avx512": "avx512f" in info.get("flags", ""),
                   "flags_amx": "amx_bf16" in info.get("flags", "")},
        )

    def state(self) -> DeviceState:
        khz = _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
        mhz = int(khz) / 1000.0 if khz else None
        if mhz is None:
            cur = _cpuinfo().get("cpu MHz")
            mhz = float(cur) if cur else None
        temp = None
        for zone in sorted(os.listdir("/sys/class/thermal")) if os.path.isdir(
                "/sys/class/thermal") else []:
            raw = _read_first(f"/sys/class/thermal/{zone}/temp")
            if raw and raw.lstrip("-").isdigit():
                temp = int(raw) / 1000.0
                break
        return DeviceState(sm_clock_mhz=mhz, temperature_c=temp)

    def power_reader(self) -> PowerReader:
        return cpu_power_reader()

    def free_memory_bytes(self) -> int | None:
        return _meminfo_bytes("MemAvailable")


# NVML clocks-event (throttle) reason bits, named as nvidia-smi names them.
THROTTLE_BITS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}


def decode_throttle_reasons(mask: int | None) -> str | None:
    if mask is None:
        return None
    names = [name for bit, name in THROTTLE_BITS.items() if mask & bit]
    return ",".join(names) if names else "none"


def _cuda_pci_bus_id(index: int) -> str | None:
    try:
        import cupy

        return cupy.cuda.runtime.deviceGetPCIBusId(index)
    except Exception:
        return None


def _cuda_sm_count(index: int) -> int | None:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceProperties(index)["multiProcessorCount"])
    except Exception:
        return None


class NvidiaGpu(ComputeDevice):
    """An NVIDIA GPU seen through NVML; ``index`` is the CUDA device index (``cuda:index``)."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, index: int):
        lib = nvml.get_nvml()
        if lib is None:
            raise DeviceError(f"cuda:{index}: {nvml.unavailable_reason}")
        # CUDA and NVML may order GPUs differently (CUDA_VISIBLE_DEVICES); PCI bus IDs agree.
        bus_id = _cuda_pci_bus_id(index)
        handle = None
        if bus_id:
            handle = nvml.call("nvmlDeviceGetHandleByPciBusId", bus_id)
        if handle is None:
            handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            raise DeviceError(f"cuda:{index}: no such GPU (found {gpu_count()})")
        self.index, self.handle = index, handle
        mem = nvml.call("nvmlDeviceGetMemoryInfo", handle)
        cuda_ver = nvml.call("nvmlSystemGetCudaDriverVersion")
        limit_mw = nvml.call("nvmlDeviceGetPowerManagementLimit", handle)
        self.info = DeviceInfo(
            name=f"cuda:{index}",
            kind="gpu",
            model=nvml.text(nvml.call("nvmlDeviceGetName", handle, default="NVIDIA GPU")),
            vendor="NVIDIA",
            driver_version=nvml.text(nvml.call("nvmlSystemGetDriverVersion", default="")) or None,
            cuda_version=f"{cuda_ver // 1000}.{cuda_ver % 1000 // 10}" if cuda_ver else None,
            sm_count=_cuda_sm_count(index),
            memory_bytes=int(mem.total) if mem is not None else None,
            max_sm_clock_mhz=nvml.call("nvmlDeviceGetMaxClockInfo", handle, self.NVML_CLOCK_SM),
            max_mem_clock_mhz=nvml.call("nvmlDeviceGetMaxClockInfo", handle,
                                        self.NVML_CLOCK_MEM),
            power_limit_w=limit_mw / 1000.0 if limit_mw else None,
            extra={"uuid": nvml.text(nvml.call("nvmlDeviceGetUUID", handle, default="")),
                   "pci_bus_id": bus_id},
        )

    def state(self) -> DeviceState:
        mask = nvml.call("nvmlDeviceGetCurrentClocksEventReasons", self.handle)
        if mask is None:
            mask = nvml.call("nvmlDeviceGetCurrentClocksThrottleReasons", self.handle)
        return DeviceState(
            sm_clock_mhz=nvml.call("nvmlDeviceGetClockInfo", self.handle, self.NVML_CLOCK_SM),
            mem_clock_mhz=nvml.call("nvmlDeviceGetClockInfo", self.handle, self.NVML_CLOCK_MEM),
            temperature_c=nvml.call("nvmlDeviceGetTemperature", self.handle,
                                    self.NVML_TEMPERATURE_GPU),
            throttle_reasons=decode_throttle_reasons(mask),
        )

    def power_reader(self) -> PowerReader:
        return gpu_power_reader(self.handle)

    def free_memory_bytes(self) -> int | None:
        mem = nvml.call("nvmlDeviceGetMemoryInfo", self.handle)
        return int(mem.free) if mem is not None else None


def gpu_count() -> int:
    return int(nvml.call("nvmlDeviceGetCount", default=0) or 0)


def detect_devices() -> list[ComputeDevice]:
    """The CPU and every NVIDIA GPU NVML can see."""
    devices: list[ComputeDevice] = [CpuDevice()]
    devices.extend(NvidiaGpu(i) for i in range(gpu_count()))
    return devices


def names_local_device(name: str) -> bool:
    """Whether ``name`` is how a command names a device of this machine (``cpu``, ``cuda``,
    ``cuda:N``) rather than a device model from the store (:func:`get_device` resolves it)."""
    key = name.strip().lower()
    return key == "cpu" or key.startswith("cuda")


def local_model(name: str) -> str | None:
    """The model of the device of this machine that ``name`` names (cpu, cuda:N), or None
    where ``name`` is not such a name (a device model from the store, say). A name of a
    device this machine lacks is get_device's clear error."""
    return get_device(name.strip()).info.model if names_local_device(name) else None


def matching_models(spec: str, models: Iterable[str]) -> list[str]:
    """The device models ``spec`` names: itself where it is one of ``models``, else every one
    that contains it, ignoring case. One is a match; none or several are not, and each caller
    says so in its own terms."""
    key = spec.strip()
    models = list(models)
    if key in models:
        return [key]
    return [m for m in models if key.lower() in m.lower()]


def get_device(name: str) -> ComputeDevice:
    """``cpu``, ``cuda`` (= ``cuda:0``) or ``cuda:N``."""
    key = name.strip().lower()
    if key == "cpu":
        return CpuDevice()
    if key == "cuda":
        key = "cuda:0"
    if key.startswith("cuda:") and key[5:].isdigit():
        index = int(key[5:])
        if nvml.get_nvml() is None:
            raise DeviceError(f"--device {name}: no NVIDIA GPU usable here "
                              f"({nvml.unavailable_reason})")
        if index >= gpu_count():
            raise DeviceError(f"--device {name}: no such GPU (this machine has {gpu_count()})")
        return NvidiaGpu(index)
    raise DeviceError(f"--device {name!r}: expected 'cpu' or 'cuda:N'")


__all__ = ["ComputeDevice", "CpuDevice", "DeviceError", "DeviceInfo", "DeviceState",
           "NvidiaGpu", "NullPowerReader", "detect_devices", "get_device", "local_model",
           "names_local_device"]
