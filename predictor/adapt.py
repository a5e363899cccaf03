"""``hwnas adapt``: learn a new device's NAS-Bench-201 latencies from a few measured samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from collectors.devices import DeviceInfo
from collectors.store.db import Store
from collectors.store.repo import upsert_device
from collectors.tables import read_table_file
from predictor import registry
from predictor.fewshot import FewShotModel, read_table, select_samples
from predictor.registry import sha256_file

TARGET = "nb201"
DEFAULT_REFERENCE = (Path(__file__).resolve().parents[1] / "data" / "external"
                     / "nasbench201_latency_train_devices.csv")


@dataclass
class AdaptResult:
    row: object
    model: FewShotModel
    samples: pd.DataFrame  # arch_str, latency_ms
    spearman_all: float | None  # when the source CSV holds every architecture


def load_reference(path: str | Path, exclude: str | None = None):
    archs, table = read_table(str(path))
    if exclude is not None and exclude in table.columns:
        table = table.drop(columns=[exclude])  # never learn from the device being adapted to
    return archs, table


def _prepare(reference_csv: str | Path, exclude: str | None, samples: int):
    if not Path(reference_csv).exists():
        raise ValueError(f"--reference: {reference_csv} does not exist")
    archs, reference = load_reference(reference_csv, exclude=exclude)
    return archs, reference, select_samples(reference, samples)


def _fit_and_register(store: Store, device_model: str, info: DeviceInfo, archs, reference,
                      idx, ms: np.ndarray, reference_csv, truth: pd.Series | None,
                      measured_at: dict | None = None) -> AdaptResult:
    """``measured_at``: the batch and dtype the samples were measured at, when known (the
    service answers only those from this model)."""
    model = FewShotModel.fit(archs, reference, idx, ms)
    rho = None
    if truth is not None and truth.index.isin(archs).sum() == len(archs):
        pred = model.predict(archs, reference)
        rho = float(spearmanr(pred, truth.loc[archs].to_numpy(float)).statistic)
    chosen = archs.iloc[idx]
    residual = np.log(ms) - np.log(model.predict(chosen, reference.iloc[idx]))
    with store.session() as s:
        upsert_device(s, info)
        s.commit()
    meta = {"method": "nnls over reference devices + ridge on op counts",
            "reference_csv": str(Path(reference_csv).resolve()),
            "reference_sha256": sha256_file(reference_csv),
            "reference_devices": list(reference.columns),
            "sample_log_residual_std": float(residual.std()),
            "metrics": {"spearman_all": rho} if rho is not None else {},
            **({"measured_at": measured_at} if measured_at else {})}
    row = registry.register_json(store, device_model, TARGET, model.to_json(), len(idx), meta)
    return AdaptResult(row, model, pd.DataFrame({"arch_str": chosen.to_numpy(),
                                                 "latency_ms": ms}), rho)


def adapt_from_csv(store: Store, device: str, samples: int, source_csv: str,
                   column: str | None = None, reference_csv: str | Path = DEFAULT_REFERENCE
                   ) -> AdaptResult:
    """Select ``samples`` architectures, read their latency on ``device`` from ``source_csv``
    (column ``column`` or ``device``), fit, and register the model as target ``nb201``."""
    column = column or device
    src = read_table_file(source_csv)
    if "arch_str" not in src.columns or column not in src.columns:
        raise ValueError(f"--from-csv: {source_csv} needs columns 'arch_str' and {column!r}")
    archs, reference, idx = _prepare(reference_csv, column, samples)
    measured = src.set_index("arch_str")[column]
    chosen = archs.iloc[idx]
    missing = [a for a in chosen if a not in measured.index]
    if missing:
        raise ValueError(f"--from-csv: {source_csv} lacks the selected architecture {missing[0]}")
    info = DeviceInfo(name=device, kind="other", model=device, host="external",
                      extra={"source": "hwnas adapt"})
    return _fit_and_register(store, device, info, archs, reference, idx,
                             measured.loc[chosen].to_numpy(float), reference_csv, measured)


def adapt_by_measuring(store: Store, samples: int, reference_csv: str | Path = DEFAULT_REFERENCE,
                       min_time_s: float = 0.3, threads: int | None = None,
                       progress: bool = True, device_name: str = "cpu") -> AdaptResult:
    """Select ``samples`` architectures, build and measure them on this machine's ``cpu`` or a
    local ``cuda:N`` GPU (NAS-Bench-201's CIFAR network, batch 1; stored as a network sweep),
    fit and register for that device's model."""
    from collectors.devices import get_device
    from collectors.networks.sweep import NetworkSweep
    from collectors.rounds import default_rounds
    from collectors.timing import TimingPolicy

    archs, reference, idx = _prepare(reference_csv, None, samples)
    device = get_device(device_name)
    policy = TimingPolicy(min_time_s=min_time_s,
                          rounds=default_rounds(None, device.info.kind))
    sweeper = NetworkSweep(store, device, policy, threads, progress)
    plan = [{"family": "nb201", "arch": archs.iloc[i], "resolution": 32, "batch": 1}
            for i in idx]
    sweep_id = sweeper.create(plan, "network")
    summary = sweeper.run(sweep_id)
    if summary.interrupted or summary.failed:
        raise ValueError(f"measuring the selected architectures did not finish (sweep "
                         f"{sweep_id}: {summary.failed} failed)")
    from sqlalchemy import select

    from collectors.networks.sweep import config_key
    from collectors.store.models import Measurement

    with store.session() as s:
        got = dict(s.execute(select(Measurement.config_key, Measurement.latency_ms)
                             .where(Measurement.sweep_id == sweep_id)).all())
    ms = np.array([got[config_key(c)] for c in plan], dtype=float)
    return _fit_and_register(store, device.info.model, device.info, archs, reference, idx, ms,
                             reference_csv, None, {"batch": 1, "dtype": "fp32"})
