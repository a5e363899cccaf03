"""A network model fitted at batch 1, asked about larger batches, against measurements.

`hwnas demo` fits the CPU's network model from NAS-Bench-201 cells run at batch 1, and users then
ask about other batches. This prints, for NAS-Bench-201 cells the model was not trained on
(sampled with another seed) at batches 2 to 16, measured / predicted for four answers made in
the same run: the network model asked directly (what the service answered before it kept to
its training batch), the sum of the GEMM model's op predictions, the network model at its
batch plus how the GEMM model's predictions change with the batch, and what the service
answers now (the third at a larger batch than the model's, the geometric mean of the first and
third at a smaller one: predictor.network.batch_scaled). Geometric mean and worst of
|log(measured / predicted)| per answer close the table. A store whose network model learned
another single batch (e.g. 8) works the same way: pass the batches to ask about.

    python benchmarks/network_batch.py [--db URL] [--cells 4] [--batches 2,4,8,16]

With --stored DEVICE, nothing is measured: the networks a store holds of that device model
(e.g. a GPU's, imported from data/gpu/) are the test. A network model is fitted on those at
--fit-batch, leaving out the architectures measured at other batches, and those are the ones
asked about; the store's registered GEMM model of the device makes the op predictions.

    python benchmarks/network_batch.py --stored H200 [--fit-batch 1] [--family nb201,resnet]
"""

from __future__ import annotations

import argparse
import math

from collectors.devices import CpuDevice
from collectors.networks.sweep import network_plan
from collectors.networks.zoo import nb201_network
from collectors.ops import Op
from collectors.store.db import Store
from hwnas.service.engine import PredictionEngine
from predictor import network
from predictor.data import resolve_device_model
from predictor.nasbench201 import network_ops
from predictor.op_costs import total
from search.run import measure_network

ANSWERS = ("network model as is", "sum of op predictions", "at its batch + GEMM change",
           "served now")


def answers(engine: PredictionEngine, device: str, model: network.NetworkCostModel,
            ops: list[Op]) -> dict[str, float]:
    """The four answers (ms) for ``ops``, at another batch than ``model``'s."""
    at = network.at_batch(ops, model.batches_[0])
    op_sum = total(engine._op_costs(device, 0, ops, None)[2]).latency_ms
    shares, constant = model.per_op(at)
    return {
        ANSWERS[0]: float(model.predict([ops])[0]),
        ANSWERS[1]: op_sum,
        ANSWERS[2]: float(shares.sum()) + constant + op_sum - total(
            engine._op_costs(device, 0, at, None)[2]).latency_ms,
        ANSWERS[3]: engine._batch_scaled(device, ops, (0, model, 0.0))[2].latency_ms,
    }


class Table:
    """measured / predicted per row and answer, and the summary line."""

    def __init__(self, label: str, width: int = 12):
        self.width = width
        self.logs: dict[str, list[float]] = {a: [] for a in ANSWERS}
        print(f"{label:<{width}} {'batch':>5} {'measured ms':>11}  " + "  ".join(
            f"{a:>26}" for a in ANSWERS))

    def row(self, label: str, batch: int, measured: float, predicted: dict[str, float],
            note: str = "") -> None:
        for a, p in predicted.items():
            self.logs[a].append(abs(math.log(measured / p)))
        print(f"{label:<{self.width}} {batch:>5} {measured:>11.4g}  " + "  ".join(
            f"{measured / p:>26.2f}" for p in predicted.values()) + note)

    def close(self) -> None:
        print("\n" + " " * (self.width + 19) + "  ".join(
            f"{f'x{math.exp(sum(v) / len(v)):.2f} mean, x{math.exp(max(v)):.2f} worst':>26}"
            for v in self.logs.values()))


