"""How well the search's costs match measurement on this CPU, before and after `--calibrate`.

1. A GEMM model for this CPU (the demo's sweep, unless --db already has one).
2. A test set: --test random architectures of the search space (digits input by default),
   measured as a search measures its result (search.run.measure_network), kept out of the store.
3. Their predicted latency through the prediction service: first as sums of GEMM predictions
   per op (no network model), then after `hwnas.calibrate.calibrate` with each of --counts
   networks (each count adds to the one before: the plans share their first architectures).

Prints MAPE, share within ±10%, Spearman rho and the median measured/predicted ratio per row,
and the seconds each calibration took.

    python benchmarks/search_calibration.py [--counts 5,10,20] [--test 30] [--space nb201]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from scipy.stats import spearmanr

from collectors.devices import CpuDevice
from collectors.networks.decompose import decompose
from collectors.store.db import Store
from hwnas.calibrate import calibrate, calibration_plan
from predictor import registry
from search.job import OP_SUM, local_service, wait_for_network_model
from search.run import measure_network, random_arch
from search.spaces import SpaceConfig, fixed_network, input_shape


def ensure_gemm_model(db: str, device: CpuDevice) -> None:
    try:
        registry.find(Store(db), device.info.model)
        return
    except registry.RegistryError:
        pass
    from hwnas.gemm_job import GemmJob
    from predictor.training import train_and_register

    job = GemmJob.from_options(db_url=db, device_name="cpu", dtypes="fp32", shape_set="grid",
                               min_size=32, max_size=512, points=3, min_time=0.1,
                               power_window=1.0, progress=False)
    job.run(measure_missing_peaks=True)
    train_and_register(job.store, device.info.model, n_splits=3, n_estimators=100)


def score(measured: np.ndarray, predicted: np.ndarray) -> str:
    ape = np.abs(predicted - measured) / measured
    return (f"{ape.mean() * 100:>7.1f}{np.mean(ape <= 0.1) * 100:>9.0f}"
            f"{spearmanr(measured, predicted).statistic:>10.3f}"
            f"{np.median(measured / predicted):>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="5,10,20", help="calibration sizes, ascending")
    ap.add_argument("--test", type=int, default=30, help="held-out architectures")
    ap.add_argument("--space", choices=["mobilenet", "nb201"], default="mobilenet")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--db", default=None, help="a store with this CPU's GEMM model (default: "
                                               "a new one, with the demo's sweep)")
    args = ap.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    os.environ.setdefault("HWNAS_MODELS", tempfile.mkdtemp())
    db = args.db or f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'cal.sqlite')}"
    device = CpuDevice()
    space = SpaceConfig(args.space, width=args.width, depth=args.depth)
    ensure_gemm_model(db, device)

    calibrating = {tuple(sorted(c["arch"].items()))
                   for c in calibration_plan(space, counts[-1], seed=0)}
    rng = np.random.default_rng(100)
    test: list[dict[str, str]] = []
    while len(test) < args.test:
        arch = random_arch(space, rng)
        if tuple(sorted(arch.items())) not in calibrating and arch not in test:
            test.append(arch)
    t0 = time.perf_counter()
    measured = np.array([measure_network(fixed_network(space, a), input_shape(space),
                                         device).latency_ms for a in test])
    print(f"{len(test)} held-out architectures of {space} measured in "
          f"{time.perf_counter() - t0:.0f} s: {measured.min():.3f}-{measured.max():.3f} ms")
    ops = [[op.to_dict() for _, op in decompose(fixed_network(space, a),
                                                 input_shape(space)).ops] for a in test]

    from hwnas.client import PredictorClient

    store = Store(db)
    print(f"{'costs from':<42}{'MAPE %':>7}{'±10% %':>9}{'Spearman':>10}{'meas/pred':>10}")
    with local_service(db) as address, PredictorClient(address) as client:
        client.wait_ready(60)
        answers = [client.predict_network(device.info.model, ops=o) for o in ops]
        assert all(a.method.startswith(OP_SUM) for a in answers), "the store has a network model"
        print(f"{'GEMM op sums (no network model)':<42}"
              f"{score(measured, np.array([a.total.latency_ms for a in answers]))}")
        for count in counts:
            t0 = time.perf_counter()
            cal = calibrate(store, device, space, count, progress=False)
            took = time.perf_counter() - t0
            wait_for_network_model(client, device.info.model, space, cal.version)
            pred = np.array([client.predict_network(device.info.model, ops=o).total.latency_ms
                             for o in ops])
            print(f"{f'network model, {count} networks ({took:.0f} s)':<42}"
                  f"{score(measured, pred)}")


if __name__ == "__main__":
    main()
