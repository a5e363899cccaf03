"""Whole-network latency: per-op-type forests (kernel level, as nn-Meter does) composed over a
network's op list, and a network-level model that learns the residual (framework and launch
overhead, memory effects) from whole-network measurements.

Training data come from ``hwnas collect network`` (whole networks, with their decomposed op
lists) and ``hwnas collect network --family layers`` (single layers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sqlalchemy import select

from collectors.ops import (
    OP_KINDS,
    Op,
    network_batch,
    network_dtype,
    op_bytes,
    op_flops,
    op_steps,
    op_variant,
)
from collectors.store.db import Store
from collectors.store.models import Device, Measurement
from predictor.data import DataError
from predictor.fast import FastForest

KIND_ORDER = list(OP_KINDS)  # a kind added to the vocabulary goes last (see load)
# The op kinds of single-layer sweeps (``hwnas collect network --family layers``).
LAYER_KINDS = ("conv2d", "depthwise_conv2d", "linear", "attention", "recurrent")


def op_features(op: Op) -> np.ndarray:
    """log2 of the op's parameters (in vocabulary order), FLOPs, bytes and batch."""
    required, optional = OP_KINDS[op.kind]
    vals = [op.params[n] for n in required] + [op.params.get(n, d) for n, d in optional.items()]
    return np.log2(np.array([max(v, 0) + 1 for v in vals]
                            + [op_flops(op) + 1, op_bytes(op) + 1, op.batch], dtype=float))


