"""Hardware-aware NAS on this CPU with scikit-learn's digits, in one run.

1. Calibrate: layer and network sweeps on this CPU, train and register the network model
   (per-op forests + additive overheads), serve it from a local gRPC server.
2. Unconstrained DARTS; then DARTS under a latency budget of 70% of the unconstrained
   network's predicted latency; then random search (``--random-samples`` architectures trained,
   best by validation accuracy) under the same budget.
3. Print accuracy, predicted and measured latency of each, whether the constrained result meets
   the budget in measurement, and the share of search time spent on the hardware term.
2-3 run for ``--seeds`` seeds (data split, initialisation, random draws); accuracies are
compared as means, since one digits test image is 0.28 points.

Targets: budget met in measurement; accuracy within 1 point of unconstrained; better than random
search at the same budget; hardware term < 5% of search time.

    python benchmarks/nas_cpu.py [--seeds 3] [--epochs 10] [--retrain-epochs 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from collectors.devices import CpuDevice
from collectors.networks.sweep import DEFAULT_LAYER_KINDS, NetworkSweep, layer_grid, network_plan
from collectors.networks.zoo import FAMILIES
from collectors.store.db import Store
from collectors.timing import TimingPolicy
from predictor import network
from search.cost import HardwareCost, ServiceCostSource
from search.data import digits
from search.job import Outcome, prediction_client, run_one
from search.run import SearchConfig, measure_network, random_search
from search.spaces import SpaceConfig, fixed_network, input_shape
from search.supernet import Supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--retrain-epochs", type=int, default=30)
    ap.add_argument("--random-samples", type=int, default=3)
    ap.add_argument("--networks", type=int, default=25, help="calibration networks per family")
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--db", default=None, help="reuse a store that has a network model")
    ap.add_argument("--seeds", type=int, default=3,
                    help="repeat the three searches with this many seeds (data split, "
                         "initialisation) and compare means")
    args = ap.parse_args()
    torch.set_num_threads(1)  # repeatable timings on a shared 2-core VM

    device = CpuDevice()
    db = args.db or f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'nas.sqlite')}"
    os.environ.setdefault("HWNAS_MODELS", os.path.join(tempfile.mkdtemp(), "models"))
    store = Store(db)
    t0 = time.perf_counter()
    if args.db is None:
        sweeper = NetworkSweep(store, device, TimingPolicy(min_time_s=0.1, rounds=3), threads=1,
                               progress=False)
        sweeper.run(sweeper.create(layer_grid(list(DEFAULT_LAYER_KINDS), [1]), "layers"))
        sweeper.run(sweeper.create(network_plan(list(FAMILIES), args.networks, 1, 0),
                                   "network"))
        _, metrics = network.train_and_register(store, device.info.model)
        print(f"calibration: {metrics['networks']} networks, {metrics['layers']} layers in "
              f"{time.perf_counter() - t0:.0f} s; network model held-out within ±10% "
              f"{metrics['held_out']['within_10']:.0f}%, RMSPE {metrics['held_out']['rmspe']:.1f}%")
    space = SpaceConfig("mobilenet", width=16, depth=4)
    dev = device.info.model
    rows = []
    with prediction_client(None, db) as client:
        for seed in range(args.seeds):
            rows.append(one_seed(space, client, dev, seed, args))
    print(f"\n{dev}, mobilenet space on digits (360 test images: 1 image = 0.28 points); "
          f"{args.epochs} search epochs, {args.retrain_epochs} retraining epochs")
    print(f"{'seed':<5}{'':<26}{'test acc':>9}{'predicted ms':>14}{'measured ms':>13}"
          f"{'search s':>10}{'hw share':>10}")
    for seed, (free, tight, rand, budget) in enumerate(rows):
        for o in (free, tight, rand):
            share = f"{o.hardware_s / o.search_s * 100:>9.1f}%" if o.search_s else ""
            search_s = f"{o.search_s:>10.0f}" if o.search_s else ""
            print(f"{seed:<5}{o.label:<26}{o.test_acc * 100:>8.1f}%"
                  f"{o.predicted['latency_ms']:>14.3f}{o.measured_ms:>13.3f}{search_s}{share}")
        print(f"{'':<5}budget {budget:.3f} ms ({args.fraction:.0%} of unconstrained predicted): "
              f"constrained measured {tight.measured_ms:.3f} ms -> "
              f"{'met' if tight.measured_ms <= budget else 'NOT met'}; "
              f"{(1 - tight.measured_ms / free.measured_ms) * 100:.0f}% below unconstrained")
    acc = {k: np.array([r[i].test_acc for r in rows]) * 100
           for i, k in enumerate(("free", "tight", "random"))}
    met = sum(r[1].measured_ms <= r[3] for r in rows)
    print(f"over {len(rows)} seed(s): test acc unconstrained {acc['free'].mean():.2f}%, "
          f"constrained {acc['tight'].mean():.2f}%, random {acc['random'].mean():.2f}%; budget "
          f"met in measurement {met}/{len(rows)}")
    print(f"accuracy: constrained - unconstrained = "
          f"{(acc['tight'] - acc['free']).mean():+.2f} points (target >= -1); constrained - "
          f"random = {(acc['tight'] - acc['random']).mean():+.2f} points (target > 0)")


def one_seed(space, client, dev: str, seed: int, args):
    """Unconstrained search, search at ``fraction`` of its predicted latency, and random search
    under that budget, all with ``seed`` (data split, initialisation, random draws)."""
    data = digits(seed)
    here = CpuDevice()
    free, _ = run_one(space, data, client, dev, SearchConfig(epochs=args.epochs, seed=seed),
                      args.retrain_epochs, here, "unconstrained", progress=False)
    budget = args.fraction * free.predicted["latency_ms"]
    tight, _ = run_one(space, data, client, dev,
                       SearchConfig(epochs=args.epochs, seed=seed,
                                    budgets={"latency_ms": budget * (1 - args.margin)}),
                       args.retrain_epochs, here, "constrained", progress=False)
    hw = HardwareCost(Supernet(space), ServiceCostSource(client, dev))
    arch, val, test, n = random_search(space, data, hw, args.random_samples,
                                       {"latency_ms": budget}, args.retrain_epochs, seed)
    rand = Outcome(f"random search ({n} archs)", arch, hw.of_arch(arch),
                   measure_network(fixed_network(space, arch), input_shape(space), here)
                   .latency_ms, val, test,
                   0.0, 0.0)
    return free, tight, rand, budget


if __name__ == "__main__":
    main()
