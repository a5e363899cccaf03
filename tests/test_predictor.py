"""GEMM cost forest: fit/predict, honest splits, registry with checksums, clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.ensemble import RandomForestRegressor
from sqlalchemy import select

from collectors.ops import Op, OpError
from predictor import registry
from predictor.evaluate import (
    device_split,
    extrapolation_split,
    group_kfold_splits,
    metrics,
    shape_groups,
)
from predictor.features import (
    ALIGNED_MEANING,
    DeviceProfile,
    empirical_peaks,
    gemm_features,
    is_aligned,
)
from predictor.forest import GemmCostForest, gemm_frame
from predictor.training import DEVICES_HELD_OUT, evaluate, fit_full

PROFILE = DeviceProfile("Test GPU", "gpu", 8, {"compute_fp32": 10.0, "compute_fp16": 40.0,
                                                "bandwidth": 500.0})


def synthetic(n_shapes: int = 60, power: bool = False, seed: int = 0) -> pd.DataFrame:
    """A device that follows a roofline with a size-dependent efficiency, plus 3% noise."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(16), np.log(2048), size=(n_shapes, 3))).astype(int)
    rows = []
    for m, n, k in sizes:
        for dtype in ("fp32", "fp16"):
            flops = 2.0 * m * n * k
            peak = PROFILE.compute_tflops(dtype) * 1e12
            nbytes = (m * k + k * n + m * n) * (4 if dtype == "fp32" else 2)
            eff = 0.3 + 0.6 * min(1.0, np.log2(min(m, n, k)) / 11)
            t = max(flops / (peak * eff), nbytes / 400e9) * 1e3 + 0.005
            t *= rng.normal(1.0, 0.03)
            rows.append({"m": m, "n": n, "k": k, "batch": 1, "dtype": dtype, "trans_a": 0,
                         "trans_b": 0, "latency_ms": t,
                         "power_w": 100 + 200 * eff if power else np.nan,
                         "power_source": "nvml_energy_counter" if power else "unavailable",
                         "created_at": pd.Timestamp("2026-11-25")})
    return pd.DataFrame(rows)


def test_fit_predict_round_trip_and_sklearn_conventions():
    frame = synthetic()
    model = GemmCostForest(profile=PROFILE.to_dict(), n_estimators=30).fit(frame, frame.latency_ms)
    pred = model.predict(frame)
    assert pred.shape == (len(frame),) and np.all(pred > 0)
    assert np.median(np.abs(pred / frame.latency_ms - 1)) < 0.05  # in-sample sanity
    assert model.get_params()["n_estimators"] == 30
    assert clone(model).get_params() == model.get_params()
    c = model.predict_costs(frame.head(3))
    assert c.power_w is None and c.energy_j is None and np.all(c.latency_std_ms >= 0)
    assert model.score(frame, frame.latency_ms) > 0.9


def test_fixed_overhead_is_learned_only_where_the_data_shows_it():
    # The synthetic device adds 5 us to every call: its tiny shapes are mostly that overhead.
    frame = synthetic()
    model = fit_full(frame, PROFILE, n_estimators=10, baseline_fit="overhead")
    for dtype in ("fp32", "fp16"):
        fastest = frame.latency_ms[frame.dtype == dtype].min()
        assert model.overhead_ms_[dtype] == pytest.approx(0.5 * fastest)
        assert 0.002 < model.overhead_ms_[dtype] < 0.005
        assert model.bound_scale_[dtype] == 1.0
    # Large shapes only: no call is dominated by fixed cost, so none is assumed.
    large = frame[np.minimum(np.minimum(frame.m, frame.n), frame.k) >= 400]
    assert len(large) > 4
    assert fit_full(large, PROFILE, n_estimators=10,
                    baseline_fit="overhead").overhead_ms_ == {"fp16": 0.0, "fp32": 0.0}


def test_a_gpu_baseline_fits_the_fixed_cost_and_the_efficiency():
    """The synthetic GPU adds 5 us to every call and runs at 30-90% of its peaks: the affine
    baseline (a GPU's default) finds the 5 us and a scale above 1 (below-peak efficiency)."""
    frame = synthetic()
    model = fit_full(frame, PROFILE, n_estimators=10)
    assert model.baseline_fit_ == "affine"
    for dtype in ("fp32", "fp16"):
        assert model.overhead_ms_[dtype] == pytest.approx(0.005, rel=0.15)
        assert 1.0 < model.bound_scale_[dtype] < 1 / 0.3
    # A CPU takes whichever predicts held-out shapes of its training data better, and the
    # overhead baseline where too few shapes tell them apart; too few calls of a dtype fall
    # back to scale 1 on a GPU too.
    cpu = DeviceProfile("Test CPU", "cpu", 1, PROFILE.peaks)
    chosen = fit_full(frame, cpu, n_estimators=10)
    errors = chosen.baseline_fit_errors_
    assert set(errors) == {"affine", "overhead"} and all(0 < e < 1 for e in errors.values())
    assert chosen.baseline_fit_ == min(errors, key=errors.get)
    # Here efficiency rises with size (30-90% of the peaks): a fitted scale tells it better.
    assert chosen.baseline_fit_ == "affine", errors
    assert fit_full(frame.head(8), cpu, n_estimators=10).baseline_fit_ == "overhead"
    few = fit_full(frame.head(8), PROFILE, n_estimators=10)  # 4 shapes of each dtype
    assert set(few.bound_scale_.values()) == {1.0}
    with pytest.raises(ValueError, match="baseline_fit"):
        fit_full(frame, PROFILE, baseline_fit="linear")


def test_a_fitted_baseline_never_beats_the_peaks():
    """Calls that are all fixed cost (tiny shapes) say nothing about the slope: the fitted scale
    stays above 1, so a large shape is not predicted faster than the measured peaks allow."""
    from predictor.forest import affine_baseline

    rng = np.random.default_rng(0)
    bound = np.exp(rng.uniform(np.log(1e-6), np.log(1e-4), 40))  # ms, far below 5 us
    latency = 0.005 * (1.0 - 0.1 * bound / bound.max())  # larger ones a little faster
    overhead, scale = affine_baseline(latency, bound)
    assert overhead == pytest.approx(0.005, rel=0.1) and scale > 1.0
    # On calls that follow a line, the line is found.
    bound = np.exp(rng.uniform(np.log(1e-4), np.log(10.0), 40))
    overhead, scale = affine_baseline(0.004 + 2.5 * bound, bound)
    assert overhead == pytest.approx(0.004, rel=0.01) and scale == pytest.approx(2.5, rel=0.01)


def test_power_is_a_second_output_and_energy_is_consistent():
    frame = synthetic(power=True)
    model = fit_full(frame, PROFILE, n_estimators=20)
    assert model.has_power_
    c = model.predict_costs(frame.head(5))
    assert np.allclose(c.energy_j, c.power_w * c.latency_ms / 1e3)
    assert np.all(c.power_std_w >= 0) and np.all(c.energy_std_j >= 0)


def test_held_out_rows_carry_every_target_with_its_spread():
    from predictor.evaluate import held_out_rows

    ev = evaluate(synthetic(24, power=True), PROFILE, n_splits=3, n_estimators=10)
    rows = held_out_rows({"k": ev.kfold, "x": ev.extrapolation}, ev.targets)
    assert len(rows) == len(ev.kfold) + len(ev.extrapolation)
    for target, spread in [("latency_ms", "pred_latency_std_ms"), ("power_w", "pred_power_std_w"),
                           ("energy_j", None)]:
        assert {target, f"pred_{target}", f"ape_{target}_pct"} <= set(rows.columns)
        assert spread is None or (rows[spread] > 0).all()
    ape = (rows.pred_power_w - rows.power_w).abs() / rows.power_w * 100
    np.testing.assert_allclose(rows.ape_power_w_pct, ape)


def test_power_has_its_own_forest_and_never_moves_the_latency_model():
    # In one two-output forest, power in watts (variance ~1e4) would pick the splits and the
    # log-latency ratio (variance ~1) would follow them.
    frame = synthetic(power=True)
    frame["power_w"] = 100 + 400 * np.random.default_rng(3).random(len(frame))  # noise only
    both = fit_full(frame, PROFILE, n_estimators=20)
    alone = fit_full(frame.assign(power_w=np.nan, power_source="unavailable"), PROFILE,
                     n_estimators=20)
    assert both.has_power_ and not alone.has_power_
    assert np.array_equal(both.predict_costs(frame).latency_ms,
                          alone.predict_costs(frame).latency_ms)


def test_power_is_fitted_only_where_the_reading_is_the_ops_own():
    from predictor.data import POWER_DUTY_MIN, op_power, power_is_measured

    frame = synthetic(power=True)
    duty = np.where(frame.latency_ms < frame.latency_ms.median(), 0.3, 1.0)
    frame["power_duty"] = duty
    frame.loc[duty < POWER_DUTY_MIN, "power_w"] = 20.0  # an idle-looking reading
    assert op_power(frame).isna().sum() == (duty < POWER_DUTY_MIN).sum()
    assert power_is_measured(frame)
    model = fit_full(frame, PROFILE, n_estimators=20)
    assert model.n_power_train_ == (duty >= POWER_DUTY_MIN).sum()
    assert model.predict_costs(frame).power_w.min() > 100  # never learned the 20 W
    ev = evaluate(frame, PROFILE, n_splits=3, n_estimators=10)
    power = ev.tables()["shape-held-out (GroupKFold)"].set_index(["target", "dtype"])
    assert power.loc[("power_w", "all"), "n"] == (duty >= POWER_DUTY_MIN).sum()
    assert power.loc[("latency_ms", "all"), "n"] == len(frame)
    assert not power_is_measured(frame.assign(power_duty=0.1))  # no reading of its own left


