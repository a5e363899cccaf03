"""The differentiable hardware cost of a supernet.

Every candidate at every position is decomposed into ops; their latency, power and energy are
fetched in one batch per device through a :class:`CostSource` (the gRPC client in practice) and
cached. The expected cost is fixed part + sum over decisions of w . candidate costs, where w are
the MixedOps' current weights (torch tensors): the gradient reaches the architecture logits.
(NNI 3.0's ExpectationProfilerPenalty builds its expectation from ``export_probs()`` floats, so
its penalty carries no gradient; this one does, and a test proves the architecture moves.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from collectors.networks.decompose import decompose
from search.spaces import SpaceConfig, choices, fixed_network, input_shape
from search.supernet import Supernet

METRICS = ("latency_ms", "power_w", "energy_mj")


@dataclass(frozen=True)
class OpCost:
    latency_ms: float
    energy_j: float | None


class CostSource(Protocol):
    """Where predictions come from: one call with many ops; per-op costs in order, plus a
    constant (ms) the model adds once per network (e.g. framework start-up). ``method`` says
    how the last answer was made (the service's words, e.g. "sum of op predictions"), and
    ``model_version`` which version of the device's model made it (0 where none says)."""

    method: str
    model_version: int

    def op_costs(self, ops: list[dict]) -> tuple[list[OpCost], float]: ...


class ServiceCostSource:
    """Predictions from the hwnas gRPC service through :class:`hwnas.client.PredictorClient`,
    asked as one network so a device's network model (per-op forests plus the per-op overhead
    learned from whole-network measurements) is used where registered; otherwise the service
    sums per-op predictions."""

    def __init__(self, client, device: str):
        self.client, self.device = client, device
        self.method = ""
        self.model_version = 0

    def op_costs(self, ops: list[dict]) -> tuple[list[OpCost], float]:
        if not ops:
            return [], 0.0
        answer = self.client.predict_network(self.device, ops=ops)
        self.method, self.model_version = answer.method, answer.model_version
        costs = [OpCost(c.latency_ms, c.energy_j) for c in answer.layers]
        return costs, answer.total.latency_ms - sum(c.latency_ms for c in costs)


class PinnedVersion:
    """A prediction client whose network questions all name one model version (``hwnas search
    --model-version``): a search run again later costs its networks with the model an earlier
    run recorded (``prediction_model_version``), whatever has been trained since. The
    version is the service's: the device's network model where it has one, else its GEMM
    model."""

    def __init__(self, client, version: int):
        self.client, self.version = client, version

    def predict_network(self, *args, **kwargs):
        return self.client.predict_network(*args, **{**kwargs, "model_version": self.version})

    def __getattr__(self, name: str):
        return getattr(self.client, name)


def first_arch_ops(cfg: SpaceConfig, batch: int = 1) -> list[dict]:
    """The op list of the space's first architecture (each decision's first option): the
    network the per-candidate costs are added to, and a small question that shows how the
    service costs the space."""
    first = {label: opts[0] for label, opts in choices(cfg).items()}
    return [op.to_dict() for _, op in decompose(fixed_network(cfg, first),
                                                 input_shape(cfg, batch)).ops]


class HardwareCost:
    """Per-candidate costs of a supernet and its differentiable expectation."""

    def __init__(self, supernet: Supernet, source: CostSource, batch: int = 1):
        t0 = time.perf_counter()
        cfg: SpaceConfig = supernet.cfg
        shape = input_shape(cfg, batch)
        supernet.record_shapes(shape)
        groups: list[list[dict]] = []  # op lists: candidates..., then the whole first arch
        for m in supernet.mixed:
            in_shape = (batch,) + tuple(m.input_shape[1:])
            for cand in m.candidates:
                groups.append([op.to_dict() for _, op in decompose(cand, in_shape).ops])
        groups.append(first_arch_ops(cfg, batch))
        flat = [op for g in groups for op in g]
        answers, constant_ms = source.op_costs(flat)
        self.method = source.method
        self.model_version = source.model_version
        sums, i = [], 0
        for g in groups:
            part = answers[i:i + len(g)]
            i += len(g)
            energies = [c.energy_j for c in part]
            sums.append((sum(c.latency_ms for c in part),
                         None if any(e is None for e in energies) else sum(energies)))
        self.power_available = all(e is not None for _, e in sums)
        self.latency: list[torch.Tensor] = []
        self.energy: list[torch.Tensor] = []
        k, first_lat, first_en = 0, 0.0, 0.0
        for m in supernet.mixed:
            n = len(m.candidates)
            chunk = sums[k:k + n]
            k += n
            self.latency.append(torch.tensor([c[0] for c in chunk]))
            self.energy.append(torch.tensor([(c[1] or 0.0) * 1e3 for c in chunk]))  # mJ
            first_lat += chunk[0][0]
            first_en += (chunk[0][1] or 0.0) * 1e3
        whole_lat, whole_en = sums[-1][0], (sums[-1][1] or 0.0) * 1e3
        self.fixed_latency = whole_lat - first_lat + constant_ms
        self.fixed_energy = whole_en - first_en
        self.labels = [m.label for m in supernet.mixed]
        self.names = [m.names for m in supernet.mixed]
        self.ops_queried = len(flat)
        self.seconds = time.perf_counter() - t0  # time spent on the hardware term

    def expected(self, supernet: Supernet) -> dict[str, torch.Tensor]:
        """Expected latency (ms), energy (mJ) and power (W) under the current weights."""
        t0 = time.perf_counter()
        lat = torch.tensor(self.fixed_latency)
        en = torch.tensor(self.fixed_energy)
        for m, cl, ce in zip(supernet.mixed, self.latency, self.energy, strict=True):
            w = m.weights if m.weights is not None else torch.softmax(m.alpha, -1)
            lat = lat + (w * cl).sum()
            en = en + (w * ce).sum()
        out = {"latency_ms": lat, "energy_mj": en, "power_w": en / lat}
        self.seconds += time.perf_counter() - t0
        return out

    def of_arch(self, arch: dict[str, str]) -> dict[str, float | None]:
        """Predicted costs of one architecture."""
        lat, en = self.fixed_latency, self.fixed_energy
        for label, names, cl, ce in zip(self.labels, self.names, self.latency, self.energy,
                                        strict=True):
            i = names.index(arch[label])
            lat += float(cl[i])
            en += float(ce[i])
        if not self.power_available:
            return {"latency_ms": lat, "energy_mj": None, "power_w": None}
        return {"latency_ms": lat, "energy_mj": en, "power_w": en / lat}
