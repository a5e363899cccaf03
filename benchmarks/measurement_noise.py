"""Repeatability of the CPU timing protocol: the same 50 GEMM shapes measured twice.

Prints per-pass medians and the median relative difference |a-b|/min(a,b) between the two
passes (target: at most 2%). Pass 2 runs the shapes in reverse order so that drift in machine
state (frequency, caches, other load) shows up instead of cancelling.

    python benchmarks/measurement_noise.py [--shapes 50] [--backend torch] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from collectors.gemm.backends import backend_for
from collectors.gemm.shapes import random_shapes
from collectors.ops import Op
from collectors.timing import TimingPolicy, time_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=50)
    ap.add_argument("--backend", default="torch", choices=["torch", "numpy"])
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--min-time", type=float, default=0.2, help="timed seconds per config")
    ap.add_argument("--max-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the GEMMs (default: all cores)")
    args = ap.parse_args()

    backend = backend_for("cpu", args.backend, threads=args.threads)
    policy = TimingPolicy(min_time_s=args.min_time)
    ops = [Op.gemm(s.m, s.n, s.k, args.dtype)
           for s in random_shapes(args.shapes, 16, args.max_size, args.seed)]
    kernels = [backend.prepare(op) for op in ops]
    t0 = time.perf_counter()
    passes = []
    for order in (range(len(ops)), reversed(range(len(ops)))):
        stats = [None] * len(ops)
        for i in order:
            stats[i] = time_kernel(kernels[i].fn, kernels[i].timer, policy)
        passes.append(stats)
    print(f"{len(ops)} {args.dtype} GEMM shapes (16..{args.max_size}), backend {backend.name}, "
          f"threads {kernels[0].threads}, {time.perf_counter() - t0:.0f} s")
    for label, attr in (("median", "median_ms"), ("p10", "p10_ms")):
        a, b = (np.array([getattr(s, attr) for s in p]) for p in passes)
        rel = np.abs(a - b) / np.minimum(a, b)
        print(f"{label:>6} latency: range {a.min():.4f} .. {a.max():.3f} ms; relative difference "
              f"between passes: median {np.median(rel) * 100:.2f}%  "
              f"p90 {np.percentile(rel, 90) * 100:.2f}%  max {rel.max() * 100:.2f}%  "
              f"(target median <= 2%: {'met' if np.median(rel) <= 0.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