def test_power_targets_are_checked():
    frame = synthetic(10, power=True)
    model = GemmCostForest(profile=PROFILE.to_dict(), n_estimators=5)
    y = np.column_stack([frame.latency_ms, frame.power_w])
    for bad, match in ((np.nan, "at least one row"), (np.inf, "power must be finite"),
                       (-5.0, "power must be positive")):
        with pytest.raises(ValueError, match=f"^y: .*{match}"):
            model.fit(frame, np.column_stack([y[:, 0], np.full(len(y), bad)]))


def test_no_power_model_when_power_was_unavailable():
    frame = synthetic(power=True)
    frame.loc[0, "power_source"] = "unavailable"
    frame.loc[0, "power_w"] = np.nan
    assert not fit_full(frame, PROFILE, n_estimators=5).has_power_


def test_splits_never_share_a_shape():
    frame = synthetic(40)
    groups = shape_groups(frame)
    for tr, te in list(group_kfold_splits(frame, 5)) + list(extrapolation_split(frame)):
        assert not set(groups[tr]) & set(groups[te])
        assert len(te) > 0 and len(tr) > 0
    (tr, te), = extrapolation_split(frame)
    flops = 2.0 * frame.m * frame.n * frame.k
    assert flops.iloc[te].min() > flops.iloc[tr].max()


def test_each_physical_device_is_held_out_with_its_shapes():
    one, other = synthetic(30, seed=3), synthetic(30, seed=4)
    frame = pd.concat([one.assign(device="gpu-a"), other.assign(device="gpu-b"),
                       one.head(10).assign(device="gpu-b")],  # shapes both GPUs measured
                      ignore_index=True)
    groups, devices = shape_groups(frame), frame.device.to_numpy()
    folds = list(device_split(frame))
    assert len(folds) == 2
    for tr, te in folds:
        assert len(set(devices[te])) == 1 and devices[te][0] not in set(devices[tr])
        assert not set(groups[tr]) & set(groups[te])  # the sibling's copy of a shape is out too
    assert list(device_split(synthetic(30).assign(device="gpu-a"))) == []
    assert list(device_split(synthetic(30))) == []  # frames without the column: no split

    ev = evaluate(frame, PROFILE, 3, n_estimators=30)
    assert DEVICES_HELD_OUT in ev.tables()
    per = ev.per_device()
    assert list(per.device) == ["gpu-a", "gpu-b"] and list(per.n) == [60, 70]
    assert (per.within_10 > 50).all()  # two GPUs of the same behaviour predict each other
    single = evaluate(synthetic(30).assign(device="gpu-a"), PROFILE, 3, n_estimators=10)
    assert single.devices is None and single.per_device().empty
    assert len(single.tables()) == 2
    # Two devices that measured no dtype in common: no device can be predicted from the other.
    apart = pd.concat([one[one.dtype == "fp32"].assign(device="gpu-a"),
                       other[other.dtype == "fp16"].assign(device="gpu-b")], ignore_index=True)
    assert evaluate(apart, PROFILE, 3, n_estimators=10).devices is None


def test_held_out_evaluation_is_accurate_on_a_learnable_device():
    ev = evaluate(synthetic(80), PROFILE, 5, n_estimators=60)
    table = ev.tables()["shape-held-out (GroupKFold)"]
    overall = table[(table.target == "latency_ms") & (table.dtype == "all")].iloc[0]
    assert overall.within_10 > 70 and overall.spearman > 0.95
    # (plus the aligned and unaligned rows, where the random shapes hold both kinds)
    assert set(table.dtype) - {"all, aligned", "all, unaligned"} == {"all", "fp16", "fp32"}


def test_metrics_values():
    m = metrics(np.array([1.0, 2.0, 4.0]), np.array([1.05, 2.5, 4.0]))
    assert m["mape"] == pytest.approx((5 + 25 + 0) / 3)
    assert m["within_10"] == pytest.approx(200 / 3)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["median_ratio"] == pytest.approx(1.05)  # of 1.05, 1.25 and 1.0


def test_empirical_peaks_are_the_best_achieved():
    frame = synthetic(10)
    peaks = empirical_peaks(frame)
    flops = 2.0 * frame.m * frame.n * frame.k / (frame.latency_ms / 1e3) / 1e12
    assert peaks["compute_fp32"] == pytest.approx(flops[frame.dtype == "fp32"].max())


def test_invalid_op_is_a_clear_error():
    with pytest.raises(OpError, match="^ops\\[0\\].kind"):
        gemm_frame([Op.make("elementwise", {"elements": 10})])


@pytest.fixture
def registered(store, tmp_path):
    frame = synthetic(30)
    model = fit_full(frame, PROFILE, n_estimators=10)
    row = registry.register(store, model, PROFILE.model, {"metrics": {"x": 1}}, tmp_path)
    return store, model, row, frame


def test_registry_round_trip_and_metadata(registered, tmp_path):
    store, model, row, frame = registered
    assert row.version == 1 and row.path.endswith(".skops") and len(row.sha256) == 64
    loaded = registry.load(registry.find(store, PROFILE.model))
    assert np.allclose(loaded.predict(frame), model.predict(frame), rtol=1e-12)
    assert row.meta["features"] == model.feature_names_ and row.n_samples == len(frame)
    assert min(model.overhead_ms_.values()) > 0 and loaded.overhead_ms_ == model.overhead_ms_
    assert loaded.bound_scale_ == model.bound_scale_ and min(model.bound_scale_.values()) > 1
    # A model registered before the fitted scale has none: scale 1 for every dtype.
    old = registry.find(store, PROFILE.model)
    old.meta = {k: v for k, v in old.meta.items()
                if k not in ("bound_scale", "baseline_fit", "train_range")}
    older = registry.load(old)
    assert older.bound_scale_ == {} and older.baseline_fit_ == "overhead"
    assert np.all(np.isfinite(older.predict(frame)))
    # Shapes beyond the training range are named (none for a model that did not record it).
    big = gemm_frame([Op.gemm(16384, 64, 64, "fp32"), Op.gemm(int(frame.m.min()), 60, 60)])
    assert loaded.train_range_ == model.train_range_
    why = loaded.outside_training(big)
    assert why[0].startswith("m 16384 > ") and why[1] is None
    assert older.outside_training(big) == [None, None]
    row2 = registry.register(store, model, PROFILE.model, {}, tmp_path)
    assert row2.version == 2 and registry.find(store, PROFILE.model).version == 2
    assert registry.find(store, PROFILE.model, 1).sha256 == row.sha256
    with pytest.raises(registry.RegistryError, match="--version 7"):
        registry.find(store, PROFILE.model, 7)
    with pytest.raises(registry.RegistryError, match="no trained gemm model"):
        registry.find(store, "Other GPU")


