"""Costs of generic ops from the GEMM forest: every op that is matrix work is decomposed into the
GEMMs it runs (convs as implicit GEMMs, attention as two batched GEMMs); memory-bound ops (pool,
norm, elementwise) get the device's measured-bandwidth roofline bound, labelled as such, until a
learned per-op model exists for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collectors.ops import DTYPES, Op
from predictor.forest import GEMM_COLUMNS, GemmCostForest

FOREST = "gemm-forest"
ROOFLINE = "bandwidth-roofline"


def _out_hw(op: Op) -> tuple[int, int]:
    s = op.params.get("stride", 1)
    pad = op.params.get("padding", -1)
    h, w, k = op["height"], op["width"], op["kernel"]
    if pad < 0:  # "same" padding
        return -(-h // s), -(-w // s)
    return max(1, (h + 2 * pad - k) // s + 1), max(1, (w + 2 * pad - k) // s + 1)


def op_gemms(op: Op) -> list[tuple[int, int, int, int]]:
    """The (m, n, k, batch) GEMMs an op runs; empty for memory-bound ops."""
    b, p = op.batch, op.params
    if op.kind == "gemm":
        return [(p["m"], p["n"], p["k"], b)]
    if op.kind == "linear":
        return [(b * p["tokens"], p["out_features"], p["in_features"], 1)]
    if op.kind == "conv2d":
        g = p["groups"]
        if p["in_channels"] % g or p["out_channels"] % g:
            raise ValueError("groups: must divide in_channels and out_channels")
        ho, wo = _out_hw(op)
        return [(b * ho * wo, p["out_channels"] // g, p["in_channels"] // g * p["kernel"] ** 2,
                 g)]
    if op.kind == "depthwise_conv2d":
        ho, wo = _out_hw(op)
        return [(b * ho * wo, 1, p["kernel"] ** 2, p["channels"])]
    if op.kind == "attention":
        kv = p["kv_len"] or p["seq_len"]
        heads = b * p["heads"]
        return [(p["seq_len"], kv, p["head_dim"], heads), (p["seq_len"], p["head_dim"], kv, heads)]
    return []


def memory_bytes(op: Op) -> int:
    """Bytes a memory-bound op reads and writes at least once."""
    e, b, p = DTYPES[op.dtype].bytes_per_element, op.batch, op.params
    if op.kind == "pool":
        ho, wo = _out_hw(op)
        return e * b * p["channels"] * (p["height"] * p["width"] + ho * wo)
    if op.kind == "norm":
        return e * b * 2 * p["elements"]
    if op.kind == "elementwise":
        return e * b * (p["inputs"] + 1) * p["elements"]
    raise ValueError(f"kind: {op.kind} is not memory-bound")


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


def predict_ops(model: GemmCostForest, ops: list[Op]) -> list[OpCost]:
    """One cost per op, in order. Every GEMM of the batch goes through the forest in one call."""
    rows, owner = [], []
    for i, op in enumerate(ops):
        for m, n, k, batch in op_gemms(op):
            rows.append((m, n, k, batch, op.dtype, int(op.params.get("trans_a", 0)),
                         int(op.params.get("trans_b", 0))))
            owner.append(i)
    owner_arr = np.array(owner, dtype=int)
    pred = None
    if rows:
        cols = list(zip(*rows, strict=True))
        pred = model.predict_costs({c: np.array(v) for c, v in zip(GEMM_COLUMNS, cols,
                                                                    strict=True)})
    bandwidth_gbs = model._profile().peaks["bandwidth"]
    out = []
    for i, op in enumerate(ops):
        sel = np.flatnonzero(owner_arr == i)
        if len(sel) == 0:
            t = memory_bytes(op) / (bandwidth_gbs * 1e9) * 1e3
            # A bound, not a learned figure: its uncertainty is stated as the whole value.
            out.append(OpCost(t, t, None, None, None, None, ROOFLINE, 0))
            continue
        lat = float(pred.latency_ms[sel].sum())
        lat_std = float(np.sqrt((pred.latency_std_ms[sel] ** 2).sum()))
        if pred.power_w is None:
            out.append(OpCost(lat, lat_std, None, None, None, None, FOREST, len(sel)))
            continue
        energy = float(pred.energy_j[sel].sum())
        out.append(OpCost(lat, lat_std, energy / lat * 1e3,
                          float(np.sqrt((pred.power_std_w[sel] ** 2).mean())), energy,
                          float(np.sqrt((pred.energy_std_j[sel] ** 2).sum())), FOREST, len(sel)))
    return out


def total(costs: list[OpCost]) -> OpCost:
    """Sum of a network's op costs; power is energy over time when every op has it."""
    lat = sum(c.latency_ms for c in costs)
    lat_std = float(np.sqrt(sum(c.latency_std_ms ** 2 for c in costs)))
    if not costs or any(c.energy_j is None for c in costs):
        return OpCost(lat, lat_std, None, None, None, None, "sum of op predictions",
                      sum(c.gemm_count for c in costs))
    energy = sum(c.energy_j for c in costs)
    e_std = float(np.sqrt(sum(c.energy_std_j ** 2 for c in costs)))
    power = energy / lat * 1e3
    return OpCost(lat, lat_std, power, power * e_std / energy if energy else 0.0, energy, e_std,
                  "sum of op predictions", sum(c.gemm_count for c in costs))
