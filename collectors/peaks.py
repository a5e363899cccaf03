"""Achievable peaks of a device, measured by micro-benchmarks (roofline inputs for predictors).

Datasheet peaks are not what a kernel can reach; predictors need the achievable ones, so each
device gets a large-GEMM compute peak per dtype and a copy-bandwidth peak, measured here. A CPU
also gets what a fresh output costs beyond its traffic: glibc hands allocations above its mmap
threshold (32 MiB at most) back to the system when freed, so a framework's every new tensor of
that size faults its pages in again, at a few GB/s (``first_touch``, ms per GB, and from which
size on: ``first_touch_from``, MiB). GPU frameworks keep freed memory in a caching allocator.
And a CPU's pools run far below its bandwidth (torch's NCHW max pool at ~1 GB/s where a copy
runs at 28, on the development VM): ``pool_max`` and ``pool_avg``, ns per output element.
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

# What measure_peaks measures on a CPU beside the roofline's peaks (``beyond_roofline``).
BEYOND_ROOFLINE = ("first_touch", "first_touch_from", "pool_max", "pool_avg")
# The pool the rates are measured on: 3x3 windows, stride 1, over 8 x 64 x 56 x 56 (6.4 MB).
POOL_SHAPE, POOL_KERNEL = (8, 64, 56, 56), 3
# The CPU's figures beyond the roofline are measured more briefly than the peaks.
CPU_FIGURES_POLICY = TimingPolicy(warmup_s=0.05, min_reps=5, min_time_s=0.15, max_reps=200,
                                  target_rep_ms=5.0, power_window_s=0.0)
# Output sizes probed (MiB): around glibc's largest mmap threshold, and beyond.
FIRST_TOUCH_SIZES_MIB = (4, 8, 16, 24, 32, 48, 64, 128)
# A size pays for its fresh output where that costs at least this share of what the largest
# size's costs per byte (below the threshold a fresh output costs next to nothing).
FIRST_TOUCH_SHARE = 0.5


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
                  calmness: dict[str, Calmness] | None = None,
                  beyond_roofline: bool | None = None) -> list[Peak]:
    """Compute peak (TFLOP/s) per dtype, copy bandwidth (GB/s) when ``bandwidth`` and, on a
    CPU, :data:`BEYOND_ROOFLINE` (:func:`measure_first_touch`, :func:`measure_pool_rates`)
    when ``beyond_roofline`` (by default with the bandwidth); each through ``probe`` when given
    (collectors.probe), and then how calm each peak was goes into ``calmness`` (metric ->
    Calmness) when given."""
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
    if not gpu and (bandwidth if beyond_roofline is None else beyond_roofline):
        peaks += measure_first_touch(probe=probe) + measure_pool_rates(probe=probe)
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


def measure_first_touch(policy: TimingPolicy = CPU_FIGURES_POLICY,
                        probe: SpeedProbe | None = None,
                        sizes_mib: tuple[int, ...] = FIRST_TOUCH_SIZES_MIB) -> list[Peak]:
    """The CPU's cost of a new torch output beyond writing it, per size in ``sizes_mib``:
    ``torch.neg`` into a fresh tensor against into one kept (``out=``); read by
    :func:`first_touch_peaks`."""
    import torch

    timer = PerfCounterTimer()
    excess_ms_per_gb = []
    for mib in sizes_mib:
        x = torch.ones((mib << 20) // 4)
        kept = torch.empty_like(x)
        fresh_ms, _, _ = _best(lambda x=x: torch.neg(x), timer, policy, probe)
        kept_ms, _, _ = _best(lambda x=x, kept=kept: torch.neg(x, out=kept), timer, policy,
                              probe)
        excess_ms_per_gb.append(max(fresh_ms - kept_ms, 0.0) / ((mib << 20) / 1e9))
        del x, kept
    return first_touch_peaks(sizes_mib, excess_ms_per_gb)


def first_touch_peaks(sizes_mib: tuple[int, ...], excess_ms_per_gb: list[float]) -> list[Peak]:
    """``first_touch`` (ms per GB of output: the median over the sizes that pay) and
    ``first_touch_from`` (MiB: the smallest size from which on every size pays) from the
    excess a fresh output cost per size (ms per GB). None pays: first_touch 0, from twice the
    largest size."""
    largest = excess_ms_per_gb[-1]
    pays = [e >= FIRST_TOUCH_SHARE * largest for e in excess_ms_per_gb]
    # Writing a kept 128 MiB output costs ~30 ms/GB on the development VM: an excess under a
    # tenth of that is timing noise, not page faults.
    first = next((i for i in range(len(pays)) if all(pays[i:])), None) if largest > 3.0 else None
    paying = [excess_ms_per_gb[i] for i in range(first, len(pays))] if first is not None else []
    probed = ", ".join(f"{m}" for m in sizes_mib)
    return [Peak("first_touch", float(np.median(paying)) if paying else 0.0, "ms/GB",
                 float(np.std(paying)) if len(paying) > 1 else None,
                 f"torch.neg into a fresh output less into a kept one, sizes {probed} MiB, "
                 "fastest decile each; median over the sizes that pay"
                 + ("" if paying else " (none did)")),
            Peak("first_touch_from", float(sizes_mib[first]) if paying
                 else float(2 * sizes_mib[-1]), "MiB", None,
                 f"smallest of {probed} MiB from which on a fresh output costs at least "
                 f"{FIRST_TOUCH_SHARE:g}x the largest's per byte"
                 + ("" if paying else "; none did: twice the largest"))]


def measure_pool_rates(policy: TimingPolicy = CPU_FIGURES_POLICY,
                       probe: SpeedProbe | None = None) -> list[Peak]:
    """ns per output element of torch's max and average 2-D pools on this CPU (3x3 windows,
    stride 1, padding 1, fastest decile); a pool op's time is at least its outputs at this
    rate (predictor.op_costs)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(*POOL_SHAPE)
    outputs = x.numel()  # stride 1, padding 1: as many outputs as inputs
    peaks = []
    for mode, pool in (("max", F.max_pool2d), ("avg", F.avg_pool2d)):
        t_ms, spread, _ = _best(lambda pool=pool: pool(x, POOL_KERNEL, 1, 1),
                                PerfCounterTimer(), policy, probe)
        ns = t_ms * 1e6 / outputs
        peaks.append(Peak(f"pool_{mode}", ns, "ns/output", ns * spread,
                          f"torch {pool.__name__} {POOL_KERNEL}x{POOL_KERNEL}, stride 1, over "
                          f"{'x'.join(map(str, POOL_SHAPE))} fp32, fastest decile"))
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
    again = measure_peaks(device, backend, dtypes, "bandwidth" in metrics, policy, probe,
                          beyond_roofline=False)
    return [(p, stored[p.metric]) for p in again
            if p.metric in stored and p.value > stored[p.metric]]