def test_tampered_model_file_is_refused(registered):
    store, _, row, _ = registered
    with open(row.path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(registry.ChecksumError, match="refusing"):
        registry.load(registry.find(store, PROFILE.model))


def test_a_model_file_synced_to_another_folder_loads_from_this_machines_models(
        registered, tmp_path, monkeypatch):
    import shutil

    store, model, row, frame = registered
    elsewhere = tmp_path / "mounted" / "models"  # another machine's view of the shared folder
    elsewhere.mkdir(parents=True)
    shutil.move(row.path, elsewhere)
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(registry.RegistryError, match=r"missing: neither .* nor .*nowhere"):
        registry.load(registry.find(store, PROFILE.model))
    monkeypatch.setenv("HWNAS_MODELS", str(elsewhere))
    loaded = registry.load(registry.find(store, PROFILE.model))
    assert np.array_equal(loaded.predict(frame), model.predict(frame))
    assert registry.model_file(row) == elsewhere / os.path.basename(row.path)
    with open(elsewhere / os.path.basename(row.path), "ab") as f:
        f.write(b"!")
    with pytest.raises(registry.ChecksumError, match="refusing"):
        registry.load(registry.find(store, PROFILE.model))


def test_registry_keeps_the_power_forest_and_refuses_one_forest_for_both(store, tmp_path):
    import skops.io as sio

    frame = synthetic(30, power=True)
    model = fit_full(frame, PROFILE, n_estimators=10)
    row = registry.register(store, model, PROFILE.model, {}, tmp_path)
    loaded = registry.load(registry.find(store, PROFILE.model))
    assert row.has_power and loaded.has_power_
    a, b = model.predict_costs(frame), loaded.predict_costs(frame)
    assert np.allclose(b.power_w, a.power_w, rtol=1e-12)
    assert np.allclose(b.energy_std_j, a.energy_std_j, rtol=1e-9)
    # Files of older versions hold one forest: latency alone still loads, both outputs not.
    for outputs, ok in ((1, True), (2, False)):
        y = np.log(frame.latency_ms) if outputs == 1 else frame[["latency_ms", "power_w"]]
        sio.dump(RandomForestRegressor(3, random_state=0).fit(
            gemm_features(frame, PROFILE), y), row.path)
        row.sha256 = registry.sha256_file(row.path)
        if ok:
            assert not registry.load(row).has_power_
        else:
            with pytest.raises(registry.RegistryError, match="one forest.*hwnas train"):
                registry.load(row)


def test_model_from_an_older_feature_set_is_refused_clearly(registered):
    _, model, row, frame = registered
    row.meta = {**row.meta, "features": row.meta["features"][:-9]}
    with pytest.raises(registry.RegistryError, match="another feature set.*hwnas train"):
        registry.load(row)
    model.feature_names_ = model.feature_names_[:-9]
    with pytest.raises(ValueError, match="^model: trained on another feature set"):
        model.predict(frame)


def fixed_tile_device(n_shapes: int = 60, seed: int = 1) -> pd.DataFrame:
    """A GPU whose GEMM kernel keeps 128x128 output tiles: a call takes whole waves of tiles over
    the 8 SMs (9 tiles cost as much as 16), each tile's time in proportion to K, unless memory
    traffic takes longer; plus 3% noise."""
    rng = np.random.default_rng(seed)
    mn = np.exp(rng.uniform(np.log(100), np.log(3000), size=(n_shapes, 2))).astype(int)
    ks = np.exp(rng.uniform(np.log(64), np.log(2048), size=n_shapes)).astype(int)
    per_sm = PROFILE.compute_tflops("fp32") * 1e12 / PROFILE.sm_count
    waves = np.ceil(np.ceil(mn[:, 0] / 128) * np.ceil(mn[:, 1] / 128) / PROFILE.sm_count)
    t_compute = waves * 2.0 * 128 * 128 * ks / (0.8 * per_sm)
    t_memory = (mn[:, 0] * ks + ks * mn[:, 1] + mn[:, 0] * mn[:, 1]) * 4 / 400e9
    t = np.maximum(t_compute, t_memory) * 1e3 * rng.normal(1.0, 0.03, n_shapes)
    return pd.DataFrame({"m": mn[:, 0], "n": mn[:, 1], "k": ks, "batch": 1, "dtype": "fp32",
                         "trans_a": 0, "trans_b": 0, "latency_ms": t, "power_w": np.nan,
                         "power_source": "unavailable"})


def test_the_baseline_is_chosen_from_the_training_shapes():
    tiled = fixed_tile_device()
    model = fit_full(tiled, PROFILE, n_estimators=30)
    assert model.bound_ == "waves"
    assert model.bound_errors_["waves"] < 0.5 * model.bound_errors_["roofline"]
    # It is the better baseline on shapes held out of the whole fit, too.
    test = fixed_tile_device(40, seed=2)
    roof = fit_full(tiled, PROFILE, n_estimators=30, bound="roofline")
    assert np.mean(np.abs(model.predict(test) / test.latency_ms - 1)) < 0.6 * np.mean(
        np.abs(roof.predict(test) / test.latency_ms - 1))
    # A library whose efficiency varies smoothly with the shape keeps the plain roofline.
    assert fit_full(synthetic(), PROFILE, n_estimators=30).bound_ == "roofline"
    # A CPU, or too few shapes to compare on, take the roofline without comparing.
    cpu = DeviceProfile("Test CPU", "cpu", 8, PROFILE.peaks)
    for model in (fit_full(tiled, cpu, n_estimators=5), fit_full(tiled.head(5), PROFILE,
                                                                   n_estimators=5)):
        assert model.bound_ == "roofline" and not hasattr(model, "bound_errors_")
    with pytest.raises(ValueError, match="^bound: 'tiles'"):
        fit_full(tiled, PROFILE, bound="tiles")


def test_registry_keeps_the_chosen_baseline(store, tmp_path):
    tiled = fixed_tile_device()
    model = fit_full(tiled, PROFILE, n_estimators=10)
    row = registry.register(store, model, PROFILE.model, {}, tmp_path)
    assert row.meta["bound"] == "waves"
    loaded = registry.load(registry.find(store, PROFILE.model))
    assert loaded.bound_ == "waves"
    assert np.allclose(loaded.predict(tiled), model.predict(tiled), rtol=1e-12)
    # A model registered before the choice existed was fitted on the roofline.
    row.meta = {k: v for k, v in row.meta.items() if k != "bound"}
    assert registry.load(row).bound_ == "roofline"


def test_fill_and_tail_features_measure_padding_and_remainders():
    from predictor.features import gemm_features

    frame = pd.DataFrame({"m": [32, 33, 8], "n": [16, 17, 16], "k": [48, 1, 100], "batch": 1,
                          "dtype": "fp32", "trans_a": 0, "trans_b": 0})
    f = gemm_features(frame, PROFILE)
    assert np.allclose(f.fill_m, [1, 33 / 48, 0.5])
    assert np.allclose(f.fill_n, [1, 17 / 32, 1])
    assert np.allclose(f.fill_k, [1, 1 / 16, 100 / 112])
    assert np.allclose(f.tail_m, [0, 1 / 33, 8 / 8])
    assert np.allclose(f.tail_n, [0, 1 / 17, 0])
    assert np.allclose(f.tail8_k, [0, 1, 4 / 100])


def test_row_alignment_is_the_least_aligned_stored_row_in_bytes():
    from predictor.features import gemm_features

    # Rows are k (A), n (B, C) long untransposed; m (A) and k (B) take their place transposed.
    frame = pd.DataFrame({"m": [49, 49, 8, 6, 6, 1024],
                          "n": [512, 512, 10, 8, 8, 1024],
                          "k": [512, 512, 12, 8, 8, 1024],
                          "batch": 1, "dtype": ["bf16", "fp32", "bf16", "bf16", "bf16", "fp16"],
                          "trans_a": [0, 0, 0, 0, 1, 0], "trans_b": 0})
    f = gemm_features(frame, PROFILE)
    # An odd m is no row; n = 10 bf16 is 20 bytes (4-aligned); a transposed A's rows are m = 6
    # long (12 bytes, 4-aligned); 16 bytes is the widest vector counted.
    assert f.row_align_bytes.tolist() == [16, 16, 4, 16, 4, 16]
    odd = frame.assign(n=[511, 511, 9, 7, 7, 1023])
    assert gemm_features(odd, PROFILE).row_align_bytes.tolist() == [2, 4, 2, 2, 2, 2]


def test_padding_to_alignment_rounds_up_the_row_lengths_only():
    from predictor.features import padded_to_alignment

    assert padded_to_alignment(49, 1001, 1003) == (49, 1008, 1008)
    assert padded_to_alignment(49, 1001, 1003, trans_a=1) == (56, 1008, 1003)
    assert padded_to_alignment(49, 1001, 1003, trans_b=1) == (49, 1008, 1008)
    assert padded_to_alignment(49, 1000, 1003, trans_a=1, trans_b=1) == (56, 1000, 1008)
    assert padded_to_alignment(64, 64, 64) == (64, 64, 64)


def test_aligned_queries_are_flagged_where_a_dtype_saw_almost_no_aligned_shape():
    from predictor.forest import ALIGNED_MIN_SHAPES, training_range

    frame = synthetic(40)
    frame = frame[~is_aligned(frame)]
    # fp16 gets aligned shapes (twice each: distinct shapes count), fp32 one.
    distinct = frame[frame.dtype == "fp16"].head(ALIGNED_MIN_SHAPES).assign(
        m=8 * np.arange(1, ALIGNED_MIN_SHAPES + 1), n=64, k=128)
    aligned = pd.concat([distinct] * 2)
    one = frame[frame.dtype == "fp32"].head(1).assign(m=256, n=256, k=256)
    model = fit_full(pd.concat([frame, aligned, one], ignore_index=True), PROFILE,
                     n_estimators=5)
    assert model.train_range_["fp16"]["aligned"] == ALIGNED_MIN_SHAPES
    assert model.train_range_["fp32"]["aligned"] == 1
    # Aligned means the operands' stored rows (k and n here), whatever m is: 500 x 512 x 512
    # is aligned, 512 x 500 x 512 is not.
    queries = gemm_frame([Op.gemm(512, 512, 512, "fp32"), Op.gemm(512, 512, 512, "fp16"),
                          Op.gemm(512, 500, 512, "fp32"), Op.gemm(500, 512, 512, "fp32")])
    assert model.beyond_training(queries).tolist() == [True, False, False, True]
    why = f"{ALIGNED_MEANING}, as only 1 of the fp32 training shapes was"
    assert model.outside_training(queries) == [why, None, None, why]
    # A model from before the count was recorded says nothing about alignment.
    model.train_range_ = {d: {c: v for c, v in r.items() if c != "aligned"}
                          for d, r in model.train_range_.items()}
    assert model.outside_training(queries) == [None, None, None, None]
    assert training_range(queries)["fp32"]["aligned"] == 2


def test_batched_queries_are_flagged_where_training_held_one_matrix_a_call():
    frame = synthetic(30)
    frame = frame[~is_aligned(frame)]
    model = fit_full(frame, PROFILE, n_estimators=5)
    assert model.train_range_["fp32"]["batch"] == 1
    # The same small matrix, alone and over 12 heads (FLOPs still far inside the range).
    one, heads = (Op.gemm(60, 60, 60, "fp32", batch=b) for b in (1, 12))
    queries = gemm_frame([one, heads])
    assert model.beyond_training(queries).tolist() == [False, True]
    assert model.outside_training(queries) == [None, "batch 12 > 1"]
    # Trained on batched calls too, the same query is inside.
    batched = frame.assign(batch=16, latency_ms=frame.latency_ms * 16)
    wider = fit_full(pd.concat([frame, batched], ignore_index=True), PROFILE, n_estimators=5)
    assert wider.outside_training(queries) == [None, None]
    # A model registered before the batch was recorded judges by m, n, k and FLOPs alone.
    model.train_range_ = {d: {c: v for c, v in r.items() if c != "batch"}
                          for d, r in model.train_range_.items()}
    assert model.outside_training(queries) == [None, None]


def gpperf_csv(tmp_path) -> str:
    """A GPPerf-style CSV of the synthetic device's fp32 rows, as `hwnas import gpperf` reads
    it (its power column is not a measurement of the kernel)."""
    src = tmp_path / "gp.csv"
    frame = synthetic(20)
    pd.DataFrame({"M": frame.m, "N": frame.n, "K": frame.k,
                  "kernel": "cutlass_simt_sgemm_128x128_8x2_nn_align1", "layout": "nn",
                  "runtime_ms": frame.latency_ms, "power_w": 70.0,
                  "gpu": "NVIDIA GeForce RTX 4070"}).to_csv(src, index=False)
    return str(src)


def test_cli_import_train_predict(tmp_path, monkeypatch):
    from hwnas.cli import main

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    db = f"sqlite:///{tmp_path / 'p.sqlite'}"
    src = gpperf_csv(tmp_path)
    run = CliRunner().invoke
    r = run(main, ["import", "gpperf", "--db", db, str(src)])
    assert r.exit_code == 0 and "power: unavailable" in r.output, r.output
    r = run(main, ["train", "--db", db, "--device", "4070", "--trees", "10", "--folds", "3"])
    assert r.exit_code == 0, r.output
    assert "shape-held-out" in r.output and "registered NVIDIA GeForce RTX 4070 v1" in r.output
    assert f"few aligned shapes ({ALIGNED_MEANING}): fp32 0." in r.output, r.output
    fitted = r"baseline per dtype \(affine\): fp32 [0-9.]+ us \+ [0-9.]+ x (roofline|waves)"
    assert re.search(fitted, r.output), r.output
    r = run(main, ["predict", "gemm", "--db", db, "--device", "4070", "--m", "500", "--n", "500",
                   "--k", "500"])
    assert r.exit_code == 0 and "latency" in r.output and "power    unavailable" in r.output
    assert "beyond the" not in r.output
    # The random training shapes hold no aligned one: an aligned query says so.
    r = run(main, ["predict", "gemm", "--db", db, "--device", "4070", "--m", "512", "--n", "512",
                   "--k", "512"])
    assert (f"beyond the fp32 shapes this model was trained on: {ALIGNED_MEANING}, as "
            "none of the fp32 training shapes were;") in r.output, r.output
    r = run(main, ["predict", "gemm", "--db", db, "--device", "4070", "--m", "65536", "--n",
                   "512", "--k", "512"])
    assert "beyond the fp32 shapes this model was trained on: m 65536 > " in r.output, r.output
    r = run(main, ["predict", "gemm", "--db", db, "--device", "4070", "--m", "-1", "--n", "5",
                   "--k", "5"])
    assert r.exit_code == 2 and "m: must be a positive integer" in r.output
    r = run(main, ["predict", "gemm", "--db", db, "--device", "H100", "--m", "1", "--n", "5",
                   "--k", "5"])
    assert r.exit_code == 1 and "no measurements of such a device" in r.output
    assert "Traceback" not in r.output
    # No --device: the store's only device; none, or several, is an error that says so.
    gemm = ["predict", "gemm", "--m", "500", "--n", "500", "--k", "500"]
    r = run(main, [*gemm, "--db", db])
    assert r.exit_code == 0 and r.output.startswith("NVIDIA GeForce RTX 4070 (model v1)")
    r = run(main, [*gemm, "--db", f"sqlite:///{tmp_path / 'empty.sqlite'}"])
    assert r.exit_code == 1 and "--device: the store holds no device yet" in r.output
    from collectors.devices import DeviceInfo
    from collectors.store.db import Store
    from collectors.store.repo import upsert_device

    with Store(db).session() as s:
        upsert_device(s, DeviceInfo(name="cpu", kind="cpu", model="Other CPU", host="h"))
        s.commit()
    r = run(main, [*gemm, "--db", db])
    assert r.exit_code == 1 and ("--device: the store holds 2 device models (NVIDIA GeForce "
                                 "RTX 4070; Other CPU); name one") in r.output, r.output
    r = run(main, ["models", "--db", db])
    assert "NVIDIA GeForce RTX 4070" in r.output
    r = run(main, ["eval", "--db", db, "--device", "4070", "--trees", "10", "--folds", "3",
                   "--plot", str(tmp_path / "p.png"), "--worst", "3", "--predictions",
                   str(tmp_path / "held_out.csv")])
    assert r.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 1000
    # Every held-out prediction, once per split, scoring as the printed table does.
    rows = pd.read_csv(tmp_path / "held_out.csv")
    kfold = rows[rows.split == "shapes held out (GroupKFold)"]
    assert len(kfold) == 20 and kfold.groupby(["m", "n", "k"]).fold.nunique().max() == 1
    assert set(rows.split) == {"shapes held out (GroupKFold)", "largest shapes held out"}
    within = (kfold.ape_latency_ms_pct <= 10).mean() * 100
    table = r.output.split("shape-held-out (GroupKFold):")[1].splitlines()
    assert f"{within:.1f}" in next(line for line in table if line.startswith("latency_ms  all"))
    assert (kfold.pred_latency_std_ms > 0).all() and "power_w" not in rows
    worst = r.output.split("latency predicted worst, shapes held out (GroupKFold):\n")[1]
    assert len([line for line in worst.splitlines() if " fp32 " in line]) == 3
    assert re.search(r"its fixed cost and scale per dtype: affine \d+ \(", r.output), r.output
    # A model fitted on an older feature set: listed with the remedy, refused with it.
    from collectors.store.db import Store
    from collectors.store.models import ModelVersion

    with Store(db).session() as s:
        row = s.scalars(select(ModelVersion)).one()
        row.meta = {**row.meta, "features": row.meta["features"][:-1]}
        s.commit()
    r = run(main, ["models", "--db", db])
    assert r.exit_code == 0 and ("NVIDIA GeForce RTX 4070 v1 was fitted on the GEMM features of "
                                 "an older hwnas") in r.output, r.output
    r = run(main, ["predict", "gemm", "--db", db, "--device", "4070", "--m", "5", "--n", "5",
                   "--k", "5"])
    assert r.exit_code != 0 and "retrain it with `hwnas train`" in r.output, r.output
    assert "Traceback" not in r.output
    # The baseline can be chosen: the bound at the peaks plus the fastest call's overhead.
    r = run(main, ["train", "--db", db, "--device", "4070", "--trees", "10", "--folds", "3",
                   "--baseline-fit", "overhead"])
    assert r.exit_code == 0, r.output
    assert re.search(r"its fixed cost and scale per dtype: overhead \d+ \(", r.output), r.output
    assert re.search(r"baseline per dtype \(overhead\): fp32 [0-9.]+ us \+ 1 x", r.output)
    r = run(main, ["train", "--db", db, "--device", "4070", "--baseline-fit", "linear"])
    assert r.exit_code == 2 and "--baseline-fit" in r.output


def test_models_describes_one_model_and_checks_its_file(tmp_path, monkeypatch):
    import json

    from collectors.store.db import Store
    from collectors.store.models import ModelVersion
    from hwnas.cli import main

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    db = f"sqlite:///{tmp_path / 'm.sqlite'}"
    run = CliRunner().invoke
    r = run(main, ["models", "--db", db, "--device", "4070"])
    assert r.exit_code == 1 and "registered: none: run hwnas train first" in r.output, r.output
    assert run(main, ["import", "gpperf", "--db", db, gpperf_csv(tmp_path)]).exit_code == 0
    r = run(main, ["train", "--db", db, "--device", "4070", "--trees", "5", "--folds", "3"])
    assert r.exit_code == 0 and "held-out within ±10%: v" not in r.output, r.output
    # A second version is compared with the default it replaces; where it scored lower, the
    # way back is named (v1's score raised past any real one, so that v2 is always lower).
    with Store(db).session() as s:
        first = s.scalars(select(ModelVersion)).one()
        tables = dict(first.meta["metrics"])
        tables["shape-held-out (GroupKFold)"] = [{**tables["shape-held-out (GroupKFold)"][0],
                                                 "within_10": 101.0}]
        first.meta = {**first.meta, "metrics": tables}
        s.commit()
    r = run(main, ["train", "--db", db, "--device", "4070", "--trees", "5", "--folds", "3"])
    assert r.exit_code == 0, r.output
    assert re.search(r"held-out within ±10%: v2 [0-9.]+% \(20 measurements\), v1 101.0% \(20\) "
                     "when it was trained", r.output), r.output
    assert ("`hwnas models --device 'NVIDIA GeForce RTX 4070' --version 2 --retire` makes v1 "
            "the default again") in r.output, r.output
    r = run(main, ["models", "--db", db, "--device", "4070"])
    assert r.exit_code == 0, r.output
    assert "gemm model v2 (the default: its latest version not retired)" in r.output, r.output
    assert len(re.findall(r"^NVIDIA GeForce RTX 4070 +[12] +gemm", r.output, re.M)) == 2
    assert "file check     matches its registered SHA-256" in r.output
    assert "libraries      python " in r.output and "installed now" not in r.output
    assert re.search(r"training data  stored 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d \.\. .* \(UTC\), "
                     r"row ids up to 20$", r.output, re.M), r.output
    assert "shape-held-out (GroupKFold) (its evaluation when it was trained):" in r.output
    # One version as JSON: everything the registry holds, the stored evaluation included.
    r = run(main, ["models", "--db", db, "--device", "4070", "--version", "1", "--json"])
    rec = json.loads(r.output)
    assert rec["version"] == 1 and rec["default"] is False and rec["target"] == "gemm"
    held_out = rec["meta"]["metrics"]["shape-held-out (GroupKFold)"][0]
    assert held_out["dtype"] == "all" and held_out["n"] == rec["samples"] == 20
    assert rec["meta"]["features"] and rec["file"] == "matches its registered SHA-256"
    # A changed file and older libraries are named, not loaded.
    with open(rec["path"], "r+b") as f:
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(bytes([byte[0] ^ 0xFF]))
    with Store(db).session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == 1)).one()
        row.meta = {**row.meta, "libraries": {**row.meta["libraries"], "scikit-learn": "0.1"}}
        s.commit()
    r = run(main, ["models", "--db", db, "--device", "4070", "--version", "1"])
    assert r.exit_code == 0 and "refusing to load a changed file" in r.output, r.output
    assert "scikit-learn 0.1 (installed now: " in r.output
    # Another kind of model: its own record's fields are listed as they were stored.
    registry.register_json(Store(db), "Phone X", "nb201", "{}", 10,
                           {"method": "nnls", "metrics": {"spearman_all": 0.9}}, tmp_path)
    r = run(main, ["models", "--db", db, "--device", "phone"])
    assert r.exit_code == 0 and "Phone X: nb201 model v1" in r.output, r.output
    assert 'metrics: {"spearman_all": 0.9}' in r.output and 'method: "nnls"' in r.output
    registry.register_json(Store(db), "Phone X", "network", "{}", 8, {"metrics": {
        "families": ["nb201"], "held_out": {"within_10": 100.0}}}, tmp_path)
    r = run(main, ["models", "--db", db, "--device", "phone"])  # two kinds, neither gemm
    assert r.exit_code == 1 and "has models of nb201, network; name one" in r.output, r.output
    r = run(main, ["models", "--db", db, "--device", "phone", "--target", "network"])
    assert r.exit_code == 0 and '"families": ["nb201"]' in r.output, r.output
    # Bad requests name the option.
    for args, code, says in [(["--version", "1"], 2, "--version describes one model"),
                             (["--device", "H100"], 1, "no registered model for such a device"),
                             (["--device", "4070", "--version", "9"], 1, "has gemm versions 1, 2"),
                             (["--device", "4070", "--target", "network"], 1,
                              "--target network: NVIDIA GeForce RTX 4070 has models of gemm")]:
        r = run(main, ["models", "--db", db, *args])
        assert r.exit_code == code and says in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("text, says", [
    ("m,n,k\n8,8,8\n10,x,3\n", "row 2, column n: must be a positive integer, got 'x'"),
    ("m,n,k\n8,8,0\n", "row 1, column k: must be a positive integer, got '0'"),
    ("m,n,k\n8,8,2.5\n", "row 1, column k: must be a positive integer, got '2.5'"),
    ("m,n,k\n8,,8\n", "row 1, column n: must be a positive integer, got ''"),
    ("m,n,k\n99999999999,8,8\n", "row 1, column m: must be at most 16777216, got '99999999999'"),
    ("m,n,k,dtype\n8,8,8,fp8\n", "row 1, column dtype: unknown dtype 'fp8'"),
    ("m,n,k,batch\n8,8,8,-2\n", "row 1, column batch: must be a positive integer, got '-2'"),
    ("m,n,k,layout\n8,8,8,nx\n", "row 1, column layout: expected one of nn, nt, tn, tt"),
    ("m,n\n8,8\n", "needs columns m, n and k (and may have dtype, batch, layout); it has no k"),
    ("m,n,k\n", "holds no GEMMs"),
    ("", "cannot read"),
])
def test_a_bad_shapes_csv_names_the_row_and_column(tmp_path, text, says):
    from hwnas.cli import main

    src = tmp_path / "s.csv"
    src.write_text(text)
    r = CliRunner().invoke(main, ["predict", "gemm", "--db", f"sqlite:///{tmp_path / 'x.db'}",
                                  "--device", "cpu", "--shapes-csv", str(src)])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    assert str(src) in r.output


