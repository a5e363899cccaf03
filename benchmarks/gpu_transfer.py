"""GEMM latency models trained on some measurement files and tested on others: how far a model
carries to shapes of a kind its training data lacked (aligned shapes, large squares), or to
another GPU of the same model.

Every file is an `hwnas db export` (CSV or Parquet); the training files and the test files are
each read through a temporary SQLite store (predictor.data.frame_from_exports), so the model
is fitted exactly as `hwnas train` fits it (GPU-alone rows where both timings exist, the peaks
of the newest device). Latency, and power and energy where both sets have readings of the
ops' own power (the test files' power is their own GPU's: another physical GPU of the same
model draws its own).

    python benchmarks/gpu_transfer.py \\
        --train data/gpu/h200_queued_run1.parquet,data/gpu/h200_queued_run2.parquet \\
        --test data/gpu/h200_aligned_random.parquet
    python benchmarks/gpu_transfer.py \\
        --train data/gpu/h200_queued_run1.parquet,data/gpu/h200_queued_run2.parquet,\\
data/gpu/h200_aligned_random.parquet --test data/gpu/h200_aligned_square.parquet --plot P.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from predictor.data import frame_from_exports, op_power, power_is_measured
from predictor.evaluate import metrics_table, plot_predicted_vs_measured, shape_groups
from predictor.forest import BASELINE_FITS
from predictor.training import fit_full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="comma-separated export files to fit on")
    ap.add_argument("--test", required=True, help="comma-separated export files to predict")
    ap.add_argument("--device", default=None,
                    help="device model (or a unique part of its name), where a set holds several")
    ap.add_argument("--baseline-fit", default=",".join(BASELINE_FITS),
                    help=f"comma-separated, of {', '.join(BASELINE_FITS)}")
    ap.add_argument("--unseen-shapes", action="store_true",
                    help="drop from training every shape (m, n, k) the test files hold, so the "
                         "test is of shapes the model never saw, on whichever GPU")
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", help="PNG of predicted against measured, a panel per baseline")
    args = ap.parse_args()

    train, profile = frame_from_exports(args.train.split(","), args.device)
    test, _ = frame_from_exports(args.test.split(","), args.device)
    if args.unseen_shapes:
        known = np.isin(shape_groups(train), shape_groups(test))
        print(f"left out of training {known.sum()} configs whose shapes are tested")
        train = train[~known].reset_index(drop=True)
    seen = np.isin(shape_groups(test), shape_groups(train))
    print(f"{profile.model}: trained on {len(train)} configs, testing {len(test)} "
          f"({seen.sum()} of their shapes were in training too)")
    unseen = ~test.dtype.isin(set(train.dtype))
    if unseen.any():  # the model refuses a dtype it was not trained on
        print(f"left out {unseen.sum()} test configs of dtypes not in training: "
              f"{', '.join(sorted(set(test.dtype[unseen])))}")
        test = test[~unseen].reset_index(drop=True)
    test_power = power_is_measured(test)
    if test_power:  # scored where the reading is the op's own, as hwnas eval does
        test = test.assign(power_w=op_power(test))
        test = test.assign(energy_j=test.power_w * test.latency_ms / 1e3)
    panels = {}
    for fit in args.baseline_fit.split(","):
        model = fit_full(train, profile, n_estimators=args.trees, random_state=args.seed,
                         baseline_fit=fit, n_jobs=-1)
        costs = model.predict_costs(test)
        scored = test.assign(pred_latency_ms=costs.latency_ms)
        targets = ["latency_ms"]
        if model.has_power_ and test_power:
            scored = scored.assign(pred_power_w=costs.power_w, pred_energy_j=costs.energy_j)
            targets += ["power_w", "energy_j"]
        table = metrics_table(scored, targets)
        print(f"\n{fit} baseline:")
        print(table.round(3).to_string(index=False))
        panels[f"{fit} baseline"] = scored
    if args.plot:
        def names(paths: str) -> str:
            return " + ".join(Path(p).stem for p in paths.split(","))

        plot_predicted_vs_measured(panels, "latency_ms", args.plot,
                                   f"{profile.model}: trained on {names(args.train)};\n"
                                   f"tested on {names(args.test)}")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
