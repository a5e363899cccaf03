"""A random-forest cost model for GEMMs: latency, and power where it was measured.

The forest learns ``log(latency / baseline)`` with ``baseline = overhead + scale x bound``:
how far a GEMM runs from a simple model of the device, so relative error is what it minimises
and large shapes extrapolate along the bound. ``bound`` is the roofline time at the device's
measured peaks (on a GPU it may instead pay for compute in whole waves of tiles, a fixed-tile
kernel, when the training shapes say so: ``bound="auto"``, see ``_choose_bound``).
``overhead`` is the fixed cost of any call of a dtype (dispatch, kernel launch, conversions of
an emulated dtype); with it, tiny dispatch-bound shapes, whose bound is nearly zero, sit near a
ratio of one instead of spanning decades. Per dtype, two ways to set them (``baseline_fit``):

- ``"overhead"``: scale 1, and the overhead where the data shows it: when the
  fastest training call of that dtype took over four times its bound, it was mostly fixed cost,
  and half of its time is the overhead (half keeps the baseline below every measurement);
  otherwise (data without tiny shapes) it is zero.
- ``"affine"`` (a GPU's default): overhead and scale both fitted to the dtype's training
  calls, ``latency ~ overhead + scale x bound`` on log latency with a robust loss. A GPU's
  efficiency keeps rising with size long after a CPU's has levelled off (fuller waves, launch
  and tail costs spread over more work), and this baseline carries that trend past the
  largest training shapes, where the forest alone repeats their ratio. On the H100 and
  queued H200 data in data/gpu/, the largest-shapes split went from 39-41% to 28-34% MAPE (3
  seeds); on held-out shapes (GroupKFold) the share within ±10% rose or stayed and MAPE moved
  -0.7 to +1.7 points. On a CPU neither wins on every data set (docs/results.md: on fourteen
  sets the held-out share moved by -2.5 to +6 points, the largest shapes' by -47 to +18), so
  ``"auto"`` there takes the one whose smaller forest predicts held-out shapes of the training
  data better (``_choose_baseline_fit``). Where a dtype has at least
  ``ALIGNED_BASELINE_MIN`` aligned calls (features.is_aligned) and as many others, each kind
  gets a line of its own: on a GPU they run on different kernels (unaligned fp16/bf16 at a
  quarter of the aligned speed on the H100), and one line through both leaves the forest to
  carry a 4x step past the largest shapes. On the H100/H200 data that took the largest-shapes
  split from 25-58% to 14-28% MAPE in five stores, and the H200's square grid, 2x past the
  training shapes, from 17% to 8% (the H100's: 11% either way; docs/results.md).

Power (W), where it was measured, has a forest of its own, fitted on the rows whose power
reading is the op's (a row may have none: NaN). One forest with both outputs would choose its
splits by the summed squared error of both, where power in watts (variance ~1e4 W^2) drowns
the log-ratio of latency (variance ~1): on the H200's GEMMs the latency error was 21.8% MAPE
that way, 14.9% alone. Energy is ``power x latency``, so the three figures stay consistent;
each has an uncertainty, the spread across trees (energy's from the two spreads, the forests
being independent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.utils.validation import check_is_fitted

from collectors.ops import Op, OpError
from predictor.evaluate import dtypes_seen, group_kfold_splits, shape_groups
from predictor.features import (
    ALIGNED_MEANING,
    BOUNDS,
    FEATURE_NAMES,
    DeviceProfile,
    feature_matrix,
    gemm_terms,
    is_aligned,
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
    """Per-tree quantities of the latency forest whose mean and spread make a prediction, from
    its outputs (..., 1): log(latency / bound) and latency / bound. Computed per leaf once when
    compiled, so serving takes no exp."""
    return np.stack([outputs[..., 0], np.exp(outputs[..., 0])], axis=-1)


# Of those quantities a prediction takes the log ratio's mean and the ratio's spread.
LATENCY_SPREAD = (1,)


BASELINE_FITS = ("affine", "overhead")
AFFINE_MIN_SHAPES = 5  # fewer calls of a dtype cannot tell a fixed cost from a slope
# An affine baseline is fitted apart for a dtype's aligned calls (features.is_aligned) and the
# others when each side has this many: on a GPU they run on different kernels (tensor-core
# dtypes 3-4x apart), and one line through both fits neither. From benchmarks/
# aligned_shapes_needed.py on the H200 (old data plus N aligned shapes; aligned MAPE at N = 5 /
# 10): 33.9 / 17.8% with 7, 36.1 / 17.8% with 6, 33.9 / 21.4% with 9, 33.9 / 29.7% with 10,
# and with 3, 59.9% at N = 2 (one line: 35.6%).
ALIGNED_BASELINE_MIN = 7


def fixed_overhead_ms(latency_ms: np.ndarray, roofline: np.ndarray) -> float:
    """The fixed per-call cost (ms) the data shows: half the fastest call's time when that call
    took over four times its roofline bound (it was mostly overhead), else 0."""
    i = int(np.argmin(latency_ms))
    if roofline[i] * 4 < latency_ms[i]:
        return 0.5 * float(latency_ms[i])
    return 0.0


def overhead_baseline(latency_ms: np.ndarray, bound_ms: np.ndarray) -> tuple[float, float]:
    """(overhead ms, scale 1): the baseline at the measured peaks (module docstring)."""
    return fixed_overhead_ms(latency_ms, bound_ms), 1.0


def affine_baseline(latency_ms: np.ndarray, bound_ms: np.ndarray) -> tuple[float, float]:
    """(overhead ms, scale) of ``latency ~ overhead + scale x bound`` for one dtype's calls,
    fitted on log latency with a soft-L1 loss (residuals beyond ~10% count less, so a few odd
    shapes do not set the line). The overhead stays positive and the scale above 1: no call
    beats the device's measured peaks, and calls that are all fixed cost (tiny shapes only)
    cannot pull the line below them. With under AFFINE_MIN_SHAPES calls it is
    :func:`overhead_baseline`."""
    from scipy.optimize import least_squares

    latency_ms, bound_ms = np.asarray(latency_ms, float), np.asarray(bound_ms, float)
    if len(latency_ms) < AFFINE_MIN_SHAPES:
        return overhead_baseline(latency_ms, bound_ms)
    log_latency = np.log(latency_ms)

    def residuals(p: np.ndarray) -> np.ndarray:
        return log_latency - np.log(np.exp(p[0]) + (1.0 + np.exp(p[1])) * bound_ms)

    start = [np.log(0.5 * latency_ms.min()), 0.0]  # half the fastest call; half the peaks
    fit = least_squares(residuals, start, loss="soft_l1", f_scale=0.1)
    return float(np.exp(fit.x[0])), float(1.0 + np.exp(fit.x[1]))


# What "beyond the training shapes" is judged on. The batch is among them because a batched
# GEMM (attention over heads, a grouped or depthwise conv) runs other kernels than one matrix
# does: on an H200, real layers' batched GEMMs, from a model trained on batch 1 alone, were
# 45% within ±10% against 55% for the unbatched (docs/results.md, real network layers).
EXTENT = ("m", "n", "k", "batch", "flops")


def gemm_extent(X) -> dict[str, np.ndarray]:
    """Each row's m, n, k, batch and FLOPs (a GEMM frame or a mapping of column arrays)."""
    m, n, k, batch = (np.asarray(X[c], dtype=float) for c in ("m", "n", "k", "batch"))
    return {"m": m, "n": n, "k": k, "batch": batch, "flops": 2.0 * m * n * k * batch}


