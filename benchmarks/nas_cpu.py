"""Hardware-aware NAS on this CPU with scikit-learn's digits, in one run.

1. Calibrate: layer and network sweeps on this CPU, train and register the network model
   (per-op forests + additive overheads), serve it from a local gRPC server.
2. Unconstrained DARTS; then DARTS under a latency budget of 70% of the unconstrained
   network's predicted latency; then random search (``--random-samples`` architectures trained,
   best by validation accuracy) under the same budget.
3. Print accuracy, predicted and measured latency of each, whether the constrained result meets
   the budget in measurement, and the share of search time spent on the hardware term.

Targets: budget met in measurement; accuracy within 1 point of unconstrained; better than random
search at the same budget; hardware term < 5% of search time.

    python benchmarks/nas_cpu.py [--epochs 10] [--retrain-epochs 30] [--random-samples 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from collectors.devices import CpuDevice
from collectors.networks.sweep import LAYER_KINDS, NetworkSweep, layer_grid, network_plan
from collectors.networks.zoo import FAMILIES
from collectors.store.db import Store
from collectors.timing import TimingPolicy
from predictor import network
from search.cost import HardwareCost, ServiceCostSource
from search.data import digits
from search.job import prediction_client, run_one
from search.run import SearchConfig, measure_latency, random_search
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
        sweeper.run(sweeper.create(layer_grid(list(LAYER_KINDS), [1]), "layers"))
        sweeper.run(sweeper.create(network_plan(list(FAMILIES), args.networks, 1, 0),
                                   "network"))
        model, metrics = network.evaluate_and_fit(store, device.info.model)
        network.register(store, device.info.model, model, metrics)
        print(f"calibration: {metrics['networks']} networks, {metrics['layers']} layers in "
              f"{time.perf_counter() - t0:.0f} s; network model held-out within ±10% "
              f"{metrics['held_out']['within_10']:.0f}%, RMSPE {metrics['held_out']['rmspe']:.1f}%")
    space = SpaceConfig("mobilenet", width=16, depth=4)
    data = digits()
    with prediction_client(None, db) as client:
        dev = device.info.model
        free, _ = run_one(space, data, client, dev, SearchConfig(epochs=args.epochs),
                          args.retrain_epochs, True, "unconstrained", progress=False)
        budget = args.fraction * free.predicted["latency_ms"]
        tight, _ = run_one(space, data, client, dev,
                           SearchConfig(epochs=args.epochs,
                                        budgets={"latency_ms": budget * (1 - args.margin)}),
                           args.retrain_epochs, True, "constrained", progress=False)
        hw = HardwareCost(Supernet(space), ServiceCostSource(client, dev))
        arch, val, test, n = random_search(space, data, hw, args.random_samples,
                                           {"latency_ms": budget}, args.retrain_epochs)
        rand_ms = measure_latency(fixed_network(space, arch), input_shape(space))
        rand_pred = hw.of_arch(arch)["latency_ms"]
    print(f"\n{dev}, mobilenet space on digits; {args.epochs} search epochs, "
          f"{args.retrain_epochs} retraining epochs")
    print(f"{'':<26}{'test acc':>9}{'predicted ms':>14}{'measured ms':>13}{'search s':>10}"
          f"{'hw share':>10}")
    for o in (free, tight):
        print(f"{o.label:<26}{o.test_acc * 100:>8.1f}%{o.predicted['latency_ms']:>14.3f}"
              f"{o.measured_ms:>13.3f}{o.search_s:>10.0f}{o.hardware_s / o.search_s * 100:>9.1f}%")
    print(f"{f'random search ({n} archs)':<26}{test * 100:>8.1f}%{rand_pred:>14.3f}"
          f"{rand_ms:>13.3f}")
    print(f"budget {budget:.3f} ms ({args.fraction:.0%} of unconstrained predicted): "
          f"constrained measured {tight.measured_ms:.3f} ms -> "
          f"{'met' if tight.measured_ms <= budget else 'NOT met'}; measured latency "
          f"{(1 - tight.measured_ms / free.measured_ms) * 100:.0f}% below unconstrained")
    print(f"accuracy: constrained - unconstrained = {(tight.test_acc - free.test_acc) * 100:+.1f} "
          f"points (target >= -1); constrained - random = "
          f"{(tight.test_acc - test) * 100:+.1f} points (target > 0)")


if __name__ == "__main__":
    main()
