"""Recurrent networks' latency on this CPU: the sum of op predictions against network models,
with and without a sweep of recurrent layers, on held-out architectures.

Samples ``--count`` small recurrent networks (token ids or features in; one or two RNN, GRU or
LSTM layers, one way or bidirectional, 32-512 wide; 10-120 steps; batch 1-32; a linear head on
the last step) and measures each here by the search's verification protocol; measures the
recurrent layer grid (as ``hwnas collect network --family layers --layer-kinds recurrent
--batch 1,8,32`` does) into the store unless ``--reuse``. Then, over 5 folds of held-out
architectures, prints in the same run: the sum of op predictions (the store's GEMM model, which
is how ``hwnas predict network`` answered a network no network model covers before recurrent
layers were swept), the same sum with the recurrent layers priced by the forest of the swept
layers (how it answers once they are and ``hwnas train --target network`` learned them), a
network model fitted on the training fold's networks alone, and one whose per-op forests learned
the recurrent layers too. Needs a GEMM model of this CPU in the store (``hwnas demo`` registers
one).

    python benchmarks/recurrent_accuracy.py [--db URL] [--count 40] [--reuse] [--threads N]
                                            [--batches 1,8,32] [--details]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.model_selection import KFold
from torch import nn
from tqdm import tqdm

from collectors.devices import CpuDevice
from collectors.networks.decompose import decompose
from collectors.networks.sweep import NetworkSweep, layer_grid
from collectors.store.db import Store
from collectors.timing import TimingPolicy
from predictor import registry
from predictor.network import NetworkCostModel, OpKindForests, forest_priced, layer_frame
from predictor.op_costs import predict_ops, total
from search.run import measure_network

LAYERS = {"RNN": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}


class Recurrent(nn.Module):
    """Embedding (token ids) or features, a recurrent stack, a linear head on the last step."""

    def __init__(self, mode: str, features: int, hidden: int, layers: int, bidirectional: bool,
                 tokens: bool):
        super().__init__()
        self.embed = nn.Embedding(1000, features) if tokens else None
        self.rnn = LAYERS[mode](features, hidden, layers, batch_first=True,
                                bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 4)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        return self.head(self.rnn(x)[0][:, -1])


def sample(rng: np.random.Generator) -> dict:
    return {"mode": str(rng.choice(list(LAYERS))), "features": int(rng.choice((16, 64, 256))),
            "hidden": int(rng.choice((32, 48, 64, 96, 128, 192, 256, 384, 512))),
            "layers": int(rng.choice((1, 2))), "bidirectional": bool(rng.random() < 0.4),
            "tokens": bool(rng.random() < 0.5), "steps": int(rng.choice((10, 20, 30, 50, 80, 120))),
            "batch": int(rng.choice((1, 2, 4, 8, 16, 32)))}


def scores(y: np.ndarray, p: np.ndarray) -> str:
    ratio = y / p
    ape = np.abs(p - y) / y
    rmspe = np.sqrt(np.mean(((p - y) / y) ** 2)) * 100
    worst = ratio[np.argmax(np.abs(np.log(ratio)))]
    return (f"within ±10% {np.mean(ape <= 0.1) * 100:5.1f}%  RMSPE {rmspe:6.1f}%  measured / "
            f"predicted median x{np.median(ratio):.2f}, x{ratio.min():.2f}-{ratio.max():.2f} "
            f"(worst x{worst:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store URL (default: hwnas's default store)")
    ap.add_argument("--count", type=int, default=40, help="recurrent networks to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="timed seconds per measurement round")
    ap.add_argument("--reuse", action="store_true",
                    help="use the recurrent layers already in the store")
    ap.add_argument("--batches", default="1,8,32",
                    help="batches of the recurrent layer grid, comma-separated")
    ap.add_argument("--details", action="store_true", help="print every network")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    store, cpu = Store(args.db), CpuDevice()
    gemm = registry.load(registry.find(store, cpu.info.model, None, target="gemm"))
    if not args.reuse:
        sweeper = NetworkSweep(store, cpu, TimingPolicy(min_time_s=args.min_time, rounds=3),
                               args.threads)
        batches = [int(b) for b in args.batches.split(",")]
        sweeper.run(sweeper.create(layer_grid(["recurrent"], batches), "layers"))
    layers = layer_frame(store, cpu.info.model)
    layers = layers[[op.kind == "recurrent" and op.dtype == "fp32" for op in layers.op]]
    kinds = OpKindForests().fit(list(layers.op), layers.latency_ms.to_numpy())

    rng = np.random.default_rng(args.seed)
    configs = [sample(rng) for _ in range(args.count)]
    nets, measured = [], []
    for cfg in tqdm(configs, desc="networks", unit="network"):
        model = Recurrent(cfg["mode"], cfg["features"], cfg["hidden"], cfg["layers"],
                          cfg["bidirectional"], cfg["tokens"])
        shape = (cfg["batch"], cfg["steps"]) + (() if cfg["tokens"] else (cfg["features"],))
        kind = "int64" if cfg["tokens"] else "float"
        nets.append([op for _, op in decompose(model, shape, input_dtype=kind).ops])
        measured.append(measure_network(model, shape, cpu, min_time_s=args.min_time,
                                        input_dtype=kind).latency_ms)
    y = np.array(measured)
    summed = np.array([total(predict_ops(gemm, ops)).latency_ms for ops in nets])
    # as the service sums a network no network model covers, where layer sweeps measured
    # recurrent layers: those by their forest, every other op by the GEMM model
    sweeps = NetworkCostModel(kinds)
    sweeps.dtypes_ = {"fp32"}
    forests = np.array([total(forest_priced(sweeps, 0, ops, predict_ops(gemm, ops))).latency_ms
                        for ops in nets])
    alone, with_layers = np.empty(len(y)), np.empty(len(y))
    for tr, te in KFold(5, shuffle=True, random_state=0).split(nets):
        train = [nets[i] for i in tr]
        test = [nets[i] for i in te]
        alone[te] = NetworkCostModel().fit(train, y[tr]).predict(test)
        with_layers[te] = NetworkCostModel(kinds).fit(train, y[tr]).predict(test)

    print(f"\n{cpu.info.model}: {len(y)} recurrent networks ({y.min():.3g}-{y.max():.3g} ms), "
          f"{len(layers)} recurrent layers; 5 folds of held-out architectures")
    print(f"  sum of op predictions (GEMM model):     {scores(y, summed)}")
    print(f"  network model, networks only:           {scores(y, alone)}")
    print(f"  network model + recurrent layers:       {scores(y, with_layers)}")
    print(f"  sum, recurrent layers by their forest:  {scores(y, forests)}")
    if args.details:
        print("\nmeasured ms, then measured / predicted: op sum, networks only, + layers, forest")
        for i in np.argsort(y):
            c = configs[i]
            print(f"  {c['mode']:<4} {c['layers']}x{c['hidden']:<3} "
                  f"{'bi' if c['bidirectional'] else '  '} in {c['features']:<3} "
                  f"{c['steps']:>3} steps batch {c['batch']:>2}: {y[i]:8.4g}  "
                  f"x{y[i] / summed[i]:.2f} x{y[i] / alone[i]:.2f} x{y[i] / with_layers[i]:.2f} "
                  f"x{y[i] / forests[i]:.2f}")
    for mode in LAYERS:
        sel = np.array([c["mode"] == mode for c in configs])
        if sel.any():
            print(f"  {mode:<4} ({sel.sum():>2}): op sum x{np.median(y[sel] / summed[sel]):.2f}, "
                  f"networks only x{np.median(y[sel] / alone[sel]):.2f}, + layers "
                  f"x{np.median(y[sel] / with_layers[sel]):.2f}, forest "
                  f"x{np.median(y[sel] / forests[sel]):.2f} (medians)")


if __name__ == "__main__":
    main()
