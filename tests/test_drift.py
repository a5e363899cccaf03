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
                              batch=int(r.batch), dtype=r.dtype, layout="nn",
                              backend="torch", status="ok",
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
                       "gemm v1's training data"):
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
        "00:00:00 UTC; scored on the 30 configs measured since: 20 shapes new to the model, " \
        "10 shapes it was trained on, measured again" in r.output, r.output
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


def test_rows_stored_after_training_count_as_later_whatever_their_timestamp(
        store, store_url, tmp_path, monkeypatch):
    """Measurements imported after the model was trained keep the time they were measured,
    which may be older than its training rows': the recorded row id still places them. Here
    they are batched, which the model never saw: the answers say so, and why."""
    from predictor import registry

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    _store_rows(store, synthetic(30), dt.datetime(2026, 11, 20))
    row, _ = train_and_register(store, CPU, n_splits=3, n_estimators=10)
    assert row.meta["data_to_id"] == 60  # 30 shapes x 2 dtypes, the first rows stored
    later = synthetic(5, seed=9).assign(batch=4)
    _store_rows(store, later, dt.datetime(2026, 11, 1))  # imported, older
    result = score_since_training(store, row)
    assert len(result.panels[NEW_SHAPES]) == 10 and result.older_not_trained == 0
    assert result.panels[NEW_SHAPES].beyond_batch.all()
    r = CliRunner().invoke(main, ["eval", "--db", store_url, "--device", "drift",
                                  "--registered"])
    assert r.exit_code == 0 and "10 of them were answered as beyond its training shapes" in \
        r.output and re.search(r"\n    batch above the largest trained on: 10, [0-9.]+% "
                               "within ±10%\n", r.output), r.output
    # A model registered before the id was recorded goes by timestamps: those rows are older
    # than its training data, so none counts as later.
    old = registry.find(store, CPU)
    old.meta = {k: v for k, v in old.meta.items() if k != "data_to_id"}
    with pytest.raises(DataError, match="no GEMM measurements of Drift CPU were stored after"):
        score_since_training(store, old)


def _store_networks(store, nets: list[tuple[str, list]], when: dt.datetime,
                    slower: float = 1.0, fingerprint: str = "drift-cpu") -> None:
    """Whole networks (key, linear ops) of the drift CPU (the machine ``fingerprint``) stored
    at ``when``, their latency an additive law of their FLOPs, ``slower`` times it."""
    from collectors.ops import op_flops

    with store.session() as s:
        dev, sweep = gemm_sweep(s, len(nets), name="cpu", kind="cpu", model=CPU,
                                fingerprint=fingerprint, sm_count=2)
        sweep.kind = "network"
        for key, ops in nets:
            flops = sum(op_flops(o) for o in ops)
            s.add(Measurement(sweep_id=sweep.id, device_id=dev.id, config_key=key,
                              op_kind="network", dtype="fp32", backend="torch", status="ok",
                              latency_ms_p10=(0.02 + 0.01 * len(ops) + 2e-8 * flops) * slower,
                              power_source="unavailable", created_at=when,
                              params={"config": {"family": key.split("-")[0]}, "flops": flops,
                                      "ops": [[f"fc{i}", o.to_dict()] for i, o in
                                              enumerate(ops)]}))
        s.commit()


def _mlp(i: int) -> list:
    from collectors.ops import Op

    return [Op.make("linear", {"in_features": 64 * (i % 4 + 1), "out_features": 64,
                               "tokens": 8 * (i % 5 + 1)})] * (i % 3 + 1)