# A dtype trained on fewer aligned shapes (features.is_aligned) than this has its aligned
# queries flagged. On the H200 (docs/results.md), 20 aligned shapes held out and the old
# unaligned data plus N aligned shapes per dtype in training: MAPE on the aligned ones 36.8%
# with none, 33.9% with 5, 25.6% with 20, 20.5% with 40 (fp16/bf16 48% at 5, 30% at 20); with
# a baseline line of their own (ALIGNED_BASELINE_MIN) 17.8% with 10, 15.4% with 20, 14.7% with 40.
ALIGNED_MIN_SHAPES = 20

# Fewer whole shapes than this leave a 3-fold held-out comparison (GemmCostForest's
# _held_out_mape) one shape a fold: too few to choose a bound or a baseline fit from, so the
# default of each is kept.
CHOICE_MIN_SHAPES = 6


def training_range(X) -> dict[str, dict[str, float]]:
    """Per dtype, the largest m, n, k, batch and FLOPs among the training shapes, and how many
    distinct aligned shapes (:func:`is_aligned`) they hold."""
    extent, dtypes = gemm_extent(X), np.asarray(X["dtype"]).astype(str)
    shapes = pd.DataFrame({c: np.asarray(X[c]) for c in ("m", "n", "k", "batch")})
    aligned = is_aligned(X)
    aligned = shapes[aligned].assign(dtype=dtypes[aligned]).drop_duplicates()
    return {str(d): {**{c: float(extent[c][dtypes == d].max()) for c in EXTENT},
                     "aligned": float((aligned.dtype == d).sum())}
            for d in np.unique(dtypes)}


