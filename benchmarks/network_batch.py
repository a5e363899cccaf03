"""A network model fitted at batch 1, asked about larger batches, against measurements here.

`hwnas demo` fits the CPU's network model from NAS-Bench-201 cells run at batch 1, and users then
ask about other batches. This prints, for NAS-Bench-201 cells the model was not trained on
(sampled with another seed) at batches 2 to 16, measured / predicted for four answers made in
the same run: the network model asked directly (what the service answered before it kept to
its training batch), the sum of the GEMM model's op predictions, the network model at its
batch plus how the GEMM model's predictions change with the batch, and what the service
answers now (the geometric mean of the first and third). Geometric mean and worst of
|log(measured / predicted)| per answer close the table. A store whose network model learned
another single batch (e.g. 8) works the same way: pass the batches to ask about.

    python benchmarks/network_batch.py [--db URL] [--cells 4] [--batches 2,4,8,16]
"""

from __future__ import annotations

import argparse
import math

from collectors.devices import CpuDevice
from collectors.networks.sweep import network_plan
from collectors.networks.zoo import nb201_network
from collectors.store.db import Store
from hwnas.service.engine import PredictionEngine
from predictor.nasbench201 import network_ops
from predictor.op_costs import total
from search.run import measure_network

ANSWERS = ("network model as is", "sum of op predictions", "at its batch + GEMM change",
           "served now")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store URL (default: hwnas's default store)")
    ap.add_argument("--cells", type=int, default=4, help="NAS-Bench-201 cells to measure")
    ap.add_argument("--batches", default="2,4,8,16", help="comma-separated batch sizes")
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="timed seconds per measurement round (5 rounds)")
    args = ap.parse_args()

    cpu = CpuDevice()
    device = cpu.info.model
    engine = PredictionEngine(Store(args.db))
    net = engine.network_model(device, 0)
    if net is None or net[1].batches_ is None:
        raise SystemExit(f"{device}: no network model that records its batch; run `hwnas demo` "
                         "(or `hwnas train --target network`) first")
    print(f"{device}: network model v{net[0]}, trained at batch {net[1].batches_[0]} to "
          f"{net[1].batches_[1]}; measured / predicted\n")
    print(f"{'cell':<12} {'batch':>5} {'measured ms':>11}  " + "  ".join(
        f"{a:>26}" for a in ANSWERS))
    logs: dict[str, list[float]] = {a: [] for a in ANSWERS}
    for cell, cfg in enumerate(network_plan(["nb201"], args.cells, 1, seed=101)):
        arch = cfg["arch"]
        print(f"cell {cell}: {arch}")
        for batch in (int(b) for b in args.batches.split(",")):
            ops = [op for _, op in network_ops(arch, batch, "fp32")]
            at = [op for _, op in network_ops(arch, net[1].batches_[0], "fp32")]
            op_sum = total(engine._op_costs(device, 0, ops, None)[2]).latency_ms
            shares, constant = net[1].per_op(at)
            predicted = {
                ANSWERS[0]: float(net[1].predict([ops])[0]),
                ANSWERS[1]: op_sum,
                ANSWERS[2]: float(shares.sum()) + constant + op_sum - total(
                    engine._op_costs(device, 0, at, None)[2]).latency_ms,
                ANSWERS[3]: engine.predict_network(device, 0, ops)[2].latency_ms,
            }
            m = measure_network(nb201_network(arch), (batch, 3, 32, 32), cpu,
                                min_time_s=args.min_time)
            for a, p in predicted.items():
                logs[a].append(abs(math.log(m.latency_ms / p)))
            print(f"{f'cell {cell}':<12} {batch:>5} {m.latency_ms:>11.4g}  " + "  ".join(
                f"{m.latency_ms / p:>26.2f}" for p in predicted.values())
                + (" (measured while the machine ran slow)" if m.caution() else ""))
    print("\n" + " " * 31 + "  ".join(
        f"{f'x{math.exp(sum(v) / len(v)):.2f} mean, x{math.exp(max(v)):.2f} worst':>26}"
        for v in logs.values()))


if __name__ == "__main__":
    main()
