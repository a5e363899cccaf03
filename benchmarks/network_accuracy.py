"""Whole-network latency prediction on this CPU, on held-out architectures.

Measures single layers (conv2d, depthwise, linear, attention over grids) and ``--count`` sampled
networks per family (NAS-Bench-201, ResNet-, MobileNet- and transformer-style) into a store,
unless ``--reuse``; then, over 5 folds of held-out architectures, compares in the same run:
a FLOPs proxy (log-latency linear in log-FLOPs, fitted on the training fold) and hwnas's network
model (per-op-type forests from the layer data, composed, plus learned additive residual terms).
Prints share within ±10%, RMSPE and Spearman rho, overall and per family. Target: >= 90%.
``--dtype bf16`` (or fp16) measures and models the layers and networks held and run in that
dtype instead of fp32 (the same architectures).

    python benchmarks/network_accuracy.py [--count 40] [--threads 1] [--db URL] [--reuse]
                                          [--dtype fp32|fp16|bf16]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from scipy.stats import spearmanr
from sklearn.model_selection import KFold

from collectors.devices import CpuDevice
from collectors.networks.sweep import DEFAULT_LAYER_KINDS, NetworkSweep, layer_grid, network_plan
from collectors.networks.zoo import FAMILIES
from collectors.store.db import Store
from collectors.timing import TimingPolicy
from predictor.network import NetworkCostModel, OpKindForests, layer_frame, load_networks, of_dtype


def scores(y: np.ndarray, p: np.ndarray) -> str:
    ape = np.abs(p - y) / y
    rmspe = np.sqrt(np.mean(((p - y) / y) ** 2)) * 100
    return (f"within ±10% {np.mean(ape <= 0.1) * 100:5.1f}%  RMSPE {rmspe:5.1f}%  "
            f"Spearman {spearmanr(y, p).statistic:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="timed seconds per config and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; a config's latency is its lowest round p10")
    ap.add_argument("--db", default=None)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = ap.parse_args()

    db = args.db or f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'networks.sqlite')}"
    store, device = Store(db), CpuDevice()
    if not args.reuse:
        policy = TimingPolicy(min_time_s=args.min_time, rounds=args.rounds)
        sweeper = NetworkSweep(store, device, policy,
                               args.threads)
        s1 = sweeper.run(sweeper.create(layer_grid(list(DEFAULT_LAYER_KINDS), [1], args.dtype),
                                        "layers"))
        s2 = sweeper.run(sweeper.create(network_plan(list(FAMILIES), args.count, 1, 0,
                                                     args.dtype), "network"))
        print(f"measured {s1.done} layers and {s2.done} networks ({s1.failed + s2.failed} "
              f"failed) in {s1.seconds + s2.seconds:.0f} s into {store.display_url}")
    nets = of_dtype(load_networks(store, device.info.model), args.dtype, device.info.model)
    layers = layer_frame(store, device.info.model)
    layer_ops = [op for op in layers.op if op.dtype == args.dtype]
    layer_ms = layers.latency_ms.to_numpy()[[op.dtype == args.dtype for op in layers.op]]
    kind_model = OpKindForests().fit(layer_ops, layer_ms)
    y = nets.latency_ms.to_numpy()
    pred_ours, pred_flops = np.empty(len(y)), np.empty(len(y))
    for tr, te in KFold(5, shuffle=True, random_state=0).split(nets):
        model = NetworkCostModel(kind_model).fit(list(nets.ops.iloc[tr]), y[tr])
        pred_ours[te] = model.predict(list(nets.ops.iloc[te]))
        a, b = np.polyfit(np.log(nets.flops.iloc[tr]), np.log(y[tr]), 1)
        pred_flops[te] = np.exp(a * np.log(nets.flops.iloc[te]) + b)
    print(f"{device.info.model}, {args.dtype}: {len(nets)} networks "
          f"({', '.join(sorted(set(nets.family)))}), {len(layer_ops)} layers; 5 folds of "
          f"held-out architectures; latency {y.min():.3f}..{y.max():.2f} ms")
    print(f"  FLOPs proxy   {scores(y, pred_flops)}")
    print(f"  hwnas network {scores(y, pred_ours)}")
    for family in sorted(set(nets.family)):
        sel = (nets.family == family).to_numpy()
        print(f"    {family:<12}{scores(y[sel], pred_ours[sel])}   (FLOPs: "
              f"{scores(y[sel], pred_flops[sel])})")
    share = np.mean(np.abs(pred_ours - y) / y <= 0.1) * 100
    print(f"target: >= 90% within ±10%: {'met' if share >= 90 else 'NOT met'} ({share:.1f}%)")


if __name__ == "__main__":
    main()
