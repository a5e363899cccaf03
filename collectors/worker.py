"""A collector process working distributed sweeps from a shared store (PostgreSQL).

Loop: claim one config for this device under a lease, measure it, then store the measurement and
mark the item done in one transaction. A heartbeat thread renews the lease while a measurement
runs. Every store operation is retried with exponential backoff, so a database restart pauses
the worker instead of killing it, and a finished measurement is held until it can be stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from collectors import queue
from collectors.devices import ComputeDevice
from collectors.gemm.backends import backend_for
from collectors.ops import Op
from collectors.store.db import Store
from collectors.store.models import Device, Sweep, WorkItem, utcnow
from collectors.store.models import Worker as WorkerRow
from collectors.store.repo import upsert_device
from collectors.sweep import SweepRunner, commit_once, stored_policy
from collectors.timing import TimingPolicy

log = logging.getLogger("hwnas.worker")
T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The store stayed unreachable for longer than the worker's patience."""


@dataclass
class WorkerStats:
    worker_id: str
    done: int = 0
    failed: int = 0
    duplicates_dropped: int = 0
    retries: int = 0


class Worker:
    def __init__(self, store: Store, device: ComputeDevice, lease_s: float = 60.0,
                 patience_s: float = 300.0, threads: int | None = None,
                 worker_id: str | None = None):
        if lease_s <= 0:
            raise ValueError(f"--lease: must be positive, got {lease_s}")
        self.store, self.device, self.lease_s = store, device, lease_s
        self.patience_s, self.threads = patience_s, threads
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats(self.id)
        self._stop = threading.Event()
        self._runners: dict[int, SweepRunner] = {}

    # -- store access with retries ------------------------------------------------------
    def retrying(self, what: str, fn: Callable[[], T]) -> T:
        delay, deadline = 0.2, time.monotonic() + self.patience_s
        while True:
            try:
                return fn()
            except (OperationalError, DBAPIError) as exc:
                if isinstance(exc, IntegrityError):
                    raise
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"store unreachable for {self.patience_s:.0f} s "
                                           f"({what}): {exc.orig or exc}") from None
                self.stats.retries += 1
                log.warning("store unavailable during %s; retrying in %.1f s", what, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _register(self) -> Device:
        def go():
            with self.store.session() as s:
                dev = upsert_device(s, self.device.info)
                s.merge(WorkerRow(id=self.id, host=socket.gethostname(), pid=os.getpid(),
                                  device_id=dev.id, status="running", heartbeat_at=utcnow()))
                s.commit()
                s.expunge(dev)
                return dev
        return self.retrying("register", go)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self.store.session() as s:
                    queue.renew(s, self.id, self.lease_s)
            except Exception as exc:  # next beat retries; a lost lease is handled on commit
                log.warning("heartbeat failed: %s", exc)

    # -- the loop -----------------------------------------------------------------------
    def runner_for(self, sweep_id: int) -> SweepRunner:
        if sweep_id not in self._runners:
            def load():
                with self.store.session() as s:
                    return dict(s.get(Sweep, sweep_id).config)
            cfg = self.retrying("load sweep", load)
            backend = backend_for(self.device.info.kind,
                                  cfg.get("backend") if self.device.info.kind == "cpu" else None,
                                  getattr(self.device, "index", 0), self.threads)
            policy = stored_policy(cfg, TimingPolicy())
            self._runners[sweep_id] = SweepRunner(self.store, self.device, backend, policy,
                                                  progress=False)
        return self._runners[sweep_id]

    def run(self, max_items: int | None = None, exit_when_done: bool = True,
            idle_poll_s: float = 2.0, on_item: Callable[[WorkerStats], None] | None = None
            ) -> WorkerStats:
        device = self._register()
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        try:
            while not self._stop.is_set():
                if max_items is not None and self.stats.done + self.stats.failed >= max_items:
                    break

                def take():
                    with self.store.session() as s:
                        items = queue.claim(s, self.id, device, self.lease_s, 1)
                        for it in items:
                            s.expunge(it)
                        return items, (queue.outstanding(s, device) if not items else 1)
                items, left = self.retrying("claim", take)
                if not items:
                    if exit_when_done and left == 0:
                        break
                    self._stop.wait(idle_poll_s)  # others hold leases that may yet expire
                    continue
                self._work(items[0], device)
                if on_item:
                    on_item(self.stats)
        finally:
            self._stop.set()
            self._finish()
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    def _work(self, item: WorkItem, device: Device) -> None:
        op = Op.from_dict(item.op)
        row = self.runner_for(item.sweep_id).measure(op, item.op.get("origin", ""),
                                                     item.sweep_id, device.id)
        row.work_item_id = item.id
        status = "done" if row.status in ("ok", "skipped") else "failed"

        def mark_done(s) -> None:
            s.execute(update(WorkItem).where(WorkItem.id == item.id)
                      .values(status=status, updated_at=utcnow()))
            s.execute(update(Sweep).where(Sweep.id == item.sweep_id, Sweep.status == "queued")
                      .values(status="running"))

        def store_result() -> bool:
            # False: our lease expired and another worker stored this config first.
            return commit_once(self.store, row, mark_done)
        # A fresh copy each attempt: a failed commit leaves the ORM object unusable.
        stored = self.retrying("store result", lambda: _with_fresh(row, store_result))
        if not stored:
            self.stats.duplicates_dropped += 1
        elif status == "done":
            self.stats.done += 1
        else:
            self.stats.failed += 1

    def _finish(self) -> None:
        def go():
            with self.store.session() as s:
                s.execute(update(WorkerRow).where(WorkerRow.id == self.id).values(
                    status="exited", done=WorkerRow.done + self.stats.done,
                    failed=WorkerRow.failed + self.stats.failed, heartbeat_at=utcnow()))
                # Give back anything still leased (an interrupted measurement).
                s.execute(update(WorkItem).where(WorkItem.worker_id == self.id,
                                                 WorkItem.status == "leased")
                          .values(status="pending", lease_expires_at=None))
                s.commit()
                queue.finish_sweeps(s)
        try:
            self.retrying("finish", go)
        except StoreUnavailable as exc:
            log.error("could not record exit: %s", exc)


def _with_fresh(row, fn):
    """Run ``fn`` after resetting ``row``'s ORM state, so a retried commit re-inserts it."""
    from sqlalchemy.orm import make_transient

    make_transient(row)
    row.id = None
    return fn()

