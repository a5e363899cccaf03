"""A random-forest cost model for GEMMs: latency, and power where it was measured.

The forest learns ``log(latency / (roofline bound + overhead))``: how far a GEMM runs from the
device's achievable peak, so relative error is what it minimises and large shapes extrapolate
along the roofline. ``overhead`` is the fixed cost of any call of a dtype (dispatch, kernel
launch, conversions of an emulated dtype), found where the data shows it: when the fastest
training call of that dtype took over four times its roofline bound, it was mostly fixed cost,
and half of its time is the overhead (half keeps the baseline below every measurement);
otherwise (data without tiny shapes) it is zero. With it, tiny dispatch-bound shapes, whose
roofline bound is nearly zero, sit near a ratio of one instead of spanning decades. On a GPU
the bound may instead pay for compute in whole waves of tiles (a fixed-tile kernel), when the
training shapes say so (``bound="auto"``, see ``_choose_bound``). Power (W)
is a second output only when every training row has a measured power; energy is always
``power x latency``, per tree, so the three figures stay consistent and each has an uncertainty
(the spread across trees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.utils.validation import check_is_fitted

from collectors.ops import Op, OpError
from predictor.evaluate import group_kfold_splits, shape_groups
from predictor.features import (
    BOUNDS,
    FEATURE_NAMES,
    DeviceProfile,
    feature_matrix,
    gemm_terms,
)

GEMM_COLUMNS = ["m", "n", "k", "batch", "dtype", "trans_a", "trans_b"]


def gemm_frame(ops: list[Op]) -> pd.DataFrame:
    """Validated ops as the frame the model takes."""
    rows = []
    for i, op in enumerate(ops):
        if op.kind != "gemm":
            raise OpError(f"ops[{i}].kind", f"this model predicts gemm, got {op.kind}")
        rows.append({"m": op["m"], "n": op["n"], "k": op["k"], "batch": op.batch,
                     "dtype": op.dtype, "trans_a": op["trans_a"], "trans_b": op["trans_b"]})
    return pd.DataFrame(rows, columns=GEMM_COLUMNS)


def leaf_quantities(outputs: np.ndarray) -> np.ndarray:
    """Per-tree quantities whose mean and spread make a prediction, from the forest's outputs
    (..., 1 or 2): log(latency / bound), latency / bound, and with power: power (W) and
    power x latency / bound. Computed per leaf once when compiled, so serving takes no exp."""
    ratio = np.exp(outputs[..., 0])
    cols = [outputs[..., 0], ratio]
    if outputs.shape[-1] > 1:
        cols += [outputs[..., 1], outputs[..., 1] * ratio]
    return np.stack(cols, axis=-1)


def fixed_overhead_ms(latency_ms: np.ndarray, roofline: np.ndarray) -> float:
    """The fixed per-call cost (ms) the data shows: half the fastest call's time when that call
    took over four times its roofline bound (it was mostly overhead), else 0."""
    i = int(np.argmin(latency_ms))
    if roofline[i] * 4 < latency_ms[i]:
        return 0.5 * float(latency_ms[i])
    return 0.0


@dataclass
class CostPrediction:
    """Per-row predictions; ``*_std`` is the spread across trees. Power/energy are None when
    the model has no power output (power was not measurable on the device)."""

    latency_ms: np.ndarray
    latency_std_ms: np.ndarray
    power_w: np.ndarray | None
    power_std_w: np.ndarray | None
    energy_j: np.ndarray | None
    energy_std_j: np.ndarray | None


class GemmCostForest(RegressorMixin, BaseEstimator):
    """scikit-learn regressor: ``fit(X, y)`` with X a GEMM frame (:data:`GEMM_COLUMNS`) and y the
    latency in ms, or an (n, 2) array of latency ms and power W."""

    def __init__(self, profile: dict | None = None, n_estimators: int = 200,
                 max_features: float = 0.7, min_samples_leaf: int = 1,
                 random_state: int = 0, n_jobs: int | None = None, bound: str = "auto"):
        self.profile = profile
        self.bound = bound
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _profile(self) -> DeviceProfile:
        if self.profile is None:
            raise ValueError("profile: a device profile (model, kind, sm_count, peaks) is needed")
        cached = getattr(self, "_profile_cache", None)
        if cached is None or cached[0] is not self.profile:
            cached = (self.profile, DeviceProfile.from_dict(self.profile))
            self._profile_cache = cached
        return cached[1]

    def fit(self, X: pd.DataFrame, y) -> GemmCostForest:
        prof = self._profile()
        y = np.asarray(y, dtype=float)
        y2 = y.reshape(len(y), -1)
        if y2.shape[1] not in (1, 2):
            raise ValueError("y: expected latency_ms, or latency_ms and power_w columns")
        if not np.all(np.isfinite(y2)) or np.any(y2[:, 0] <= 0):
            raise ValueError("y: latencies must be positive and every target finite")
        self.has_power_ = y2.shape[1] == 2
        self.y_ndim_ = y.ndim
        if self.bound not in ("auto", *BOUNDS):
            raise ValueError(f"bound: {self.bound!r}; expected auto or one of {', '.join(BOUNDS)}")
        self.bound_ = self._choose_bound(X, y2[:, 0]) if self.bound == "auto" else self.bound
        feats, roofline = gemm_terms(X, prof, self.bound_)  # one pass over the rows for both
        self.feature_names_ = list(FEATURE_NAMES)
        dtypes = np.asarray(X["dtype"])
        self.overhead_ms_ = {str(d): fixed_overhead_ms(y2[dtypes == d, 0], roofline[dtypes == d])
                             for d in np.unique(dtypes)}
        target = np.log(y2[:, 0] / (roofline + self._overhead(X)))
        targets = np.column_stack([target, y2[:, 1]]) if self.has_power_ else target
        self.forest_ = RandomForestRegressor(
            n_estimators=self.n_estimators, max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf, random_state=self.random_state,
            n_jobs=self.n_jobs).fit(feats, targets)
        self.n_train_ = len(X)
        return self

    def _choose_bound(self, X, latency_ms: np.ndarray) -> str:
        """The baseline that predicts held-out shapes of the training data better.

        Whole waves of fixed tiles (:func:`predictor.features.gemm_terms`) describe a GEMM
        library that keeps its tile size; one that adapts tiles or splits K to the shape is
        closer to the plain roofline. Which one a device's library is shows in its data: a
        smaller forest is fitted with each baseline on 3 folds of whole shapes, and the one with
        the lower mean absolute percentage error on the held-out shapes is kept (the plain
        roofline on a tie, on a CPU, or with under 6 shapes to tell them apart)."""
        frame = pd.DataFrame(X).reset_index(drop=True)
        if self._profile().kind != "gpu" or len(set(shape_groups(frame))) < 6:
            return "roofline"
        errors = {}
        for bound in BOUNDS:
            ape = []
            for tr, te in group_kfold_splits(frame, 3):
                train, test = frame.iloc[tr], frame.iloc[te]
                seen = test.dtype.isin(set(train.dtype)).to_numpy()
                inner = GemmCostForest(**{**self.get_params(), "bound": bound,
                                          "n_estimators": min(self.n_estimators, 50)})
                pred = inner.fit(train, latency_ms[tr]).predict(test[seen])
                ape.append(np.abs(pred / latency_ms[te][seen] - 1))
            scored = np.concatenate(ape)
            # No held-out row scored: every shape was measured in a dtype of its own.
            errors[bound] = float(np.mean(scored)) if len(scored) else np.inf
        self.bound_errors_ = errors
        return min(BOUNDS, key=lambda b: (errors[b], b != "roofline"))

    def _overhead(self, X) -> np.ndarray:
        """Each row's fixed per-call cost (ms) by its dtype; 0 for a dtype not trained on."""
        dtypes = np.asarray(X["dtype"])
        out = np.zeros(len(dtypes))
        for d, v in self.overhead_ms_.items():
            out[dtypes == d] = v
        return out

    def compile(self, threads: int = 1) -> GemmCostForest:
        """Serve predictions from the compiled form of the forest (see predictor.fast)."""
        from predictor.fast import FastForest

        check_is_fitted(self, "forest_")
        self.fast_ = FastForest(self.forest_, threads)
        self.fast_table_ = leaf_quantities(self.fast_.values)
        return self

    def _check_features(self) -> None:
        check_is_fitted(self, "forest_")
        if self.feature_names_ != FEATURE_NAMES:
            raise ValueError("model: trained on another feature set (an older hwnas); retrain "
                             "it with `hwnas train`")

    def per_tree(self, X: pd.DataFrame, features: np.ndarray | None = None) -> np.ndarray:
        """Raw per-tree outputs, shape (trees, rows, outputs)."""
        self._check_features()
        f = feature_matrix(X, self._profile()) if features is None else features
        if getattr(self, "fast_", None) is not None:
            return self.fast_.per_tree(f)
        out = np.stack([t.predict(f) for t in self.forest_.estimators_])
        return out.reshape(out.shape[0], out.shape[1], -1)

    def check_dtypes(self, X) -> None:
        """A dtype the model never saw has no data behind its answer: refuse it (OpError,
        naming the field). Models from before the per-dtype overhead term do not record
        their dtypes and are not checked."""
        trained = getattr(self, "overhead_ms_", None)
        if not trained:
            return
        dtypes = np.asarray(X["dtype"])
        known = np.zeros(len(dtypes), dtype=bool)
        for d in trained:  # a compare per trained dtype: cheaper than sorting the batch
            known |= dtypes == d
        if not known.all():
            unseen = sorted(set(map(str, np.unique(dtypes[~known]))))
            raise OpError("dtype", f"{', '.join(unseen)}: this model was trained on "
                                   f"{', '.join(sorted(trained))} only; measure "
                                   f"{unseen[0]} on the device and train again")

    def predict_costs(self, X: pd.DataFrame) -> CostPrediction:
        """Latency (ms), power (W), energy (J) and their spreads for every row of X (a GEMM
        frame, or a mapping of column arrays); a dtype the model was not trained on is an
        OpError."""
        self._check_features()
        self.check_dtypes(X)
        # Models from before the choice of baseline have no bound_: theirs was the roofline.
        features, roofline = gemm_terms(X, self._profile(), getattr(self, "bound_", "roofline"))
        bound = roofline + self._overhead(X)
        if getattr(self, "fast_", None) is not None:
            mean, var = self.fast_.moments(features, self.fast_table_)
        else:
            per_tree = leaf_quantities(self.per_tree(X, features))
            mean, var = per_tree.mean(axis=0), per_tree.var(axis=0)
        spread = np.sqrt(var)
        latency = bound * np.exp(mean[:, 0])
        lat_std = bound * spread[:, 1]
        if not self.has_power_:
            return CostPrediction(latency, lat_std, None, None, None, None)
        power = mean[:, 2]
        return CostPrediction(latency, lat_std, power, spread[:, 2], power * latency / 1e3,
                              bound * spread[:, 3] / 1e3)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        c = self.predict_costs(X)
        if self.has_power_ and self.y_ndim_ == 2:
            return np.column_stack([c.latency_ms, c.power_w])
        return c.latency_ms

    def score(self, X, y, sample_weight=None) -> float:
        """R^2 of log latency: the scale on which relative errors are compared."""
        from sklearn.metrics import r2_score

        y = np.asarray(y, dtype=float).reshape(len(X), -1)[:, 0]
        pred = np.asarray(self.predict(X)).reshape(len(X), -1)[:, 0]
        return r2_score(np.log(y), np.log(pred), sample_weight=sample_weight)
