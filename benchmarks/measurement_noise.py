"""Repeatability of the CPU timing protocol: the same 50 GEMM shapes measured twice, with and
without the speed probe.

Each pass is a whole sweep into a temporary store with the collector's protocol: ``--rounds``
interleaved rounds (each in its own random order), a config's latency the lowest round p10
(fastest decile). Four passes, alternating: without the probe, with it (collectors.probe: a
config is measured again while a reference GEMM runs slow around it), without, with; so both
protocols meet the same spells of the machine. Prints, for each protocol, the relative
difference |a-b|/min(a,b) between its two passes (median, p90, max; target: median at most 2%),
its time, and how many configs never had a calm round; and, from the passes without the probe,
what other statistics would have given: one round's median (each pass's first round) and the
lowest round median.

    python benchmarks/measurement_noise.py [--shapes 50] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np
from sqlalchemy import select

from collectors.devices import CpuDevice
from collectors.gemm.backends import backend_for
from collectors.gemm.shapes import random_shapes
from collectors.rounds import not_calm_count
from collectors.store.db import Store
from collectors.store.models import Measurement
from collectors.sweep import SweepRunner, plan_gemm
from collectors.timing import TimingPolicy


def _pass(runner: SweepRunner, store: Store, plan) -> tuple[dict, float, int]:
    """(config key -> (stored latency: lowest round p10, first round's median, lowest round
    median) in ms, seconds, configs without a calm round)."""
    t0 = time.perf_counter()
    sweep_id = runner.run(runner.create(plan)).sweep_id
    seconds = time.perf_counter() - t0
    with store.session() as s:
        rows = s.execute(select(Measurement.config_key, Measurement.latency_ms,
                                Measurement.latency_ms_median, Measurement.params)
                         .where(Measurement.sweep_id == sweep_id,
                                Measurement.status == "ok")).all()
    out = {}
    for key, latency, median, params in rows:
        medians = [r["median_ms"] for r in params.get("rounds") or [{"median_ms": median}]]
        out[key] = (latency, medians[0], min(medians))
    return out, seconds, not_calm_count(store, sweep_id)


def _report(label: str, a: np.ndarray, b: np.ndarray) -> None:
    rel = np.abs(a - b) / np.minimum(a, b)
    print(f"{label:<34} median {np.median(rel) * 100:5.2f}%  p90 "
          f"{np.percentile(rel, 90) * 100:5.2f}%  max {rel.max() * 100:6.2f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=50)
    ap.add_argument("--backend", default="torch", choices=["torch", "numpy"])
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.1, help="timed seconds per round")
    ap.add_argument("--max-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the GEMMs (default: all cores)")
    args = ap.parse_args()

    store = Store(f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'noise.sqlite')}")
    backend = backend_for("cpu", args.backend, threads=args.threads)
    policy = TimingPolicy(min_time_s=args.min_time, rounds=args.rounds)
    runners = {probe: SweepRunner(store, CpuDevice(), backend,
                                  dataclasses.replace(policy, probe=probe), progress=False)
               for probe in (False, True)}
    plan = plan_gemm(random_shapes(args.shapes, 16, args.max_size, args.seed), [args.dtype])
    passes: dict[bool, list] = {False: [], True: []}
    for probe in (False, True, False, True):
        passes[probe].append(_pass(runners[probe], store, plan))
    keys = sorted(set.intersection(*(set(p[0]) for ps in passes.values() for p in ps)))
    (a, b), (c, d) = ([np.array([p[0][k] for k in keys]) for p in passes[probe]]
                      for probe in (False, True))
    print(f"{len(keys)} {args.dtype} GEMM shapes (16..{args.max_size}), backend {backend.name}, "
          f"threads {args.threads or 'all'}, {args.rounds} rounds x {args.min_time} s; latency "
          f"{a[:, 0].min():.4f} .. {a[:, 0].max():.3f} ms. Relative difference between the "
          "two passes of each:")
    _report("one round, median", a[:, 1], b[:, 1])
    _report(f"lowest median of {args.rounds} rounds", a[:, 2], b[:, 2])
    _report(f"protocol: lowest p10 of {args.rounds} rounds", a[:, 0], b[:, 0])
    _report("protocol with the speed probe", c[:, 0], d[:, 0])
    for probe, label in ((False, "without the probe"), (True, "with the probe")):
        (_, s1, n1), (_, s2, n2) = passes[probe]
        print(f"{label}: passes took {s1:.0f} s and {s2:.0f} s; configs without a calm round: "
              f"{n1}, {n2}")
    for probe, (x, y) in ((False, (a, b)), (True, (c, d))):
        med = float(np.median(np.abs(x[:, 0] - y[:, 0]) / np.minimum(x[:, 0], y[:, 0])))
        print(f"target median <= 2% ({'with' if probe else 'without'} the probe): "
              f"{'met' if med <= 0.02 else 'NOT met'} ({med * 100:.2f}%)")


if __name__ == "__main__":
    main()
