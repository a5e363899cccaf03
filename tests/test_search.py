"""Hardware-aware NAS: spaces (NNI and plain torch), the differentiable cost term, search,
export, and the whole job through a real local prediction service."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from search.cost import HardwareCost, OpCost
from search.data import digits
from search.run import SearchConfig, search
from search.spaces import SpaceConfig, choices, fixed_network, input_shape, model_space
from search.supernet import Supernet

SMALL = SpaceConfig("mobilenet", width=8, depth=3)


class FlopsCost:
    """A fake cost source: latency proportional to an op's FLOPs; no power (as on a CPU)."""

    method = "FLOPs (test)"
    model_version = 0

    def op_costs(self, ops):
        from collectors.ops import Op, op_flops

        out = [OpCost(op_flops(Op.from_dict(o)) / 1e6 + 0.001, None) for o in ops]
        return out, 0.05


@pytest.mark.parametrize("cfg", [SMALL, SpaceConfig("nb201", width=4, depth=1)])
def test_nni_space_and_plain_network_share_the_decisions(cfg):
    space = model_space(cfg)
    decisions = choices(cfg)
    simplified = space.simplify()
    assert set(simplified) == set(decisions)
    assert all(list(simplified[k].values) == v for k, v in decisions.items())
    arch = {k: v[-1] for k, v in decisions.items()}
    net = fixed_network(cfg, arch)
    assert "nni" not in type(net).__module__
    assert net(torch.zeros(*input_shape(cfg, 2))).shape == (2, 10)
    frozen = space.freeze(arch)
    assert frozen(torch.zeros(*input_shape(cfg))).shape == (1, 10)
    with pytest.raises(ValueError, match="arch.block0"):
        fixed_network(SMALL, {**{k: v[0] for k, v in choices(SMALL).items()}, "block0": "k9"})


def test_cost_term_has_gradient_and_moves_the_architecture():
    results = {}
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        net = Supernet(SMALL)
        hw = HardwareCost(net, FlopsCost())
        opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)
        start = float(hw.expected(net)["latency_ms"].detach())
        for _ in range(60):
            net.sample("darts")
            opt.zero_grad()
            loss = weight * hw.expected(net)["latency_ms"] + 0.0 * sum(
                a.sum() for a in net.arch_parameters())
            loss.backward()
            opt.step()
        for m in net.mixed:
            m.weights = None
        results[weight] = (start, float(hw.expected(net)["latency_ms"].detach()), net.export(),
                           hw)
    start0, end0, arch0, _ = results[0.0]
    start1, end1, arch1, hw = results[50.0]
    assert end0 == pytest.approx(start0)  # no penalty: the architecture does not move
    assert end1 < 0.8 * start1  # penalty: the gradient reached the logits
    cheapest = {label: names[int(hw.latency[i].argmin())]
                for i, (label, names) in enumerate(zip(hw.labels, hw.names, strict=True))}
    assert arch1 == cheapest
    assert hw.of_arch(arch1)["latency_ms"] < hw.of_arch(arch0)["latency_ms"]


def test_search_respects_a_latency_budget_in_prediction():
    data = digits()
    small = type(data)(data.x_train[:256], data.y_train[:256], data.x_val[:128],
                       data.y_val[:128], data.x_test[:64], data.y_test[:64])
    free = search(SMALL, small, lambda n: HardwareCost(n, FlopsCost()),
                  SearchConfig(epochs=2), progress=False)
    budget = 0.6 * free.predicted["latency_ms"]
    tight = search(SMALL, small, lambda n: HardwareCost(n, FlopsCost()),
                   SearchConfig(epochs=4, budgets={"latency_ms": budget}, arch_lr=0.05),
                   progress=False)
    assert tight.predicted["latency_ms"] <= budget
    assert 0 <= tight.hardware_seconds < tight.search_seconds
    assert set(tight.arch) == set(choices(SMALL))


class PoweredCost:
    """A fake device with power: latency as FlopsCost, convolutions at 40 W, the rest at 10 W,
    so energy and power rank architectures differently from latency."""

    method = "FLOPs and watts per kind (test)"
    model_version = 0

    def op_costs(self, ops):
        from collectors.ops import Op, op_flops

        out = []
        for o in ops:
            ms = op_flops(Op.from_dict(o)) / 1e6 + 0.001
            watts = 40.0 if "conv" in o["kind"] else 10.0
            out.append(OpCost(ms, watts * ms / 1e3))
        return out, 0.05


@pytest.mark.parametrize("fractions", [{"energy_mj": 0.6}, {"power_w": 0.85},
                                       {"energy_mj": 0.8, "power_w": 0.9},
                                       {"latency_ms": 0.8, "energy_mj": 0.7}])
