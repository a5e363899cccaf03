"""Forest inference speed: scikit-learn's RandomForestRegressor.predict against the compiled
form hwnas serves from (predictor.fast), measured in the same run on the same fitted forests.

Three forests:
  served  the GEMM cost model as ``hwnas train`` builds it (200 trees), fitted on the shipped
          GPPerf RTX 4070 data; the batch is random GEMM shapes through hwnas's own features.
  H200    the same, fitted on the shipped H200 data timed on the GPU alone (937 configs in 4
          dtypes): a larger forest, as a model of a real sweep is.
  stress  a deliberately larger forest: 200 trees grown to purity on 4,000 rows of 24 features
          (~5,000 nodes and depth ~19 per tree).

For each: one-row latency and 10k-row throughput. scikit-learn returns the mean across trees;
hwnas returns what a latency prediction takes from a latency forest: the means of the log ratio
and of the ratio, and the ratio's spread across trees (a device with power has a second forest,
walked the same way), so it does more work per row. Timed with 1 thread on both sides,
and with every core on both sides (sklearn ``n_jobs=-1``). The largest relative difference
between the two means must be <= 1e-6. Last, a network query's cost per op kind: the network
model's per-kind forest (100 trees) predicting a 20-layer network's ops.

    python benchmarks/inference_speed.py [--rows 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

from collectors.importers import read_gpperf
from predictor.fast import FastForest
from predictor.features import DeviceProfile, empirical_peaks, feature_matrix
from predictor.forest import LATENCY_SPREAD, GemmCostForest, leaf_quantities

GPPERF = "data/external/gpperf_rtx4070_sgemm.csv"
H200_FILES = ("h200_queued_run1", "h200_queued_run2", "h200_aligned_random",
              "h200_aligned_square")


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def query_features(rows: int, rng: np.random.Generator, profile: DeviceProfile,
                   dtypes: list[str]) -> np.ndarray:
    """Features of ``rows`` GEMMs with m, n, k log-uniform in 16..16384, in ``dtypes`` (drawn
    per row where there are several)."""
    dims = np.exp(rng.uniform(np.log(16), np.log(16384), size=(rows, 3))).astype(int)
    queries = pd.DataFrame({"m": dims[:, 0], "n": dims[:, 1], "k": dims[:, 2], "batch": 1,
                            "dtype": rng.choice(dtypes, rows) if len(dtypes) > 1 else dtypes[0],
                            "trans_a": 0, "trans_b": 0})
    return feature_matrix(queries, profile).astype(np.float32)


def served_forest(rows: int, rng: np.random.Generator):
    """The GEMM cost model fitted on GPPerf, and features of ``rows`` random GEMMs."""
    df = read_gpperf(GPPERF)
    med = df.groupby(["M", "N", "K", "kernel_layout"], as_index=False).runtime_ms.median()
    frame = pd.DataFrame({"m": med.M, "n": med.N, "k": med.K, "batch": 1, "dtype": "fp32",
                          "trans_a": (med.kernel_layout.str[0] == "t").astype(int),
                          "trans_b": (med.kernel_layout.str[1] == "t").astype(int),
                          "latency_ms": med.runtime_ms})
    profile = DeviceProfile("NVIDIA GeForce RTX 4070", "gpu", 46, empirical_peaks(frame),
                            "empirical")
    model = GemmCostForest(profile=profile.to_dict()).fit(frame, frame.latency_ms)
    return (model.forest_, query_features(rows, rng, profile, ["fp32"]),
            f"served: GEMM model, {len(frame)} training configs")


def h200_forest(rows: int, rng: np.random.Generator):
    """The latency forest of the H200 GEMM model as ``hwnas train`` builds it from the shipped
    GPU-alone H200 files, and features of ``rows`` random GEMMs in its four dtypes."""
    from predictor.data import frame_from_exports
    from predictor.training import fit_full

    frame, profile = frame_from_exports([f"data/gpu/{name}.parquet" for name in H200_FILES])
    model = fit_full(frame, profile)
    return (model.forest_, query_features(rows, rng, profile, ["fp32", "tf32", "fp16", "bf16"]),
            f"H200: GEMM model, {len(frame)} training configs")


def stress_forest(rows: int, rng: np.random.Generator):
    x_train = rng.random((4000, 24)).astype(np.float32)
    y = np.sin(5 * x_train[:, 0]) + x_train[:, 1] ** 2
    forest = RandomForestRegressor(200, max_features=0.7, random_state=0).fit(x_train, y)
    return forest, rng.random((rows, 24)).astype(np.float32), "stress: 4,000 rows x 24 features"


def report(forest: RandomForestRegressor, x: np.ndarray, title: str, repeats: int) -> None:
    cores = os.cpu_count() or 1
    nodes = np.mean([e.tree_.node_count for e in forest.estimators_])
    depth = np.mean([e.tree_.max_depth for e in forest.estimators_])
    print(f"\n{title}; {len(forest.estimators_)} trees, {forest.n_outputs_} output(s), "
          f"{nodes:,.0f} nodes and depth {depth:.1f} per tree; batch {len(x):,} rows")
    fast1 = FastForest(forest, threads=1)
    fastn = FastForest(forest, threads=cores)
    table = leaf_quantities(fast1.values)
    mean, _ = fast1.moments(x, table, LATENCY_SPREAD)  # also compiles
    fastn.moments(x, table, LATENCY_SPREAD)
    sk_mean = forest.predict(x).reshape(len(x), -1)
    diff = np.max(np.abs(mean[:, :1] - sk_mean) / np.maximum(np.abs(sk_mean), 1e-300))
    one = x[:1]
    sk_one = best_of(lambda: forest.predict(one), 20)
    ours_one = best_of(lambda: fast1.moments(one, table, LATENCY_SPREAD), 200)
    rows = {}
    for threads, fast in ((1, fast1), (cores, fastn)):
        forest.set_params(n_jobs=None if threads == 1 else -1)
        sk = best_of(lambda: forest.predict(x), repeats)
        ours = best_of(lambda f=fast: f.moments(x, table, LATENCY_SPREAD), repeats)
        rows[threads] = (sk, ours)
    forest.set_params(n_jobs=None)
    print(f"{'':<34}{'1 row (ms)':>11}{'rows/s, 1 thread':>18}{f'rows/s, {cores} threads':>19}")
    print(f"{'sklearn predict (mean)':<34}{sk_one * 1e3:>11.3f}"
          f"{len(x) / rows[1][0]:>18,.0f}{len(x) / rows[cores][0]:>19,.0f}")
    print(f"{'hwnas compiled (mean + spread)':<34}{ours_one * 1e3:>11.3f}"
          f"{len(x) / rows[1][1]:>18,.0f}{len(x) / rows[cores][1]:>19,.0f}")
    r1, rn = rows[1][0] / rows[1][1], rows[cores][0] / rows[cores][1]
    r_default = rows[1][0] / rows[cores][1]
    print(f"speed-up: 1 row x{sk_one / ours_one:.0f}; batch x{r1:.1f} (1 thread each), "
          f"x{rn:.1f} ({cores} threads each), x{r_default:.1f} (hwnas {cores} threads vs plain "
          f"predict)")
    print(f"targets: 1 row < 0.1 ms: {'met' if ours_one < 1e-4 else 'NOT met'}; batch >= 10x "
          f"plain predict: {'met' if r_default >= 10 else 'NOT met'}; same threads "
          f">= 10x: {'met' if min(r1, rn) >= 10 else 'NOT met'}")
    print(f"max relative difference of the means: {diff:.2e} "
          f"(<= 1e-6: {'yes' if diff <= 1e-6 else 'NO'})")


def network_query(repeats: int) -> None:
    """One op kind's share of a network query: sklearn predict against the compiled form."""
    from collectors.ops import Op
    from predictor.network import OpKindForests

    rng = np.random.default_rng(1)
    ops = [Op.make("linear", {"in_features": int(rng.integers(16, 1024)),
                              "out_features": int(rng.integers(16, 1024)),
                              "tokens": int(rng.integers(1, 64))}) for _ in range(300)]
    kinds = OpKindForests().fit(ops, rng.random(300) + 0.1)
    net = ops[:20]
    compiled = best_of(lambda: kinds.predict(net), repeats * 20)
    fast, kinds.fast = kinds.fast, {}
    plain = best_of(lambda: kinds.predict(net), repeats * 4)
    kinds.fast = fast
    print(f"\nnetwork query, one op kind (100 trees, 20 layers): sklearn {plain * 1e3:.2f} ms, "
          f"compiled {compiled * 1e3:.3f} ms (x{plain / compiled:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for make in (served_forest, h200_forest, stress_forest):
        report(*make(args.rows, rng), args.repeats)
    network_query(args.repeats)


if __name__ == "__main__":
    main()
