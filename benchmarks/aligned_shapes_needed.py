"""How many aligned GEMM shapes (features.is_aligned) a model needs before its aligned
predictions can be trusted: the base files (data with few aligned shapes) plus N aligned shapes
drawn from other files, scored on aligned shapes of those files held out, for several N and
several draws. The threshold behind the `latency_extrapolated` flag
(`predictor.forest.ALIGNED_MIN_SHAPES`) comes from this.

    python benchmarks/aligned_shapes_needed.py \\
        --base data/gpu/h200_queued_run1.parquet,data/gpu/h200_queued_run2.parquet \\
        --aligned data/gpu/h200_aligned_random.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from predictor.data import frame_from_exports
from predictor.features import is_aligned
from predictor.training import fit_full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="comma-separated export files, always trained on")
    ap.add_argument("--aligned", required=True,
                    help="comma-separated export files whose aligned shapes are drawn from")
    ap.add_argument("--device", default=None, help="device model, where the files hold several")
    ap.add_argument("--counts", default="0,2,5,10,20,40", help="aligned shapes added to training")
    ap.add_argument("--test-shapes", type=int, default=20, help="aligned shapes held out per draw")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--trees", type=int, default=100)
    args = ap.parse_args()

    base, profile = frame_from_exports(args.base.split(","), args.device)
    extra, _ = frame_from_exports(args.aligned.split(","), args.device)
    extra = extra[is_aligned(extra)].reset_index(drop=True)
    keys = pd.MultiIndex.from_frame(extra[["m", "n", "k"]])
    shapes = keys.unique()
    counts = [int(c) for c in args.counts.split(",")]
    if args.test_shapes + max(counts) > len(shapes):
        raise SystemExit(f"--aligned files hold {len(shapes)} aligned shapes: too few for "
                         f"{args.test_shapes} held out and {max(counts)} trained on")
    rows = []
    for draw in range(args.draws):
        order = shapes[np.random.default_rng(draw).permutation(len(shapes))]
        test = extra[keys.isin(order[:args.test_shapes])]
        for count in counts:
            added = extra[keys.isin(order[args.test_shapes:args.test_shapes + count])]
            model = fit_full(pd.concat([base, added], ignore_index=True), profile,
                             n_estimators=args.trees, random_state=draw, n_jobs=-1)
            ape = np.abs(model.predict_costs(test).latency_ms / test.latency_ms.to_numpy() - 1)
            for dtype in ["all", *sorted(test.dtype.unique())]:
                sel = np.ones(len(test), bool) if dtype == "all" else (test.dtype == dtype)
                rows.append({"draw": draw, "aligned shapes trained on": count, "dtype": dtype,
                             "MAPE %": ape[sel].mean() * 100,
                             "within ±10% %": (ape[sel] <= 0.1).mean() * 100})
    table = pd.DataFrame(rows).groupby(["aligned shapes trained on", "dtype"]).mean()
    print(f"{profile.model}: {len(base)} base configs ({int(is_aligned(base).sum())} aligned); "
          f"{args.test_shapes} aligned shapes held out, mean of {args.draws} draws")
    print(table["MAPE %"].unstack().round(1).to_string())
    print("\nwithin ±10%, all dtypes:")
    print(table["within ±10% %"].unstack()["all"].round(1).to_string())


if __name__ == "__main__":
    main()