class OpKindForests:
    """One forest per op kind, on log latency per step (collectors.ops.op_steps: a recurrent
    layer's latency grows with its steps, which a forest's steps between the swept ones would
    not follow; any other op is one step); kinds without layer data have no model.
    Predictions come from the compiled forms (predictor.fast): a network query asks every
    kind's forest, and scikit-learn's ``predict`` costs ~10 ms per call however few rows."""

    def __init__(self, n_estimators: int = 100, random_state: int = 0):
        self.n_estimators, self.random_state = n_estimators, random_state
        self.models: dict[str, RandomForestRegressor] = {}
        self.fast: dict[str, FastForest] = {}
        # per kind, the smallest and largest of each feature its layers had (op_features)
        self.ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def compile(self) -> OpKindForests:
        self.fast = {kind: FastForest(model) for kind, model in self.models.items()}
        return self

    def fit(self, ops: list[Op], latency_ms: np.ndarray) -> OpKindForests:
        by_kind: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            by_kind.setdefault(op.kind, []).append(i)
        for kind, idx in by_kind.items():
            if len(idx) < 5:
                continue
            x = np.stack([op_features(ops[i]) for i in idx])
            steps = np.array([op_steps(ops[i]) for i in idx], dtype=float)
            self.models[kind] = RandomForestRegressor(
                self.n_estimators, random_state=self.random_state).fit(
                x, np.log(latency_ms[idx] / steps))
            self.ranges[kind] = (x.min(axis=0), x.max(axis=0))
        return self.compile()

    def _by_kind(self, ops: list[Op]):
        """Per kind of ``ops`` that has a model: the ops' positions, features and steps."""
        by_kind: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            if op.kind in self.models:
                by_kind.setdefault(op.kind, []).append(i)
        for kind, idx in by_kind.items():
            yield (kind, idx, np.stack([op_features(ops[i]) for i in idx]),
                   np.array([op_steps(ops[i]) for i in idx], dtype=float))

    def predict_spread(self, ops: list[Op]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per op of a kind with a model: latency (ms), the spread of the trees' log latency,
        and whether a feature of the op lies outside its kind's layers (a forest answers
        there as at the nearest layer it learned); all NaN / False for other ops."""
        ms, log_std = np.full(len(ops), np.nan), np.full(len(ops), np.nan)
        beyond = np.zeros(len(ops), dtype=bool)
        for kind, idx, x, steps in self._by_kind(ops):
            mean, var = self.fast[kind].moments(x, self.fast[kind].values)
            ms[idx], log_std[idx] = np.exp(mean[:, 0]) * steps, np.sqrt(var[:, 0])
            if kind in self.ranges:
                low, high = self.ranges[kind]
                beyond[idx] = ((x < low - 1e-9) | (x > high + 1e-9)).any(axis=1)
        return ms, log_std, beyond

    def predict(self, ops: list[Op]) -> np.ndarray:
        """Latency (ms) per op; NaN for ops whose kind has no model."""
        out = np.full(len(ops), np.nan)
        for kind, idx, x, steps in self._by_kind(ops):
            fast = self.fast.get(kind)
            log_ms = (fast.moments(x, fast.values, spread=())[0][:, 0] if fast is not None
                      else self.models[kind].predict(x))
            out[idx] = np.exp(log_ms) * steps
        return out


# Op kinds a sum of op predictions takes from the device's per-op forests where its layer
# sweeps measured them: the GEMM model's sum of a recurrent layer's steps misses how cuDNN and
# oneDNN run the layer (x0.2-1.4 on a CPU; docs/results.md, "Recurrent networks").
FOREST_PRICED = ("recurrent",)


def forest_priced(model: NetworkCostModel, version: int, ops: list[Op], costs: list) -> list:
    """``costs`` (the GEMM model's of ``ops``: op_costs.predict_ops), with each op of a
    :data:`FOREST_PRICED` kind that ``model`` (network model ``version``) has a per-op forest
    for, of a dtype it learned, priced by that forest instead: latency ± the trees' spread,
    no power (the layer sweeps' power is not modelled)."""
    from predictor.op_costs import OpCost

    kinds = model.kind_model
    priced = [i for i, op in enumerate(ops) if op.kind in FOREST_PRICED and kinds is not None
              and op.kind in kinds.fast and op.dtype in (model.dtypes_ or ())]
    if not priced:
        return costs
    ms, log_std, beyond = kinds.predict_spread([ops[i] for i in priced])
    out = list(costs)
    for j, i in enumerate(priced):
        out[i] = OpCost(float(ms[j]), float(ms[j] * np.expm1(log_std[j])), None, None, None,
                        None, f"{ops[i].kind} layers' forest (network model v{version})", 0,
                        latency_extrapolated=bool(beyond[j]))
    return out


def network_terms(ops: list[Op], kind_model: OpKindForests | None) -> np.ndarray:
    """Additive cost terms of a network: the composed per-op forest prediction (ms), a constant,
    and per op kind: op count (launch/framework overhead: a recurrent layer counts each step,
    collectors.ops.op_steps), GFLOPs and MB moved."""
    composed = 0.0
    if kind_model is not None and kind_model.models:
        composed = float(np.nansum(kind_model.predict(ops)))
    terms = [composed, 1.0]
    for kind in KIND_ORDER:
        sel = [o for o in ops if o.kind == kind]
        terms += [float(sum(op_steps(o) for o in sel)), sum(op_flops(o) for o in sel) / 1e9,
                  sum(op_bytes(o) for o in sel) / 1e6]
    return np.array(terms)


# How many times the ops (and FLOPs) of a kind that every training network held the same of a
# network model answers for (NetworkCostModel.covers).
EXTRAPOLATION = 4


def at_batch(ops: list[Op], batch: int) -> list[Op]:
    """The network ``ops`` at another ``batch``: each op's batch scaled by it over
    :func:`network_batch` (an attention's batch x heads too; an op of a batch it does not
    divide kept as it is)."""
    b = network_batch(ops)
    return [Op.make(op.kind, op.params, op.dtype, op.batch // b * batch)
            if op.batch % b == 0 else op for op in ops]


def kind_totals(ops: list[Op]) -> dict[str, tuple[int, int]]:
    """Per op kind in ``ops``: how many, and their FLOPs."""
    out: dict[str, tuple[int, int]] = {}
    for op in ops:
        count, flops = out.get(op.kind, (0, 0))
        out[op.kind] = (count + 1, flops + op_flops(op))
    return out


class NetworkCostModel:
    """Whole-network latency (ms) = a non-negative combination of the per-op-type forests'
    composed prediction and per-kind overhead, compute and traffic terms, fitted on
    whole-network measurements to minimise relative error. The learned terms are the residual
    the composition misses (framework and launch overhead per op, memory effects); being
    additive and non-negative, they extrapolate to larger networks sensibly.

    (A residual random forest on top was tried and made held-out accuracy worse on the CPU data
    measured here, 48% against 61% within ±10%: too few networks to learn it from.)
    """

    def __init__(self, kind_model: OpKindForests | None = None):
        self.kind_model = kind_model
        # What the training networks held (None on a model from before it was recorded):
        self.dtypes_: set[str] | None = None  # op dtypes
        self.kinds_: set[str] | None = None  # op kinds
        self.min_layers_: int | None = None  # ops of the smallest
        # the op kinds every training network held the same of: their ops and FLOPs
        self.fixed_: dict[str, tuple[int, int]] | None = None
        self.batches_: tuple[int, int] | None = None  # smallest and largest network batch
        # per kind of several implementations, those its training networks held (op_variant)
        self.variants_: dict[str, set[str]] | None = None

    def covers(self, ops: list[Op], network: bool = True) -> bool:
        """Whether the model may answer for ``ops``: their dtypes and kinds were all among the
        training networks' (a kind it never saw has no learned term and would cost nothing), as
        were the implementations of a kind that has several (collectors.ops.op_variant: a GRU
        layer runs otherwise than the LSTM layers it learned), and, as a whole ``network``, it
        has at least half the ops of the smallest of them
        (below that the per-network constant, learned from larger networks, would swamp it)
        and, of a kind every training network held the same ops of (the one classifier of
        NAS-Bench-201 cells), at most :data:`EXTRAPOLATION` times those ops and FLOPs: such a
        kind's cost went into the constant, its own terms were never learned, and a network of
        hundreds of such ops would cost next to nothing (ops asked on their own, not as a
        ``network``, must be of none of those kinds). Kinds the training networks held more
        or less of have learned, additive terms: more of them extrapolates. The same holds for
        the batch (:func:`network_batch`): where every training network ran at one, only that
        one is answered; else up to :data:`EXTRAPOLATION` times the largest."""
        return self.uncovered(ops, network) is None

    def uncovered(self, ops: list[Op], network: bool = True) -> str | None:
        """Why the model does not answer for ``ops`` (:meth:`covers`), in words; None where
        it does."""
        dtypes, kinds = {op.dtype for op in ops}, {op.kind for op in ops}
        if self.dtypes_ is not None and not dtypes <= self.dtypes_:
            missing = sorted(dtypes - self.dtypes_)
            learn = ("" if len(missing) > 1 or missing[0] not in ("fp32", "fp16", "bf16") else
                     f" (a network model learns one dtype: `hwnas collect network --dtype "
                     f"{missing[0]}`, then `hwnas train --target network --dtype {missing[0]}`)")
            return f"its training networks held no {', '.join(missing)} ops{learn}"
        if self.kinds_ is not None and not kinds <= self.kinds_:
            return (f"its training networks held no {', '.join(sorted(kinds - self.kinds_))} "
                    f"ops (only {', '.join(sorted(self.kinds_))})")
        for kind, seen in sorted((self.variants_ or {}).items()):
            asked = {op_variant(op) for op in ops if op.kind == kind} - seen
            if asked:
                return (f"its training networks held no {', '.join(sorted(asked))} {kind} "
                        f"layers (only {', '.join(sorted(seen))}), which run otherwise")
        if network and self.min_layers_ is not None and 2 * len(ops) < self.min_layers_:
            n = len(ops)
            return (f"this network has {n} layer{'s' if n != 1 else ''}, under half the "
                    f"{self.min_layers_} of its smallest training network")
        if self.batches_ is not None and ops:
            batch, (least, most) = network_batch(ops), self.batches_
            if least == most != batch:  # what else keeps it out, if anything, before that
                return self.uncovered(at_batch(ops, least), network) or (
                    f"its batch is {batch}, and every training network ran at batch {least} "
                    "(so how the cost grows with the batch was never learned)")
            if batch > EXTRAPOLATION * most:
                return (f"its batch is {batch}, over {EXTRAPOLATION}x the largest ({most}) its "
                        "training networks ran at")
        for kind, (count, flops) in sorted(kind_totals(ops).items()):
            if kind not in (self.fixed_ or {}):
                continue
            learned = "the same in each, so their cost was never learned"
            if not network:  # ops on their own: their share is all they cost
                return f"its training networks held {kind} ops {learned} apart"
            fixed_count, fixed_flops = self.fixed_[kind]
            if count > EXTRAPOLATION * fixed_count:
                return (f"it has {count} {kind} ops, over {EXTRAPOLATION}x the {fixed_count} "
                        f"of every training network ({learned})")
            if flops > EXTRAPOLATION * fixed_flops:
                return (f"its {kind} ops run {flops / 1e9:.3g} GFLOPs, over {EXTRAPOLATION}x "
                        f"the {fixed_flops / 1e9:.3g} of every training network ({learned})")
        return None

    def _x(self, networks: list[list[Op]]) -> np.ndarray:
        return np.stack([network_terms(ops, self.kind_model) for ops in networks])

    def fit(self, networks: list[list[Op]], latency_ms: np.ndarray) -> NetworkCostModel:
        from scipy.optimize import nnls

        x, y = self._x(networks), np.asarray(latency_ms, float)
        if len(y) < 2 or np.any(y <= 0):
            raise ValueError("latency_ms: need at least 2 positive network latencies")
        self.scale_ = x.max(axis=0) + 1e-12
        self.dtypes_ = {op.dtype for ops in networks for op in ops}
        self.kinds_ = {op.kind for ops in networks for op in ops}
        self.variants_ = {}
        for op in (op for ops in networks for op in ops):
            if op_variant(op) is not None:
                self.variants_.setdefault(op.kind, set()).add(op_variant(op))
        self.min_layers_ = min(len(ops) for ops in networks)
        batches = [network_batch(ops) for ops in networks]
        self.batches_ = (min(batches), max(batches))
        totals = [kind_totals(ops) for ops in networks]
        self.fixed_ = {kind: totals[0][kind] for kind in self.kinds_
                       if all(t.get(kind) == totals[0].get(kind) for t in totals)}
        w = 1.0 / y  # relative error
        self.coef_, _ = nnls((x / self.scale_) * w[:, None], y * w)
        return self

    def predict(self, networks: list[list[Op]]) -> np.ndarray:
        return (self._x(networks) / self.scale_) @ self.coef_

    def per_op(self, ops: list[Op]) -> tuple[np.ndarray, float]:
        """Each op's share of the predicted latency (ms) and the constant term: the model is
        additive, so the shares plus the constant are exactly the network's prediction."""
        w = self.coef_ / self.scale_
        shares = np.zeros(len(ops))
        if self.kind_model is not None and self.kind_model.models:
            shares += w[0] * np.nan_to_num(self.kind_model.predict(ops))
        for i, op in enumerate(ops):
            base = 2 + 3 * KIND_ORDER.index(op.kind)
            shares[i] += (w[base] * op_steps(op) + w[base + 1] * op_flops(op) / 1e9
                          + w[base + 2] * op_bytes(op) / 1e6)
        return shares, self.constant_ms

    @property
    def constant_ms(self) -> float:
        """The per-network constant term (ms)."""
        return float(self.coef_[1] / self.scale_[1])


def batch_scaled(model: NetworkCostModel, gemm, ops: list[Op]
                 ) -> tuple[float, np.ndarray, float, list, bool]:
    """A network ``ops`` at another batch than the one all ``model``'s training networks ran
    at. Two answers: the model as it is, which scales every term it learned with the batch,
    the framework's cost per layer among them, though the batch leaves that as it is (from
    batch 1 up it answered x0.6-0.8 of the measured time on a CPU); and each layer's share at
    the model's batch plus how the GEMM model ``gemm``'s prediction of it changes between the
    two batches, which keeps that cost as it is and takes the kernels' growth from the GEMM
    model and the device's memory-bound figures. At a larger batch the second answers alone
    (x1.06 off on a CPU from batch 1, x1.11 on an H200; docs/results.md); at a smaller one,
    where the second takes too much away (x1.35 on a CPU from batch 8), the geometric mean of
    the two (x1.11). ValueError where the GEMM model refuses the ops (a dtype it was not
    trained on).

    Returns (latency ms, per-op ms summing to it less the model's constant, half the two
    answers' spread in log terms, the GEMM model's costs of ``ops``, whether the answer is
    the geometric mean)."""
    from predictor.op_costs import predict_ops

    at = at_batch(ops, model.batches_[0])
    now, then = predict_ops(gemm, ops), predict_ops(gemm, at)
    shares, constant = model.per_op(at)
    scaled = np.maximum(0.0, shares + np.array([c.latency_ms for c in now])
                        - np.array([t.latency_ms for t in then]))
    as_is = float(model.predict([ops])[0])
    blended = network_batch(ops) < model.batches_[0]
    lat = (float(np.sqrt(max(as_is, 1e-9) * (scaled.sum() + constant))) if blended
           else float(scaled.sum() + constant))
    factor = max(0.0, lat - constant) / scaled.sum() if scaled.sum() > 0 else 0.0
    spread = abs(np.log(as_is / (scaled.sum() + constant))) / 2 if as_is > 0 else 0.0
    return lat, scaled * factor, float(spread), now, blended


def at_another_batch(model: NetworkCostModel, ops: list[Op]) -> bool:
    """Whether ``model``, whose training networks all ran at one batch, would answer for
    ``ops`` but for their batch (:func:`batch_scaled` answers those)."""
    if model.batches_ is None or not ops:
        return False
    least, most = model.batches_
    return (least == most and network_batch(ops) != least
            and model.covers(at_batch(ops, least)))


TARGET = "network"


def _score(y: np.ndarray, p: np.ndarray) -> dict:
    """Within ±10% (%), RMSPE (%), Spearman rho and the median predicted / measured."""
    from scipy.stats import spearmanr

    ape = np.abs(p - y) / y
    return {"within_10": float(np.mean(ape <= 0.1) * 100),
            "rmspe": float(np.sqrt(np.mean(((p - y) / y) ** 2)) * 100),
            "spearman": float(spearmanr(y, p).statistic) if len(y) > 1 else float("nan"),
            "median_ratio": float(np.median(p / y))}


def _kind_forests(layers: pd.DataFrame) -> OpKindForests | None:
    return (OpKindForests().fit(list(layers.op), layers.latency_ms.to_numpy())
            if len(layers) else None)


def held_out_devices(nets: pd.DataFrame, layers: pd.DataFrame) -> dict[str, dict]:
    """Each physical device (fingerprint) held out in turn, where the networks come from
    several: fitted on the other devices' networks of architectures it did not measure (and
    their layers), scored on its own. How well the model carries to another machine of the
    same model: on a GPU at batch 1 a network's time is mostly its host's pace of launches,
    which differs between machines. Empty where the networks come from one device."""
    out: dict[str, dict] = {}
    if nets.device.nunique() < 2:
        return out
    for device in sorted(set(nets.device)):
        test = (nets.device == device).to_numpy()
        train = ~test & ~nets.key.isin(set(nets.key[test])).to_numpy()
        if train.sum() < 4:
            continue
        model = NetworkCostModel(_kind_forests(layers[layers.device != device])).fit(
            list(nets.ops[train]), nets.latency_ms.to_numpy()[train])
        y = nets.latency_ms.to_numpy()[test]
        out[device] = {"networks": int(test.sum()),
                       **_score(y, model.predict(list(nets.ops[test])))}
    return out


def stored_dtypes(store: Store, device_model: str) -> list[str | None]:
    """The dtypes of the device's stored networks, fp32 first; [None] where none are stored
    (:func:`evaluate_and_fit` then says what to measure)."""
    try:
        nets = load_networks(store, device_model)
    except DataError:
        return [None]
    found = set(nets.ops.map(network_dtype))
    return sorted(found, key=lambda d: (d != "fp32", d)) or [None]


def of_dtype(nets: pd.DataFrame, dtype: str | None, device_model: str) -> pd.DataFrame:
    """The networks of ``dtype`` (:func:`network_dtype`); where it is None, all of them,
    which must then be of one dtype: a network model's terms are per FLOP and byte, which a
    bf16 network runs at another rate than an fp32 one, so pooling them would answer each at
    a rate between the two. DataError naming ``dtype`` otherwise."""
    dtypes = nets.ops.map(network_dtype)
    counts = dtypes.value_counts().to_dict()
    stored = ", ".join(f"{d} ({n})" for d, n in sorted(counts.items()))
    if dtype is None:
        if len(counts) > 1:
            raise DataError(f"dtype: networks of {device_model!r} in several dtypes are stored, "
                            f"{stored}; a network model learns one: choose it (--dtype)")
        return nets
    if dtype not in counts:
        raise DataError(f"dtype: no {dtype} networks of {device_model!r} are stored (stored: "
                        f"{stored})")
    return nets[(dtypes == dtype).to_numpy()].reset_index(drop=True)


def evaluate_and_fit(store: Store, device_model: str, folds: int = 5,
                     dtype: str | None = None) -> tuple[NetworkCostModel, dict]:
    """Held-out-architecture metrics (ours and a FLOPs proxy), held-out-device metrics where
    the networks come from several physical devices, and a model fitted on all the device's
    networks of ``dtype`` (:func:`of_dtype`) and its layers of that dtype."""
    from sklearn.model_selection import KFold

    layers = layer_frame(store, device_model)
    try:
        nets = of_dtype(load_networks(store, device_model), dtype, device_model)
    except DataError as exc:
        if not len(layers) or "no whole-network" not in str(exc):
            raise
        raise DataError(f"{exc} (at least {max(folds, 4)} networks, e.g. `--family nb201 --count "
                        f"8`): a network model is fitted on whole networks, and its "
                        f"{len(layers)} single-layer measurements give it per-op forests "
                        "besides") from None
    dtype = network_dtype(nets.ops.iloc[0])
    layers = layers.loc[np.array([op.dtype == dtype for op in layers.op], dtype=bool)
                        ].reset_index(drop=True)
    kinds = _kind_forests(layers)
    y = nets.latency_ms.to_numpy()
    if len(y) < max(folds, 4):
        raise DataError(f"only {len(y)} network measurements of {device_model!r}; need at "
                        f"least {max(folds, 4)}")
    ours, proxy = np.empty(len(y)), np.empty(len(y))
    for tr, te in KFold(folds, shuffle=True, random_state=0).split(nets):
        ours[te] = NetworkCostModel(kinds).fit(list(nets.ops.iloc[tr]), y[tr]).predict(
            list(nets.ops.iloc[te]))
        a, b = np.polyfit(np.log(nets.flops.iloc[tr]), np.log(y[tr]), 1)
        proxy[te] = np.exp(a * np.log(nets.flops.iloc[te]) + b)

    metrics = {"networks": len(y), "layers": len(layers),
               "families": sorted(set(nets.family)), "held_out": _score(y, ours),
               "flops_proxy": _score(y, proxy)}
    by_device = held_out_devices(nets, layers)
    if by_device:
        metrics["held_out_devices"] = by_device
    model = NetworkCostModel(kinds).fit(list(nets.ops), y)
    model.data_span_ = _stored_span(store, device_model)
    return model, metrics


def _stored_span(store: Store, device_model: str) -> tuple[str, str, int]:
    """When the oldest and the newest network and layer rows of the device were stored, and
    the highest row id among them (rows stored later, imported ones too, have higher ids)."""
    from sqlalchemy import func

    with store.session() as s:
        first, last, last_id = s.execute(
            select(func.min(Measurement.created_at), func.max(Measurement.created_at),
                   func.max(Measurement.id))
            .join(Device, Measurement.device_id == Device.id)
            .where(Device.model == device_model, Measurement.status == "ok",
                   Measurement.op_kind.in_(("network", *LAYER_KINDS)))).one()
    return str(first), str(last), int(last_id)


def train_and_register(store: Store, device_model: str, folds: int = 5,
                       dtype: str | None = None):
    """:func:`evaluate_and_fit` on every network and layer measurement of the device (of
    ``dtype``), then :func:`register` the model: returns the registry row and the held-out
    metrics."""
    model, metrics = evaluate_and_fit(store, device_model, folds, dtype)
    return register(store, device_model, model, metrics), metrics


def register(store: Store, device_model: str, model: NetworkCostModel, metrics: dict):
    from predictor import registry

    forests = model.kind_model.models if model.kind_model is not None else {}
    meta = {"metrics": metrics, "coef": model.coef_.tolist(), "scale": model.scale_.tolist(),
            "kinds": sorted(forests), "dtypes": sorted(model.dtypes_ or ()),
            "network_kinds": sorted(model.kinds_ or ()), "min_layers": model.min_layers_,
            "fixed_kinds": model.fixed_, "batches": model.batches_,
            "variants": {kind: sorted(seen) for kind, seen in (model.variants_ or {}).items()},
            "layer_ranges": {kind: [low.tolist(), high.tolist()] for kind, (low, high)
                             in (model.kind_model.ranges if model.kind_model else {}).items()}}
    if getattr(model, "data_span_", None):  # when its training rows were stored
        meta["data_from"], meta["data_to"], meta["data_to_id"] = model.data_span_
    return registry.register_skops(store, device_model, TARGET, dict(forests),
                                   metrics["networks"], meta)


def load(row) -> NetworkCostModel:
    from predictor import registry

    forests = registry.load_skops(row)
    kinds = OpKindForests()
    kinds.models = dict(forests)
    kinds.ranges = {kind: (np.array(low), np.array(high))
                    for kind, (low, high) in (row.meta.get("layer_ranges") or {}).items()}
    model = NetworkCostModel(kinds.compile())
    # A model from before op kinds were added has no terms for them: zero, as it never saw
    # one (and does not answer for networks that hold them: kinds_).
    missing = 2 + 3 * len(KIND_ORDER) - len(row.meta["coef"])
    model.coef_ = np.concatenate([row.meta["coef"], np.zeros(missing)])
    model.scale_ = np.concatenate([row.meta["scale"], np.ones(missing)])
    model.dtypes_ = set(row.meta["dtypes"]) if row.meta.get("dtypes") else None
    model.kinds_ = set(row.meta["network_kinds"]) if row.meta.get("network_kinds") else None
    model.min_layers_ = row.meta.get("min_layers")
    model.batches_ = tuple(row.meta["batches"]) if row.meta.get("batches") else None
    variants = row.meta.get("variants")
    model.variants_ = ({kind: set(seen) for kind, seen in variants.items()}
                       if variants is not None else None)
    fixed = row.meta.get("fixed_kinds")
    model.fixed_ = ({k: (int(c), int(f)) for k, (c, f) in fixed.items()} if fixed is not None
                    else None)
    return model


def _ops(params: dict) -> list[Op]:
    return [Op.from_dict(d) for _, d in params["ops"]]


def load_networks(store: Store, device_model: str) -> pd.DataFrame:
    """Whole-network measurements: family, config key, op list, FLOPs and latency (ms)."""
    with store.session() as s:
        rows = s.execute(select(Measurement.config_key, Measurement.params,
                                Measurement.latency_ms, Measurement.created_at, Measurement.id,
                                Device.fingerprint)
                         .join(Device, Measurement.device_id == Device.id)
                         .where(Device.model == device_model, Measurement.status == "ok",
                                Measurement.op_kind == "network")).all()
    if not rows:
        raise DataError(f"no whole-network measurements of {device_model!r}; run "
                        "hwnas collect network")
    return pd.DataFrame({"key": [r[0] for r in rows],
                         "family": [r[1]["config"]["family"] for r in rows],
                         "ops": [_ops(r[1]) for r in rows],
                         "flops": [float(r[1]["flops"]) for r in rows],
                         "latency_ms": [float(r[2]) for r in rows],
                         "created_at": [r[3] for r in rows], "row_id": [r[4] for r in rows],
                         "device": [r[5] for r in rows]})


def layer_frame(store: Store, device_model: str) -> pd.DataFrame:
    """Single-layer measurements (from layer sweeps): op, latency (ms) and device fingerprint."""
    with store.session() as s:
        rows = s.execute(select(Measurement.params, Measurement.latency_ms, Device.fingerprint)
                         .join(Device, Measurement.device_id == Device.id)
                         .where(Device.model == device_model, Measurement.status == "ok",
                                Measurement.op_kind.in_(LAYER_KINDS))).all()
    return pd.DataFrame({"op": [Op.from_dict(r[0]["ops"][0][1]) for r in rows],
                         "latency_ms": [float(r[1]) for r in rows],
                         "device": [r[2] for r in rows]})


def load_layers(store: Store, device_model: str) -> tuple[list[Op], np.ndarray]:
    """Single-layer measurements (from layer sweeps) as ops and latencies (ms)."""
    layers = layer_frame(store, device_model)
    return list(layers.op), layers.latency_ms.to_numpy()
