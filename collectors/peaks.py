"""Achievable peaks of a device, measured by micro-benchmarks (roofline inputs for predictors).

Datasheet peaks are not what a kernel can reach; predictors need the achievable ones, so each
device gets a large-GEMM compute peak per dtype and a copy-bandwidth peak, measured here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from collectors.devices import ComputeDevice
from collectors.gemm.backends import GemmBackend, backend_for
from collectors.ops import Op
from collectors.probe import Calmness, SpeedProbe, measure_when_calm
from collectors.store.repo import Peak
from collectors.timing import PerfCounterTimer, Timer, TimingPolicy, time_kernel

PEAK_POLICY = TimingPolicy(warmup_s=0.2, min_reps=5, min_time_s=0.5, max_reps=200,
                           target_rep_ms=5.0, power_window_s=0.0)


def _best(fn: Callable[[], object], timer: Timer, policy: TimingPolicy,
          probe: SpeedProbe | None = None) -> tuple[float, float, Calmness | None]:
    """Fastest-decile time per call (ms), the median's relative spread and how calm the
    machine was; with a speed probe, measured while the machine runs at full speed (a peak
    from a slow phase would be low)."""
    stats, calm = measure_when_calm(lambda: time_kernel(fn, timer, policy),
                                    lambda s: s.p10_ms, probe)
    return stats.p10_ms, stats.std_ms / stats.median_ms if stats.median_ms else 0.0, calm


def _copy_kernel(device: ComputeDevice, nbytes: int) -> tuple[Callable[[], object], Timer]:
    if device.info.kind == "gpu":
        import cupy

        from collectors.gemm.backends import CudaEventTimer

        src = cupy.ones(nbytes // 4, dtype=cupy.float32)
        dst = cupy.empty_like(src)

        def gpu_copy() -> object:
            return cupy.copyto(dst, src)

        return gpu_copy, CudaEventTimer()
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)

    def cpu_copy() -> object:
        return np.copyto(dst, src)

    return cpu_copy, PerfCounterTimer()


def default_peak_dtypes(device: ComputeDevice, backend: GemmBackend) -> list[str]:
    """The dtypes worth a compute peak: the tensor-core/low-precision paths and fp32."""
    wanted = ["fp32", "tf32", "fp16", "bf16"] if device.info.kind == "gpu" else ["fp32", "bf16"]
    return [d for d in wanted if d in backend.dtypes()]


def measure_peaks(device: ComputeDevice, backend: GemmBackend | None = None,
                  dtypes: list[str] | None = None, bandwidth: bool = True,
                  policy: TimingPolicy = PEAK_POLICY,
                  probe: SpeedProbe | None = None,
                  calmness: dict[str, Calmness] | None = None) -> list[Peak]:
    """Compute peak (TFLOP/s) per dtype, and copy bandwidth (GB/s) when ``bandwidth``; each
    through ``probe`` when given (collectors.probe), and then how calm each was goes into
    ``calmness`` (metric -> Calmness) when given."""
    gpu = device.info.kind == "gpu"
    backend = backend or backend_for(device.info.kind, index=getattr(device, "index", 0))
    size = 8192 if gpu else 1024
    peaks: list[Peak] = []
    for dtype in dtypes if dtypes is not None else default_peak_dtypes(device, backend):
        prepared = backend.prepare(Op.gemm(size, size, size, dtype))
        t_ms, spread, calm = _best(prepared.fn, prepared.timer, policy, probe)
        tflops = 2 * size**3 / (t_ms * 1e-3) / 1e12
        peaks.append(Peak(f"compute_{dtype}", tflops, "TFLOP/s", tflops * spread,
                          f"{backend.name} {size}^3 GEMM, fastest decile of repetitions"))
        if calm is not None and calmness is not None:
            calmness[peaks[-1].metric] = calm
        del prepared
    if not bandwidth:
        return peaks
    nbytes = (1 << 30) if gpu else (256 << 20)
    fn, timer = _copy_kernel(device, nbytes)
    t_ms, spread, calm = _best(fn, timer, policy, probe)
    gbs = 2 * nbytes / (t_ms * 1e-3) / 1e9  # one read and one write of every byte
    peaks.append(Peak("bandwidth", gbs, "GB/s", gbs * spread,
                      f"copy of {nbytes >> 20} MiB, read+write bytes, fastest decile"))
    if calm is not None and calmness is not None:
        calmness["bandwidth"] = calm
    return peaks


def slow_peaks(calmness: dict[str, Calmness], probe: SpeedProbe) -> list[str]:
    """Peaks measured when ``probe`` knew little (the start of a sweep) whose windows it now,
    after a sweep's worth of windows, finds slow."""
    return [m for m, c in calmness.items() if c.slow_by_now(probe)]


def remeasure_peaks(device: ComputeDevice, backend: GemmBackend, probe: SpeedProbe,
                    metrics: list[str], stored: dict[str, float],
                    policy: TimingPolicy = PEAK_POLICY) -> list[tuple[Peak, float]]:
    """``metrics`` measured again through ``probe``, returned with the value stored before
    where the new one is higher (an achievable peak from a slow phase is low; one measured
    slow again is not lower for it)."""
    dtypes = [m.removeprefix("compute_") for m in metrics if m.startswith("compute_")]
    again = measure_peaks(device, backend, dtypes, "bandwidth" in metrics, policy, probe)
    return [(p, stored[p.metric]) for p in again
            if p.metric in stored and p.value > stored[p.metric]]
