"""Distributed sweeps on a real PostgreSQL server: workers killed with SIGKILL, the server
restarted under running workers; at the end every config has exactly one measurement."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import func, select

from collectors.devices import CpuDevice
from collectors.queue import claim, create_distributed_sweep
from collectors.store.db import Store
from collectors.store.models import Measurement, Sweep, WorkItem
from collectors.store.repo import upsert_device
from collectors.timing import TimingPolicy
from hwnas.gemm_job import build_plan
from tests import pg
from tests.conftest import start_cluster_or_skip

QUICK = dataclasses.asdict(TimingPolicy(warmup_s=0.002, min_reps=3, min_time_s=0.02,
                                        power_window_s=0.0))


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this module's own: a test here restarts it."""
    c = start_cluster_or_skip()
    yield c
    c.stop()


def new_db(cluster) -> str:
    return pg.create_database(cluster.url, f"dist_{uuid.uuid4().hex[:10]}")


def make_sweep(url: str, n: int = 200) -> int:
    plan, options = build_plan("random", 8, 96, 1, n, 7, "nn", ["fp32"])
    assert len({op.key() for op, _ in plan}) == n
    return create_distributed_sweep(Store(url), plan, ["cpu"], "numpy", QUICK, options)


def start_worker(url: str, lease: float = 2.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hwnas.cli", "worker", "--db", url,
                             "--lease", str(lease), "--patience", "90", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def count(url: str, model) -> int:
    store = Store(url, migrate=False)
    try:
        with store.session() as s:
            return int(s.scalar(select(func.count()).select_from(model)))
    finally:
        store.close()


def stored(url: str) -> int:
    return count(url, Measurement)


def registered(url: str) -> int:
    from collectors.store.models import Worker

    return count(url, Worker)


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def audit(url: str, sweep_id: int, n: int) -> dict:
    store = Store(url, migrate=False)
    with store.session() as s:
        per_config = dict(s.execute(select(Measurement.config_key, func.count())
                                    .where(Measurement.sweep_id == sweep_id)
                                    .group_by(Measurement.config_key)).all())
        statuses = dict(s.execute(select(WorkItem.status, func.count())
                                  .group_by(WorkItem.status)).all())
        reclaimed = s.scalar(select(func.count()).select_from(WorkItem)
                             .where(WorkItem.attempts > 1))
        sweep_status = s.get(Sweep, sweep_id).status
    store.close()
    return {"configs": n, "measured": len(per_config),
            "duplicates": sum(c - 1 for c in per_config.values()),
            "lost": n - len(per_config), "items": statuses, "reclaimed": reclaimed,
            "sweep": sweep_status}


@pytest.mark.postgres
def test_killed_workers_lose_nothing_and_duplicate_nothing(cluster):
    url = new_db(cluster)
    sweep_id = make_sweep(url)
    workers = [start_worker(url) for _ in range(4)]
    wait_for(lambda: stored(url) >= 40 and registered(url) == 4, 120,
             "40 measurements and all 4 workers registered")
    for w in workers[:2]:
        w.send_signal(signal.SIGKILL)
    at_kill = stored(url)
    workers.append(start_worker(url))  # one is restarted
    outs = []
    for w in workers[2:]:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        outs.append(out.strip())
    result = audit(url, sweep_id, 200)
    print(f"\n200 configs, 4 workers, 2 SIGKILLed after {at_kill} stored, 1 restarted: "
          f"{result}\n" + "\n".join(outs))
    assert result["measured"] == 200 and result["lost"] == 0 and result["duplicates"] == 0
    assert result["items"] == {"done": 200} and result["sweep"] == "done"

    from click.testing import CliRunner

    from hwnas.cli import main

    status = CliRunner().invoke(main, ["sweep", "status", "--db", url])
    assert status.exit_code == 0, status.output
    line = next(x for x in status.output.splitlines() if x.startswith(f"{sweep_id} "))
    assert line.split()[1:7] == ["cpu", "200", "0", "0", "0", "200"] and "done" in line
    rows = status.output.splitlines()
    # the three that finished exited; the two killed ones never could (stale heartbeats)
    assert sum(" exited " in x for x in rows) == 3 and sum(" running " in x for x in rows) == 2


@pytest.mark.postgres
def test_postgres_restart_while_workers_run(cluster):
    url = new_db(cluster)
    sweep_id = make_sweep(url)
    workers = [start_worker(url, lease=10) for _ in range(2)]
    wait_for(lambda: stored(url) >= 30, 120, "30 measurements")
    cluster.stop(remove=False)
    time.sleep(3)
    cluster.start()
    outs = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        outs.append(out.strip())
    retries = sum(int(o.rsplit(",", 1)[1].split()[0]) for o in outs)
    result = audit(url, sweep_id, 200)
    print(f"\n200 configs, 2 workers, PostgreSQL restarted mid-sweep: {result}; "
          f"store retries {retries}\n" + "\n".join(outs))
    assert retries > 0, "the workers should have seen the outage"
    assert result["measured"] == 200 and result["lost"] == 0 and result["duplicates"] == 0
    assert result["items"] == {"done": 200}


def test_claims_skip_leased_items_and_reclaim_expired_ones(store):
    plan, options = build_plan("grid", 8, 16, 2, 1, 0, "nn", ["fp32"])
    sweep_id = create_distributed_sweep(store, plan, ["cpu", "Some GPU"], "numpy", QUICK,
                                        options)
    with store.session() as s:
        dev = upsert_device(s, CpuDevice().info)
        s.commit()
        # Long enough that a slow store (CI under load) cannot let a lease expire between the
        # claims below; the test waits for it afterwards.
        lease_s = 3.0
        a = claim(s, "A", dev, lease_s=lease_s, limit=2)
        b = claim(s, "B", dev, lease_s=lease_s, limit=2)
        assert len(a) == 2 and len(b) == 2 and not {i.id for i in a} & {i.id for i in b}
        assert all(i.device_type == "cpu" for i in a + b)  # never the GPU's items
        last_leased = time.monotonic()
        rest = claim(s, "C", dev, lease_s=lease_s, limit=100)
        assert len(rest) == len(plan) - 4
        assert claim(s, "D", dev, lease_s=lease_s, limit=100) == []
        time.sleep(max(last_leased + lease_s - time.monotonic(), 0.0) + 0.2)  # every lease expired
        again = claim(s, "D", dev, lease_s=10, limit=100)
        assert len(again) == len(plan) and all(i.attempts == 2 for i in again)
        # A claim whose answer was lost leaves items leased to D; D's next claim gets them
        # back instead of leaving them leased (and heart-beaten) forever.
        orphan = claim(s, "D", dev, lease_s=10, limit=1)
        assert len(orphan) == 1 and orphan[0].id == min(i.id for i in again)
        assert claim(s, "E", dev, lease_s=10, limit=100) == []
    assert sweep_id > 0


@pytest.mark.postgres
def test_two_service_replicas_share_one_postgres_store(cluster, tmp_path, monkeypatch):
    from hwnas.client import PredictorClient
    from hwnas.service.engine import PredictionEngine
    from hwnas.service.server import Server, ServerConfig
    from tests.test_service import make_store_at, register

    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    url = new_db(cluster)
    store = make_store_at(url, tmp_path)
    replicas = [Server(PredictionEngine(Store(url), refresh_s=0.2),
                       ServerConfig(port=0, refresh_s=0.2)).start() for _ in range(2)]
    try:
        clients = [PredictorClient(f"127.0.0.1:{r.port}") for r in replicas]
        for c in clients:
            c.wait_ready(30)
        shapes = [(512, 256, 128, "fp16"), (64, 64, 64)]
        answers = [c.predict_gemm("Test GPU", shapes) for c in clients]
        assert answers[0] == answers[1] and answers[0].model_version == 1
        register(store, tmp_path, seed=5)  # a trainer registers v2 in the shared store
        deadline = time.time() + 60
        while time.time() < deadline and {c.predict_gemm("Test GPU", shapes).model_version
                                          for c in clients} != {2}:
            time.sleep(0.2)
        final = [c.predict_gemm("Test GPU", shapes) for c in clients]
        assert final[0] == final[1] and final[0].model_version == 2
    finally:
        for r in replicas:
            r.stop(0)