def measured_here(engine: PredictionEngine, cells: int, batches: list[int],
                  min_time: float) -> None:
    cpu = CpuDevice()
    device = cpu.info.model
    net = engine.network_model(device, 0)
    if net is None or net[1].batches_ is None:
        raise SystemExit(f"{device}: no network model that records its batch; run `hwnas demo` "
                         "(or `hwnas train --target network`) first")
    model = net[1]
    print(f"{device}: network model v{net[0]}, trained at batch {model.batches_[0]} to "
          f"{model.batches_[1]}; measured / predicted\n")
    table = Table("cell")
    for cell, cfg in enumerate(network_plan(["nb201"], cells, 1, seed=101)):
        arch = cfg["arch"]
        print(f"cell {cell}: {arch}")
        for batch in batches:
            ops = [op for _, op in network_ops(arch, batch, "fp32")]
            m = measure_network(nb201_network(arch), (batch, 3, 32, 32), cpu, min_time_s=min_time)
            table.row(f"cell {cell}", batch, m.latency_ms, answers(engine, device, model, ops),
                      " (measured while the machine ran slow)" if m.caution() else "")
    table.close()


def signature(ops: list[Op]) -> tuple[str, ...]:
    """A network's ops as a hashable value: the same architecture at the same batch."""
    return tuple(op.key() for op in ops)


def stored(engine: PredictionEngine, store: Store, spec: str, fit_batch: int,
           families: set[str] | None = None) -> None:
    device = resolve_device_model(store, spec)
    nets = network.load_networks(store, device)
    if families:
        nets = nets[nets.family.isin(families)]
    nets["batch"] = nets.ops.map(network.network_batch)
    asked = nets[nets.batch != fit_batch]
    if asked.empty:
        raise SystemExit(f"{device}: every stored network ran at batch {fit_batch}")
    # The architectures asked about stay out of the fit, at every batch.
    held = {signature(network.at_batch(ops, fit_batch)) for ops in asked.ops}
    train = nets[(nets.batch == fit_batch) & ~nets.ops.map(signature).isin(held)]
    if len(train) < 4:
        raise SystemExit(f"{device}: only {len(train)} other networks at batch {fit_batch}")
    layers = network.layer_frame(store, device)
    kinds = (network.OpKindForests().fit(list(layers.op), layers.latency_ms.to_numpy())
             if len(layers) else None)
    model = network.NetworkCostModel(kinds).fit(list(train.ops), train.latency_ms.to_numpy())
    print(f"{device}: a network model fitted on {len(train)} stored networks at batch "
          f"{fit_batch} ({len(asked)} others asked about); measured / predicted; 'at batch "
          f"{fit_batch}' is the same network measured at that batch\n")
    same = {signature(ops): ms for ops, ms in zip(nets.ops[nets.batch == fit_batch],
                                               nets.latency_ms[nets.batch == fit_batch],
                                               strict=True)}
    table = Table("network", 14)
    for r in asked.sort_values(["key"]).itertuples():
        then = same.get(signature(network.at_batch(r.ops, fit_batch)))
        table.row(r.family, int(r.batch), r.latency_ms,
                  answers(engine, device, model, r.ops),
                  f"  at batch {fit_batch}: {r.latency_ms / then:.2f}" if then else "")
    table.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store URL (default: hwnas's default store)")
    ap.add_argument("--cells", type=int, default=4, help="NAS-Bench-201 cells to measure")
    ap.add_argument("--batches", default="2,4,8,16", help="comma-separated batch sizes")
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="timed seconds per measurement round (5 rounds)")
    ap.add_argument("--stored", metavar="DEVICE", default=None,
                    help="measure nothing: ask about the store's networks of this device model "
                         "at other batches than --fit-batch")
    ap.add_argument("--fit-batch", type=int, default=1,
                    help="with --stored: the batch of the networks the model is fitted on")
    ap.add_argument("--family", default=None,
                    help="with --stored: only these families (comma-separated; e.g. nb201,resnet;"
                         " `module` for models measured with --module)")
    args = ap.parse_args()
    store = Store(args.db)
    engine = PredictionEngine(store)
    if args.stored:
        stored(engine, store, args.stored, args.fit_batch,
               set(args.family.split(",")) if args.family else None)
    else:
        measured_here(engine, args.cells, [int(b) for b in args.batches.split(",")],
                      args.min_time)


if __name__ == "__main__":
    main()
