"""Few-shot NAS-Bench-201 latency prediction and `hwnas adapt` on a held-out device column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from collectors.store.db import Store
from hwnas.service.engine import PredictionEngine, ServiceError
from predictor.adapt import DEFAULT_REFERENCE, adapt_from_csv, load_reference
from predictor.fewshot import FewShotModel, flops_proxy, op_counts, read_table, select_samples

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"


def test_op_counts_and_flops_proxy():
    assert op_counts([ARCH]).tolist() == [[1, 1, 1, 2, 1]]
    assert flops_proxy([ARCH]).tolist() == [1 + 9 * 2]


def _synthetic(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    from predictor.nasbench201 import EDGE_OPS

    archs = pd.Series(["|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*rng.choice(EDGE_OPS, 6))
                       for _ in range(n)]).drop_duplicates().reset_index(drop=True)
    base = flops_proxy(archs) + 5 + rng.random(len(archs))
    table = pd.DataFrame({"gpu_a": base * 0.1, "gpu_b": base * 0.12 + 1,
                          "cpu_c": np.sqrt(base) * 3})
    target = 0.2 * base + 0.3  # behaves like the GPUs
    return archs, table, target


def test_fit_predict_and_json_round_trip():
    archs, table, target = _synthetic()
    idx = select_samples(table, 10)
    assert len(set(idx.tolist())) == 10 and (select_samples(table, 10) == idx).all()
    model = FewShotModel.fit(archs, table, idx, target[idx])
    pred = model.predict(archs, table)
    assert spearmanr(pred, target).statistic > 0.98
    again = FewShotModel.from_json(model.to_json())
    assert np.allclose(again.predict(archs, table), pred)
    assert model.weights[table.columns.get_loc("cpu_c")] < max(model.weights)
    with pytest.raises(ValueError, match="samples"):
        FewShotModel.fit(archs, table, idx, -target[idx])
    with pytest.raises(ValueError, match="--samples"):
        select_samples(table, 1)


def test_read_table_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"arch_str": [ARCH], "dev": [-1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="non-positive"):
        read_table(str(bad))
    pd.DataFrame({"x": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="arch_str"):
        read_table(str(bad))


def test_adapt_on_a_held_out_column_of_the_shared_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite'}")
    result = adapt_from_csv(store, "titanx_256", 10, str(DEFAULT_REFERENCE))
    assert "titanx_256" not in result.model.reference_devices  # held out for real
    assert len(result.samples) == 10 and result.spearman_all > 0.95
    assert result.row.target == "nb201" and result.row.version == 1

    # Served by PredictNetwork through the engine, from the registered (checksummed) file.
    engine = PredictionEngine(store)
    device, version, cost = engine.predict_nb201("titanx_256", 0, ARCH)
    archs, ref = load_reference(DEFAULT_REFERENCE, exclude="titanx_256")
    row = ref[archs == ARCH]
    expected = result.model.predict(pd.Series([ARCH]), row)[0]
    assert (device, version) == ("titanx_256", 1) and cost.latency_ms == pytest.approx(expected)
    assert cost.latency_std_ms > 0 and "few-shot" in cost.source
    assert engine.predict_nb201("titanx_256", 0, ARCH)[2].latency_ms == cost.latency_ms
    with pytest.raises(ServiceError) as err:
        engine.predict_nb201("titanx_256", 4, ARCH)
    assert err.value.code == "NOT_FOUND"


def test_adapt_cli_errors_are_clear(tmp_path):
    from hwnas.cli import main

    src = tmp_path / "s.csv"
    pd.DataFrame({"arch_str": [ARCH], "other": [1.0]}).to_csv(src, index=False)
    r = CliRunner().invoke(main, ["adapt", "--db", f"sqlite:///{tmp_path / 'c.sqlite'}",
                                  "--device", "newdev", "--from-csv", str(src)])
    assert r.exit_code == 2 and "needs columns 'arch_str' and 'newdev'" in r.output
    assert "Traceback" not in r.output


def test_adapt_measures_this_cpu(tmp_path, monkeypatch):
    from sqlalchemy import func, select

    from collectors.devices import CpuDevice
    from collectors.store.models import Measurement
    from predictor.adapt import adapt_by_measuring

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    store = Store(f"sqlite:///{tmp_path / 'm.sqlite'}")
    r = adapt_by_measuring(store, 3, min_time_s=0.01, threads=1, progress=False)
    assert r.row.device_model == CpuDevice().info.model and r.row.target == "nb201"
    assert len(r.samples) == 3 and (r.samples.latency_ms > 0).all()
    with store.session() as s:  # the measurements are stored like any network sweep
        assert s.scalar(select(func.count()).select_from(Measurement)
                        .where(Measurement.op_kind == "network")) == 3
    engine = PredictionEngine(store)
    device, _, cost = engine.predict_nb201(r.row.device_model, 0, ARCH)
    assert device == r.row.device_model and cost.latency_ms > 0
    # Measured at batch 1 in fp32: other batch sizes and dtypes are not this model's to answer
    # (the service then sums op predictions), and asking for this version by number is an error.
    assert r.row.meta["measured_at"] == {"batch": 1, "dtype": "fp32"}
    assert engine.predict_nb201(device, 0, ARCH, batch=8) is None
    assert engine.predict_nb201(device, 0, ARCH, dtype="bf16") is None
    with pytest.raises(ServiceError, match="measured at batch 1 fp32, not batch 8 fp32"):
        engine.predict_nb201(device, r.row.version, ARCH, batch=8)
