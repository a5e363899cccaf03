"""Importing public measurements made by others into the store, as measurements of a device.

GPPerf (RTX 4070 CUTLASS SIMT SGEMM): rows of one (M, N, K, kernel) are replicates, so they are
stored as one measurement each with the replicates' median/p10/p90/mean/std. Its power column
was read by nvidia-smi after the kernel had finished: it is not a measurement of the kernel and
is not stored as one (power_source = unavailable, the reason in params).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sqlalchemy import select

from collectors.devices import DeviceInfo
from collectors.store.db import Store
from collectors.store.models import Measurement, Sweep, utcnow
from collectors.store.repo import upsert_device
from collectors.tables import read_table_file

GPPERF_POWER_NOTE = ("GPPerf power_w was sampled by nvidia-smi at 1 Hz after the kernel "
                     "finished (mostly empty or idle); not a measurement of the kernel")
GPPERF_COLUMNS = {"M", "N", "K", "kernel", "layout", "runtime_ms", "gpu"}


def read_gpperf(path: str) -> pd.DataFrame:
    df = read_table_file(path)
    missing = GPPERF_COLUMNS - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a GPPerf SGEMM file (missing {', '.join(sorted(missing))})")
    df = df[df.runtime_ms > 0].copy()
    # The kernel decides the operand layout (its _nn_/_nt_/... part); the file's "layout" column
    # is a profiler option that does not change which kernel ran.
    df["kernel_layout"] = df.kernel.str.extract(r"_(nn|nt|tn|tt)_", expand=False).fillna("nn")
    return df


def import_gpperf(store: Store, path: str) -> tuple[int, int]:
    """Store each distinct GEMM of the file once; returns (measurements added, replicates)."""
    df = read_gpperf(path)
    gpu = str(df.gpu.iloc[0])
    info = DeviceInfo(name="gpperf", kind="gpu", model=gpu, vendor="NVIDIA",
                      host="external:gpperf", sm_count=46 if "4070" in gpu else None,
                      extra={"source": "GPPerf public sweep (github pavlyhalim/GPPerf)"})
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    with store.session() as s:
        dev = upsert_device(s, info)
        existing = s.scalar(select(Sweep).where(Sweep.kind == "import",
                                                Sweep.device_id == dev.id))
        if existing is not None and existing.config.get("sha256") == digest:
            return 0, len(df)
        groups = df.groupby(["M", "N", "K", "kernel_layout", "kernel"], sort=True)
        sweep = Sweep(kind="import", device_id=dev.id, status="done", host="external:gpperf",
                      n_planned=groups.ngroups, finished_at=utcnow(),
                      config={"source": str(path), "format": "gpperf", "sha256": digest})
        s.add(sweep)
        s.flush()
        for (m, n, k, layout, kernel), g in groups:
            t = g.runtime_ms.to_numpy(float)
            s.add(Measurement(
                sweep_id=sweep.id, device_id=dev.id, config_key=f"gpperf:{kernel}:{m}x{n}x{k}",
                status="ok", op_kind="gemm", m=int(m), n=int(n), k=int(k), batch=1,
                dtype="fp32", layout=str(layout), backend="cutlass", compute_type="fp32 simt",
                tensor_core=False, latency_ms_median=float(np.median(t)),
                latency_ms_p10=float(np.percentile(t, 10)),
                latency_ms_p90=float(np.percentile(t, 90)), latency_ms_mean=float(t.mean()),
                latency_ms_std=float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                repetitions=len(t), tflops=2.0 * m * n * k / (np.median(t) * 1e-3) / 1e12,
                power_source="unavailable",
                params={"kernel": kernel, "replicate_rows": len(t),
                        "power_note": GPPERF_POWER_NOTE}))
        s.commit()
        return groups.ngroups, len(df)
