"""``hwnas search`` end to end: connect to the prediction service (or start a local one), search,
export, retrain, measure on this machine, and report; ``pareto`` runs several budgets and random
search under the same budgets, and plots accuracy against measured latency."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from search.cost import HardwareCost, ServiceCostSource, first_arch_ops
from search.data import digits
from search.run import (
    Data,
    Measured,
    SearchConfig,
    export,
    measure_network,
    random_search,
    retrain,
    search,
)
from search.spaces import SpaceConfig, fixed_network, input_shape

if TYPE_CHECKING:
    from collectors.store.db import Store


@contextmanager
def local_service(db: str | Store | None):
    """A prediction service over ``db`` (a store URL, None for the default store, or an open
    :class:`collectors.store.db.Store`) on a free loopback port, for as long as the block runs;
    yields its ``host:port``."""
    from collectors.store.db import Store
    from hwnas.service.engine import PredictionEngine
    from hwnas.service.server import Server, ServerConfig

    store = db if isinstance(db, Store) else Store(db)
    local = Server(PredictionEngine(store), ServerConfig(port=0)).start()
    try:
        yield f"127.0.0.1:{local.port}"
    finally:
        local.stop(1)


@contextmanager
def prediction_client(server: str | None, db: str | Store | None, token: str | None = None):
    """A client of ``server``, or of a service started here on a free port over ``db`` (a store
    URL, None for the default store, or an open store)."""
    from hwnas.client import PredictorClient

    if server:
        with PredictorClient(server, token=token) as client:
            yield client
        return
    # No wait for the health check here: it says SERVING once some model has loaded, and a
    # store without any (a first `hwnas search --calibrate`) would then wait in vain; the port
    # is bound when local_service yields, and a device without a model gets a clear answer.
    with local_service(db) as address, PredictorClient(address) as client:
        yield client


# The service's method when no network model applies (predictor.op_costs.SUM_OF_OPS on the
# far side of the gRPC boundary, which search does not import).
OP_SUM = "sum of op predictions"


def prediction_method(client, device: str, space: SpaceConfig) -> str:
    """How the service costs networks of ``space`` on ``device`` (its ``method`` words)."""
    return client.predict_network(device, ops=first_arch_ops(space)).method


def wait_for_network_model(client, device: str, space: SpaceConfig, version: int,
                           timeout_s: float = 15.0) -> None:
    """Block until the service answers ``space``'s networks from network model ``version``
    (it re-reads the registry about once a second); ValueError when it does not within
    ``timeout_s``, e.g. because it serves another store than the one the model went to."""
    ops = first_arch_ops(space)
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.predict_network(device, ops=ops)
        if not answer.method.startswith(OP_SUM) and answer.model_version == version:
            return
        if time.monotonic() > deadline:
            raise ValueError(f"--calibrate: the prediction service still answers {device!r} "
                             f"with {answer.method!r} (v{answer.model_version}), not network "
                             f"model v{version}: does it read the store given by --db?")
        time.sleep(0.2)


@dataclass
class Outcome:
    label: str
    arch: dict[str, str]
    predicted: dict
    measured_ms: float | None
    val_acc: float
    test_acc: float
    search_s: float
    hardware_s: float
    repaired: dict[str, str] = field(default_factory=dict)  # see search.run.export_within
    measured: Measured | None = None
    prediction_method: str = ""  # how the service made the costs (see ServiceCostSource)
    prediction_model_version: int = 0  # the device's model version that made them


def run_one(space: SpaceConfig, data, client, device: str, cfg: SearchConfig,
            retrain_epochs: int, measure_on, label: str, progress: bool = True
            ) -> tuple[Outcome, object]:
    """Search, retrain, and measure on ``measure_on`` (a local ComputeDevice, or None)."""
    src = ServiceCostSource(client, device)
    res = search(space, data, lambda net: HardwareCost(net, src), cfg, progress)
    model, val, test = retrain(space, res.arch, data, retrain_epochs, cfg.seed)
    m = measure_network(model, input_shape(space), measure_on) if measure_on else None
    return Outcome(label, res.arch, res.predicted, m.latency_ms if m else None, val, test,
                   res.search_seconds, res.hardware_seconds, res.repaired, m,
                   src.method, src.model_version), model


def single(space: SpaceConfig, client, device: str, cfg: SearchConfig, budgets: dict,
           margin: float, retrain_epochs: int, measure_on, out_dir: Path,
           progress: bool = True, data: Data | None = None) -> dict:
    """One search under ``budgets`` (searched at budget x (1 - margin)); exports to out_dir."""
    data = data or digits(cfg.seed)
    cfg.budgets = {k: v * (1 - margin) for k, v in budgets.items()}
    outcome, model = run_one(space, data, client, device, cfg, retrain_epochs, measure_on,
                             "search", progress)
    met = {k: _meets(outcome, k, v) for k, v in budgets.items()}
    doc = export(out_dir, space, model, {
        "arch": outcome.arch, "device": device, "strategy": cfg.strategy,
        "data": data.name, "budgets": budgets, "searched_budgets": cfg.budgets,
        "budget_met": met,
        "moved_to_meet_budgets": outcome.repaired,
        "predicted": outcome.predicted, "prediction_method": outcome.prediction_method,
        "prediction_model_version": outcome.prediction_model_version,
        "measured_latency_ms": outcome.measured_ms,
        "measured_on": outcome.measured.device if outcome.measured else None,
        "measured_energy_mj": outcome.measured.energy_mj if outcome.measured else None,
        "measured_power_w": outcome.measured.power_w if outcome.measured else None,
        "measured_power_source": outcome.measured.power_source if outcome.measured else None,
        "measured_calm": outcome.measured.calm if outcome.measured else None,
        "measured_slow_ratio": outcome.measured.slow_ratio if outcome.measured else None,
        "val_accuracy": outcome.val_acc, "test_accuracy": outcome.test_acc,
        "search_seconds": outcome.search_s,
        "hardware_term_share": outcome.hardware_s / max(outcome.search_s, 1e-9)})
    return doc


def _meets(o: Outcome, metric: str, budget: float) -> bool | None:
    """Whether ``o`` meets a budget: in measurement where the device measured that metric,
    else in prediction; None when neither has it."""
    value = getattr(o.measured, metric, None) if o.measured else None
    if value is None:
        value = o.predicted.get(metric)
    return None if value is None else bool(value <= budget)


def pareto(space: SpaceConfig, client, device: str, cfg: SearchConfig, fractions: list[float],
           random_samples: int, retrain_epochs: int, measure_on, out_dir: Path,
           margin: float, progress: bool = True, data: Data | None = None) -> dict:
    """Unconstrained search, then searches at ``fractions`` of its predicted latency, and random
    search with the same budgets; writes pareto.json and pareto.png."""
    data = data or digits(cfg.seed)
    t0 = time.perf_counter()
    base_cfg = SearchConfig(**{**cfg.__dict__, "budgets": {}})
    free, _ = run_one(space, data, client, device, base_cfg, retrain_epochs, measure_on,
                      "unconstrained", progress)
    points = [free]
    rand_points = []
    hw = None
    for f in fractions:
        budget = f * free.predicted["latency_ms"]
        c = SearchConfig(**{**cfg.__dict__, "budgets": {"latency_ms": budget * (1 - margin)}})
        o, _ = run_one(space, data, client, device, c, retrain_epochs, measure_on,
                       f"budget {f:.0%}", progress)
        points.append(o)
        if hw is None:
            from search.supernet import Supernet

            hw = HardwareCost(Supernet(space), ServiceCostSource(client, device))
        arch, val, test, n = random_search(space, data, hw, random_samples,
                                           {"latency_ms": budget}, retrain_epochs, cfg.seed)
        m = (measure_network(fixed_network(space, arch), input_shape(space), measure_on)
             if measure_on else None)
        rand_points.append(Outcome(f"random {f:.0%} ({n} archs)", arch, hw.of_arch(arch),
                                   m.latency_ms if m else None, val, test, 0.0, 0.0,
                                   measured=m, prediction_method=hw.method,
                                   prediction_model_version=hw.model_version))
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"device": device, "space": space.to_dict(), "seconds": time.perf_counter() - t0,
           "search": [asdict(o) for o in points], "random": [asdict(o) for o in rand_points]}
    (out_dir / "pareto.json").write_text(json.dumps(doc, indent=2, default=float))
    plot_pareto(points, rand_points, out_dir / "pareto.png", device)
    return doc


def label_offsets(x: list[float], y: list[float], step: int = 9) -> list[int]:
    """Vertical offsets (points) for the labels of points (x, y), so that labels of points that
    lie close together are stacked below each other instead of printed over each other (two
    budgets that chose one architecture land within a few percent of each other)."""
    def span(v: list[float]) -> float:
        return (max(v) - min(v)) or 1.0

    sx, sy = span(x), span(y)
    offsets = []
    for i in range(len(x)):
        near = sum(abs(x[i] - x[j]) < 0.08 * sx and abs(y[i] - y[j]) < 0.04 * sy
                   for j in range(i))
        offsets.append(3 - step * near)
    return offsets


def plot_pareto(points: list[Outcome], rand: list[Outcome], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def xy(ps):
        return ([p.measured_ms if p.measured_ms is not None else p.predicted["latency_ms"]
                 for p in ps], [p.test_acc * 100 for p in ps])

    fig, ax = plt.subplots(figsize=(6, 4.5))
    points = sorted(points, key=lambda p: p.measured_ms if p.measured_ms is not None
                    else p.predicted["latency_ms"])
    x, y = xy(points)
    ax.plot(x, y, "o-", label="hardware-aware search")
    for p, xi, yi, dy in zip(points, x, y, label_offsets(x, y), strict=True):
        ax.annotate(p.label, (xi, yi), fontsize=7, xytext=(3, dy), textcoords="offset points")
    if rand:
        xr, yr = xy(rand)
        ax.plot(xr, yr, "s", label="random search, same budgets")
    ax.set_xlabel("latency (ms, measured)" if points[0].measured_ms is not None
                  else "latency (ms, predicted)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy vs latency on {device}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
