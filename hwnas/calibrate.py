"""``hwnas search --calibrate N``: measure N architectures of the search's own space (same
input, width and depth) on the target device, here, and fit the device's network model from
them before searching.

Without a network model the service answers a network with the sum of its ops' predictions
from the GEMM forest, which leaves out what is not GEMM work: the framework's cost per layer
and the memory-bound ops. On a CPU that is most of a small network's time (a digits-sized
network of 40 ops: 0.25 ms as an op sum, 0.76 ms measured), so a search would pick networks
that meet a latency budget only on paper. The network model learns those costs from whole
networks measured on the device (``predictor.network``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice, product

import numpy as np
from sqlalchemy import select

from collectors.devices import ComputeDevice
from collectors.networks.decompose import decompose
from collectors.networks.sweep import NetworkSweep, config_key
from collectors.ops import op_flops
from collectors.probe import SpeedProbe, default_probe
from collectors.rounds import default_rounds
from collectors.store.db import Store
from collectors.store.models import Device, Measurement
from collectors.timing import TimingPolicy
from predictor import network, registry
from search.spaces import SpaceConfig, choices, input_shape
from search.supernet import Supernet

MIN_NETWORKS = 5  # the network model's evaluation holds out folds of whole networks


@dataclass
class Calibration:
    """What a calibration measured and the network model it left registered."""

    planned: int
    measured: int  # measured now
    stored_earlier: int  # found in the store (an earlier calibration of this space and seed)
    failed: int
    version: int  # the device's network model version the search will use
    retrained: bool  # False: nothing new was measured and that model already had it all
    metrics: dict  # held-out evaluation of the model (predictor.network.evaluate_and_fit)


def flops_extremes(space: SpaceConfig) -> list[dict[str, str]]:
    """The architectures with the fewest and with the most FLOPs: each decision's cheapest
    and dearest option (decisions add up, each seeing a fixed input shape). Measured at both
    ends, the network model stays inside its data wherever a budget pushes the search."""
    net = Supernet(space)
    net.record_shapes(input_shape(space))
    fewest, most = {}, {}
    for m in net.mixed:
        flops = [sum(op_flops(op) for _, op in decompose(cand, m.input_shape).ops)
                 for cand in m.candidates]
        fewest[m.label] = m.names[int(np.argmin(flops))]
        most[m.label] = m.names[int(np.argmax(flops))]
    return [fewest, most]


def calibration_plan(space: SpaceConfig, count: int, seed: int) -> list[dict]:
    """``count`` distinct architectures of ``space`` (all of them when it has fewer): the two
    of :func:`flops_extremes`, then random ones, as network sweep configs (family ``space``)
    at batch 1."""
    options = choices(space)
    total = math.prod(len(v) for v in options.values())
    labels = list(options)
    if count >= total:
        archs = [dict(zip(labels, combo, strict=True))
                 for combo in islice(product(*options.values()), total)]
    else:
        rng = np.random.default_rng(seed)
        seen: set[tuple[str, ...]] = set()
        archs = []
        candidates = iter(flops_extremes(space))
        while len(archs) < count:
            arch = next(candidates, None) or {label: str(rng.choice(options[label]))
                                              for label in labels}
            combo = tuple(arch[label] for label in labels)
            if combo not in seen:
                seen.add(combo)
                archs.append(arch)
    return [{"family": "space", **space.to_dict(), "arch": arch, "batch": 1} for arch in archs]


def _stored_keys(store: Store, device_model: str, keys: list[str]) -> set[str]:
    with store.session() as s:
        return set(s.scalars(
            select(Measurement.config_key).join(Device, Measurement.device_id == Device.id)
            .where(Device.model == device_model, Measurement.status == "ok",
                   Measurement.op_kind == "network", Measurement.config_key.in_(keys))))


def measure_missing(store: Store, device: ComputeDevice, plan: list[dict],
                    policy: TimingPolicy | None = None, progress: bool = True,
                    probe: SpeedProbe | None = None) -> tuple[int, int, int]:
    """Measure the network sweep configs of ``plan`` that the store lacks for this device (by
    the network sweeps' protocol unless ``policy`` says otherwise: interleaved rounds, the speed
    probe on a CPU, ``probe`` if given); returns (measured now, stored earlier, failed)."""
    stored = _stored_keys(store, device.info.model, [config_key(c) for c in plan])
    todo = [c for c in plan if config_key(c) not in stored]
    if not todo:
        return 0, len(plan), 0
    policy = policy or TimingPolicy(rounds=default_rounds(None, device.info.kind),
                                    probe=default_probe(None, device.info.kind))
    sweeper = NetworkSweep(store, device, policy, progress=progress, probe=probe)
    summary = sweeper.run(sweeper.create(todo, "network"))
    return summary.done, len(plan) - len(todo), summary.failed


def _network_count(store: Store, device_model: str, dtype: str = "fp32") -> int:
    nets = network.load_networks(store, device_model)
    return int((nets.ops.map(network.network_dtype) == dtype).sum())


def calibrate(store: Store, device: ComputeDevice, space: SpaceConfig, count: int,
              seed: int = 0, progress: bool = True,
              policy: TimingPolicy | None = None) -> Calibration:
    """Measure what :func:`calibration_plan` lists and is not in the store yet (by the network
    sweeps' protocol unless ``policy`` says otherwise: interleaved rounds, the speed probe on
    a CPU), then fit and register the device's network model from every network and layer
    measurement of the device, unless nothing new was measured and the latest network model
    was fitted on all of them."""
    if count < MIN_NETWORKS:
        raise ValueError(f"--calibrate: at least {MIN_NETWORKS} networks, got {count}")
    model_name = device.info.model
    plan = calibration_plan(space, count, seed)
    measured, earlier, failed = measure_missing(store, device, plan, policy, progress)
    if not measured:
        try:
            row = registry.find(store, model_name, target=network.TARGET)
        except registry.RegistryError:
            row = None
        if row is not None and row.n_samples == _network_count(store, model_name):
            return Calibration(len(plan), 0, earlier, failed, row.version, False,
                               row.meta.get("metrics", {}))
    # The search's networks run in fp32; networks of other dtypes measured here stay out.
    row, metrics = network.train_and_register(store, model_name, dtype="fp32")
    return Calibration(len(plan), measured, earlier, failed, row.version, True, metrics)