def few_aligned(train_range: dict[str, dict[str, float]]) -> dict[str, int]:
    """The dtypes of a :func:`training_range` trained on fewer than
    :data:`ALIGNED_MIN_SHAPES` aligned shapes, with their count (none from a range recorded
    before the count was)."""
    return {d: int(r["aligned"]) for d, r in train_range.items()
            if r.get("aligned", ALIGNED_MIN_SHAPES) < ALIGNED_MIN_SHAPES}


@dataclass
class CostPrediction:
    """Per-row predictions; ``*_std`` is the spread across trees. Power/energy are None when
    the model has no power output (power was not measurable on the device);
    ``power_extrapolated`` marks the rows shorter than any op whose power was read on its own
    (:meth:`GemmCostForest.power_extrapolated`); ``latency_extrapolated`` the rows beyond the
    training shapes of their dtype (:meth:`GemmCostForest.beyond_training`)."""

    latency_ms: np.ndarray
    latency_std_ms: np.ndarray
    power_w: np.ndarray | None
    power_std_w: np.ndarray | None
    energy_j: np.ndarray | None
    energy_std_j: np.ndarray | None
    power_extrapolated: np.ndarray | None = None
    latency_extrapolated: np.ndarray | None = None  # beyond the training shapes (dtype's)


class GemmCostForest(RegressorMixin, BaseEstimator):
    """scikit-learn regressor: ``fit(X, y)`` with X a GEMM frame (:data:`GEMM_COLUMNS`) and y the
    latency in ms, or an (n, 2) array of latency ms and power W."""

    def __init__(self, profile: dict | None = None, n_estimators: int = 200,
                 max_features: float = 0.7, min_samples_leaf: int = 1,
                 random_state: int = 0, n_jobs: int | None = None, bound: str = "auto",
                 baseline_fit: str = "auto"):
        self.profile = profile
        self.bound = bound
        self.baseline_fit = baseline_fit
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
        """``y``: latency (ms), or (rows, 2) latency and power (W). A NaN power says the row's
        power reading is not the op's (it is left out of the power forest); at least one row
        must have one."""
        prof = self._profile()
        y = np.asarray(y, dtype=float)
        y2 = y.reshape(len(y), -1)
        if y2.shape[1] not in (1, 2):
            raise ValueError("y: expected latency_ms, or latency_ms and power_w columns")
        latency = y2[:, 0]
        if not np.all(np.isfinite(latency)) or np.any(latency <= 0):
            raise ValueError("y: latencies must be positive and finite")
        power = y2[:, 1] if y2.shape[1] == 2 else None
        if power is not None:
            if np.isinf(power).any() or not np.isfinite(power).any():
                raise ValueError("y: power must be finite, or NaN where a row has no reading "
                                 "of the op's power, and at least one row needs one")
            if np.any(power[np.isfinite(power)] <= 0):
                raise ValueError("y: power must be positive (W)")
        self.y_ndim_ = y.ndim
        if self.bound not in ("auto", *BOUNDS):
            raise ValueError(f"bound: {self.bound!r}; expected auto or one of {', '.join(BOUNDS)}")
        if self.baseline_fit not in ("auto", *BASELINE_FITS):
            raise ValueError(f"baseline_fit: {self.baseline_fit!r}; expected auto or one of "
                             f"{', '.join(BASELINE_FITS)}")
        self.bound_ = self._choose_bound(X, latency) if self.bound == "auto" else self.bound
        feats, roofline = gemm_terms(X, prof, self.bound_)  # one pass over the rows for both
        self.feature_names_ = list(FEATURE_NAMES)
        self.baseline_fit_ = (self._choose_baseline_fit(X, latency) if self.baseline_fit == "auto"
                              else self.baseline_fit)
        fit = affine_baseline if self.baseline_fit_ == "affine" else overhead_baseline
        dtypes, aligned = np.asarray(X["dtype"]), is_aligned(X)
        self.overhead_ms_, self.bound_scale_, self.aligned_baseline_ = {}, {}, {}
        for d in np.unique(dtypes):
            mine = dtypes == d
            apart = self.baseline_fit_ == "affine" and min(
                (mine & aligned).sum(), (mine & ~aligned).sum()) >= ALIGNED_BASELINE_MIN
            rest = mine & ~aligned if apart else mine
            self.overhead_ms_[str(d)], self.bound_scale_[str(d)] = fit(latency[rest],
                                                                       roofline[rest])
            if apart:
                self.aligned_baseline_[str(d)] = fit(latency[mine & aligned],
                                                     roofline[mine & aligned])
        self.forest_ = self._new_forest().fit(feats, np.log(latency / self._baseline(X, roofline)))
        self.power_forest_ = None
        if power is not None:
            read = np.isfinite(power)
            self.power_forest_ = self._new_forest().fit(feats[read], power[read])
            self.n_power_train_ = int(read.sum())
            # Below this, a predicted power is an extrapolation (see power_extrapolated).
            self.power_min_latency_ms_ = float(latency[read].min())
        self.n_train_ = len(X)
        self.train_range_ = training_range(X)
        return self

    @property
    def has_power_(self) -> bool:
        """Whether the model predicts power: it has a power forest."""
        return getattr(self, "power_forest_", None) is not None

    def _new_forest(self) -> RandomForestRegressor:
        return RandomForestRegressor(
            n_estimators=self.n_estimators, max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf, random_state=self.random_state,
            n_jobs=self.n_jobs)

    def _held_out_mape(self, frame: pd.DataFrame, latency_ms: np.ndarray, **params) -> float:
        """Mean absolute percentage error on held-out shapes of the training data (3 folds of
        whole shapes) of a smaller forest fitted with ``params`` changed; inf where no held-out
        row could be scored (every shape was measured in a dtype of its own)."""
        ape = []
        for tr, te in group_kfold_splits(frame, 3):
            train, test = frame.iloc[tr], frame.iloc[te]
            seen = dtypes_seen(test, train)
            inner = GemmCostForest(**{**self.get_params(), **params,
                                      "n_estimators": min(self.n_estimators, 50)})
            pred = inner.fit(train, latency_ms[tr]).predict(test[seen])
            ape.append(np.abs(pred / latency_ms[te][seen] - 1))
        scored = np.concatenate(ape)
        return float(np.mean(scored)) if len(scored) else np.inf

    def _choose_bound(self, X, latency_ms: np.ndarray) -> str:
        """The baseline that predicts held-out shapes of the training data better.

        Whole waves of fixed tiles (:func:`predictor.features.gemm_terms`) describe a GEMM
        library that keeps its tile size; one that adapts tiles or splits K to the shape is
        closer to the plain roofline. Which one a device's library is shows in its data: the
        one with the lower :meth:`_held_out_mape` is kept (the plain roofline on a tie, on a
        CPU, or with under :data:`CHOICE_MIN_SHAPES` shapes to tell them apart)."""
        frame = pd.DataFrame(X).reset_index(drop=True)
        if self._profile().kind != "gpu" or len(set(shape_groups(frame))) < CHOICE_MIN_SHAPES:
            return "roofline"
        errors = {bound: self._held_out_mape(frame, latency_ms, bound=bound) for bound in BOUNDS}
        self.bound_errors_ = errors
        return min(BOUNDS, key=lambda b: (errors[b], b != "roofline"))

    def _choose_baseline_fit(self, X, latency_ms: np.ndarray) -> str:
        """How the baseline's overhead and scale are set (module docstring), for
        ``baseline_fit="auto"``: affine on a GPU; on a CPU the one with the lower
        :meth:`_held_out_mape` (overhead on a tie or with under :data:`CHOICE_MIN_SHAPES` shapes),
        since neither wins on every CPU data set (docs/results.md)."""
        frame = pd.DataFrame(X).reset_index(drop=True)
        if self._profile().kind == "gpu":
            return "affine"
        if len(set(shape_groups(frame))) < CHOICE_MIN_SHAPES:
            return "overhead"
        errors = {fit: self._held_out_mape(frame, latency_ms, bound=self.bound_, baseline_fit=fit)
                  for fit in BASELINE_FITS}
        self.baseline_fit_errors_ = errors
        return min(BASELINE_FITS, key=lambda f: (errors[f], f != "overhead"))

    def _baseline(self, X, bound_ms: np.ndarray) -> np.ndarray:
        """Each row's baseline (ms): its dtype's overhead + scale x ``bound_ms``, those of the
        dtype's aligned calls for an aligned row where they were fitted apart. Models from
        before the fitted scale have none (a scale of 1); a dtype not trained on gets
        overhead 0 and scale 1 (the model refuses it before predicting)."""
        dtypes = np.asarray(X["dtype"])
        overhead, scale = np.zeros(len(dtypes)), np.ones(len(dtypes))
        for d, v in self.overhead_ms_.items():
            overhead[dtypes == d] = v
        for d, v in (getattr(self, "bound_scale_", None) or {}).items():
            scale[dtypes == d] = v
        apart = getattr(self, "aligned_baseline_", None) or {}
        if apart:
            aligned = is_aligned(X)
            for d, (o, s) in apart.items():
                rows = aligned & (dtypes == d)
                overhead[rows], scale[rows] = o, s
        return overhead + scale * bound_ms

    def compile(self, threads: int = 1) -> GemmCostForest:
        """Serve predictions from the compiled form of the forests (see predictor.fast)."""
        from predictor.fast import FastForest

        check_is_fitted(self, "forest_")
        self.fast_ = FastForest(self.forest_, threads)
        self.fast_table_ = leaf_quantities(self.fast_.values)
        power = getattr(self, "power_forest_", None)
        self.power_fast_ = FastForest(power, threads) if power is not None else None
        return self

    def _check_features(self) -> None:
        check_is_fitted(self, "forest_")
        if self.feature_names_ != FEATURE_NAMES:
            raise ValueError("model: trained on another feature set (an older hwnas); retrain "
                             "it with `hwnas train`")

    def per_tree(self, X: pd.DataFrame, features: np.ndarray | None = None) -> np.ndarray:
        """Raw per-tree outputs, shape (trees, rows, outputs): log(latency / bound), then the
        power (W) where the model has it (tree i of each forest side by side)."""
        self._check_features()
        f = feature_matrix(X, self._profile()) if features is None else features
        return np.concatenate([self._trees(forest, f, fast) for forest, fast in self._forests()],
                              axis=-1)

    def _forests(self) -> list[tuple[RandomForestRegressor, object]]:
        """(forest, its compiled form or None): latency's, then power's where there is one."""
        pairs = [(self.forest_, getattr(self, "fast_", None))]
        if self.has_power_:
            pairs.append((self.power_forest_, getattr(self, "power_fast_", None)))
        return pairs

    @staticmethod
    def _trees(forest: RandomForestRegressor, features: np.ndarray, fast) -> np.ndarray:
        if fast is not None:
            return fast.per_tree(features)
        out = np.stack([t.predict(features) for t in forest.estimators_])
        return out.reshape(out.shape[0], out.shape[1], -1)

    @classmethod
    def _across_trees(cls, forest: RandomForestRegressor, fast, features: np.ndarray,
                      quantities=None, table: np.ndarray | None = None,
                      spread: tuple[int, ...] | None = None):
        """(mean, variance) across trees of ``quantities`` of each tree's outputs (the outputs
        themselves by default): every quantity's mean, the variance of those ``spread``
        (default all). From the compiled walk where there is one (``table``: those quantities
        per node, made once when compiled; default the leaf outputs), else from
        scikit-learn's trees."""
        if fast is not None:
            return fast.moments(features, fast.values if table is None else table, spread)
        per_tree = cls._trees(forest, features, None)
        if quantities is not None:
            per_tree = quantities(per_tree)
        var = per_tree.var(axis=0)
        return per_tree.mean(axis=0), var if spread is None else var[:, list(spread)]

    def check_dtypes(self, X, row_field: Callable[[int], str] | None = None) -> None:
        """A dtype the model never saw has no data behind its answer: refuse it (OpError,
        naming the field: ``dtype``, or ``row_field(i)`` of the first such row). Models from
        before the per-dtype overhead term do not record their dtypes and are not checked."""
        trained = getattr(self, "overhead_ms_", None)
        if not trained:
            return
        dtypes = np.asarray(X["dtype"])
        known = np.zeros(len(dtypes), dtype=bool)
        for d in trained:  # a compare per trained dtype: cheaper than sorting the batch
            known |= dtypes == d
        if not known.all():
            unseen = sorted(set(map(str, np.unique(dtypes[~known]))))
            field = "dtype" if row_field is None else row_field(int(np.argmin(known)))
            raise OpError(field, f"{', '.join(unseen)}: this model was trained on "
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
        bound = self._baseline(X, roofline)
        (forest, fast), *power = self._forests()
        mean, var = self._across_trees(forest, fast, features, leaf_quantities,
                                       getattr(self, "fast_table_", None), LATENCY_SPREAD)
        latency = bound * np.exp(mean[:, 0])
        lat_var = bound ** 2 * var[:, 0]
        beyond = self.beyond_training(X)
        if not power:
            return CostPrediction(latency, np.sqrt(lat_var), None, None, None, None,
                                  latency_extrapolated=beyond)
        p_mean, p_var = self._across_trees(*power[0], features)
        p_mean, p_var = p_mean[:, 0], p_var[:, 0]
        # Variance of a product of independent estimates (the two forests).
        e_var = p_var * lat_var + p_var * latency ** 2 + lat_var * p_mean ** 2
        return CostPrediction(latency, np.sqrt(lat_var), p_mean, np.sqrt(p_var),
                              p_mean * latency / 1e3, np.sqrt(e_var) / 1e3,
                              self.power_extrapolated(latency), beyond)

    def power_extrapolated(self, latency_ms: np.ndarray) -> np.ndarray:
        """Which predictions' power lies outside what the power forest saw: ops shorter than
        any whose power reading was the op's own (on a GPU, kernels shorter than their launch
        have none). False everywhere for a model without power, or one from before this was
        recorded."""
        floor = getattr(self, "power_min_latency_ms_", None)
        if not self.has_power_ or floor is None:
            return np.zeros(len(latency_ms), dtype=bool)
        return np.asarray(latency_ms) < floor

    def _above_training(self, X) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                          np.ndarray]:
        """(each row's extent, per EXTENT name which rows are above the largest their dtype
        was trained on, the rows' dtypes). Nothing is above for a model from before the
        range was recorded, nor in a measure it did not record (the batch, before it was)."""
        known = getattr(self, "train_range_", None) or {}
        extent, dtypes = gemm_extent(X), np.asarray(X["dtype"]).astype(str)
        above = {c: np.zeros(len(dtypes), dtype=bool) for c in EXTENT}
        for d, top in known.items():
            sel = dtypes == d
            for c in EXTENT:
                if c in top:
                    above[c][sel] = extent[c][sel] > top[c]
        return extent, above, dtypes

    def _aligned_unseen(self, X, dtypes: np.ndarray) -> np.ndarray:
        """Which rows are aligned while their dtype was trained on fewer than
        :data:`ALIGNED_MIN_SHAPES` aligned shapes (none for a model from before the count was
        recorded)."""
        few = np.zeros(len(dtypes), dtype=bool)
        for d in few_aligned(getattr(self, "train_range_", None) or {}):
            few |= dtypes == d
        return few & is_aligned(X)

    def beyond_training(self, X) -> np.ndarray:
        """Which rows lie beyond the training shapes of their dtype: m, n, k, batch or FLOPs
        above the largest trained on (the forest then repeats what its largest shapes did), or
        aligned where almost none of them was (:meth:`_aligned_unseen`)."""
        return np.logical_or.reduce(list(self.beyond_training_by(X).values()))

    def beyond_training_by(self, X) -> dict[str, np.ndarray]:
        """:meth:`beyond_training` reason by reason: per :data:`EXTENT` name, the rows above
        the largest their dtype was trained on; under ``aligned``, the aligned rows of a dtype
        trained on almost no aligned shape."""
        extent, above, dtypes = self._above_training(X)
        return {**above, "aligned": self._aligned_unseen(X, dtypes)}

    def outside_training(self, X) -> list[str | None]:
        """Per row, why it lies beyond the training shapes of its dtype (each dimension, the
        batch or the FLOPs above the largest trained on, or its alignment), or None
        (:meth:`beyond_training`)."""
        extent, above, dtypes = self._above_training(X)
        unseen = self._aligned_unseen(X, dtypes)
        out: list[str | None] = []
        for i, d in enumerate(dtypes):  # a row is above only where its dtype has a range
            why = [f"{c} {extent[c][i]:g} > {self.train_range_[d][c]:g}"
                   for c in ("m", "n", "k", "batch") if above[c][i]]
            if above["flops"][i]:
                why.append(f"{extent['flops'][i] / 1e12:.3g} TFLOP > "
                           f"{self.train_range_[d]['flops'] / 1e12:.3g}")
            if unseen[i]:
                count = int(self.train_range_[d]["aligned"])
                why.append(f"{ALIGNED_MEANING}, as "
                           f"{f'only {count}' if count else 'none'} of the {d} training shapes "
                           f"{'was' if count == 1 else 'were'}")
            out.append(", ".join(why) or None)
        return out

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
