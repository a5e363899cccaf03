"""The work queue of distributed sweeps: create once, claim under a lease, complete exactly once.

Claims use ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL so concurrent workers never wait
on each other's rows, then a conditional UPDATE (still pending, or leased with an expired lease)
so the claim is also safe on SQLite, where the clause is ignored and writers are serialised.
A worker that dies stops renewing its lease; once it expires, its items are claimable again.
"""

from __future__ import annotations

import datetime as dt
import socket

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from collectors.ops import Op
from collectors.store.db import Store
from collectors.store.models import Device, Measurement, Sweep, Worker, WorkItem, utcnow


def create_distributed_sweep(store: Store, plan: list[tuple[Op, str]], device_types: list[str],
                             backend: str | None, policy: dict, options: dict) -> int:
    """One sweep, one work item per config and device type; returns the sweep id."""
    if not device_types:
        raise ValueError("--device-type: give at least one (a device model, cpu or gpu)")
    with store.session() as s:
        sweep = Sweep(kind="gemm", device_id=None, host=socket.gethostname(), status="queued",
                      n_planned=len(plan) * len(device_types),
                      config={"distributed": True, "device_types": device_types,
                              "backend": backend, "policy": policy, "options": options,
                              "configs": [{**op.to_dict(), "origin": o} for op, o in plan]})
        s.add(sweep)
        s.flush()
        now = utcnow()
        s.execute(WorkItem.__table__.insert(), [
            {"sweep_id": sweep.id, "device_type": t, "config_key": op.key(),
             "op": {**op.to_dict(), "origin": origin}, "status": "pending", "attempts": 0,
             "updated_at": now}
            for t in device_types for op, origin in plan])
        s.commit()
        return sweep.id


def device_types_of(device: Device) -> list[str]:
    """The queue names a device answers to: its model, and its kind (cpu / gpu)."""
    return [device.model, device.kind]


def claim(session: Session, worker_id: str, device: Device, lease_s: float,
          limit: int = 1) -> list[WorkItem]:
    """Lease up to ``limit`` claimable items for this device; commits. A worker works one
    claim at a time, so items still leased to it when it claims again are orphans of a lost
    answer and are handed back to it first."""
    now = utcnow()
    claimable = and_(
        WorkItem.device_type.in_(device_types_of(device)),
        or_(WorkItem.status == "pending",
            and_(WorkItem.status == "leased", WorkItem.lease_expires_at < now),
            # Leased to this very worker: a claim whose answer was lost (the connection broke
            # after the commit) left it here, and the heartbeat would keep it leased forever.
            and_(WorkItem.status == "leased", WorkItem.worker_id == worker_id)))
    mine_first = case((WorkItem.worker_id == worker_id, 0), else_=1)
    ids = session.scalars(select(WorkItem.id).where(claimable)
                          .order_by(mine_first, WorkItem.id)
                          .limit(limit).with_for_update(skip_locked=True)).all()
    got = []
    expires = now + dt.timedelta(seconds=lease_s)
    for item_id in ids:
        res = session.execute(
            update(WorkItem).where(WorkItem.id == item_id, claimable)
            .values(status="leased", worker_id=worker_id, lease_expires_at=expires,
                    attempts=WorkItem.attempts + 1, updated_at=now))
        if res.rowcount == 1:
            got.append(item_id)
    session.commit()
    return list(session.scalars(select(WorkItem).where(WorkItem.id.in_(got))
                                .order_by(WorkItem.id))) if got else []


def renew(session: Session, worker_id: str, lease_s: float) -> None:
    """Heartbeat: extend this worker's leases and mark it alive; commits."""
    now = utcnow()
    session.execute(update(WorkItem).where(WorkItem.worker_id == worker_id,
                                           WorkItem.status == "leased")
                    .values(lease_expires_at=now + dt.timedelta(seconds=lease_s)))
    session.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now))
    session.commit()


def outstanding(session: Session, device: Device) -> int:
    """Items this device could still get: pending, or leased (a lease may yet expire)."""
    return int(session.scalar(select(func.count()).select_from(WorkItem).where(
        WorkItem.device_type.in_(device_types_of(device)),
        WorkItem.status.in_(("pending", "leased")))))


def finish_sweeps(session: Session) -> None:
    """Mark queued/running distributed sweeps with nothing outstanding as done; commits."""
    open_ids = session.scalars(select(Sweep.id).where(Sweep.status.in_(("queued", "running")),
                                                      Sweep.device_id.is_(None))).all()
    for sweep_id in open_ids:
        left = session.scalar(select(func.count()).select_from(WorkItem).where(
            WorkItem.sweep_id == sweep_id, WorkItem.status.in_(("pending", "leased"))))
        if left == 0:
            session.execute(update(Sweep).where(Sweep.id == sweep_id)
                            .values(status="done", finished_at=utcnow()))
    session.commit()


def progress(session: Session, sweep_id: int | None = None) -> dict:
    """Counts per device type and per worker, and per-worker throughput."""
    q = select(WorkItem.sweep_id, WorkItem.device_type, WorkItem.status, func.count())
    if sweep_id is not None:
        q = q.where(WorkItem.sweep_id == sweep_id)
    by_type: dict[tuple[int, str], dict[str, int]] = {}
    for sid, dtype, status, n in session.execute(q.group_by(WorkItem.sweep_id,
                                                            WorkItem.device_type,
                                                            WorkItem.status)):
        by_type.setdefault((sid, dtype), {})[status] = int(n)
    mq = select(Measurement.sweep_id, WorkItem.worker_id, func.count(),
                func.min(Measurement.created_at), func.max(Measurement.created_at)
                ).join(WorkItem, Measurement.work_item_id == WorkItem.id)
    if sweep_id is not None:
        mq = mq.where(Measurement.sweep_id == sweep_id)
    per_worker = {w: (int(n), t0, t1) for _, w, n, t0, t1 in
                  session.execute(mq.group_by(Measurement.sweep_id, WorkItem.worker_id))}
    wq = select(WorkItem.worker_id, WorkItem.status, func.count()).where(
        WorkItem.worker_id.is_not(None), WorkItem.status.in_(("leased", "failed")))
    if sweep_id is not None:
        wq = wq.where(WorkItem.sweep_id == sweep_id)
    held: dict[str, dict[str, int]] = {}
    for w, status, n in session.execute(wq.group_by(WorkItem.worker_id, WorkItem.status)):
        held.setdefault(w, {})[status] = int(n)
    workers = {w.id: w for w in session.scalars(select(Worker))}
    return {"by_type": by_type, "per_worker": per_worker, "held": held, "workers": workers}
