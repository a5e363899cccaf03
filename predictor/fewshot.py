"""Few-shot latency prediction of NAS-Bench-201 architectures on a device never seen before.

Reference devices (whose latency on every architecture is known) span a space of "hardware
behaviours". A new device is measured on a handful of architectures chosen to cover that space
(k-means over the leading principal components of the reference latencies), then modelled as
(1) a non-negative combination of the reference devices' standardised log-latencies, fitted to
the samples, plus (2) a strongly regularised linear correction on the architecture's op counts
for what no reference device explains. Latencies are predicted in ms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from collectors.tables import read_table_file
from predictor.nasbench201 import EDGE_OPS, parse_cell

ARCH_COLUMN = "arch_str"


def op_counts(archs: list[str] | pd.Series) -> np.ndarray:
    """(archs, 5) counts of each NAS-Bench-201 edge op."""
    out = np.zeros((len(archs), len(EDGE_OPS)))
    index = {op: i for i, op in enumerate(EDGE_OPS)}
    for row, arch in enumerate(archs):
        for node in parse_cell(arch):
            for op, _ in node:
                out[row, index[op]] += 1
    return out


def flops_proxy(archs: list[str] | pd.Series) -> np.ndarray:
    """Relative FLOPs of the cells: in NAS-Bench-201 every stage has the same C^2 x H x W, so a
    3x3 conv costs 9 units and a 1x1 conv 1 unit everywhere (stem and reductions are common)."""
    c = op_counts(archs)
    return c[:, EDGE_OPS.index("nor_conv_1x1")] + 9 * c[:, EDGE_OPS.index("nor_conv_3x3")]


def read_table(path: str) -> tuple[pd.Series, pd.DataFrame]:
    """Architectures and per-device latency (ms) columns of a NAS-Bench-201 latency CSV."""
    df = read_table_file(path)
    if ARCH_COLUMN not in df.columns:
        raise ValueError(f"{path}: no {ARCH_COLUMN!r} column")
    devices = df.drop(columns=[c for c in (ARCH_COLUMN, "arch_idx") if c in df.columns])
    devices = devices.apply(pd.to_numeric, errors="coerce")
    bad = [c for c in devices.columns if not (devices[c] > 0).all()]
    if bad:
        raise ValueError(f"{path}: columns with missing or non-positive latency: {bad}")
    return df[ARCH_COLUMN], devices


def select_samples(reference: pd.DataFrame, n: int, seed: int = 0) -> np.ndarray:
    """``n`` architecture indices spread over the reference devices' latency space."""
    from sklearn.cluster import KMeans

    if n < 2 or n > len(reference):
        raise ValueError(f"--samples: must be between 2 and {len(reference)}, got {n}")
    z = _standardise(np.log(reference.to_numpy(float)))[0]
    u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
    pcs = u[:, :3] * s[:3]
    km = KMeans(n, n_init=4, random_state=seed).fit(pcs)
    chosen: list[int] = []
    for centre in km.cluster_centers_:
        order = np.argsort(((pcs - centre) ** 2).sum(axis=1))
        chosen.append(int(next(i for i in order if i not in chosen)))
    return np.array(chosen)


def _standardise(log_lat: np.ndarray, mean=None, std=None):
    mean = log_lat.mean(axis=0) if mean is None else mean
    std = log_lat.std(axis=0) if std is None else std
    return (log_lat - mean) / std, mean, std


@dataclass
class FewShotModel:
    """Fitted few-shot model; JSON-serialisable (no pickle)."""

    reference_devices: list[str]
    mean: list[float]
    std: list[float]
    weights: list[float]
    intercept: float
    count_coef: list[float]
    count_intercept: float
    samples: dict[str, float]  # arch -> measured ms on the new device

    @classmethod
    def fit(cls, archs: pd.Series, reference: pd.DataFrame, sample_idx: np.ndarray,
            sample_ms: np.ndarray, alpha: float = 3.0) -> FewShotModel:
        from sklearn.linear_model import Ridge

        sample_ms = np.asarray(sample_ms, float)
        if np.any(~np.isfinite(sample_ms)) or np.any(sample_ms <= 0):
            raise ValueError("samples: latencies must be positive numbers")
        z, mean, std = _standardise(np.log(reference.to_numpy(float)))
        y = np.log(sample_ms)
        x = z[sample_idx]
        ones = np.ones(len(y))
        # Non-negative weights, free intercept (as the difference of two non-negative terms).
        w, _ = nnls(np.column_stack([x, ones, -ones]), y)
        weights, intercept = w[:-2], w[-2] - w[-1]
        base = x @ weights + intercept
        counts = op_counts(archs.iloc[sample_idx])
        corr = Ridge(alpha=alpha).fit(counts, y - base)
        return cls(list(reference.columns), mean.tolist(), std.tolist(), weights.tolist(),
                   float(intercept), corr.coef_.tolist(), float(corr.intercept_),
                   {archs.iloc[i]: float(v) for i, v in zip(sample_idx, sample_ms, strict=True)})

    def predict(self, archs: pd.Series, reference: pd.DataFrame) -> np.ndarray:
        """Latency (ms) of every architecture, given the reference devices' latencies of them."""
        missing = set(self.reference_devices) - set(reference.columns)
        if missing:
            raise ValueError(f"reference table lacks devices {sorted(missing)}")
        ref = reference[self.reference_devices].to_numpy(float)
        z = _standardise(np.log(ref), np.array(self.mean), np.array(self.std))[0]
        log_ms = (z @ np.array(self.weights) + self.intercept
                  + op_counts(archs) @ np.array(self.count_coef) + self.count_intercept)
        return np.exp(log_ms)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FewShotModel:
        return cls(**json.loads(text))