def test_predict_gemm_takes_one_gemm_or_a_csv_not_both(tmp_path):
    from hwnas.cli import main

    src = tmp_path / "s.csv"
    src.write_text("m,n,k\n8,8,8\n")
    db = ["--db", f"sqlite:///{tmp_path / 'x.db'}", "--device", "cpu"]
    for args, says in [(["--shapes-csv", str(src), "--m", "4"], "--m: the shapes come from"),
                       (["--m", "4", "--n", "4"], "--k: give the GEMM's dimensions"),
                       (["--m", "4", "--n", "4", "--k", "4", "--out", "x.csv"],
                        "--out writes the predictions of --shapes-csv")]:
        r = CliRunner().invoke(main, ["predict", "gemm", *db, *args])
        assert r.exit_code == 2 and says in r.output, r.output


def test_evaluation_output_names_dtypes_with_few_aligned_shapes(capsys):
    from hwnas.cli.models import _print_evaluation

    frame = synthetic(24)
    aligned = frame.assign(m=frame.m // 8 * 8 + 8, n=frame.n // 8 * 8 + 8, k=frame.k // 8 * 8 + 8)
    for data, expected in ((frame, True), (pd.concat([frame, aligned]), False)):
        _print_evaluation(evaluate(data, PROFILE, 3, n_estimators=5))
        out = capsys.readouterr().out
        assert (f"few aligned shapes ({ALIGNED_MEANING}): fp16 " in out) == expected, out


def test_metrics_are_split_by_alignment_where_both_kinds_were_held_out():
    from predictor.evaluate import metrics_table

    oof = pd.DataFrame({"m": [64, 64, 63, 65], "n": [8, 16, 9, 8], "k": [8, 8, 8, 7],
                        "dtype": ["fp16"] * 4, "latency_ms": [1.0, 2.0, 3.0, 4.0],
                        "pred_latency_ms": [1.0, 2.0, 3.6, 4.0]})
    table = metrics_table(oof, ["latency_ms"]).set_index("dtype")
    assert list(table.index) == ["all", "fp16", "all, aligned", "all, unaligned"]
    assert table.loc["all, aligned", "n"] == 2 and table.loc["all, aligned", "mape"] == 0
    assert table.loc["all, unaligned", "n"] == 2 and table.loc["all, unaligned", "mape"] == (
        pytest.approx(10.0))
    unaligned_only = metrics_table(oof.iloc[2:], ["latency_ms"])
    assert list(unaligned_only.dtype) == ["all", "fp16"]


def test_worst_configs_lists_the_largest_relative_misses():
    from predictor.evaluate import worst_configs

    oof = pd.DataFrame({"m": [64, 128, 256, 512], "n": 32, "k": 16, "batch": [1, 1, 4, 1],
                        "dtype": ["fp32", "fp16", "fp32", "fp32"], "trans_a": [0, 1, 0, 0],
                        "trans_b": [0, 0, 1, 0], "latency_ms": [1.0, 2.0, 4.0, 8.0],
                        "pred_latency_ms": [1.05, 3.0, 2.0, np.nan], "fold": [0, 1, 2, 3]})
    w = worst_configs(oof, "latency_ms", 2)
    assert list(w["shape"]) == ["128x32x16", "256x32x16 x4"]  # 50% over, then 50% under
    assert list(w.layout) == ["tn", "nt"] and list(w.fold) == [1, 2]
    assert np.allclose(w.ratio, [1.5, 0.5]) and np.allclose(w.ape_pct, [50.0, 50.0])
    assert len(worst_configs(oof, "latency_ms", 10)) == 3  # the unscored row is left out


def test_fast_inference_equals_sklearn_within_1e6():
    frame = synthetic(40, power=True)
    model = fit_full(frame, PROFILE, n_estimators=25)
    slow = model.predict_costs(frame)
    fast = model.compile().predict_costs(frame)
    for a, b in ((slow.latency_ms, fast.latency_ms), (slow.power_w, fast.power_w),
                 (slow.latency_std_ms, fast.latency_std_ms), (slow.energy_j, fast.energy_j),
                 (slow.power_std_w, fast.power_std_w), (slow.energy_std_j, fast.energy_std_j)):
        assert np.allclose(b, a, rtol=1e-6, atol=0)
    # Training rows sit exactly on split values: they exercise the threshold rounding.
    features = gemm_features(frame, PROFILE).to_numpy(np.float32)
    ref = np.stack([np.stack([t.predict(features) for t in forest.estimators_])
                    for forest in (model.forest_, model.power_forest_)], axis=-1)
    raw = model.per_tree(frame)
    assert raw.shape == (25, len(frame), 2)
    assert np.allclose(raw, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("given", ["uncertainty", "weights"])
def test_adaptive_sampler_spends_the_budget_once_each_and_fills_in_uncertain_regions(
        monkeypatch, given):
    from predictor import adaptive

    pool = adaptive.candidate_pool(120, 16, 2048, ["fp32", "fp16"], seed=5)

    def law(i: int) -> float:
        m, n, k, dtype = (pool.at[i, c] for c in ("m", "n", "k", "dtype"))
        return 2.0 * m * n * k / (PROFILE.compute_tflops(dtype) * 1e12 * 0.5) * 1e3 + 0.01

    calls: list[list[int]] = []

    def measure(indices):
        calls.append(list(indices))
        return {i: law(i) for i in indices if i % 17}  # some configs "fail"

    # A known uncertainty: the forest is "sure" wherever M <= 256, unsure beyond; either as
    # the forest's spread (the default weights) or as the covering weights themselves.
    def unsure(model, frame):
        return (frame.m.to_numpy() > 256).astype(float)

    if given == "uncertainty":
        monkeypatch.setattr(adaptive, "uncertainty", unsure)
        sampler = adaptive.AdaptiveSampler(PROFILE, pool, seed_share=0.2, trees=5)
    else:
        sampler = adaptive.AdaptiveSampler(PROFILE, pool, seed_share=0.2, trees=5,
                                           weights=unsure)
    measured = sampler.run(measure, budget=60, batch=10)
    flat = [i for c in calls for i in c]
    assert len(flat) == 60 and len(set(flat)) == 60  # budget spent, nothing twice
    assert set(measured) == {i for i in flat if i % 17}
    assert calls[0] == [int(i) for i in sampler.order[:10]]  # seed rounds: uniform order
    chosen = [i for c in calls[2:] for i in c]
    assert (pool.m[chosen] > 256).all()  # then: only where the forest is unsure
    assert len(set(pool.dtype[chosen])) == 2  # ... in both dtypes


def test_cover_greedily_weighs_uncertainty_by_how_many_configs_a_pick_stands_for():
    from predictor.adaptive import cover_greedily

    # A dense cluster of 20 configs near 0, a lone outlier at 10, candidates at both.
    coords = np.concatenate([np.random.default_rng(0).normal(0, 0.1, (20, 2)), [[10.0, 10.0]]])
    candidates = np.array([0, 20])
    measured = np.array([], dtype=int)
    even = np.ones(21)

    def cover_greedily_rows(weights, measured, candidates, count):  # in rows of coords
        picks = cover_greedily(coords, weights, coords[measured], coords[candidates], count)
        return [int(candidates[j]) for j in picks]

    assert cover_greedily_rows(even, measured, candidates, 1) == [0]  # the bulk first
    outlier_unsure = np.r_[np.full(20, 0.01), 1.0]
    assert cover_greedily_rows(outlier_unsure, measured, candidates, 1) == [20]
    # Once the cluster is measured, its neighbourhood gains nothing: the outlier comes next.
    assert cover_greedily_rows(even, np.array([1]), candidates, 1) == [20]
    assert cover_greedily_rows(even, measured, candidates, 5) == [0, 20]  # no repeats
    # Trees that all agree (no spread anywhere): plain space filling, not an arbitrary pick.
    assert cover_greedily_rows(np.zeros(21), np.array([1]), candidates, 1) == [20]


def gemm_sweep(s, n_planned: int, **device):
    """A finished GEMM sweep of the device with these fields (added to session ``s`` unless
    one of its fingerprint is there): (device, sweep)."""
    from collectors.store.models import Device, Sweep

    dev = s.query(Device).filter_by(fingerprint=device["fingerprint"]).one_or_none()
    if dev is None:
        dev = Device(**device)
        s.add(dev)
        s.flush()
    sweep = Sweep(kind="gemm", device_id=dev.id, host="h", n_planned=n_planned,
                  status="done", config={})
    s.add(sweep)
    s.flush()
    return dev, sweep


def _gpu_rows(store, timers: list[str | None], duties: list[float] | None = None) -> None:
    from collectors.store.models import Measurement

    with store.session() as s:
        dev, sweep = gemm_sweep(s, len(timers), name="gpu0", kind="gpu", vendor="NVIDIA",
                                model="Timed GPU", fingerprint="timed-gpu")
        for i, timer in enumerate(timers):
            s.add(Measurement(sweep_id=sweep.id, device_id=dev.id, config_key=f"c{i}",
                              op_kind="gemm", m=64 * (i + 1), n=64, k=64, dtype="fp16",
                              layout="nn", backend="cupy", status="ok",
                              latency_ms_median=0.01 * (i + 1),
                              latency_ms_p10=0.009 * (i + 1),
                              **({"power_w": 300.0 + 10 * i,
                                  "power_source": "nvml_energy_counter"}
                                 if duties else {"power_source": "unavailable"}),
                              params={**({"timer": timer} if timer else {}),
                                      **({"power_duty": duties[i]} if duties else {})}))
        s.commit()


def test_gpu_rows_of_the_gpu_alone_are_not_pooled_with_launch_loops(store):
    from predictor.data import GPU_ALONE, load_gemm_frame

    _gpu_rows(store, [None, "cuda_events", GPU_ALONE, GPU_ALONE])
    frame, _ = load_gemm_frame(store, "Timed GPU")
    assert sorted(frame.m) == [192, 256]
    assert frame.attrs["note"].startswith("left out 2 GEMM rows timed as a plain loop")


def test_gpu_rows_all_timed_one_way_are_all_kept(store):
    from predictor.data import load_gemm_frame

    _gpu_rows(store, [None, "cuda_events", None])
    frame, _ = load_gemm_frame(store, "Timed GPU")
    assert len(frame) == 3 and "3 GEMM rows were timed as a plain loop" in frame.attrs["note"]


def test_launch_bound_power_readings_are_named_when_loaded(store):
    from predictor.data import GPU_ALONE, load_gemm_frame, op_power

    _gpu_rows(store, [GPU_ALONE] * 3, duties=[0.3, 0.95, 1.0])
    frame, _ = load_gemm_frame(store, "Timed GPU")
    assert list(frame.power_duty) == [0.3, 0.95, 1.0]
    assert op_power(frame).isna().tolist() == [True, False, False]
    assert frame.attrs["note"].startswith("power of 1 rows not trained on or scored")


def test_registered_model_says_how_many_power_readings_it_learnt_from(store, store_url,
                                                                    tmp_path, monkeypatch):
    from hwnas.cli import main
    from predictor.data import GPU_ALONE
    from predictor.training import train_and_register

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path))
    _gpu_rows(store, [GPU_ALONE] * 8, duties=[0.2, 0.5, 1, 1, 1, 1, 1, 1])
    row, ev = train_and_register(store, "Timed GPU", n_splits=3, n_estimators=5)
    assert row.has_power and ev.has_power
    assert row.meta["power"] == "trained on the 6 of 8 rows whose reading is the op's own"
    assert "power of 2 rows not trained on or scored" in row.meta["data_note"]
    # The two launch-bound rows are the shortest (10 and 20 us): below 30 us power is a guess.
    assert row.meta["power_min_latency_ms"] == pytest.approx(0.027)
    model = registry.load(row)
    assert model.power_extrapolated(np.array([0.02, 0.027, 0.05])).tolist() == [
        True, False, False]
    predict = ["predict", "gemm", "--db", store_url, "--device", "Timed GPU", "--n", "64",
               "--k", "64", "--dtype", "fp16"]
    short = CliRunner().invoke(main, [*predict, "--m", "64"])
    assert short.exit_code == 0 and "power extrapolated" in short.output, short.output
    long = CliRunner().invoke(main, [*predict, "--m", "512"])
    assert long.exit_code == 0 and "power extrapolated" not in long.output, long.output


