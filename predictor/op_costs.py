"""Costs of generic ops from the GEMM forest: every op that is matrix work is decomposed into the
GEMMs it runs (convs as implicit GEMMs, attention as two batched GEMMs); memory-bound ops (pool,
norm, elementwise) get the device's measured-bandwidth roofline bound plus the fixed cost per
call the GEMM model found for their dtype (dispatch and launch, which every op of the framework
pays: without it a small norm would cost a fraction of a microsecond), labelled as such, until a
learned per-op model exists for them. On a CPU whose peaks include the cost of fresh outputs
(collectors.peaks: glibc faults a large new tensor's pages in at every call), an op whose new
output is at least that size pays it too: the GEMMs were timed into kept outputs, the bounds
count bytes only. And where the peaks include a CPU's pool rates, a pool costs at least its
output elements at its mode's rate: torch's NCHW pools there run at a small share of the
bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collectors.ops import DTYPES, Op, op_bytes, op_gemm_counts, op_output_bytes, op_parts
from predictor.forest import GEMM_COLUMNS, GemmCostForest

FOREST = "gemm-forest"
ROOFLINE = "bandwidth-roofline"
SUM_OF_OPS = "sum of op predictions"  # a network's method when no network model answers it
FIRST_TOUCH = "first touch of fresh outputs"  # named in a sum's method where some op paid it
POOL_RATE = "pool rate"  # a pool priced by its outputs at the device's measured rate


@dataclass
class OpCost:
    latency_ms: float
    latency_std_ms: float
    power_w: float | None
    power_std_w: float | None
    energy_j: float | None
    energy_std_j: float | None
    source: str
    gemm_count: int
    power_extrapolated: bool = False  # a GEMM of it is shorter than any whose power was read
    latency_extrapolated: bool = False  # a GEMM of it lies beyond the model's training shapes
    first_touch_ms: float = 0.0  # of latency_ms: faulting in its new output's pages


def predict_ops(model: GemmCostForest, ops: list[Op]) -> list[OpCost]:
    """One cost per op, in order. Every GEMM of the batch goes through the forest in one call;
    a GEMM an op runs many times (a recurrent layer's steps) is predicted once and counted as
    often, its error too (the same model's error at every step)."""
    rows, owner, times = [], [], []
    for i, op in enumerate(ops):
        for (m, n, k, batch), count in op_gemm_counts(op):
            rows.append((m, n, k, batch, op.dtype, int(op.params.get("trans_a", 0)),
                         int(op.params.get("trans_b", 0))))
            owner.append(i)
            times.append(count)
    owner_arr, times_arr = np.array(owner, dtype=int), np.array(times, dtype=float)
    pred = None
    if rows:
        cols = list(zip(*rows, strict=True))
        pred = model.predict_costs({c: np.array(v) for c, v in zip(GEMM_COLUMNS, cols,
                                                                    strict=True)})
    peaks = model._profile().peaks
    bandwidth_gbs = peaks["bandwidth"]
    fixed_ms = getattr(model, "overhead_ms_", {})  # per dtype; older models: none
    touch = FreshOutputs.of(peaks)

    def bound_ms(op: Op) -> float:
        return fixed_ms.get(op.dtype, 0.0) + op_bytes(op) / (bandwidth_gbs * 1e9) * 1e3

    def pool_rate_ms(op: Op) -> float:
        """A pool's outputs at its mode's measured rate (ns per output); 0 for other ops and
        where the device has no such rate."""
        if op.kind != "pool":
            return 0.0
        rate = peaks.get("pool_max" if op.params["max"] else "pool_avg", 0.0)
        return op_output_bytes(op) // DTYPES[op.dtype].bytes_per_element * rate / 1e6

    out = []
    for i, op in enumerate(ops):
        sel = np.flatnonzero(owner_arr == i)
        fresh = touch.ms(op)
        if len(sel) == 0:
            bound, rate = bound_ms(op), fixed_ms.get(op.dtype, 0.0) + pool_rate_ms(op)
            t = max(bound, rate) + fresh
            # A bound, not a learned figure: its uncertainty is stated as the whole value.
            out.append(OpCost(t, t, None, None, None, None, POOL_RATE if rate > bound
                              else ROOFLINE, 0, first_touch_ms=fresh))
            continue
        # memory-bound parts beside the GEMMs (a recurrent layer's gate arithmetic), and the
        # new output's first touch: device figures, not learned ones
        bounds = float(sum(bound_ms(part) * count for part, count in op_parts(op))) + fresh
        w = times_arr[sel]
        lat = float((pred.latency_ms[sel] * w).sum()) + bounds
        lat_std = float(np.sqrt(((pred.latency_std_ms[sel] * w) ** 2).sum() + bounds ** 2))
        beyond = bool(pred.latency_extrapolated[sel].any())
        if pred.power_w is None or bounds:  # no power is known for a bound's share
            out.append(OpCost(lat, lat_std, None, None, None, None, FOREST, int(w.sum()),
                              latency_extrapolated=beyond, first_touch_ms=fresh))
            continue
        energy = float((pred.energy_j[sel] * w).sum())
        out.append(OpCost(lat, lat_std, energy / lat * 1e3,
                          float(np.sqrt((pred.power_std_w[sel] ** 2).mean())), energy,
                          float(np.sqrt(((pred.energy_std_j[sel] * w) ** 2).sum())), FOREST,
                          int(w.sum()),
                          bool(pred.power_extrapolated[sel].any()), beyond))
    return out


@dataclass(frozen=True)
class FreshOutputs:
    """What a new output costs beyond its bytes on a device: ``ms_per_gb`` from
    ``from_bytes`` on (peaks ``first_touch`` and ``first_touch_from``); nothing on devices
    without them (GPUs, stores measured before the probe)."""

    ms_per_gb: float = 0.0
    from_bytes: float = float("inf")

    @classmethod
    def of(cls, peaks: dict[str, float]) -> FreshOutputs:
        if peaks.get("first_touch", 0.0) <= 0 or "first_touch_from" not in peaks:
            return cls()
        return cls(peaks["first_touch"], peaks["first_touch_from"] * 2 ** 20)

    def ms(self, op: Op) -> float:
        """The first touch of ``op``'s new output (ms), 0 below the size that pays."""
        nbytes = op_output_bytes(op)
        return nbytes / 1e9 * self.ms_per_gb if nbytes >= self.from_bytes else 0.0


def total(costs: list[OpCost]) -> OpCost:
    """Sum of a network's op costs; power is energy over time when every op has it. Its source
    names the sources other than the GEMM model's that priced some of the ops, and the first
    touch of fresh outputs where some op paid it."""
    others = sorted({c.source for c in costs} - {FOREST, ROOFLINE})
    fresh = sum(c.first_touch_ms for c in costs)
    source = "; ".join([SUM_OF_OPS, *others, *[FIRST_TOUCH] * (fresh > 0)])
    lat = sum(c.latency_ms for c in costs)
    lat_std = float(np.sqrt(sum(c.latency_std_ms ** 2 for c in costs)))
    beyond = any(c.latency_extrapolated for c in costs)
    if not costs or any(c.energy_j is None for c in costs):
        return OpCost(lat, lat_std, None, None, None, None, source,
                      sum(c.gemm_count for c in costs), latency_extrapolated=beyond,
                      first_touch_ms=fresh)
    energy = sum(c.energy_j for c in costs)
    e_std = float(np.sqrt(sum(c.energy_std_j ** 2 for c in costs)))
    power = energy / lat * 1e3
    return OpCost(lat, lat_std, power, power * e_std / energy if energy else 0.0, energy, e_std,
                  source, sum(c.gemm_count for c in costs),
                  any(c.power_extrapolated for c in costs), beyond)
