"""Adaptive sampling: measure next where the current forest is least sure, in proportion to how
much of the candidate space each new measurement stands for.

nn-Meter's idea is to sample densely where the error is high. Taking only the candidates with
the largest spread across trees chases outliers at the edges of the space (a handful of odd
shapes) and leaves the bulk, where most queries land, thinly covered: in the CPU benchmark
(benchmarks/adaptive_sampling.py) it did no better than uniform draws. This sampler instead
chooses, greedily, the candidates that most reduce the uncertainty-weighted distance from every
candidate to its nearest measured config (a weighted facility-location design): each pool
config counts with the forest's variance there, so uncertain regions are filled in first, and
densely populated ones before lone outliers.

Distances are taken in log2 M, N, K and batch (octaves), plus how full the last 16-element
block of each dimension is (half weight: kernels pay for padding, so 32 and 33 are not
neighbours), plus a fixed two-octave step between dtypes. The sampler starts with a uniform
random tenth of the budget, then refits a forest after every round.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from collectors.gemm.shapes import random_shapes
from predictor.features import DeviceProfile, block_fill
from predictor.forest import GEMM_COLUMNS, GemmCostForest

FILL_WEIGHT = 0.5  # octaves per unit of block fill
DTYPE_STEP = 2.0  # octaves between configs of different dtypes
MAX_POINTS = 2000  # pool configs whose coverage is weighed each round (random subset beyond)
MAX_CANDIDATES = 4000  # unmeasured configs considered each round (random subset beyond)


def candidate_pool(count: int, min_size: int, max_size: int, dtypes: list[str],
                   seed: int = 0, aligned: float = 0.0, batched: float = 0.0,
                   max_batch: int = 64) -> pd.DataFrame:
    """``count`` log-uniform shapes (a share ``aligned`` of them aligned and a share
    ``batched`` batched, as :func:`collectors.gemm.shapes.random_shapes` makes them), each in
    every dtype, as a GEMM frame."""
    rows = [{"m": s.m, "n": s.n, "k": s.k, "batch": s.batch, "dtype": d, "trans_a": 0,
             "trans_b": 0}
            for s in random_shapes(count, min_size, max_size, seed, aligned, batched, max_batch)
            for d in dtypes]
    return pd.DataFrame(rows, columns=GEMM_COLUMNS).drop_duplicates(ignore_index=True)


def uncertainty(model: GemmCostForest, frame: pd.DataFrame) -> np.ndarray:
    """Spread of predicted log(latency/roofline) across trees: a relative uncertainty."""
    return model.per_tree(frame)[:, :, 0].std(axis=0)


def design_coordinates(frame: pd.DataFrame) -> np.ndarray:
    """Where each config sits for the sampler's distances (see the module docstring)."""
    dims = frame[["m", "n", "k"]].to_numpy(float)
    fill = block_fill(dims)
    dtypes = frame["dtype"].to_numpy()
    onehot = np.stack([dtypes == d for d in sorted(set(dtypes))], axis=1).astype(float)
    # Unbatched configs sit at 0 on the batch axis: a pool without batched ones keeps the
    # distances it had before there was one.
    batch = np.log2(frame["batch"].to_numpy(float))
    # One-hot rows of two dtypes are sqrt(2) apart; scaled so that they are DTYPE_STEP apart.
    return np.column_stack([np.log2(dims), batch, FILL_WEIGHT * fill,
                            onehot * (DTYPE_STEP / np.sqrt(2))])


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)


