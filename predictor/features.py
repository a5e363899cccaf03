"""Features of a GEMM on a device: sizes, work, traffic, roofline bound, wave quantisation.

Inputs are a frame with columns ``m, n, k, batch, dtype, trans_a, trans_b`` and the device's
achievable peaks (``compute_<dtype>`` in TFLOP/s, ``bandwidth`` in GB/s) plus its SM (or core)
count. The roofline bound (ms) is also the scale the forest's latency target is measured in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from collectors.ops import DTYPES

FEATURE_DTYPES = ["fp32", "tf32", "fp16", "bf16", "fp64"]


@dataclass
class DeviceProfile:
    """What the features need to know about a device model."""

    model: str
    kind: str  # cpu | gpu
    sm_count: int
    peaks: dict[str, float] = field(default_factory=dict)  # compute_<dtype> TFLOP/s, bandwidth
    peaks_source: str = "measured"

    def compute_tflops(self, dtype: str) -> float:
        if f"compute_{dtype}" in self.peaks:
            return self.peaks[f"compute_{dtype}"]
        # A dtype without its own peak falls back to fp32's (same units, conservative).
        return self.peaks.get("compute_fp32") or max(
            v for k, v in self.peaks.items() if k.startswith("compute_"))

    def to_dict(self) -> dict:
        return {"model": self.model, "kind": self.kind, "sm_count": self.sm_count,
                "peaks": self.peaks, "peaks_source": self.peaks_source}

    @classmethod
    def from_dict(cls, d: dict) -> DeviceProfile:
        return cls(d["model"], d["kind"], int(d["sm_count"]), dict(d["peaks"]),
                   d.get("peaks_source", "measured"))


def empirical_peaks(frame: pd.DataFrame) -> dict[str, float]:
    """Highest achieved TFLOP/s per dtype and GB/s in measured data: achievable peaks, taken from
    the measurements themselves when no micro-benchmark ran on the device (imported data)."""
    flops = 2.0 * frame.m * frame.n * frame.k * frame.batch
    secs = frame.latency_ms / 1e3
    peaks = {f"compute_{d}": float((flops / secs)[frame.dtype == d].max() / 1e12)
             for d in frame.dtype.unique()}
    elem = frame.dtype.map(lambda d: DTYPES[d].bytes_per_element)
    nbytes = (frame.m * frame.k + frame.k * frame.n + frame.m * frame.n) * elem * frame.batch
    peaks["bandwidth"] = float((nbytes / secs).max() / 1e9)
    return peaks


def _pow2_align(x: np.ndarray, cap: int = 64) -> np.ndarray:
    """Largest power of two (up to ``cap``) dividing x: alignment decides kernel choice."""
    x = x.astype(np.int64)
    return np.minimum(x & -x, cap).astype(float)


def roofline_ms(frame: pd.DataFrame, profile: DeviceProfile) -> np.ndarray:
    m, n, k, b = (frame[c].to_numpy(float) for c in ("m", "n", "k", "batch"))
    elem = frame.dtype.map(lambda d: DTYPES[d].bytes_per_element).to_numpy(float)
    flops = 2.0 * m * n * k * b
    nbytes = (m * k + k * n + m * n) * elem * b
    peak_flops = frame.dtype.map(profile.compute_tflops).to_numpy(float) * 1e12
    bw = profile.peaks["bandwidth"] * 1e9
    return np.maximum(flops / peak_flops, nbytes / bw) * 1e3


def gemm_features(frame: pd.DataFrame, profile: DeviceProfile) -> pd.DataFrame:
    """One row of features per GEMM row of ``frame``."""
    m, n, k, b = (frame[c].to_numpy(float) for c in ("m", "n", "k", "batch"))
    elem = frame.dtype.map(lambda d: DTYPES[d].bytes_per_element).to_numpy(float)
    tc = frame.dtype.map(lambda d: DTYPES[d].tensor_core).to_numpy(float)
    flops = 2.0 * m * n * k * b
    nbytes = (m * k + k * n + m * n) * elem * b
    peak_flops = frame.dtype.map(profile.compute_tflops).to_numpy(float) * 1e12
    bw = profile.peaks["bandwidth"] * 1e9
    t_compute, t_memory = flops / peak_flops, nbytes / bw
    tile = 128 if profile.kind == "gpu" else 64
    tiles = np.ceil(m / tile) * np.ceil(n / tile) * b
    units = max(profile.sm_count, 1)
    waves = np.ceil(tiles / units)
    out = {
        "log2_m": np.log2(m), "log2_n": np.log2(n), "log2_k": np.log2(k),
        "log2_batch": np.log2(b),
        "log2_flops": np.log2(flops), "log2_bytes": np.log2(nbytes),
        "log2_intensity": np.log2(flops / nbytes),
        "log2_roofline_ms": np.log2(np.maximum(t_compute, t_memory) * 1e3),
        "compute_bound": (t_compute >= t_memory).astype(float),
        "log2_waves": np.log2(waves),
        "wave_efficiency": tiles / (waves * units),
        "align_m": _pow2_align(m), "align_n": _pow2_align(n), "align_k": _pow2_align(k),
        "min_dim_log2": np.log2(np.minimum(np.minimum(m, n), k)),
        "bytes_per_element": elem, "tensor_core": tc,
        "trans_a": frame.get("trans_a", pd.Series(0, index=frame.index)).to_numpy(float),
        "trans_b": frame.get("trans_b", pd.Series(0, index=frame.index)).to_numpy(float),
    }
    for d in FEATURE_DTYPES:
        out[f"is_{d}"] = (frame.dtype == d).to_numpy(float)
    return pd.DataFrame(out, index=frame.index)
