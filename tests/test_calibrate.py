"""``hwnas search --calibrate``: networks of the search's own space measured on this CPU, the
device's network model fitted from them, reused on a second run, and used by the search."""

from __future__ import annotations

import json

import pytest

from collectors.devices import CpuDevice
from collectors.networks.decompose import decompose
from collectors.networks.zoo import build
from collectors.ops import op_flops
from collectors.store.db import Store
from collectors.timing import TimingPolicy
from hwnas.calibrate import calibrate, calibration_plan, flops_extremes
from search.spaces import SpaceConfig, choices, fixed_network, input_shape

TINY = SpaceConfig("mobilenet", width=4, depth=2)
QUICK = TimingPolicy(warmup_s=0.005, min_reps=3, min_time_s=0.005, rounds=1, probe=False)


def _flops(net, shape) -> float:
    return sum(op_flops(op) for _, op in decompose(net, shape).ops)


def test_plan_starts_at_both_flops_ends_and_builds_the_searched_networks():
    plan = calibration_plan(TINY, 6, seed=0)
    archs = [c["arch"] for c in plan]
    assert len({json.dumps(a, sort_keys=True) for a in archs}) == 6
    fewest, most = flops_extremes(TINY)
    assert archs[:2] == [fewest, most]
    shape = input_shape(TINY)
    every = [_flops(fixed_network(TINY, a), shape) for a in archs]
    assert every[0] == min(every) and every[1] == max(every)
    for cfg in plan:  # the collector rebuilds exactly the network the search exports
        net, built_shape = build(cfg)
        assert built_shape == shape
        assert [op for _, op in decompose(net, shape).ops] == \
            [op for _, op in decompose(fixed_network(TINY, cfg["arch"]), shape).ops]
    total = 1
    for opts in choices(TINY).values():
        total *= len(opts)
    assert len(calibration_plan(TINY, total + 5, seed=0)) == total  # all there are


def test_calibration_fits_once_and_reuses_what_it_measured(tmp_path, monkeypatch):
    from predictor import network, registry

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    store = Store(f"sqlite:///{tmp_path / 'cal.sqlite'}")
    cpu = CpuDevice()
    first = calibrate(store, cpu, TINY, 5, progress=False, policy=QUICK)
    assert (first.measured, first.stored_earlier, first.version, first.retrained) == \
        (5, 0, 1, True)
    assert first.metrics["networks"] == 5 and first.metrics["families"] == ["space"]
    again = calibrate(store, cpu, TINY, 5, progress=False, policy=QUICK)
    assert (again.measured, again.stored_earlier, again.version, again.retrained) == \
        (0, 5, 1, False)
    more = calibrate(store, cpu, TINY, 6, progress=False, policy=QUICK)
    assert (more.measured, more.stored_earlier, more.version) == (1, 5, 2)
    model = network.load(registry.find(store, cpu.info.model, target=network.TARGET))
    net = fixed_network(TINY, calibration_plan(TINY, 1, 0)[0]["arch"])
    ops = [op for _, op in decompose(net, input_shape(TINY)).ops]
    assert model.predict([ops])[0] > 0
    with pytest.raises(ValueError, match="at least 5"):
        calibrate(store, cpu, TINY, 3, progress=False, policy=QUICK)


def test_search_calibrates_this_cpu_then_searches_with_its_network_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from tests.test_service import cpu_store_with_gemm_model

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    # A GEMM model under this CPU's name (synthetic data: the network model is under test).
    store, _ = cpu_store_with_gemm_model(tmp_path)
    args = ["search", "--db", store.url, "--width", "4", "--depth", "2", "--epochs", "1",
            "--retrain-epochs", "1", "--latency-ms", "100", "--no-progress"]
    plain = CliRunner().invoke(main, args + ["--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert "has no network model for this space's networks" in plain.output
    assert "--calibrate" in plain.output
    doc = json.loads((tmp_path / "plain" / "arch.json").read_text())
    assert doc["prediction_method"] == "sum of op predictions"

    r = CliRunner().invoke(main, args + ["--calibrate", "5", "--out", str(tmp_path / "cal")])
    assert r.exit_code == 0, r.output
    assert "calibration: 5 networks of this space measured now" in r.output
    assert "has no network model for this space's networks" not in r.output
    doc = json.loads((tmp_path / "cal" / "arch.json").read_text())
    assert doc["prediction_method"].startswith("network model")
    assert doc["measured_latency_ms"] > 0 and "x predicted" in r.output

    other = CliRunner().invoke(main, ["search", "--db", store.url, "--device", "nope",
                                      "--calibrate", "5", "--epochs", "1"])
    assert other.exit_code != 0


def test_calibrating_a_device_that_is_not_here_is_refused(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from tests.test_service import make_store

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    store = make_store(tmp_path)
    r = CliRunner().invoke(main, ["search", "--db", store.url, "--device", "Test GPU",
                                  "--calibrate", "5", "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2 and "is not on this machine" in r.output


def test_search_on_an_empty_store_says_to_calibrate_and_calibrating_it_works(tmp_path,
                                                                             monkeypatch):
    """A first search on a fresh store: without --calibrate it names the remedy; with it, the
    in-process service starts without any model and the search runs on the one it fits."""
    from click.testing import CliRunner

    from hwnas.cli import main

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    args = ["search", "--db", f"sqlite:///{tmp_path / 'empty.sqlite'}", "--width", "4",
            "--depth", "1", "--epochs", "1", "--retrain-epochs", "1", "--limit", "200",
            "--no-progress"]
    bare = CliRunner().invoke(main, args + ["--out", str(tmp_path / "bare")])
    assert bare.exit_code == 1 and "add --calibrate 20" in bare.output, bare.output
    r = CliRunner().invoke(main, args + ["--calibrate", "5", "--out", str(tmp_path / "cal")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cal" / "arch.json").read_text())[
        "prediction_method"].startswith("network model")
    listed = CliRunner().invoke(main, ["models", "--db", f"sqlite:///{tmp_path / 'empty.sqlite'}"])
    network_row = next(line for line in listed.output.splitlines() if " network " in line)
    assert "nan" not in network_row and " - " in network_row  # RMSPE is not a MAPE
    # The store now holds a network model and no GEMM model: --device finds the device by
    # cpu, or by a part of its name, all the same.
    part = CpuDevice().info.model.split()[0].lower()
    for spec in ("cpu", part):
        r = CliRunner().invoke(main, args + ["--device", spec, "--out", str(tmp_path / spec)])
        assert r.exit_code == 0, r.output