def cover_greedily(points: np.ndarray, weights: np.ndarray, measured: np.ndarray,
                   candidates: np.ndarray, count: int) -> list[int]:
    """``count`` positions in ``candidates`` (coordinates, one row each), chosen one at a time
    to most reduce sum_p weights[p] x (distance from points[p] to its nearest measured or
    chosen row); ``measured`` holds the coordinates of what was measured already."""
    count = min(count, len(candidates))
    weighed = weights > 0  # points of zero weight add nothing to any gain
    if not weighed.any():  # trees that all agree: plain space filling
        weighed, weights = np.ones(len(points), dtype=bool), np.ones(len(points))
    points, w = points[weighed], weights[weighed].astype(np.float32)
    dist = _distances(points, candidates)
    if len(measured):
        nearest = _distances(points, measured).min(axis=1)
    else:
        nearest = np.full(len(points), dist.max() + 1.0, dtype=np.float32)
    picks: list[int] = []
    for _ in range(count):
        gain = w @ np.maximum(nearest[:, None] - dist, 0.0)
        gain[picks] = -1.0  # a chosen candidate gains nothing twice
        j = int(np.argmax(gain))
        picks.append(j)
        nearest = np.minimum(nearest, dist[:, j])
    return picks


def variance_weights(model: GemmCostForest, frame: pd.DataFrame) -> np.ndarray:
    """The covering weights: the forest's variance across trees (:func:`uncertainty` squared)."""
    return uncertainty(model, frame) ** 2


class AdaptiveSampler:
    """Chooses which rows of ``pool`` to measure next.

    ``weights(model, frame)`` gives how much each row of ``frame`` (pool configs) counts in the
    covering (:func:`cover_greedily`), from the forest fitted on what was measured; by default
    its variance across trees. A benchmark may pass the forest's true squared error there, to
    learn what a perfect uncertainty estimate would gain."""

    def __init__(self, profile: DeviceProfile, pool: pd.DataFrame, seed_share: float = 0.1,
                 trees: int = 100, seed: int = 0,
                 weights: Callable[[GemmCostForest, pd.DataFrame], np.ndarray] = variance_weights):
        self.profile, self.pool = profile, pool.reset_index(drop=True)
        self.seed_share, self.trees, self.weights = seed_share, trees, weights
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.pool))  # uniform order for the seed set
        self.coords = design_coordinates(self.pool)

    def _subset(self, rows: np.ndarray, cap: int) -> np.ndarray:
        return rows if len(rows) <= cap else np.sort(self.rng.choice(rows, cap, replace=False))

    def next_batch(self, measured: dict[int, float], tried: set[int], budget: int,
                   batch: int) -> list[int]:
        """Pool indices to measure next, given ``measured`` (pool index -> latency ms) and
        every index ``tried`` so far (failures included)."""
        todo = [int(i) for i in self.order if i not in tried]
        n_seed = max(2, int(round(self.seed_share * budget)))
        if len(tried) < n_seed or len(measured) < 2:
            return todo[:min(batch, max(n_seed - len(tried), 1))]
        idx = np.fromiter(measured, dtype=int)
        model = GemmCostForest(profile=self.profile.to_dict(), n_estimators=self.trees,
                               random_state=int(self.rng.integers(1 << 30)))
        model.fit(self.pool.iloc[idx], np.array([measured[i] for i in idx]))
        points = self._subset(np.arange(len(self.pool)), MAX_POINTS)
        cand = self._subset(np.array(todo), MAX_CANDIDATES)
        weights = self.weights(model, self.pool.iloc[points])
        chosen = cover_greedily(self.coords[points], weights, self.coords[idx],
                                self.coords[cand], batch)
        return [int(cand[j]) for j in chosen]

    def run(self, measure: Callable[[list[int]], dict[int, float]], budget: int,
            batch: int = 10, on_round: Callable[[dict[int, float]], None] | None = None,
            measured: dict[int, float] | None = None, tried: set[int] | None = None
            ) -> dict[int, float]:
        """Measure up to ``budget`` pool rows; ``measure`` maps pool indices to latency ms
        (a failed config may be left out). ``measured`` and ``tried`` carry on from an earlier
        run (pool index -> latency ms; every index chosen, failures included)."""
        measured = dict(measured or {})
        tried = set(tried or ())
        while len(tried) < min(budget, len(self.pool)):
            nxt = self.next_batch(measured, tried, budget, min(batch, budget - len(tried)))
            if not nxt:
                break
            tried.update(nxt)
            measured.update(measure(nxt))
            if on_round:
                on_round(measured)
        return measured