def test_search_respects_energy_and_power_budgets_in_prediction(fractions):
    """Budgets as fractions of the unconstrained result: each binds, and the search meets all
    of them at once (energy in mJ, power in W, from a source with per-op power)."""
    data = digits()
    small = type(data)(data.x_train[:256], data.y_train[:256], data.x_val[:128],
                       data.y_val[:128], data.x_test[:64], data.y_test[:64])
    free = search(SMALL, small, lambda n: HardwareCost(n, PoweredCost()),
                  SearchConfig(epochs=2), progress=False)
    budget = {m: f * free.predicted[m] for m, f in fractions.items()}
    cfg = SearchConfig(epochs=4, budgets=budget, arch_lr=0.05)
    tight = search(SMALL, small, lambda n: HardwareCost(n, PoweredCost()), cfg,
                   progress=False)
    for metric, value in budget.items():
        assert tight.predicted[metric] <= value, (metric, tight.predicted)


class TableCost:
    """of_arch from a per-decision table of (latency ms, energy mJ) per option."""

    def __init__(self, table):
        self.table = table

    def of_arch(self, arch):
        lat = sum(self.table[k][v][0] for k, v in arch.items())
        en = sum(self.table[k][v][1] for k, v in arch.items())
        return {"latency_ms": lat, "energy_mj": en, "power_w": en / lat}


def test_export_moves_the_cheapest_likely_decision_until_budgets_hold():
    from search.run import export_within

    table = {"a": {"big": (5.0, 50.0), "small": (1.0, 10.0)},
             "b": {"big": (5.0, 50.0), "mid": (4.0, 40.0), "small": (1.0, 10.0)}}
    probs = {"a": {"big": 0.9, "small": 0.1}, "b": {"big": 0.5, "mid": 0.45, "small": 0.05}}
    hw = TableCost(table)
    likely = {"a": "big", "b": "big"}
    assert export_within(likely, probs, hw, {"latency_ms": 10.0}) == likely  # already met
    # 9.0 ms is reachable by b: big -> mid, which gives up the least probability.
    assert export_within(likely, probs, hw, {"latency_ms": 9.0}) == {"a": "big", "b": "mid"}
    # Two budgets at once: several moves, ending within both.
    got = export_within(likely, probs, hw, {"latency_ms": 6.0, "energy_mj": 60.0})
    assert hw.of_arch(got)["latency_ms"] <= 6.0 and hw.of_arch(got)["energy_mj"] <= 60.0
    # Infeasible: the best reachable, never an error.
    assert export_within(likely, probs, hw, {"latency_ms": 0.5}) == {"a": "small", "b": "small"}


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "evolution"}, "--strategy"),
    ({"budgets": {"latency_ms": -1.0}}, "--latency-ms"),
    ({"budgets": {"latency_ms": float("nan")}}, "--latency-ms"),
    ({"budgets": {"flops": 1.0}}, "unknown metric"),
    ({"epochs": 0}, "--epochs"),
    ({"tradeoff": -0.5}, "--tradeoff: must be a non-negative number"),
    ({"tradeoff": float("nan")}, "--tradeoff"),
])
def test_bad_search_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**kwargs)


def test_power_budget_without_measured_power_is_a_clear_error():
    data = digits()
    with pytest.raises(ValueError, match="no measured power"):
        search(SMALL, data, lambda n: HardwareCost(n, FlopsCost()),
               SearchConfig(epochs=1, budgets={"power_w": 5.0}), progress=False)


