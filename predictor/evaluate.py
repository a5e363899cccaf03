"""Honest evaluation: whole shapes held out, never random rows of replicates.

Two splits: GroupKFold over (M, N, K, batch), so every dtype and layout of a test shape is unseen;
and an extrapolation split that trains on the smaller shapes and tests on the largest by FLOPs.
Where a device model's rows come from several physical devices, a third holds out each device
in turn with its shapes: a model used on another GPU of the same model, on shapes it never saw.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold

from collectors.ops import layouts
from predictor.features import is_aligned


def shape_groups(frame: pd.DataFrame) -> np.ndarray:
    return (frame.m.astype(str) + "x" + frame.n.astype(str) + "x" + frame.k.astype(str) + "b"
            + frame.batch.astype(str)).to_numpy()


def group_kfold_splits(frame: pd.DataFrame, n_splits: int = 5):
    groups = shape_groups(frame)
    n_splits = min(n_splits, len(set(groups)))
    if n_splits < 2:
        raise ValueError("need at least 2 distinct shapes to hold any out")
    yield from GroupKFold(n_splits=n_splits).split(frame, groups=groups)


def dtypes_seen(test: pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    """Which test rows have a dtype the training rows hold: a model refuses the others, so
    evaluations predict and score only these."""
    return test.dtype.isin(set(train.dtype)).to_numpy()


def extrapolation_split(frame: pd.DataFrame, test_share: float = 0.2):
    """Train on shapes below the FLOPs quantile, test on the largest ``test_share`` of shapes."""
    flops = 2.0 * frame.m * frame.n * frame.k * frame.batch
    groups = shape_groups(frame)
    per_shape = pd.Series(flops.to_numpy(), index=groups).groupby(level=0).first()
    cut = per_shape.quantile(1 - test_share)
    big = set(per_shape[per_shape > cut].index)
    test = np.array([g in big for g in groups])
    yield np.flatnonzero(~test), np.flatnonzero(test)


def device_split(frame: pd.DataFrame):
    """One fold per physical device (column ``device``): its rows are the test set, and the
    training set is the other devices' rows of shapes that device did not measure (the same
    shape timed on a sibling GPU would tell the model the answer). Nothing where the rows come
    from a single device."""
    if "device" not in frame or frame.device.nunique() < 2:
        return
    groups = shape_groups(frame)
    devices = frame.device.to_numpy()
    for device in sorted(set(devices)):
        test = devices == device
        train = ~test & ~np.isin(groups, groups[test])
        if train.any():
            yield np.flatnonzero(train), np.flatnonzero(test)


def metrics(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAPE, median APE, share within +-10% (all in %), R^2, Spearman rho, and the median of
    predicted / measured (the bias: 2 is twice too slow, whatever the spread)."""
    measured, predicted = np.asarray(measured, float), np.asarray(predicted, float)
    ape = np.abs(predicted - measured) / np.abs(measured)
    rho = spearmanr(measured, predicted).statistic if len(measured) > 2 else float("nan")
    return {"n": int(len(measured)), "mape": float(ape.mean() * 100),
            "mdape": float(np.median(ape) * 100), "within_10": float((ape <= 0.10).mean() * 100),
            "r2": float(r2_score(measured, predicted)) if len(measured) > 1 else float("nan"),
            "spearman": float(rho), "median_ratio": float(np.median(predicted / measured))}


def out_of_fold(frame: pd.DataFrame, fit_predict: Callable[[pd.DataFrame, pd.DataFrame], dict],
                splits) -> pd.DataFrame:
    """Run ``fit_predict(train, test) -> {target: predictions}`` over ``splits``; returns the test
    rows with a ``pred_<target>`` column per target and the fold number."""
    parts = []
    for fold, (tr, te) in enumerate(splits):
        test = frame.iloc[te].copy()
        for target, pred in fit_predict(frame.iloc[tr], test).items():
            test[f"pred_{target}"] = pred
        test["fold"] = fold
        parts.append(test)
    return pd.concat(parts)


def _scored(oof: pd.DataFrame, target: str) -> pd.DataFrame:
    return oof[oof[f"pred_{target}"].notna() & oof[target].notna()]


