"""A registered model scored on what was measured after it was trained (hwnas eval
--registered): new shapes and re-measured ones apart, a change of the device named."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from collectors.store.models import Measurement
from hwnas.cli import main
from predictor.data import DataError
from predictor.drift import MEASURED_AGAIN, NEW_SHAPES, score_since_training
from predictor.training import train_and_register
from tests.test_predictor import gemm_sweep, synthetic

CPU = "Drift CPU"


def _store_rows(store, frame: pd.DataFrame, when: dt.datetime, slower: float = 1.0) -> None:
    """``frame``'s GEMMs as one sweep of measurements of the drift CPU, stored at ``when``,
    their latencies ``slower`` times the frame's."""
    with store.session() as s:
        dev, sweep = gemm_sweep(s, len(frame), name="cpu", kind="cpu", model=CPU,
                                fingerprint="drift-cpu", sm_count=2)
        for i, r in enumerate(frame.itertuples()):
            s.add(Measurement(sweep_id=sweep.id, device_id=dev.id, config_key=f"c{i}",
                              op_kind="gemm", m=int(r.m), n=int(r.n), k=int(r.k),
                              dtype=r.dtype, layout="nn", backend="torch", status="ok",
                              latency_ms_p10=r.latency_ms * slower,
                              latency_ms_median=r.latency_ms * slower * 1.02,
                              power_source="unavailable", created_at=when, params={}))
        s.commit()


def test_a_registered_model_is_scored_on_new_shapes_and_on_shapes_measured_again(
        store, store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    trained = synthetic(40)
    _store_rows(store, trained, dt.datetime(2026, 11, 20))
    row, _ = train_and_register(store, CPU, n_splits=3, n_estimators=20)
    with pytest.raises(DataError, match="no GEMM measurements of Drift CPU were stored after "
                       "v1's training data"):
        score_since_training(store, row)
    # A week later: ten of its shapes again, 30% slower (the device changed), 20 new shapes,
    # and a dtype it never learnt.
    again = trained[trained.dtype == "fp32"].head(10)
    new = synthetic(10, seed=5)
    odd = new.head(1).assign(dtype="bf16")
    _store_rows(store, pd.concat([again]), dt.datetime(2026, 11, 27), slower=1.3)
    _store_rows(store, pd.concat([new, odd]), dt.datetime(2026, 11, 27, 1))
    result = score_since_training(store, row)
    assert len(result.panels[MEASURED_AGAIN]) == 10 and len(result.panels[NEW_SHAPES]) == 20
    assert result.not_scored == {"bf16": 1} and result.older_not_trained == 0
    tables = result.tables()
    ratio = tables[MEASURED_AGAIN].query("target == 'latency_ms' and dtype == 'all'")
    assert ratio.median_ratio.iloc[0] == pytest.approx(1 / 1.3, rel=0.05)
    fresh = tables[NEW_SHAPES].query("target == 'latency_ms' and dtype == 'all'")
    assert fresh.n.iloc[0] == 20 and fresh.within_10.iloc[0] > 50  # a learnable device
    run = CliRunner().invoke
    out = tmp_path / "since.csv"
    r = run(main, ["eval", "--db", store_url, "--device", "drift", "--registered",
                   "--predictions", str(out), "--plot", str(tmp_path / "since.png")])
    assert r.exit_code == 0, r.output
    assert "Drift CPU gemm model v1 (the default): trained on measurements up to 2026-11-20 " \
        "00:00:00 UTC; scored on the 30 measured since: 20 of shapes new to the model, 10 " \
        "of shapes it was trained on, measured again" in r.output, r.output
    assert re.search(r"the device now takes (2[5-9]|3[0-5])% longer on them than the model "
                     "learnt", r.output), r.output
    assert "not scored, a dtype the model was not trained on: bf16 1 rows" in r.output
    assert "(its held-out evaluation when it was trained: " in r.output
    rows = pd.read_csv(out)
    assert rows.split.value_counts().to_dict() == {NEW_SHAPES: 20, MEASURED_AGAIN: 10}
    assert (tmp_path / "since.png").stat().st_size > 1000
    for args, code, says in [
            (["--registered", "--trees", "5"], 2, "--trees: does not apply to --registered"),
            (["--version", "1"], 2, "--version: names a registered model to score; add "
                                    "--registered"),
            (["--registered", "--version", "4"], 1, "--version 4: no such model version")]:
        r = run(main, ["eval", "--db", store_url, "--device", "drift", *args])
        assert r.exit_code == code and says in r.output, r.output