def test_search_command_end_to_end_through_the_service(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from tests.test_service import make_store

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    store = make_store(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [
        "search", "--db", store.url, "--device", "Test GPU", "--width", "8", "--depth", "2",
        "--epochs", "1", "--retrain-epochs", "1", "--strategy", "gumbel", "--latency-ms", "50",
        "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "arch.json").read_text())
    assert doc["device"] == "Test GPU" and doc["measured_latency_ms"] is None
    # No network model: the costs are op sums, said so, with the remedy for a device elsewhere.
    assert doc["prediction_method"] == "sum of op predictions"
    # The GEMM model that made them, by version, so a search can be traced to its model.
    assert doc["prediction_model_version"] == 1
    assert "from the sum of op predictions (model v1)" in r.output, r.output
    assert "has no network model for this space's networks" in r.output
    assert "hwnas collect network" in r.output
    # Pooling/normalisation are costed at the bandwidth bound with no power claimed, so the
    # network's power is unavailable rather than partly made up.
    assert doc["predicted"]["power_w"] is None and doc["predicted"]["latency_ms"] > 0
    assert 0 <= doc["test_accuracy"] <= 1 and doc["budget_met"]["latency_ms"] in (True, False)
    loaded = torch.export.load(out / "model.pt2").module()  # plain torch, no NNI
    assert loaded(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert loaded(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert (out / "model.onnx").stat().st_size > 1000
    net = fixed_network(SpaceConfig(**doc["space"]), doc["arch"])
    net.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    # Measured later from arch.json alone (here on this CPU; the search predicted for a GPU).
    from search.verify import verify

    v = verify(out, "cpu", min_time_s=0.01, rounds=1)
    assert v.predicted_for == "Test GPU" and not v.same_device and v.measured["latency_ms"] > 0


def test_a_search_can_cost_its_networks_with_a_model_version_it_names(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from tests.test_service import make_store, register

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    store = make_store(tmp_path)
    register(store, tmp_path, seed=4)  # v2 is the default now
    args = ["search", "--db", store.url, "--device", "Test GPU", "--width", "8", "--depth", "2",
            "--epochs", "1", "--retrain-epochs", "1", "--strategy", "gumbel", "--no-progress"]
    out = tmp_path / "pinned"
    r = CliRunner().invoke(main, [*args, "--model-version", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "arch.json").read_text())["prediction_model_version"] == 1
    for extra, code, says in [
            (["--model-version", "9"], 1, "prediction service: NOT_FOUND: model_version: "
                                          "--version 9: no such model version"),
            (["--model-version", "1", "--calibrate", "5"], 2,
             "--model-version and --calibrate: --calibrate fits a new network model")]:
        r = CliRunner().invoke(main, [*args, *extra, "--out", str(tmp_path / "x")])
        assert r.exit_code == code and says in r.output, r.output


def _image_folder(root, n=6, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in (("cats", 40), ("dogs", 200)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            px = np.clip(rng.normal(colour, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / label / f"{i}.png")
    (root / "cats" / "notes.txt").write_text("not an image")


def test_image_folder_and_cifar_binary_loaders(tmp_path):
    from search.data import load

    _image_folder(tmp_path / "imgs")
    d = load(str(tmp_path / "imgs"), resolution=8)
    total = len(d.y_train) + len(d.y_val) + len(d.y_test)
    assert total == 12 and d.x_train.shape[1:] == (3, 8, 8)
    assert set(torch.cat([d.y_train, d.y_val, d.y_test]).tolist()) == {0, 1}

    cifar = tmp_path / "c" / "cifar-10-batches-bin"
    cifar.mkdir(parents=True)
    rec = np.zeros((20, 3073), dtype=np.uint8)
    rec[:, 0] = np.arange(20) % 10
    rec[:, 1:] = 255
    rec.tofile(cifar / "data_batch_1.bin")
    c = load(str(tmp_path / "c"))
    assert c.name == "cifar10" and c.x_train.shape[1:] == (3, 32, 32)
    assert float(c.x_train.max()) == 1.0
    (cifar / "data_batch_1.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        load(str(tmp_path / "c"))
    with pytest.raises(ValueError, match="neither 'digits' nor a folder"):
        load(str(tmp_path / "missing"))


def test_search_on_an_image_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from tests.test_service import make_store

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    _image_folder(tmp_path / "imgs", n=10)
    store = make_store(tmp_path)
    r = CliRunner().invoke(main, [
        "search", "--db", store.url, "--device", "Test GPU", "--data", str(tmp_path / "imgs"),
        "--resolution", "8", "--width", "4", "--depth", "1", "--space", "nb201", "--epochs",
        "1", "--retrain-epochs", "1", "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "o" / "arch.json").read_text())
    assert doc["space"]["in_channels"] == 3 and doc["space"]["classes"] == 2
    assert doc["data"] == "imagefolder:imgs"


def test_a_result_is_measured_on_the_local_device_it_was_searched_for():
    from collectors.devices import CpuDevice
    from search.job import Outcome, _meets
    from search.run import local_device_for, measure_network

    cpu = CpuDevice()
    assert local_device_for(cpu.info.model).info.kind == "cpu"
    assert local_device_for("Test GPU") is None  # not on this machine: predicted only
    arch = {k: v[0] for k, v in choices(SMALL).items()}
    m = measure_network(fixed_network(SMALL, arch), input_shape(SMALL), cpu, rounds=2)
    assert m.latency_ms > 0 and m.device == f"{cpu.info.model} (cpu)"
    if m.power_source == "unavailable":  # no RAPL, as on most VMs: said, not estimated
        assert m.energy_mj is None and m.power_w is None
    else:
        assert m.energy_mj > 0 and m.power_w > 0
    o = Outcome("x", arch, {"latency_ms": 1e9, "energy_mj": 1.0, "power_w": None}, m.latency_ms,
                0.5, 0.5, 1.0, 0.0, {}, m)
    assert _meets(o, "latency_ms", m.latency_ms * 1.01)  # measured beats predicted
    assert not _meets(o, "latency_ms", m.latency_ms * 0.5)
    assert _meets(o, "power_w", 1.0) in (None, m.power_w is not None and m.power_w <= 1.0)
