"""A collector killed with SIGKILL mid-sweep loses at most the config in flight; --resume
measures the rest, and every config ends up measured exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import create_engine, func, select, text

from collectors.store.models import Measurement, Sweep

CMD = [sys.executable, "-m", "hwnas.cli", "collect", "gemm", "--backend", "numpy",
       "--shapes", "grid", "--min-size", "16", "--max-size", "256", "--points", "4",
       "--min-time", "0.06", "--warmup", "0.01", "--skip-peaks", "--no-progress",
       "--no-probe"]  # resuming is the subject: no waits for a calm machine
ONE_ROUND = ["--rounds", "1"]


def _count(engine) -> int:
    with engine.connect() as c:
        try:
            return c.execute(text("select count(*) from measurement")).scalar()
        except Exception:
            return 0


def test_sigkill_then_resume_measures_every_config_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'resume.sqlite'}"
    env = {**os.environ, "HWNAS_DB": url}
    proc = subprocess.Popen(CMD + ONE_ROUND, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    engine = create_engine(url)
    deadline = time.time() + 60
    while _count(engine) < 10 and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with engine.connect() as c:
        # The killed writer left a readable, consistent database (WAL mode).
        assert c.execute(text("pragma integrity_check")).scalar() == "ok"
        before = dict(c.execute(select(Measurement.config_key, Measurement.uid)).all())
        status = c.execute(select(Sweep.status)).scalar()
    assert 10 <= len(before) < 64, "the kill must land mid-sweep"
    assert status == "running"

    done = subprocess.run(CMD + ONE_ROUND + ["--resume", "1"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming sweep 1" in done.stderr
    with engine.connect() as c:
        rows = c.execute(select(Measurement.config_key, Measurement.uid, Measurement.status)).all()
        per_key = dict(c.execute(select(Measurement.config_key, func.count())
                                 .group_by(Measurement.config_key)).all())
        status = c.execute(select(Sweep.status)).scalar()
    print(f"killed after {len(before)} configs; resumed; {len(rows)} rows for 64 configs")
    assert len(per_key) == 64 and set(per_key.values()) == {1}
    assert all(r.status == "ok" for r in rows)
    assert all(dict((r.config_key, r.uid) for r in rows)[k] == uid for k, uid in before.items())
    assert status == "done"
    assert f"{len(before)} stored earlier" in done.stdout


def _rounds(engine) -> dict[str, int]:
    with engine.connect() as c:
        try:
            rows = c.execute(select(Measurement.config_key, Measurement.params)).all()
        except Exception:
            return {}
    return {k: len((p or {}).get("rounds", [])) for k, p in rows}


def test_sigkill_in_a_later_round_then_resume(tmp_path):
    """Three interleaved rounds: killed during the second, resumed with a different --rounds on
    the command line (the sweep keeps its own): every config ends with one row and exactly three
    round records, its latency the lowest round p10."""
    url = f"sqlite:///{tmp_path / 'rounds.sqlite'}"
    env = {**os.environ, "HWNAS_DB": url}
    proc = subprocess.Popen(CMD + ["--rounds", "3"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    engine = create_engine(url)
    deadline = time.time() + 90
    while sum(_rounds(engine).values()) < 64 + 10 and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rounds(engine)
    assert len(before) == 64 and 64 + 10 <= sum(before.values()) < 3 * 64
    done = subprocess.run(CMD + ["--rounds", "1", "--resume", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with engine.connect() as c:
        rows = c.execute(select(Measurement.config_key, Measurement.latency_ms,
                                Measurement.params)).all()
    assert len(rows) == 64 and len({r.config_key for r in rows}) == 64
    for r in rows:
        medians = [x["median_ms"] for x in r.params["rounds"]]
        fastest = [x["p10_ms"] for x in r.params["rounds"]]
        assert len(medians) == 3 and r.latency_ms == min(fastest)
        assert r.params["round_spread"] == max(medians) / min(medians) - 1
