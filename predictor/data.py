"""Training data from the store: successful GEMM measurements of one device model."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import select

from collectors.devices import local_model, matching_models
from collectors.store.db import Store
from collectors.store.models import Device, DevicePeak, Measurement
from predictor.features import DeviceProfile, empirical_peaks


class DataError(ValueError):
    """No usable data for the request; the message says what is missing."""


def resolve_device_model(store: Store, spec: str | None) -> str:
    """``cpu`` / ``cuda:N`` (this machine's device), an exact model name, or a unique
    case-insensitive part of one; none (None or blank): the store's only device model, where
    it holds just one."""
    with store.session() as s:
        models = sorted(set(s.scalars(select(Device.model))))
    key = (spec or "").strip()
    if not key:
        if len(models) == 1:
            return models[0]
        raise DataError("--device: " + (f"the store holds {len(models)} device models "
                                        f"({'; '.join(models)}); name one" if models else
                                        "the store holds no device yet: run a sweep or an "
                                        "import first"))
    local = local_model(key)
    if local is not None:
        return local
    hits = matching_models(key, models)
    if len(hits) == 1:
        return hits[0]
    known = "; ".join(models) or "none: run a sweep or an import first"
    if hits:
        raise DataError(f"--device {spec!r} matches several device models: {'; '.join(hits)}")
    raise DataError(f"--device {spec!r}: no measurements of such a device (known: {known})")


# How a GPU GEMM row was timed (params.timer): queued behind a spin kernel, the GPU alone;
# anything else (a plain loop of launches, or rows from before timers were recorded) may
# be the host's launch pace.
GPU_ALONE = "cuda_events_queued"


def load_gemm_frame(store: Store, device_model: str) -> tuple[pd.DataFrame, DeviceProfile]:
    """One row per ok GEMM measurement, and the device profile (peaks) of that model. Column
    ``device`` is the fingerprint of the physical device that measured the row.

    Where some of a GPU's rows time the GPU alone and others a plain loop of launches, only
    the first are kept (the two disagree on every launch-bound shape), and ``frame.attrs
    ["note"]`` says how many rows were left out."""
    with store.session() as s:
        rows = s.execute(
            select(Measurement.m, Measurement.n, Measurement.k, Measurement.batch,
                   Measurement.dtype, Measurement.layout, Measurement.latency_ms,
                   Measurement.power_w, Measurement.power_source, Measurement.created_at,
                   Measurement.params, Measurement.backend, Device.fingerprint,
                   Measurement.id)
            .join(Device, Measurement.device_id == Device.id)
            .where(Device.model == device_model, Measurement.status == "ok",
                   Measurement.op_kind == "gemm")).all()
        devices = s.scalars(select(Device).where(Device.model == device_model)
                            .order_by(Device.last_seen.desc())).all()
        peaks: dict[str, float] = {}
        for d in reversed(devices):  # newest last, so its peaks win
            for p in s.scalars(select(DevicePeak).where(DevicePeak.device_id == d.id)):
                peaks[p.metric] = p.value
    if not rows:
        raise DataError(f"no successful GEMM measurements of {device_model!r} in the store")
    frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=[
        "m", "n", "k", "batch", "dtype", "layout", "latency_ms",
        "power_w", "power_source", "created_at", "params", "backend", "device", "row_id"])
    params = frame.pop("params").map(lambda p: p or {})
    timer = params.map(lambda p: p.get("timer"))
    frame["power_duty"] = params.map(lambda p: p.get("power_duty", np.nan)).astype(float)
    gpu_alone = (timer == GPU_ALONE).to_numpy()
    looped = ((frame.pop("backend") == "cupy").to_numpy() & ~gpu_alone)  # ours, on a GPU
    note = None
    if gpu_alone.any() and looped.any():
        note = (f"left out {int(looped.sum())} GEMM rows timed as a plain loop of launches "
                f"(no queue-ahead); kept the {int(gpu_alone.sum())} that time the GPU alone")
        frame = frame[~looped].reset_index(drop=True)
    elif looped.any():
        note = (f"{int(looped.sum())} GEMM rows were timed as a plain loop of launches (no "
                "queue-ahead): a GEMM shorter than its launch is the host's pace there")
    launch_bound = int((frame.power_duty < POWER_DUTY_MIN).sum())
    if launch_bound and frame.power_w.notna().any():
        power_note = (f"power of {launch_bound} rows not trained on or scored: the GPU ran "
                      f"them under {POWER_DUTY_MIN:.0%} of their energy window (launch-bound), "
                      "so the reading is not the kernel's")
        note = f"{note}; {power_note}" if note else power_note
    frame.attrs["note"] = note
    frame["trans_a"] = (frame.layout.str[0] == "t").astype(int)
    frame["trans_b"] = (frame.layout.str[1] == "t").astype(int)
    dev = devices[0]
    source = "measured"
    if "bandwidth" not in peaks or not any(k.startswith("compute_") for k in peaks):
        peaks, source = empirical_peaks(frame), "empirical (highest achieved in the data)"
    profile = DeviceProfile(device_model, dev.kind, int(dev.sm_count or 1), peaks, source)
    return frame, profile


def frame_from_exports(paths: list[str], device: str | None = None
                       ) -> tuple[pd.DataFrame, DeviceProfile]:
    """:func:`load_gemm_frame` of `hwnas db export` files (CSV or Parquet), read through a
    temporary SQLite store so they are filtered exactly as a store's rows are. ``device``: the
    device model (or a unique part of its name); needed only where the files hold several."""
    import tempfile

    from collectors.store.exchange import import_measurements

    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{folder}/exports.sqlite")
        for path in paths:
            import_measurements(store, path)
        if device is None:
            with store.session() as s:
                models = sorted(set(s.scalars(select(Device.model))))
            if len(models) != 1:
                raise DataError(f"--device: the files hold {len(models)} device models "
                                f"({'; '.join(models)}); name one")
            device = models[0]
        loaded = load_gemm_frame(store, resolve_device_model(store, device))
        store.engine.dispose()
        return loaded


# A power reading is the op's own when the device ran the op for at least this share of the
# energy window (params.power_duty). Below it, the op ran shorter than the host took to issue
# it, so the device idled between calls and the reading mixes in idle power: on the H200, rows
# under 0.5 read a median 137 W, rows over 0.95 420 W. Rows without a duty (CPU, or sweeps from
# before it was recorded) count as the op's.
POWER_DUTY_MIN = 0.9


def power_is_measured(frame: pd.DataFrame) -> bool:
    """Power is trainable only when every row has a reading from a real sensor, and at least
    one of them is the op's own (:func:`op_power`)."""
    return bool(len(frame)) and frame.power_w.notna().all() and not (
        frame.power_source == "unavailable").any() and bool(op_power(frame).notna().any())


def op_power(frame: pd.DataFrame) -> pd.Series:
    """Each row's power (W) where the reading is the op's own, else NaN (a launch-bound row,
    :data:`POWER_DUTY_MIN`)."""
    duty = frame["power_duty"] if "power_duty" in frame else pd.Series(np.nan, frame.index)
    return frame.power_w.where(~(duty < POWER_DUTY_MIN))
