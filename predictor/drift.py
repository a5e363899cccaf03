"""A registered GEMM or whole-network model scored on what was measured after it was trained:
is the model still right for the device?

Measurements stored since the newest of its training rows fall in two groups, scored apart:
shapes (architectures) the model never saw (its accuracy on new work, as a held-out
evaluation measures it) and those it was trained on, measured again (where the device itself
may have changed: a driver, clocks, a cooling fault; their median predicted / measured moves
away from 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from collectors.store.db import Store
from collectors.store.models import ModelVersion
from predictor.data import DataError, load_gemm_frame, op_power
from predictor.evaluate import metrics_table

NEW_SHAPES = "shapes new to the model"
MEASURED_AGAIN = "shapes it was trained on, measured again"
# Why an answer lies beyond the training shapes (GemmCostForest.beyond_training_by), as
# the scored rows' beyond_<reason> columns hold it.
BEYOND_REASONS = {"m": "m above the largest trained on", "n": "n above the largest trained on",
                  "k": "k above the largest trained on",
                  "batch": "batch above the largest trained on",
                  "flops": "FLOPs above the largest trained on",
                  "aligned": "aligned, where few training shapes were"}
_KEY = ["m", "n", "k", "batch", "dtype", "trans_a", "trans_b"]


@dataclass
class SinceTraining:
    row: ModelVersion
    cutoff: pd.Timestamp  # the newest training row's timestamp
    panels: dict[str, pd.DataFrame]  # group -> its rows with pred_<target> columns
    targets: list[str]
    not_scored: dict[str, int]  # dtype the model was not trained on -> rows
    older_not_trained: int  # rows from before the cutoff the model was not fitted on

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: metrics_table(rows, self.targets)
                for name, rows in self.panels.items() if len(rows)}


def _split_at_training(row: ModelVersion, frame: pd.DataFrame, what: str, how: str
                       ) -> tuple[pd.Timestamp, pd.DataFrame, pd.DataFrame]:
    """(the newest training row's time, the rows stored until then, those stored after);
    DataError where none came after, or where the model recorded no training time range.
    Stored after means a higher row id than any training row where the model recorded it
    (exact: rows imported later with older timestamps count as later), else a later
    timestamp (models registered before the id was recorded)."""
    if not row.meta.get("data_to"):
        raise DataError(f"{row.device_model} {row.target} v{row.version} recorded no training "
                        "time range (an older hwnas): retrain it to score it on later "
                        "measurements")
    cutoff = pd.Timestamp(row.meta["data_to"])
    last_id = row.meta.get("data_to_id")
    later = (frame.row_id > last_id if last_id is not None
             else pd.to_datetime(frame.created_at) > cutoff).to_numpy(bool)
    after = frame[later].copy()
    if after.empty:
        raise DataError(f"no {what} measurements of {row.device_model} were stored after "
                        f"{row.target} v{row.version}'s training data (up to "
                        f"{cutoff:%Y-%m-%d %H:%M:%S} UTC); measure some first ({how})")
    return cutoff, frame[~later], after


def score_since_training(store: Store, row: ModelVersion) -> SinceTraining:
    """Score the registered GEMM model ``row`` on the device's measurements stored after its
    training data (``meta['data_to']``); DataError where there are none, or where the model
    recorded no training time range."""
    from predictor import registry

    frame, _ = load_gemm_frame(store, row.device_model)
    cutoff, trained, after = _split_at_training(row, frame, "GEMM", "hwnas collect gemm")
    model = registry.load(row)
    targets = ["latency_ms"]
    if model.has_power_ and after.power_w.notna().any():
        after["power_w"] = op_power(after)  # scored only where the reading is the op's own
        after["energy_j"] = after.power_w * after.latency_ms / 1e3
        targets += ["power_w", "energy_j"]
    # The dtypes predict_costs answers for (check_dtypes); an older model records none.
    known = set(getattr(model, "overhead_ms_", None) or after.dtype)
    not_scored = after[~after.dtype.isin(known)].dtype.value_counts().to_dict()
    after = after[after.dtype.isin(known)].reset_index(drop=True)
    _predict_into(model, after, targets)
    seen = after[_KEY].apply(tuple, axis=1).isin(set(trained[_KEY].apply(tuple, axis=1)))
    after["fold"] = 0  # one model, one split: what the held-out tables call a fold
    panels = {NEW_SHAPES: after[~seen.to_numpy()], MEASURED_AGAIN: after[seen.to_numpy()]}
    return SinceTraining(row, cutoff, panels, targets, not_scored,
                         max(0, len(trained) - row.n_samples))


def _predict_into(model, rows: pd.DataFrame, targets: list[str]) -> None:
    """Add ``pred_<target>`` columns (and the latency and power spreads) to ``rows``."""
    if rows.empty:
        for target in targets:
            rows[f"pred_{target}"] = np.array([], dtype=float)
        rows["beyond_training"] = np.array([], dtype=bool)
        for reason in BEYOND_REASONS:
            rows[f"beyond_{reason}"] = np.array([], dtype=bool)
        return
    c = model.predict_costs(rows)
    # Whether each answer said it lay beyond the training shapes (latency_extrapolated), and
    # for which reasons.
    reasons = model.beyond_training_by(rows)
    rows["beyond_training"] = np.logical_or.reduce(list(reasons.values()))
    for reason in BEYOND_REASONS:
        rows[f"beyond_{reason}"] = reasons[reason]
    rows["pred_latency_ms"], rows["pred_latency_std_ms"] = c.latency_ms, c.latency_std_ms
    if "power_w" in targets:
        rows["pred_power_w"], rows["pred_power_std_w"] = c.power_w, c.power_std_w
        rows["pred_energy_j"] = c.energy_j


NEW_ARCHS = "architectures new to the model"
ARCHS_AGAIN = "architectures it was trained on, measured again"
AT_OTHER_BATCH = "at another batch (with the GEMM model)"
NETWORK_GROUPS = (NEW_ARCHS, ARCHS_AGAIN, AT_OTHER_BATCH)


@dataclass
class NetworksSinceTraining:
    row: ModelVersion
    cutoff: pd.Timestamp
    scored: pd.DataFrame  # group, family, key, latency_ms, pred_latency_ms
    not_scored: int  # networks the model does not answer for (NetworkCostModel.covers)

    def table(self) -> pd.DataFrame:
        """Latency metrics (:func:`predictor.evaluate.metrics`) per group, then per group and
        family where a group holds several families."""
        from predictor.evaluate import metrics

        rows = []
        for group in NETWORK_GROUPS:
            part = self.scored[self.scored.group == group]
            if part.empty:
                continue
            rows.append({"group": group, "family": "all",
                         **metrics(part.latency_ms, part.pred_latency_ms)})
            if part.family.nunique() > 1:
                rows += [{"group": group, "family": family,
                          **metrics(f.latency_ms, f.pred_latency_ms)}
                         for family, f in part.groupby("family")]
        return pd.DataFrame(rows)


def score_networks_since_training(store: Store, row: ModelVersion) -> NetworksSinceTraining:
    """Score the registered network model ``row`` on the whole networks measured after its
    training data, as the service answers them: architectures new to it and those it was
    trained on measured again, from the model; those at another batch than the one its
    training networks all ran at, from the model and the device's default GEMM model together
    (:func:`predictor.network.batch_scaled`)."""
    from predictor import network

    nets = network.load_networks(store, row.device_model)
    cutoff, trained, after = _split_at_training(row, nets, "whole-network",
                                                "hwnas collect network")
    model = network.load(row)
    fits = after.ops.map(model.covers).to_numpy(bool)
    pred = np.full(len(after), np.nan)
    if fits.any():
        pred[fits] = model.predict(list(after.ops[fits]))
    shifted = np.array([not f and network.at_another_batch(model, ops)
                        for f, ops in zip(fits, after.ops, strict=True)], dtype=bool)
    gemm = _default_gemm_model(store, row.device_model) if shifted.any() else None
    for i in np.flatnonzero(shifted):
        pred[i] = _batch_scaled(model, gemm, after.ops.iloc[i]) if gemm is not None else np.nan
    scored_now = ~np.isnan(pred)
    again = after.key.isin(set(trained.key)).to_numpy()
    group = np.where(shifted, AT_OTHER_BATCH, np.where(again, ARCHS_AGAIN, NEW_ARCHS))
    scored = pd.DataFrame({
        "group": group[scored_now], "family": after.family.to_numpy()[scored_now],
        "key": after.key.to_numpy()[scored_now],
        "latency_ms": after.latency_ms.to_numpy()[scored_now],
        "pred_latency_ms": pred[scored_now]})
    return NetworksSinceTraining(row, cutoff, scored, int((~scored_now).sum()))


def _default_gemm_model(store: Store, device_model: str):
    """The device's default GEMM model, or None where it has none (or it cannot be loaded)."""
    from predictor import registry

    row = registry.default_row(store, device_model)
    if row is None:
        return None
    try:
        return registry.load(row)
    except registry.RegistryError:
        return None


def _batch_scaled(model, gemm, ops) -> float:
    """The service's answer (ms) for ``ops`` at another batch than ``model``'s; NaN where the
    GEMM model refuses their ops (a dtype it was not trained on)."""
    from predictor.network import batch_scaled

    try:
        return batch_scaled(model, gemm, ops)[0]
    except ValueError:
        return float("nan")
