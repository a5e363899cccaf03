"""Features of a GEMM on a device: sizes, work, traffic, roofline bound, wave quantisation,
block fill and remainders.

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


# A GEMM is "aligned" when each operand's rows, as stored row-major, hold a multiple of this many
# elements: cuBLAS then loads them in whole 16-byte vectors, and on a GPU tensor-core dtypes run
# several times faster (docs/results.md). Which dimensions those are depends on the layout:
# for C = A.B untransposed, k (A's rows) and n (B's and C's), never m. Real layers mostly are
# aligned, odd token or pixel counts (m = 49 for a 7x7 map) included.
ALIGNMENT = 8
ALIGNED_MEANING = f"k and n multiples of {ALIGNMENT} (the rows of A, B and C untransposed)"


def leading_dims(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elements per stored row of A, B and C for row-major C = op(A).op(B) (a GEMM frame or
    mapping of arrays): k (m when A is transposed), n (k when B is), and n."""
    m, n, k = (np.asarray(frame[c], dtype=np.int64) for c in ("m", "n", "k"))
    trans_a = _col(frame, "trans_a", 0).astype(bool)
    trans_b = _col(frame, "trans_b", 0).astype(bool)
    return np.where(trans_a, m, k), np.where(trans_b, k, n), n


def padded_to_alignment(m: int, n: int, k: int, trans_a: int = 0,
                        trans_b: int = 0) -> tuple[int, int, int]:
    """(m, n, k) with every dimension that is some operand's row length (:func:`leading_dims`)
    rounded up to a multiple of :data:`ALIGNMENT`: the shape a caller would pad to for the
    aligned kernels (the extra rows and columns hold zeros)."""
    rows = {"n"} | {"m" if trans_a else "k"} | {"k" if trans_b else "n"}
    def up(name: str, x: int) -> int:
        return -(-x // ALIGNMENT) * ALIGNMENT if name in rows else x
    return up("m", m), up("n", n), up("k", k)


VECTOR_BYTES = 16  # the widest load cuBLAS uses along a row (and an SSE vector on a CPU)


def row_alignment_bytes(frame, elem: np.ndarray) -> np.ndarray:
    """Bytes (1..16, powers of two) to which every operand's stored rows are aligned: the least,
    over A, B and C (:func:`leading_dims`), of the largest power of two dividing the row's
    length in bytes. Kernels load rows in vectors of this width at most, so bf16 rows of an
    even length (4 bytes) run faster than odd ones (2 bytes), though neither is aligned."""
    return np.minimum.reduce([np.minimum(_pow2_align(d, VECTOR_BYTES) * elem, VECTOR_BYTES)
                              for d in leading_dims(frame)])


def is_aligned(frame) -> np.ndarray:
    """Which rows have every operand's stored rows a multiple of :data:`ALIGNMENT` elements
    (:func:`leading_dims`)."""
    return np.logical_and.reduce([d % ALIGNMENT == 0 for d in leading_dims(frame)])


FILL_BLOCK = 16  # elements: an AVX-512 vector of fp32, a tensor-core fragment's edge


def block_fill(x: np.ndarray, block: int = FILL_BLOCK) -> np.ndarray:
    """Share of the padded extent that is real work when x is rounded up to whole blocks (1 for
    a multiple of the block, 33/48 for 33): vector and fragment kernels pay for the padding.
    Unlike alignment, it varies smoothly, so random shapes teach it."""
    return x / (np.ceil(x / block) * block)


def _tail(x: np.ndarray, block: int = FILL_BLOCK) -> np.ndarray:
    """Share of x left over after whole blocks (0 for 32, 15/31 for 31): kernels that handle
    the remainder separately, not by padding, pay for it by this share instead (in blocks of
    16 and of 8: an 8-wide remainder loop leaves 31 slower than 24 or 32)."""
    return (x % block) / x


def _col(frame, name: str, default: float | None = None) -> np.ndarray:
    """A column of a DataFrame or of a mapping of arrays (the service's fast path)."""
    if name in frame:
        return np.asarray(frame[name])
    return np.full(len(frame["m"]), default, dtype=float)


def _per_dtype(dtypes: np.ndarray, profile: DeviceProfile) -> tuple[np.ndarray, ...]:
    """Bytes per element, tensor-core flag and peak FLOP/s of every row, looked up once per
    distinct dtype."""
    uniq, inverse = np.unique(dtypes, return_inverse=True)
    table = np.array([(DTYPES[str(d)].bytes_per_element, float(DTYPES[str(d)].tensor_core),
                       profile.compute_tflops(str(d)) * 1e12) for d in uniq], dtype=float)
    rows = table[inverse]
    return rows[:, 0], rows[:, 1], rows[:, 2]


def _work(frame, profile: DeviceProfile):
    m, n, k, b = (_col(frame, c).astype(float) for c in ("m", "n", "k", "batch"))
    # Fixed-width strings: a DataFrame's object column compares and sorts element by element
    # in Python (10k rows: 8 ms of features instead of 4).
    dtypes = _col(frame, "dtype").astype(str)
    elem, tc, peak_flops = _per_dtype(dtypes, profile)
    flops = 2.0 * m * n * k * b
    nbytes = (m * k + k * n + m * n) * elem * b
    t_compute = flops / peak_flops
    t_memory = nbytes / (profile.peaks["bandwidth"] * 1e9)
    return m, n, k, b, dtypes, elem, tc, flops, nbytes, t_compute, t_memory


BOUNDS = ("roofline", "waves")
GPU_TILE = 128  # output tile edge (elements) of the wave features and the "waves" bound


def roofline_ms(frame, profile: DeviceProfile) -> np.ndarray:
    """max(FLOPs / peak compute, bytes / peak bandwidth) in ms, per row."""
    return gemm_terms(frame, profile)[1]


FEATURE_NAMES = [
    "log2_m", "log2_n", "log2_k", "log2_batch", "log2_flops", "log2_bytes", "log2_intensity",
    "log2_roofline_ms", "compute_bound", "log2_waves", "wave_efficiency", "align_m", "align_n",
    "align_k", "min_dim_log2", "bytes_per_element", "tensor_core", "trans_a", "trans_b",
] + [f"is_{d}" for d in FEATURE_DTYPES] + [
    "fill_m", "fill_n", "fill_k", "tail_m", "tail_n", "tail_k", "tail8_m", "tail8_n", "tail8_k",
    "row_align_bytes"]


def feature_matrix(frame, profile: DeviceProfile) -> np.ndarray:
    """(rows, len(FEATURE_NAMES)) float32 features of a GEMM frame or mapping of arrays."""
    return gemm_terms(frame, profile)[0]


def gemm_terms(frame, profile: DeviceProfile,
               bound: str = "roofline") -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and the time bound (ms, float64), from one pass over the rows.

    ``bound="roofline"``: max(FLOPs / peak compute, bytes / peak bandwidth). ``"waves"`` (GPU
    profiles): the compute term is paid for whole waves of whole 128x128 output tiles over the
    SMs, as a GEMM kernel with fixed tiles runs (200 tiles on 46 SMs take 5 waves, not 4.35,
    and a 130-row edge costs two rows of tiles). A library that picks smaller tiles or splits K
    for small shapes does not follow it, which is why the forest chooses between the two from
    its training data (``GemmCostForest(bound="auto")``)."""
    m, n, k, b, dtypes, elem, tc, flops, nbytes, t_compute, t_memory = _work(frame, profile)
    tile = GPU_TILE if profile.kind == "gpu" else 64
    tiles = np.ceil(m / tile) * np.ceil(n / tile) * b
    units = max(profile.sm_count, 1)
    waves = np.ceil(tiles / units)
    cols = [
        np.log2(m), np.log2(n), np.log2(k), np.log2(b), np.log2(flops), np.log2(nbytes),
        np.log2(flops / nbytes), np.log2(np.maximum(t_compute, t_memory) * 1e3),
        (t_compute >= t_memory).astype(float), np.log2(waves), tiles / (waves * units),
        _pow2_align(m), _pow2_align(n), _pow2_align(k),
        np.log2(np.minimum(np.minimum(m, n), k)), elem, tc,
        _col(frame, "trans_a", 0).astype(float), _col(frame, "trans_b", 0).astype(float),
    ] + [(dtypes == d).astype(float) for d in FEATURE_DTYPES] + [
        block_fill(m), block_fill(n), block_fill(k), _tail(m), _tail(n), _tail(k), _tail(m, 8),
        _tail(n, 8), _tail(k, 8), row_alignment_bytes(frame, elem)]
    if bound == "waves" and profile.kind == "gpu":
        t_compute = t_compute * (waves * units * tile * tile) / (m * n * b)
    elif bound not in BOUNDS:
        raise ValueError(f"bound: {bound!r}; expected one of {', '.join(BOUNDS)}")
    return np.column_stack(cols).astype(np.float32), np.maximum(t_compute, t_memory) * 1e3


def gemm_features(frame: pd.DataFrame, profile: DeviceProfile) -> pd.DataFrame:
    """The features as a labelled frame (for inspection; models use :func:`feature_matrix`)."""
    return pd.DataFrame(feature_matrix(frame, profile), columns=FEATURE_NAMES,
                        index=getattr(frame, "index", None))
