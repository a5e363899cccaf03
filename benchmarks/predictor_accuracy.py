"""Accuracy of the GEMM forest on CPU data measured here, on whole shapes held out.

Measures ``--shapes`` random GEMM shapes in each of ``--dtypes`` on this CPU into a store (a
temporary SQLite file unless ``--db`` is given; ``--reuse`` skips measuring and uses the store's
data), then prints the GroupKFold (shapes held out) and largest-shapes-held-out metrics.
Target: share within ±10% on held-out shapes of at least 90%.

    python benchmarks/predictor_accuracy.py [--shapes 300] [--dtypes fp32,bf16] [--seed 11]
                                            [--aligned 0] [--db URL] [--reuse]

``--aligned`` is the share of shapes with every dimension a multiple of a power of two (as
``hwnas collect gemm --aligned`` draws them); 0 by default, as the figures in docs/results.md
were measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from collectors.devices import CpuDevice
from collectors.gemm.backends import backend_for
from collectors.gemm.shapes import random_shapes
from collectors.peaks import measure_peaks
from collectors.probe import SpeedProbe
from collectors.store.db import Store
from collectors.store.repo import save_peaks, upsert_device
from collectors.sweep import SweepRunner, plan_gemm
from collectors.timing import TimingPolicy
from predictor.data import load_gemm_frame
from predictor.training import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=300)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--min-size", type=int, default=16)
    ap.add_argument("--max-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=11, help="seed of the random shapes")
    ap.add_argument("--aligned", type=float, default=0.0,
                    help="share of aligned shapes (hwnas collect gemm --aligned)")
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="timed seconds per config and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; a config's latency is its lowest round p10")
    ap.add_argument("--no-probe", action="store_true",
                    help="measure without the speed probe (collectors.probe)")
    ap.add_argument("--db", default=None)
    ap.add_argument("--reuse", action="store_true", help="evaluate the store's data as it is")
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    args = ap.parse_args()

    db = args.db or f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'accuracy.sqlite')}"
    store, device = Store(db), CpuDevice()
    dtypes = args.dtypes.split(",")
    t0 = time.perf_counter()
    if not args.reuse:
        backend = backend_for("cpu", "torch", threads=args.threads)
        with store.session() as s:
            probe = None if args.no_probe else SpeedProbe.for_backend(backend)
            save_peaks(s, upsert_device(s, device.info),
                       measure_peaks(device, backend, dtypes, probe=probe))
            s.commit()
        policy = TimingPolicy(min_time_s=args.min_time, rounds=args.rounds,
                              probe=not args.no_probe)
        runner = SweepRunner(store, device, backend, policy)
        plan = plan_gemm(random_shapes(args.shapes, args.min_size, args.max_size, seed=args.seed,
                                       aligned=args.aligned), dtypes)
        summary = runner.run(runner.create(plan))
        print(f"measured {summary.done} configs ({summary.failed} failed) in "
              f"{time.perf_counter() - t0:.0f} s into {store.display_url}")
    frame, profile = load_gemm_frame(store, device.info.model)
    ev = evaluate(frame, profile, 5, n_estimators=args.trees)
    print(f"{profile.model}: {ev.n_rows} measurements, {ev.n_shapes} shapes, dtypes "
          f"{', '.join(sorted(frame.dtype.unique()))}")
    for name, table in ev.tables().items():
        print(f"\n{name}:")
        print(table.round(3).to_string(index=False))
    kfold = ev.tables()["shape-held-out (GroupKFold)"]
    share = kfold[(kfold.target == "latency_ms") & (kfold.dtype == "all")].within_10.iloc[0]
    print(f"\nshare within ±10% on held-out shapes: {share:.1f}% (target >= 90%: "
          f"{'met' if share >= 90 else 'NOT met'})")


if __name__ == "__main__":
    main()