def test_a_network_model_is_scored_on_the_networks_measured_since(store, store_url, tmp_path,
                                                                  monkeypatch):
    from predictor import network
    from predictor.drift import ARCHS_AGAIN, NEW_ARCHS, score_networks_since_training

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    first = [(f"mlp-{i}", _mlp(i)) for i in range(15)]
    _store_networks(store, first, dt.datetime(2026, 11, 20))
    row, _ = network.train_and_register(store, CPU, folds=3)
    assert row.meta["data_to"].startswith("2026-11-20") and row.meta["data_to_id"] == len(first)
    _store_networks(store, first[:4], dt.datetime(2026, 11, 27), slower=1.3)
    _store_networks(store, [(f"wide-{i}", _mlp(i)) for i in range(15, 21)],
                    dt.datetime(2026, 11, 27, 1))
    result = score_networks_since_training(store, row)
    assert result.scored.group.value_counts().to_dict() == {NEW_ARCHS: 6, ARCHS_AGAIN: 4}
    table = result.table()
    again = table[(table.group == ARCHS_AGAIN) & (table.family == "all")]
    assert again.median_ratio.iloc[0] == pytest.approx(1 / 1.3, rel=0.05)
    run = CliRunner().invoke
    r = run(main, ["eval", "--db", store_url, "--device", "drift", "--registered", "--target",
                   "network", "--predictions", str(tmp_path / "nets.csv")])
    assert r.exit_code == 0, r.output
    assert ("Drift CPU network model v1 (the default): trained on measurements up to "
            "2026-11-20 00:00:00 UTC; scored on the 10 networks measured since: 6 "
            "architectures new to the model, 4 architectures it was trained on, measured "
            "again") in r.output, r.output
    assert re.search(r"architectures measured again: median predicted / measured 0\.7\d: the "
                     r"device now takes (2[5-9]|3[0-5])% longer on them than the model learnt"
                     r".*retrain: hwnas train --target network", r.output), r.output
    assert "new architectures: " in r.output and "(its held-out evaluation when it was " \
        "trained: " in r.output
    assert len(pd.read_csv(tmp_path / "nets.csv")) == 10
    for args, says in [(["--target", "network"], "--target network: names a registered model "
                                                  "to score; add --registered"),
                       (["--target", "network", "--registered", "--plot", "p.png"],
                        "--plot: does not apply to --registered --target network")]:
        r = run(main, ["eval", "--db", store_url, "--device", "drift", *args])
        assert r.exit_code == 2 and says in r.output, r.output
    # A network with a kind of op the model's networks never held is left to the op sums.
    from collectors.ops import Op

    norm = Op.make("norm", {"channels": 8, "elements": 512})
    _store_networks(store, [("normed-0", [*_mlp(1), norm])], dt.datetime(2026, 11, 27, 2))
    r = run(main, ["eval", "--db", store_url, "--device", "drift", "--registered", "--target",
                   "network"])
    assert r.exit_code == 0 and "not scored: 1 networks the model does not answer for" in \
        r.output, r.output
    r = run(main, ["train", "--db", store_url, "--device", "drift", "--target", "network"])
    assert r.exit_code == 0, r.output
    assert ("it answers networks of fp32 linear, norm ops with at least 1 layer at batch 1 "
            "(as its training networks were)") in r.output, r.output
    assert "held out one machine at a time" not in r.output  # one machine: nothing to say
    # A second machine of the model, 1.6x slower on networks of its own: each machine held out
    # in turn shows how far the model carries from one to the other.
    _store_networks(store, [(f"deep-{i}", _mlp(i)) for i in range(21, 33)],
                    dt.datetime(2026, 11, 28), slower=1.6, fingerprint="drift-cpu-2")
    r = run(main, ["train", "--db", store_url, "--device", "drift", "--target", "network"])
    assert r.exit_code == 0, (r.output, r.exception)
    table = r.output.split("held out one machine at a time (trained on the others' networks of "
                           "architectures it did not measure):")[1]
    first, second = (line.split() for line in table.strip().splitlines()[2:4])
    assert first[:2] == ["drift-cpu", "26"] and second[:2] == ["drift-cpu-2", "12"], table
    assert float(first[-1]) > 1.3 and float(second[-1]) < 0.8, table
    r = run(main, ["models", "--db", store_url, "--device", "drift", "--target", "network"])
    assert r.exit_code == 0 and "its evaluation when it was trained (networks held out):" in \
        r.output, r.output
    assert re.search(r"\narchitectures +38 ", r.output) and re.search(
        r"\nmachine drift-cpu-2 +12 .* 0\.\d\d\n", r.output), r.output
    # Networks at another batch than the model's (it learned batch 1 only): scored as the
    # service answers them, with the GEMM model's change, once the device has a GEMM model.
    from predictor import registry
    from predictor.drift import AT_OTHER_BATCH
    from predictor.network import at_batch

    _store_networks(store, [(f"b4-{i}", at_batch(_mlp(i), 4)) for i in range(40, 46)],
                    dt.datetime(2026, 11, 29), fingerprint="drift-cpu-2")
    latest = registry.find(store, CPU, target="network")
    result = score_networks_since_training(store, latest)
    assert result.scored.empty and result.not_scored == 6  # no GEMM model to scale them
    _store_rows(store, synthetic(40), dt.datetime(2026, 11, 29))
    train_and_register(store, CPU, n_splits=3, n_estimators=20)
    result = score_networks_since_training(store, latest)
    assert result.not_scored == 0 and list(result.scored.group) == [AT_OTHER_BATCH] * 6
    assert (result.scored.pred_latency_ms > 0).all()
    r = run(main, ["eval", "--db", store_url, "--device", "drift", "--registered", "--target",
                   "network"])
    assert r.exit_code == 0 and "6 at another batch (with the GEMM model)" in r.output, r.output