def test_a_dtype_the_model_never_saw_is_refused():
    frame = synthetic(20)
    model = fit_full(frame, PROFILE, n_estimators=10)
    query = frame.iloc[:2].assign(dtype=["fp16", "bf16"])
    with pytest.raises(OpError, match="dtype: bf16: this model was trained on fp16, fp32 only"):
        model.predict_costs(query)
    model.overhead_ms_ = {}  # a model from before dtypes were recorded: not checked
    assert np.isfinite(model.predict_costs(query).latency_ms).all()


def test_evaluation_leaves_out_a_dtype_its_fold_never_trained_on():
    frame = synthetic(30)
    lone = frame.iloc[[0]].assign(dtype="bf16")  # bf16 measured on one shape only
    ev = evaluate(pd.concat([frame, lone], ignore_index=True), PROFILE, 3, n_estimators=10)
    assert ev.unscored() >= 1  # held out with its shape: nothing to learn bf16 from
    table = ev.tables()["shape-held-out (GroupKFold)"]
    assert table.loc[table.dtype == "all", "n"].item() == len(frame)
    assert set(table.dtype) == {"all", "fp16", "fp32"}


def test_the_plot_draws_a_panel_per_evaluation_even_one_with_nothing_scored(tmp_path):
    from predictor.evaluate import plot_predicted_vs_measured

    scored = pd.DataFrame({"dtype": ["fp32", "fp16", "fp32"], "latency_ms": [1.0, 2.0, 3.0],
                           "pred_latency_ms": [1.1, 2.1, 2.9]})
    path = tmp_path / "p.png"
    plot_predicted_vs_measured({"held out": scored,
                                "largest": scored.assign(pred_latency_ms=np.nan)},
                               "latency_ms", str(path), "t")
    assert path.stat().st_size > 1000


