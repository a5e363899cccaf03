"""Train, evaluate and register GEMM cost models for a device model."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np
import pandas as pd

from collectors.store.db import Store
from predictor.data import load_gemm_frame, op_power, power_is_measured
from predictor.evaluate import (
    device_split,
    dtypes_seen,
    extrapolation_split,
    group_kfold_splits,
    metrics,
    metrics_table,
    out_of_fold,
    shape_groups,
)
from predictor.features import DeviceProfile
from predictor.forest import GemmCostForest

DEVICES_HELD_OUT = "each physical device held out, with its shapes"


@dataclass
class Evaluation:
    device_model: str
    profile: DeviceProfile
    has_power: bool
    n_rows: int
    n_shapes: int
    kfold: pd.DataFrame  # out-of-fold predictions (GroupKFold over shapes)
    extrapolation: pd.DataFrame  # predictions on the largest shapes
    targets: list[str]
    # Per fitted model: the baseline it chose (GemmCostForest.bound_) and how it set it
    # (GemmCostForest.baseline_fit_).
    choices: list[tuple[str, str]]
    # Predictions for each physical device held out with its shapes (None: one device only).
    devices: pd.DataFrame | None = None

    @property
    def bounds(self) -> list[str]:
        return [bound for bound, _ in self.choices]

    @property
    def baseline_fits(self) -> list[str]:
        return [fit for _, fit in self.choices]

    def unscored(self) -> int:
        """Held-out rows not scored: their dtype was missing from their fold's training rows."""
        held_out = [self.kfold, self.extrapolation]
        if self.devices is not None:
            held_out.append(self.devices)
        return int(sum(part.pred_latency_ms.isna().sum() for part in held_out))

    def spread_coverage(self, target: str = "latency_ms") -> tuple[float, float]:
        """Shares (%) of the held-out values of ``target`` (GroupKFold; latency_ms or
        power_w) within one and within two of their predictions' spreads across trees (a
        normal error would give 68.3 and 95.4)."""
        spread = {"latency_ms": "pred_latency_std_ms", "power_w": "pred_power_std_w"}[target]
        scored = self.kfold[self.kfold[f"pred_{target}"].notna() & self.kfold[target].notna()]
        z = (scored[target] - scored[f"pred_{target}"]).abs() / scored[spread]
        return float((z <= 1).mean() * 100), float((z <= 2).mean() * 100)

    def per_device(self) -> pd.DataFrame:
        """Latency metrics (:func:`predictor.evaluate.metrics`) of each physical device held
        out, one row per device fingerprint; empty where the rows came from one device."""
        columns = ["device", "n", "mape", "mdape", "within_10", "r2", "spearman",
                   "median_ratio"]
        if self.devices is None:
            return pd.DataFrame(columns=columns)
        scored = self.devices[self.devices.pred_latency_ms.notna()]
        return pd.DataFrame([{"device": device, **metrics(part.latency_ms, part.pred_latency_ms)}
                             for device, part in scored.groupby("device")], columns=columns)

    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {"shape-held-out (GroupKFold)": metrics_table(self.kfold, self.targets),
                  "largest shapes held out": metrics_table(self.extrapolation, self.targets)}
        if self.devices is not None:
            tables[DEVICES_HELD_OUT] = metrics_table(self.devices, self.targets)
        return tables


def _targets(has_power: bool) -> list[str]:
    return ["latency_ms", "power_w", "energy_j"] if has_power else ["latency_ms"]


def make_model(profile: DeviceProfile, **params) -> GemmCostForest:
    return GemmCostForest(profile=profile.to_dict(), **params)


def _targets_of(frame: pd.DataFrame, with_power: bool):
    """What the forest is fitted to: latency, or latency and the op's power (NaN where the
    reading is not the op's, :func:`predictor.data.op_power`)."""
    if not with_power:
        return frame.latency_ms.to_numpy()
    return np.column_stack([frame.latency_ms.to_numpy(), op_power(frame).to_numpy()])


def _fit_predict(profile: DeviceProfile, has_power: bool, params: dict,
                 choices: list[tuple[str, str]]):
    def fit_predict(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, np.ndarray]:
        """Predictions for the test rows; NaN for a dtype the training rows lack (the model
        refuses those, and they are left out of the scores)."""
        model = make_model(profile, **params).fit(
            train, _targets_of(train, has_power and train.power_w.notna().any()))
        choices.append((model.bound_, model.baseline_fit_))
        seen = dtypes_seen(test, train)
        spreads = ["latency_std_ms", "power_std_w"] if has_power else ["latency_std_ms"]
        out = {t: np.full(len(test), np.nan) for t in [*_targets(has_power), *spreads]}
        if seen.any():
            c = model.predict_costs(test[seen])
            out["latency_ms"][seen] = c.latency_ms
            out["latency_std_ms"][seen] = c.latency_std_ms
            if model.has_power_:
                out["power_w"][seen], out["energy_j"][seen] = c.power_w, c.energy_j
                out["power_std_w"][seen] = c.power_std_w
        return out

    return fit_predict


def evaluate(frame: pd.DataFrame, profile: DeviceProfile, n_splits: int = 5,
             **params) -> Evaluation:
    has_power = power_is_measured(frame)
    frame = frame.reset_index(drop=True)
    if has_power:  # scored only where the reading is the op's own
        frame = frame.assign(power_w=op_power(frame))
        frame = frame.assign(energy_j=frame.power_w * frame.latency_ms / 1e3)
    choices: list[tuple[str, str]] = []
    fp = _fit_predict(profile, has_power, params, choices)
    kfold = out_of_fold(frame, fp, group_kfold_splits(frame, n_splits))
    extra = out_of_fold(frame, fp, extrapolation_split(frame))
    by_device = list(device_split(frame))
    devices = out_of_fold(frame, fp, by_device) if by_device else None
    if devices is not None and devices.pred_latency_ms.isna().all():
        devices = None  # no device shares a dtype with another: nothing to score
    n_shapes = len(set(shape_groups(frame)))
    return Evaluation(profile.model, profile, has_power, len(frame), n_shapes, kfold, extra,
                      _targets(has_power), choices, devices)


def fit_full(frame: pd.DataFrame, profile: DeviceProfile, **params) -> GemmCostForest:
    return make_model(profile, **params).fit(frame, _targets_of(frame, power_is_measured(frame)))


def library_versions() -> dict[str, str]:
    import sklearn
    import skops

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "skops": skops.__version__}


def train_and_register(store: Store, device_model: str, n_splits: int = 5, **params):
    """Evaluate on held-out shapes, fit on everything, register; returns (row, evaluation)."""
    from predictor import registry

    frame, profile = load_gemm_frame(store, device_model)
    ev = evaluate(frame, profile, n_splits, **params)
    model = fit_full(frame, profile, **params)
    tables = {name: t.to_dict("records") for name, t in ev.tables().items()}
    meta = {"profile": profile.to_dict(), "metrics": tables, "n_shapes": ev.n_shapes,
            "dtypes": sorted(frame.dtype.unique()), "libraries": library_versions(),
            "power": (f"trained on the {model.n_power_train_} of {len(frame)} rows whose reading "
                      "is the op's own" if model.has_power_
                      else "unavailable: no measured power in the data"),
            "data_from": str(frame.created_at.min()), "data_to": str(frame.created_at.max()),
            "data_to_id": int(frame.row_id.max()),
            **({"data_note": frame.attrs["note"]} if frame.attrs.get("note") else {})}
    return registry.register(store, model, device_model, meta), ev
