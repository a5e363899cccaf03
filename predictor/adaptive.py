"""Adaptive sampling: measure next where the current forest is least sure (nn-Meter's idea of
sampling densely where the error is high, with the spread across trees standing in for error).

The sampler starts from a uniform random share of the budget, then repeatedly fits a forest on
what has been measured and picks the candidates with the largest spread of predicted
log-latency across trees.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from collectors.gemm.shapes import random_shapes
from predictor.features import DeviceProfile
from predictor.forest import GEMM_COLUMNS, GemmCostForest


def candidate_pool(count: int, min_size: int, max_size: int, dtypes: list[str],
                   seed: int = 0) -> pd.DataFrame:
    """``count`` log-uniform shapes, each in every dtype, as a GEMM frame."""
    rows = [{"m": s.m, "n": s.n, "k": s.k, "batch": 1, "dtype": d, "trans_a": 0, "trans_b": 0}
            for s in random_shapes(count, min_size, max_size, seed) for d in dtypes]
    return pd.DataFrame(rows, columns=GEMM_COLUMNS).drop_duplicates(ignore_index=True)


def uncertainty(model: GemmCostForest, frame: pd.DataFrame) -> np.ndarray:
    """Spread of predicted log(latency/roofline) across trees: a relative uncertainty."""
    return model.per_tree(frame)[:, :, 0].std(axis=0)


class AdaptiveSampler:
    """Chooses which rows of ``pool`` to measure next."""

    def __init__(self, profile: DeviceProfile, pool: pd.DataFrame, seed_share: float = 0.25,
                 trees: int = 100, seed: int = 0):
        self.profile, self.pool = profile, pool.reset_index(drop=True)
        self.seed_share, self.trees = seed_share, trees
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.pool))  # uniform order for the seed set

    def next_batch(self, measured: dict[int, float], tried: set[int], budget: int,
                   batch: int) -> list[int]:
        """Pool indices to measure next, given ``measured`` (pool index -> latency ms) and
        every index ``tried`` so far (failures included)."""
        todo = [int(i) for i in self.order if i not in tried]
        n_seed = max(2, int(round(self.seed_share * budget)))
        if len(tried) < n_seed or len(measured) < 2:
            return todo[:min(batch, max(n_seed - len(tried), 1))]
        idx = np.fromiter(measured, dtype=int)
        train = self.pool.iloc[idx]
        model = GemmCostForest(profile=self.profile.to_dict(), n_estimators=self.trees,
                               random_state=int(self.rng.integers(1 << 30)))
        model.fit(train, np.array([measured[i] for i in idx]))
        cand = np.array(todo)
        spread = uncertainty(model, self.pool.iloc[cand])
        return cand[np.argsort(-spread)[:batch]].tolist()

    def run(self, measure: Callable[[list[int]], dict[int, float]], budget: int,
            batch: int = 10, on_round: Callable[[dict[int, float]], None] | None = None
            ) -> dict[int, float]:
        """Measure up to ``budget`` pool rows; ``measure`` maps pool indices to latency ms
        (a failed config may be left out)."""
        measured: dict[int, float] = {}
        tried: set[int] = set()
        while len(tried) < min(budget, len(self.pool)):
            nxt = self.next_batch(measured, tried, budget, min(batch, budget - len(tried)))
            if not nxt:
                break
            tried.update(nxt)
            measured.update(measure(nxt))
            if on_round:
                on_round(measured)
        return measured
