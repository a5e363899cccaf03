"""SQLAlchemy models of the measurement store.

Measurements are facts: every row says how it was taken (backend, threads, compute type, L2
state, power source) and how spread its repetitions were. Predictions never live here.
Units are in the column names: ``_ms``, ``_w``, ``_j``, ``_mhz``, ``_c``, ``_bytes``.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_uid() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class Device(Base):
    """A piece of hardware, recognised again by its ``fingerprint``."""

    __tablename__ = "device"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(64))  # as users see it: cpu, cuda:0
    kind: Mapped[str] = mapped_column(String(8))  # cpu | gpu
    vendor: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128), index=True)
    host: Mapped[str | None] = mapped_column(String(128))
    driver_version: Mapped[str | None] = mapped_column(String(64))
    cuda_version: Mapped[str | None] = mapped_column(String(32))
    sm_count: Mapped[int | None] = mapped_column(Integer)  # GPU SMs, or CPU logical cores
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_sm_clock_mhz: Mapped[float | None] = mapped_column(Float)
    max_mem_clock_mhz: Mapped[float | None] = mapped_column(Float)
    power_limit_w: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    peaks: Mapped[list[DevicePeak]] = relationship(back_populates="device",
                                                   cascade="all, delete-orphan")


class DevicePeak(Base):
    """An achievable peak measured by a micro-benchmark (roofline input for predictors)."""

    __tablename__ = "device_peak"
    __table_args__ = (UniqueConstraint("device_id", "metric", name="uq_peak_device_metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(64))  # e.g. compute_fp32, bandwidth
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))  # TFLOP/s | GB/s
    std: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(Text)
    measured_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    device: Mapped[Device] = relationship(back_populates="peaks")


class Sweep(Base):
    """One run of a collector over a list of configs."""

    __tablename__ = "sweep"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # gemm | import | ...
    device_id: Mapped[int | None] = mapped_column(ForeignKey("device.id"))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    host: Mapped[str | None] = mapped_column(String(128))
    n_planned: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Measurement(Base):
    """One measured config. ``status`` is ok, failed (with ``error``) or skipped (with reason)."""

    __tablename__ = "measurement"
    __table_args__ = (
        UniqueConstraint("sweep_id", "device_id", "config_key",
                         name="uq_measurement_sweep_device_config"),
        Index("ix_measurement_shape", "device_id", "op_kind", "m", "n", "k", "dtype"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id"), index=True)
    config_key: Mapped[str] = mapped_column(String(255))
    # Set when the row answers a distributed work item: unique, so a config handed to two
    # workers (after a lease expired) can still be stored only once.
    work_item_id: Mapped[int | None] = mapped_column(ForeignKey("work_item.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="ok", index=True)
    error: Mapped[str | None] = mapped_column(Text)

    # The op (same names as collectors.ops)
    op_kind: Mapped[str] = mapped_column(String(32), index=True)
    m: Mapped[int | None] = mapped_column(BigInteger)
    n: Mapped[int | None] = mapped_column(BigInteger)
    k: Mapped[int | None] = mapped_column(BigInteger)
    batch: Mapped[int] = mapped_column(Integer, default=1)
    dtype: Mapped[str] = mapped_column(String(16), index=True)
    layout: Mapped[str | None] = mapped_column(String(8))  # nn | nt | tn | tt
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # everything else

    # How it ran
    backend: Mapped[str | None] = mapped_column(String(32))
    compute_type: Mapped[str | None] = mapped_column(String(32))
    tensor_core: Mapped[bool | None] = mapped_column(Boolean)
    threads: Mapped[int | None] = mapped_column(Integer)
    l2_flushed: Mapped[bool | None] = mapped_column(Boolean)

    # Latency of one op, over ``repetitions`` timed repetitions
    latency_ms_median: Mapped[float | None] = mapped_column(Float)
    latency_ms_p10: Mapped[float | None] = mapped_column(Float)
    latency_ms_p90: Mapped[float | None] = mapped_column(Float)
    latency_ms_mean: Mapped[float | None] = mapped_column(Float)
    latency_ms_std: Mapped[float | None] = mapped_column(Float)
    repetitions: Mapped[int | None] = mapped_column(Integer)
    tflops: Mapped[float | None] = mapped_column(Float)

    @hybrid_property
    def latency_ms(self) -> float | None:
        """The latency models learn and report (ms): the fastest decile of the timed
        repetitions (rows without one: the median). On shared or virtual CPUs the median moves
        with the machine's slow phases; the fastest decile is what the device does when not
        disturbed, and repeats several times more closely (docs/results.md). On a GPU the two
        differ little."""
        return self.latency_ms_p10 if self.latency_ms_p10 is not None else self.latency_ms_median

    @latency_ms.inplace.expression
    @classmethod
    def _latency_ms_expression(cls):
        return func.coalesce(cls.latency_ms_p10, cls.latency_ms_median).label("latency_ms")

    # Power over a steady-state window; None with power_source="unavailable" when unreadable
    power_w: Mapped[float | None] = mapped_column(Float)
    energy_j: Mapped[float | None] = mapped_column(Float)  # per op
    power_source: Mapped[str] = mapped_column(String(32), default="unavailable")
    power_window_s: Mapped[float | None] = mapped_column(Float)

    # Device state (before the timed run; "after" values are in params["state_after"])
    sm_clock_mhz: Mapped[float | None] = mapped_column(Float)
    mem_clock_mhz: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    throttle_reasons: Mapped[str | None] = mapped_column(String(255))

    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ModelVersion(Base):
    """A registered predictor: the file lives in the model directory, its SHA-256 lives here
    and is checked on every load; ``meta`` holds features, sample counts, metrics, versions."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("device_model", "target", "version",
                                       name="uq_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_model: Mapped[str] = mapped_column(String(128), index=True)
    target: Mapped[str] = mapped_column(String(32), default="gemm")  # what it predicts
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    has_power: Mapped[bool] = mapped_column(Boolean, default=False)
    n_samples: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WorkItem(Base):
    """One config of a distributed sweep for one device type, claimed by workers under a lease."""

    __tablename__ = "work_item"
    __table_args__ = (
        UniqueConstraint("sweep_id", "device_type", "config_key", name="uq_work_item"),
        Index("ix_work_item_claim", "device_type", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id"), index=True)
    device_type: Mapped[str] = mapped_column(String(128))  # a device model, or cpu / gpu
    config_key: Mapped[str] = mapped_column(String(255))
    op: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|leased|done|failed
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Worker(Base):
    """A collector process working distributed sweeps; ``heartbeat_at`` says it is alive."""

    __tablename__ = "worker"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id"))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|exited
