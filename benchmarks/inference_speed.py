"""Forest inference speed: scikit-learn's RandomForestRegressor.predict against the ONNX Runtime
form hwnas serves from (predictor.fast), measured in the same run on the same fitted forest.

Prints single-row latency and 10k-row batch throughput for both, the ratios, and the largest
relative difference between the two outputs (must be <= 1e-6).

    python benchmarks/inference_speed.py [--trees 200] [--rows 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from predictor.fast import FastForest


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=24)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x_train = rng.random((4000, args.features)).astype(np.float32)
    y = np.column_stack([np.sin(5 * x_train[:, 0]) + x_train[:, 1] ** 2, 300 * x_train[:, 2]])
    forest = RandomForestRegressor(args.trees, max_features=0.7, random_state=0).fit(x_train, y)
    fast = FastForest(forest, args.features, threads=1)
    x = rng.random((args.rows, args.features)).astype(np.float32)
    one = x[:1]

    ref = np.stack([t.predict(x) for t in forest.estimators_]).reshape(args.trees, len(x), -1)
    got = fast.per_tree(x)
    rel = np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12))
    sk_mean = forest.predict(x)
    mean_rel = np.max(np.abs(got.mean(axis=0) - sk_mean) / np.abs(sk_mean))

    sk_one = best_of(lambda: forest.predict(one), 20)
    fast_one = best_of(lambda: fast.per_tree(one), 200)
    sk_batch = best_of(lambda: forest.predict(x), 3)
    fast_batch = best_of(lambda: fast.per_tree(x), 3)
    print(f"forest: {args.trees} trees, 2 outputs, {args.features} features; "
          f"batch {args.rows} rows; best of repeated calls")
    print(f"{'':<28}{'1 row (ms)':>12}{'batch rows/s':>15}")
    print(f"{'sklearn predict (mean)':<28}{sk_one * 1e3:>12.3f}{args.rows / sk_batch:>15,.0f}")
    print(f"{'hwnas ONNX (every tree)':<28}{fast_one * 1e3:>12.3f}{args.rows / fast_batch:>15,.0f}")
    print(f"speed-up: 1 row x{sk_one / fast_one:.0f}, batch x{sk_batch / fast_batch:.1f} "
          f"(targets: 1 row < 0.1 ms: {'met' if fast_one < 1e-4 else 'NOT met'}; "
          f"batch >= 10x: {'met' if sk_batch / fast_batch >= 10 else 'NOT met'})")
    print(f"max relative difference: per tree {rel:.2e}, forest mean {mean_rel:.2e} "
          f"(<= 1e-6: {'yes' if max(rel, mean_rel) <= 1e-6 else 'NO'})")


if __name__ == "__main__":
    main()
