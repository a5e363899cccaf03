"""Small queries and writes on the store that several commands share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from collectors.devices import DeviceInfo
from collectors.store.models import Device, DevicePeak, Measurement, Sweep, utcnow


@dataclass(frozen=True)
class Peak:
    """An achievable peak: ``compute_<dtype>`` in TFLOP/s or ``bandwidth`` in GB/s."""

    metric: str
    value: float
    unit: str
    std: float | None
    method: str


def upsert_device(session: Session, info: DeviceInfo) -> Device:
    """Find the device by fingerprint (refreshing its facts) or add it. Safe when several
    processes register the same device at once (workers starting together)."""
    row = session.scalar(select(Device).where(Device.fingerprint == info.fingerprint))
    facts = info.as_dict()
    if row is None:
        try:
            with session.begin_nested():  # a savepoint: losing the race undoes only this
                row = Device(fingerprint=info.fingerprint, **facts)
                session.add(row)
        except IntegrityError:
            row = session.scalar(select(Device).where(Device.fingerprint == info.fingerprint))
    else:
        for key, value in facts.items():
            setattr(row, key, value)
        row.last_seen = utcnow()
    session.flush()
    return row


def save_peaks(session: Session, device: Device, peaks: Iterable[Peak]) -> None:
    existing = {p.metric: p for p in device.peaks}
    for peak in peaks:
        row = existing.get(peak.metric)
        if row is None:
            device.peaks.append(DevicePeak(metric=peak.metric, value=peak.value, unit=peak.unit,
                                           std=peak.std, method=peak.method))
        else:
            row.value, row.unit, row.std, row.method = peak.value, peak.unit, peak.std, peak.method
            row.measured_at = utcnow()
    session.flush()


def device_peaks(session: Session, device_id: int) -> dict[str, float]:
    rows = session.scalars(select(DevicePeak).where(DevicePeak.device_id == device_id))
    return {r.metric: r.value for r in rows}


def sweep_counts(session: Session, sweep_id: int) -> dict[str, int]:
    rows = session.execute(select(Measurement.status, func.count())
                           .where(Measurement.sweep_id == sweep_id)
                           .group_by(Measurement.status))
    return {status: int(n) for status, n in rows}


def get_sweep(session: Session, sweep_id: int) -> Sweep | None:
    return session.get(Sweep, sweep_id)
