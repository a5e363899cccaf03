"""Moving measurements between stores: our own flat CSV/Parquet format.

One row per measurement, with the device's facts repeated in ``device_*`` columns so a file is
self-contained. Each measurement keeps its ``uid``: importing a file twice adds nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from collectors.store.db import Store
from collectors.store.models import Device, Measurement, Sweep, utcnow
from collectors.store.repo import Peak, save_peaks
from collectors.tables import read_table_file

FORMAT_VERSION = 1
DEVICE_COLUMNS = ["fingerprint", "name", "kind", "vendor", "model", "host", "driver_version",
                  "cuda_version", "sm_count", "memory_bytes", "max_sm_clock_mhz",
                  "max_mem_clock_mhz", "power_limit_w", "extra"]
SKIP_MEASUREMENT = {"id", "sweep_id", "device_id", "work_item_id"}
MEASUREMENT_COLUMNS = [c.name for c in Measurement.__table__.columns
                       if c.name not in SKIP_MEASUREMENT]
JSON_COLUMNS = {"params", "device_extra", "device_peaks"}


def export_measurements(store: Store, path: str, fmt: str,
                        sweep_ids: tuple[int, ...] | None = None) -> int:
    with store.session() as s:
        q = select(Measurement, Device).join(Device, Measurement.device_id == Device.id)
        if sweep_ids:
            q = q.where(Measurement.sweep_id.in_(sweep_ids))
        records = []
        for m, d in s.execute(q.order_by(Measurement.id)):
            rec = {c: getattr(m, c) for c in MEASUREMENT_COLUMNS}
            rec["source_sweep_id"] = m.sweep_id
            rec.update({f"device_{c}": getattr(d, c) for c in DEVICE_COLUMNS})
            rec["device_peaks"] = {p.metric: [p.value, p.unit, p.std, p.method] for p in d.peaks}
            records.append(rec)
    df = pd.DataFrame.from_records(
        records, columns=MEASUREMENT_COLUMNS + ["source_sweep_id"]
        + [f"device_{c}" for c in DEVICE_COLUMNS] + ["device_peaks"])
    for col in JSON_COLUMNS:
        df[col] = df[col].map(lambda v: json.dumps(v, sort_keys=True))
    df.insert(0, "hwnas_format", FORMAT_VERSION)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return len(df)


def read_export(path: str) -> pd.DataFrame:
    """A file ``hwnas db export`` wrote (Parquet by its suffix, else CSV); ValueError naming the
    file when it is not one."""
    df = read_table_file(path, keep_default_na=True)
    missing = {"hwnas_format", "uid", "device_fingerprint", "op_kind"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not an hwnas export (missing columns: "
                         f"{', '.join(sorted(missing))})")
    return df.astype(object).where(pd.notna(df), None)


def _clean(value):
    """pandas hands back numpy scalars; the database wants plain Python values."""
    return value.item() if hasattr(value, "item") else value


def _naive_utc(value) -> dt.datetime:
    """A file's timestamp as the store keeps them: UTC, without a zone."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def import_measurements(store: Store, path: str) -> tuple[int, int]:
    """Add the file's measurements; returns (added, already present)."""
    df = read_export(path)
    added = skipped = 0
    with store.session() as s:
        existing = set(s.scalars(select(Measurement.uid).where(
            Measurement.uid.in_(df["uid"].tolist()))))
        devices: dict[str, Device] = {}
        new_devices: set[str] = set()
        seen: dict[str, tuple] = defaultdict(lambda: (dt.datetime.max, dt.datetime.min))
        sweeps: dict[tuple[str, object], Sweep] = {}
        for rec in df.to_dict("records"):
            if rec["uid"] in existing:
                skipped += 1
                continue
            fp = rec["device_fingerprint"]
            dev = devices.get(fp) or s.scalar(select(Device).where(Device.fingerprint == fp))
            if dev is None:
                new_devices.add(fp)
                facts = {c: _clean(rec[f"device_{c}"]) for c in DEVICE_COLUMNS}
                facts["extra"] = json.loads(facts["extra"] or "{}")
                dev = Device(**facts)
                s.add(dev)
                s.flush()
                peaks = json.loads(rec.get("device_peaks") or "{}")
                save_peaks(s, dev, [Peak(metric, *values) for metric, values in peaks.items()])
            devices[fp] = dev
            key = (fp, rec.get("source_sweep_id"))
            if key not in sweeps:
                sweeps[key] = Sweep(kind="import", device_id=dev.id, status="done",
                                    config={"source": str(path),
                                            "source_sweep_id": _clean(key[1])},
                                    finished_at=utcnow(), n_planned=0)
                s.add(sweeps[key])
                s.flush()
            row = {c: _clean(rec[c]) for c in MEASUREMENT_COLUMNS if c in rec}
            row["params"] = json.loads(row.get("params") or "{}")
            row["created_at"] = _naive_utc(row["created_at"]) if row.get("created_at") else utcnow()
            for flag in ("tensor_core", "l2_flushed"):
                if row.get(flag) is not None:
                    row[flag] = bool(row[flag])
            s.add(Measurement(sweep_id=sweeps[key].id, device_id=dev.id, **row))
            sweeps[key].n_planned += 1
            added += 1
            seen[fp] = (min(seen[fp][0], row["created_at"]), max(seen[fp][1], row["created_at"]))
        for fp, (first, last) in seen.items():
            # A device is seen when it measures, not when a file is read: which of a model's
            # devices is the newest (whose peaks a model of several takes) must not depend on
            # the order the files were imported in.
            dev = devices[fp]
            if fp in new_devices:
                dev.first_seen, dev.last_seen = first, last
            else:
                dev.first_seen = min(dev.first_seen, first)
                dev.last_seen = max(dev.last_seen, last)
        s.commit()
    return added, skipped