def test_frame_from_exports_reads_files_as_a_store_would():
    from pathlib import Path

    from predictor.data import DataError, frame_from_exports

    data = Path(__file__).resolve().parent.parent / "data"
    squares = str(data / "gpu" / "h200_aligned_square.parquet")
    cpu = str(data / "cpu" / "cpu_aligned_s13.parquet")
    frame, profile = frame_from_exports([squares])
    assert len(frame) == 108 and profile.model == "NVIDIA H200" and profile.kind == "gpu"
    assert set(frame.dtype) == {"fp32", "tf32", "fp16", "bf16"}
    assert profile.peaks["compute_bf16"] == pytest.approx(707.19, rel=1e-4)  # the GPU's own
    with pytest.raises(DataError, match="--device: the files hold 2 device models"):
        frame_from_exports([squares, cpu])
    both, _ = frame_from_exports([squares, cpu], device="H200")
    assert len(both) == 108


def test_evaluation_says_how_often_the_spread_holds_the_held_out_latency(capsys):
    from hwnas.cli.models import _print_evaluation

    ev = evaluate(synthetic(40), PROFILE, 3, n_estimators=20)
    one, two = ev.spread_coverage()
    scored = ev.kfold[ev.kfold.pred_latency_ms.notna()]
    z = (scored.latency_ms - scored.pred_latency_ms).abs() / scored.pred_latency_std_ms
    assert 0 < one <= two <= 100 and one == pytest.approx((z <= 1).mean() * 100)
    assert (scored.pred_latency_std_ms > 0).all()
    _print_evaluation(ev)
    out = capsys.readouterr().out
    assert f"held {one:.0f}% of the held-out latencies within one spread" in out
    assert "power prediction" not in out  # a latency-only model
    with_power = evaluate(synthetic(40, power=True), PROFILE, 3, n_estimators=20)
    p_one, p_two = with_power.spread_coverage("power_w")
    assert 0 < p_one <= p_two <= 100
    _print_evaluation(with_power)
    assert (f"the ± of a power prediction held {p_one:.0f}% of the held-out powers"
            in capsys.readouterr().out)