def metrics_table(oof: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """Metrics per target, overall and per dtype, over the rows that have a prediction and a
    measured value (a launch-bound GPU row has no power of its own to score); where the rows
    hold both, then over the aligned shapes and the others (features.is_aligned: on a GPU
    they run on different kernels)."""
    rows = []
    for target in targets:
        scored = _scored(oof, target)
        parts = [("all", scored)] + sorted(scored.groupby("dtype"))
        aligned = is_aligned(scored)
        if aligned.any() and not aligned.all():
            parts += [("all, aligned", scored[aligned]), ("all, unaligned", scored[~aligned])]
        for dtype, part in parts:
            rows.append({"target": target, "dtype": dtype,
                         **metrics(part[target], part[f"pred_{target}"])})
    return pd.DataFrame(rows)


def worst_configs(oof: pd.DataFrame, target: str = "latency_ms", count: int = 5) -> pd.DataFrame:
    """The ``count`` held-out configs predicted worst for ``target`` (by absolute percentage
    error), one row per config: its shape, dtype and layout, measured and predicted values,
    predicted / measured, and the fold that held it out."""
    scored = _scored(oof, target)
    ape = (scored[f"pred_{target}"] - scored[target]).abs() / scored[target].abs()
    worst = scored.assign(ape_pct=ape * 100).nlargest(count, "ape_pct")
    layout = layouts(worst.trans_a, worst.trans_b)
    return pd.DataFrame({
        "shape": [f"{m}x{n}x{k}" + (f" x{b}" if b != 1 else "")
                  for m, n, k, b in zip(worst.m, worst.n, worst.k, worst.batch, strict=True)],
        "dtype": worst.dtype.to_numpy(), "layout": layout,
        "measured": worst[target].to_numpy(), "predicted": worst[f"pred_{target}"].to_numpy(),
        "ratio": (worst[f"pred_{target}"] / worst[target]).to_numpy(),
        "ape_pct": worst.ape_pct.to_numpy(), "fold": worst.fold.to_numpy()})


def held_out_rows(panels: dict[str, pd.DataFrame], targets: list[str]) -> pd.DataFrame:
    """Every held-out prediction of every evaluation (name -> its out-of-fold rows) as one
    table: which split and fold held the row out, the config and the physical device that
    measured it, and per target the measured value, the prediction (empty where the fold's
    training rows lacked the row's dtype), its spread across trees where there is one, and
    the absolute percentage error."""
    parts = []
    for name, oof in panels.items():
        part = oof[["m", "n", "k", "batch", "dtype"]].copy()
        part["layout"] = layouts(oof.trans_a, oof.trans_b)
        if "device" in oof:  # the physical device's fingerprint, where the rows say
            part["device"] = oof.device
        part.insert(0, "split", name)
        part.insert(1, "fold", oof.fold.to_numpy())
        for target in targets:
            part[target] = oof[target]
            part[f"pred_{target}"] = oof[f"pred_{target}"]
            unit = target.rsplit("_", 1)[-1]  # latency_ms -> latency_std_ms, power_w -> ...
            spread = f"pred_{target[:-len(unit)]}std_{unit}"
            if spread in oof:
                part[spread] = oof[spread]
            part[f"ape_{target}_pct"] = ((oof[f"pred_{target}"] - oof[target]).abs()
                                         / oof[target].abs() * 100)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def plot_predicted_vs_measured(panels: dict[str, pd.DataFrame], target: str, path: str,
                               title: str) -> None:
    """Predicted against measured ``target``, one panel per evaluation (name -> its
    out-of-fold predictions), each point a held-out row coloured by dtype, with the ±10% band;
    log axes for latencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    for ax, (name, oof) in zip(axes[0], panels.items(), strict=True):
        scored = oof[oof[f"pred_{target}"].notna()]
        ax.set_title(name, fontsize=9)
        if scored.empty:  # every held-out row's dtype was missing from its training rows
            ax.text(0.5, 0.5, "no held-out row scored", ha="center", transform=ax.transAxes)
            continue
        for dtype, part in sorted(scored.groupby("dtype")):
            ax.scatter(part[target], part[f"pred_{target}"], s=8, alpha=0.6, label=dtype)
        lo = min(scored[target].min(), scored[f"pred_{target}"].min())
        hi = max(scored[target].max(), scored[f"pred_{target}"].max())
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8, label="exact")
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.2, label="±10%")
        if target.endswith("_ms"):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"measured {target}")
        ax.set_ylabel(f"predicted {target}")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
