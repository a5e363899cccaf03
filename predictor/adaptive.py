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


def oob_error(model: GemmCostForest, train: pd.DataFrame, latency_ms: np.ndarray) -> np.ndarray:
    """Each training row's out-of-bag error of log latency (the trees that did not draw it in
    their bootstrap sample predict it): an honest error estimate that costs no measurement.
    0 for a row every tree drew."""
    trees = model.per_tree(train)[:, :, 0]
    inbag = np.zeros(trees.shape, dtype=bool)
    for t, rows in enumerate(model.forest_.estimators_samples_):
        inbag[t, rows] = True
    oob = np.where(inbag, 0.0, trees)
    count = (~inbag).sum(axis=0)
    pred = oob.sum(axis=0) / np.maximum(count, 1)
    return np.where(count > 0, np.abs(pred - model.log_ratio(train, latency_ms)), 0.0)


def _log_dims(frame: pd.DataFrame) -> np.ndarray:
    return np.log2(frame[["m", "n", "k"]].to_numpy(float))


def near_error(pool: pd.DataFrame, train: pd.DataFrame, error: np.ndarray,
               width: float = 0.5) -> np.ndarray:
    """Per pool row, the largest training error weighted by closeness (Gaussian in log2 M, N, K
    with ``width`` octaves; other dtypes do not count): high next to badly predicted shapes."""
    d2 = ((_log_dims(pool)[:, None, :] - _log_dims(train)[None, :, :]) ** 2).sum(axis=2)
    same = np.asarray(pool["dtype"])[:, None] == np.asarray(train["dtype"])[None, :]
    return (np.where(same, np.exp(-d2 / (2 * width ** 2)), 0.0) * error[None, :]).max(axis=1)


STRATEGIES = ("spread", "error", "spread+error")


class AdaptiveSampler:
    """Chooses which rows of ``pool`` to measure next."""

    def __init__(self, profile: DeviceProfile, pool: pd.DataFrame, seed_share: float = 0.25,
                 trees: int = 100, seed: int = 0, strategy: str = "spread"):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
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
        y = np.array([measured[i] for i in idx])
        model.fit(train, y)
        cand = np.array(todo)
        score = np.zeros(len(cand))
        if self.strategy in ("spread", "spread+error"):
            score += uncertainty(model, self.pool.iloc[cand])
        if self.strategy in ("error", "spread+error"):
            score += near_error(self.pool.iloc[cand], train, oob_error(model, train, y))
        return cand[np.argsort(-score)[:batch]].tolist()

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
