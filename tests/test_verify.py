"""`hwnas verify`: a searched network measured later, on this machine, against its prediction
and budgets, from arch.json alone."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hwnas.cli import main
from search.spaces import SpaceConfig, choices, fixed_network, input_shape
from search.verify import verify


def _arch_json(folder, device="Some GPU", **extra):
    cfg = SpaceConfig("nb201", width=8, depth=1)
    arch = {label: options[-1] for label, options in choices(cfg).items()}
    folder.mkdir(exist_ok=True)
    doc = {"space": cfg.to_dict(), "arch": arch, "device": device,
           "budgets": {"latency_ms": 1e6, "energy_mj": 1.0},
           "predicted": {"latency_ms": 0.5, "power_w": None, "energy_mj": None}, **extra}
    (folder / "arch.json").write_text(json.dumps(doc))
    return folder


def test_a_found_network_is_measured_and_the_result_recorded(tmp_path):
    from collectors.devices import CpuDevice

    out = _arch_json(tmp_path / "out", device=CpuDevice().info.model)
    v = verify(out, "cpu", min_time_s=0.01, rounds=1)
    assert v.same_device and v.measured["latency_ms"] > 0
    assert v.ratios()["latency_ms"] == pytest.approx(v.measured["latency_ms"] / 0.5)
    assert v.budget_met["latency_ms"] is True
    # No power sensor on these machines: the energy budget cannot be judged, not "met".
    if v.measured["energy_mj"] is None:
        assert v.budget_met["energy_mj"] is None
    verify(out / "arch.json", "cpu", min_time_s=0.01, rounds=1)
    doc = json.loads((out / "arch.json").read_text())
    assert len(doc["verifications"]) == 2 and doc["arch"] and doc["space"]["space"] == "nb201"
    assert doc["verifications"][0]["measured"]["latency_ms"] == v.measured["latency_ms"]


def test_verify_command_prints_the_comparison(tmp_path):
    out = _arch_json(tmp_path / "out")
    r = CliRunner().invoke(main, ["verify", str(out), "--min-time", "0.01", "--rounds", "1",
                                  "--no-record"])
    assert r.exit_code == 0, r.output
    assert "predicted for Some GPU" in r.output and "latency_ms" in r.output
    assert "budget latency_ms <= 1e+06: met" in r.output
    assert "the comparison is across devices" in r.output
    assert "verifications" not in json.loads((out / "arch.json").read_text())
    assert "sums of GEMM predictions" not in r.output  # the file does not say how
    _arch_json(out, prediction_method="sum of op predictions")
    r = CliRunner().invoke(main, ["verify", str(out), "--min-time", "0.01", "--rounds", "1",
                                  "--no-record"])
    assert r.exit_code == 0 and "sums of GEMM predictions per op" in r.output


@pytest.mark.parametrize("setup, needle", [
    (lambda d: d, "does not exist"),
    (lambda d: (d.mkdir(), (d / "arch.json").write_text("{not json"))[0], "is not JSON"),
    (lambda d: (d.mkdir(), (d / "arch.json").write_text('{"arch": {}}'))[0], "no 'space'"),
    (lambda d: _arch_json(d, space={"space": "vgg"}), "--space: expected"),
    (lambda d: _arch_json(d, arch={"cell0": "conv_9x9"}), "arch"),
])
def test_bad_arch_files_are_clear_errors(tmp_path, setup, needle):
    folder = tmp_path / "out"
    setup(folder)
    r = CliRunner().invoke(main, ["verify", str(folder), "--rounds", "1"])
    assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output


def test_verify_on_a_gpu_this_machine_lacks_is_a_clear_error(tmp_path):
    out = _arch_json(tmp_path / "out")
    r = CliRunner().invoke(main, ["verify", str(out), "--device", "cuda:7"])
    assert r.exit_code == 1 and "--device cuda:7" in r.output


def test_a_pareto_front_is_measured_point_by_point(tmp_path):
    cfg = SpaceConfig("nb201", width=8, depth=1)
    options = choices(cfg)

    def point(label, pick, predicted):
        return {"label": label, "arch": {k: v[pick] for k, v in options.items()},
                "predicted": {"latency_ms": predicted}, "measured_ms": None,
                "val_acc": 0.9, "test_acc": 0.88, "search_s": 1.0, "hardware_s": 0.1,
                "repaired": {}, "measured": None}

    out = tmp_path / "front"
    out.mkdir()
    doc = {"device": "Some GPU", "space": cfg.to_dict(), "seconds": 1.0,
           "search": [point("unconstrained", -1, 0.7), point("budget 50%", 0, 0.3)],
           "random": [point("random 50% (3 archs)", 1, 0.35)]}
    (out / "pareto.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["verify", str(out), "--min-time", "0.01", "--rounds", "1"])
    assert r.exit_code == 0, r.output
    assert "unconstrained" in r.output and "random 50% (3 archs)" in r.output
    assert (out / "pareto_measured.png").stat().st_size > 1000
    saved = json.loads((out / "pareto.json").read_text())
    for p in saved["search"] + saved["random"]:
        assert p["verifications"][0]["latency_ms"] > 0


def test_a_network_measured_while_the_machine_runs_slow_says_so(tmp_path, monkeypatch):
    from search.run import Measured, measure_network
    from tests.test_probe import Machine, probe_on

    # The real measurement, with a probe of a fake machine that is slow throughout (a probe
    # that knows its full speed): the figure is kept, marked, and the caution names a remedy.
    machine = Machine()
    probe = probe_on(machine)
    machine.factor = 1.8
    cfg = SpaceConfig("nb201", width=8, depth=1)
    arch = {label: options[0] for label, options in choices(cfg).items()}
    m = measure_network(fixed_network(cfg, arch), input_shape(cfg), rounds=1, probe=probe)
    assert m.latency_ms > 0 and m.calm is False and m.slow_ratio == pytest.approx(1.8)
    assert "1.80x slower" in m.caution()
    machine.factor = 1.0
    calm = measure_network(fixed_network(cfg, arch), input_shape(cfg), rounds=1, probe=probe)
    assert calm.calm is True and calm.caution() is None

    # hwnas verify shows it and records it with the measurement.
    monkeypatch.setattr("search.run.measure_network", lambda *a, **k: Measured(
        2.0, None, None, "unavailable", "Some CPU (cpu)", calm=False, slow_ratio=2.1))
    out = _arch_json(tmp_path / "out")
    r = CliRunner().invoke(main, ["verify", str(out), "--rounds", "1"])
    assert r.exit_code == 0, r.output
    assert "caution: measured while this machine ran 2.10x slower" in r.output
    assert "run this again when the machine is quiet" in r.output
    measured = json.loads((out / "arch.json").read_text())["verifications"][0]["measured"]
    assert measured["calm"] is False and measured["slow_ratio"] == 2.1


def test_labels_of_points_close_together_are_stacked_not_overprinted():
    from search.job import label_offsets

    # The H100 Pareto run: two budgets chose one architecture, measured 0.258 and 0.266 ms.
    x, y = [0.258, 0.266, 0.421, 0.756], [99.44, 99.44, 99.44, 98.89]
    offsets = label_offsets(x, y)
    assert offsets[0] != offsets[1]
    assert offsets[2] == offsets[3] == offsets[0]
    assert label_offsets([1.0], [2.0]) == [3]