def test_cli_eval_holds_out_each_physical_gpu_of_a_model(tmp_path):
    """Two physical H200s of the shipped data: `hwnas eval` predicts each from the other."""
    from pathlib import Path

    from hwnas.cli import main

    db = f"sqlite:///{tmp_path / 'h200.sqlite'}"
    run = CliRunner().invoke
    for name in ("h200_queued_run1", "h200_aligned_random"):
        path = Path(__file__).resolve().parent.parent / "data" / "gpu" / f"{name}.parquet"
        r = run(main, ["db", "import", "--db", db, str(path)])
        assert r.exit_code == 0, r.output
    r = run(main, ["eval", "--db", db, "--device", "H200", "--trees", "10", "--folds", "2",
                   "--worst", "0", "--plot", str(tmp_path / "e.png")])
    assert r.exit_code == 0, r.output
    assert f"\n{DEVICES_HELD_OUT}:" in r.output
    per_device = r.output.split("held out one at a time")[1].split("\n\n")[0]
    assert "435dc7f048ab  358 " in per_device and "a8907c602d3d  240 " in per_device
    assert (tmp_path / "e.png").stat().st_size > 1000


def tensor_core_device(n_shapes: int = 80, seed: int = 5) -> pd.DataFrame:
    """fp16 GEMMs on a GPU that runs aligned shapes (n and k multiples of 8: every row of A, B
    and C in whole 16-byte vectors, as on the H200) at 80% of the peak and the others at 20%,
    as tensor-core and fallback kernels do, plus a 5 us launch and 3% noise. Half the shapes
    have n and k aligned, and half of those m too."""
    rng = np.random.default_rng(seed)
    dims = np.exp(rng.uniform(np.log(64), np.log(2048), size=(n_shapes, 3))).astype(int)
    dims[: n_shapes // 2, 1:] = np.maximum(dims[: n_shapes // 2, 1:] // 8 * 8, 8)
    dims[: n_shapes // 4, 0] = np.maximum(dims[: n_shapes // 4, 0] // 8 * 8, 8)
    peak = PROFILE.compute_tflops("fp16") * 1e12
    rows = []
    for m, n, k in dims:
        eff = 0.8 if n % 8 == k % 8 == 0 else 0.2
        t = (2.0 * m * n * k / (peak * eff) * 1e3 + 0.005) * rng.normal(1.0, 0.03)
        rows.append({"m": m, "n": n, "k": k, "batch": 1, "dtype": "fp16", "trans_a": 0,
                     "trans_b": 0, "latency_ms": t, "power_w": np.nan,
                     "power_source": "unavailable", "created_at": pd.Timestamp("2026-11-27")})
    return pd.DataFrame(rows)


def test_aligned_calls_get_a_baseline_of_their_own(store, tmp_path):
    frame = tensor_core_device()
    model = fit_full(frame, PROFILE, n_estimators=30, bound="roofline")
    overhead, scale = model.aligned_baseline_["fp16"]
    # Each line fits its own kernels: scale ~1/0.8 for the aligned calls, ~1/0.2 the others.
    assert 1.0 < scale < 1.6 and 3.5 < model.bound_scale_["fp16"] < 6.0
    assert 0.003 < overhead < 0.008
    # Past the largest training shapes the forest repeats the ratio to the baseline, so each
    # kind of call extrapolates along its own line: 8192^3 aligned and unaligned.
    # An odd m (49 rows of a 7x7 map, say) keeps the aligned kernels: only k and n decide.
    big = gemm_frame([Op.gemm(8192, 8192, 8192, "fp16"), Op.gemm(8191, 8191, 8191, "fp16"),
                      Op.gemm(8191, 8192, 8192, "fp16")])
    aligned_ms, unaligned_ms, odd_m_ms = model.predict(big)
    bound = 2.0 * 8192 ** 3 / (PROFILE.compute_tflops("fp16") * 1e12) * 1e3
    assert aligned_ms == pytest.approx(bound / 0.8, rel=0.15)
    assert unaligned_ms == pytest.approx(bound / 0.2 * (8191 / 8192) ** 3, rel=0.15)
    assert odd_m_ms == pytest.approx(bound / 0.8 * 8191 / 8192, rel=0.15)
    # Kept by the registry; one line per dtype where a side has too few calls, and on a CPU.
    row = registry.register(store, model, PROFILE.model, {"metrics": {}}, tmp_path)
    loaded = registry.load(row)
    assert loaded.aligned_baseline_ == model.aligned_baseline_
    assert np.allclose(loaded.predict(big), model.predict(big), rtol=1e-12)
    few = pd.concat([frame[~is_aligned(frame)], frame[is_aligned(frame)].head(6)])
    assert fit_full(few, PROFILE, n_estimators=5, bound="roofline").aligned_baseline_ == {}
    overhead_fit = fit_full(frame, PROFILE, n_estimators=5, baseline_fit="overhead")
    assert overhead_fit.aligned_baseline_ == {}


def test_cli_train_prints_both_baseline_lines(tmp_path, monkeypatch):
    from hwnas.cli import main

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    db = f"sqlite:///{tmp_path / 'p.sqlite'}"
    frame = tensor_core_device()  # imported as the fp32 SGEMMs of a GPPerf file
    pd.DataFrame({"M": frame.m, "N": frame.n, "K": frame.k,
                  "kernel": "cutlass_simt_sgemm_128x128_8x2_nn_align1", "layout": "nn",
                  "runtime_ms": frame.latency_ms, "power_w": 70.0,
                  "gpu": "NVIDIA GeForce RTX 4070"}).to_csv(tmp_path / "gp.csv", index=False)
    run = CliRunner().invoke
    assert run(main, ["import", "gpperf", "--db", db, str(tmp_path / "gp.csv")]).exit_code == 0
    r = run(main, ["train", "--db", db, "--device", "4070", "--trees", "10", "--folds", "3"])
    assert r.exit_code == 0, r.output
    both = (r"baseline per dtype \(affine\): fp32 [0-9.]+ us \+ [0-9.]+ x \w+ aligned, "
            r"[0-9.]+ us \+ [0-9.]+ x \w+ others")
    assert re.search(both, r.output), r.output
    # An unaligned call is told what padding its rows to whole vectors would gain; an aligned
    # one, or one whose padded shape the model never saw, is not.
    predict = ["predict", "gemm", "--db", db, "--device", "4070", "--dtype", "fp32"]
    r = run(main, predict + ["--m", "1000", "--n", "1001", "--k", "1003"])
    hint = re.search(r"n = 1001 and k = 1003 are row lengths not multiples of 8: padded with "
                     r"zeros to 1000x1008x1008 it is predicted at [0-9.]+ ms, x([0-9.]+) faster",
                     r.output)
    assert r.exit_code == 0 and hint and 2.5 < float(hint.group(1)) < 6, r.output
    r = run(main, predict + ["--m", "1001", "--n", "1000", "--k", "1000"])
    assert r.exit_code == 0 and "padded" not in r.output, r.output
    r = run(main, predict + ["--m", "1000", "--n", "2047", "--k", "1000"])
    assert r.exit_code == 0 and "padded" not in r.output, r.output  # 2048 > every training n
    # A batched call, where every training call was one matrix: flagged, with how to fix it.
    r = run(main, predict + ["--m", "64", "--n", "64", "--k", "64", "--batch", "8"])
    assert r.exit_code == 0 and "trained on: batch 8 > 1;" in r.output and \
        "`hwnas collect gemm --shapes random --batched 0.25` measures batched ones" in r.output


def _versions(tmp_path, monkeypatch, count: int):
    """A store (and its URL) with a device of PROFILE's model and ``count`` registered
    versions of one small model; returns (store, db URL, the version rows)."""
    from collectors.devices import DeviceInfo
    from collectors.store.db import Store
    from collectors.store.repo import upsert_device

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    db = f"sqlite:///{tmp_path / 'versions.sqlite'}"
    store = Store(db)
    with store.session() as s:
        upsert_device(s, DeviceInfo(name="cuda:0", kind="gpu", model=PROFILE.model, host="h"))
        s.commit()
    model = fit_full(synthetic(20), PROFILE, n_estimators=5)
    return store, db, [registry.register(store, model, PROFILE.model, {}) for _ in range(count)]


def test_retiring_a_version_rolls_the_default_back_until_it_is_restored(tmp_path,
                                                                       monkeypatch):
    from hwnas.cli import main

    store, db, _ = _versions(tmp_path, monkeypatch, 3)
    run = CliRunner().invoke
    r = run(main, ["models", "--db", db, "--device", "test gpu", "--version", "3", "--retire"])
    assert r.exit_code == 0 and "retired Test GPU gemm model v3; the default is v2" in r.output
    assert registry.find(store, PROFILE.model).version == 2
    assert registry.find(store, PROFILE.model, 3).version == 3  # still there by number
    r = run(main, ["models", "--db", db])
    assert re.search(r"Test GPU +2 .* yes$", r.output, re.M), r.output
    assert re.search(r"Test GPU +3 .* retired$", r.output, re.M), r.output
    r = run(main, ["models", "--db", db, "--device", "test gpu", "--version", "3"])
    assert "gemm model v3 (retired " in r.output and "answers when asked for by number" in \
        r.output, r.output
    for v in (2, 1):
        registry.set_retired(store, registry.find(store, PROFILE.model, v), True)
    with pytest.raises(registry.RegistryError, match=r"every gemm model of 'Test GPU' is "
                       r"retired \(versions 1, 2, 3\).*--restore"):
        registry.find(store, PROFILE.model)
    r = run(main, ["predict", "gemm", "--db", db, "--device", "test gpu", "--m", "8", "--n", "8",
                   "--k", "8"])
    assert r.exit_code == 1 and "every gemm model of 'Test GPU' is retired" in r.output
    r = run(main, ["models", "--db", db, "--device", "test gpu", "--version", "1", "--restore"])
    assert r.exit_code == 0 and "restored Test GPU gemm model v1; the default is v1" in r.output
    assert registry.find(store, PROFILE.model).version == 1
    for args, says in [(["--retire"], "--retire describes one model"),
                       (["--device", "test gpu", "--retire"], "--retire: name the version"),
                       (["--device", "test gpu", "--version", "1", "--retire", "--restore"],
                        "--retire and --restore: give one of them")]:
        r = run(main, ["models", "--db", db, *args])
        assert r.exit_code == 2 and says in r.output, r.output


def test_deleting_a_retired_version_frees_its_file_and_keeps_its_number(tmp_path, monkeypatch):
    from pathlib import Path

    from hwnas.cli import main

    store, db, (first, _) = _versions(tmp_path, monkeypatch, 2)
    model = registry.load(first)
    run = CliRunner().invoke
    models = ["models", "--db", db, "--device", "test gpu"]
    r = run(main, models + ["--version", "1", "--delete"])  # the default must be retired first
    assert r.exit_code == 1 and "v1 is not retired; retire it first (--retire)" in r.output
    assert Path(first.path).exists()
    r = run(main, models + ["--version", "1", "--retire"])
    r = run(main, models + ["--version", "1", "--delete"])
    assert r.exit_code == 0 and f"deleted Test GPU gemm model v1: removed {first.path}" in \
        r.output, r.output
    assert not Path(first.path).exists() and registry.find(store, PROFILE.model).version == 2
    r = run(main, ["models", "--db", db])
    assert re.search(r"Test GPU +1 .* deleted$", r.output, re.M), r.output
    r = run(main, models + ["--version", "1"])
    assert r.exit_code == 0 and "its file is gone, and it no longer answers" in r.output
    for action, says in [(["--restore"], "--restore: Test GPU gemm v1 was deleted"),
                         (["--delete"], "--delete: Test GPU gemm v1 was already deleted"),
                         (["--export", str(tmp_path / "b.zip")], "v1 was deleted")]:
        r = run(main, models + ["--version", "1", *action])
        assert r.exit_code == 1 and says in r.output, (action, r.output)
    r = run(main, ["predict", "gemm", "--db", db, "--device", "test gpu", "--m", "8", "--n",
                   "8", "--k", "8", "--version", "1"])
    assert r.exit_code == 1 and "--version 1: 'Test GPU' gemm v1 was deleted" in r.output
    # The number is not given to the next model.
    assert registry.register(store, model, PROFILE.model, {}).version == 3
    # Every retired version at once: v2 and v3 retired here, v1 deleted already.
    for v in (2, 3):
        registry.set_retired(store, registry.find(store, PROFILE.model, v), True)
    r = run(main, models + ["--delete-retired"])
    assert r.exit_code == 0, r.output
    assert re.findall(r"deleted Test GPU gemm model v(\d): removed ", r.output) == ["2", "3"]
    assert re.search(r"Test GPU: 2 retired version\(s\) deleted, [0-9.]+ MB freed", r.output)
    r = run(main, models + ["--delete-retired"])
    assert r.exit_code == 0 and "Test GPU: no retired version left to delete" in r.output
    r = run(main, models + ["--delete-retired", "--version", "2"])
    assert r.exit_code == 2 and "--delete-retired: deletes every retired version" in r.output


@pytest.mark.postgres
def test_a_role_that_may_only_read_and_add_rows_registers_models(pg_url, tmp_path):
    """Registering takes no privilege beyond reading and adding rows (a shared store's
    writers need not be able to change or delete what others stored)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from collectors.store.db import Store

    Store(pg_url).close()  # the schema, made by its owner
    role = f"hwnas_adder_{uuid.uuid4().hex[:8]}"
    owner = create_engine(pg_url)
    with owner.begin() as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN"))
        c.execute(text(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}"))
        c.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    owner.dispose()
    adder = Store(make_url(pg_url).set(username=role).render_as_string(hide_password=False))
    rows = [registry.register_json(adder, "Dev", "nb201", f'{{"i": {i}}}', 1, {}, tmp_path)
            for i in range(2)]
    assert [r.version for r in rows] == [1, 2]
    with pytest.raises(Exception, match="permission denied"):
        with adder.session() as s:
            s.execute(text("UPDATE model_version SET version = version"))
    adder.close()


def test_concurrent_registrations_take_turns(store, tmp_path, monkeypatch):
    """Three registrations at once (as two `hwnas train` runs sharing a PostgreSQL store may
    be), each held up while it hashes its file: three versions, each with its own file, and no
    clash over a number. The same bundle imported three times at once lands once."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from predictor import bundle

    hash_file = registry.sha256_file
    monkeypatch.setattr(registry, "sha256_file",
                        lambda path: (time.sleep(0.2), hash_file(path))[1])
    start = threading.Barrier(3)

    def together(fn):
        def go(i):
            start.wait()
            return fn(i)
        with ThreadPoolExecutor(3) as pool:
            return list(pool.map(go, range(3)))

    rows = together(lambda i: registry.register_json(store, "Dev", "nb201", f'{{"i": {i}}}', 1,
                                                     {}, tmp_path / "m"))
    assert sorted(r.version for r in rows) == [1, 2, 3]
    for i, row in enumerate(rows):
        assert registry.read_json(registry.find(store, "Dev", row.version,
                                                target="nb201")) == f'{{"i": {i}}}'
    assert not list((tmp_path / "m").glob("*.tmp"))  # no file left half-registered
    umask = os.umask(0)
    os.umask(umask)
    # As open() makes files (a model folder may be shared), not private as mkstemp's are.
    assert {os.stat(r.path).st_mode & 0o777 for r in rows} == {0o666 & ~umask}

    model = fit_full(synthetic(30, seed=0), PROFILE, n_estimators=5)
    row = registry.register(store, model, PROFILE.model, {"dtypes": ["fp16"]}, tmp_path / "a")
    out = bundle.export_bundle(row, tmp_path / "b.zip")
    # Deleted, so that importing the bundle adds a version.
    registry.delete(store, registry.set_retired(store, row, True))
    imported = together(lambda i: bundle.import_bundle(store, out, tmp_path / "b"))
    assert sorted(got.added for got in imported) == [False, False, True]
    assert {got.row.version for got in imported} == {2}
    assert [r.version for r in registry.list_models(store)
            if r.device_model == PROFILE.model and not registry.deleted(r)] == [2]
    assert [p.name for p in (tmp_path / "b").iterdir()] == [Path(imported[0].row.path).name]
