"""The command line: help, the main job, and clear errors (exit code, no traceback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hwnas.cli import main


def run(args, **env):
    result = CliRunner().invoke(main, args, env=env or None)
    return result


def test_help_lists_every_subcommand():
    out = run(["--help"]).output
    for cmd in ("collect", "db", "demo", "devices"):
        assert cmd in out
    assert "export" in run(["db", "--help"]).output
    assert "--resume" in run(["collect", "gemm", "--help"]).output


def test_collect_small_sweep_and_info(tmp_path):
    db = f"sqlite:///{tmp_path / 's.sqlite'}"
    r = run(["collect", "gemm", "--db", db, "--max-size", "32", "--points", "2",
             "--min-time", "0.01", "--skip-peaks", "--no-progress", "--dtype", "fp32",
             "--rounds", "2"])
    assert r.exit_code == 0, r.output
    assert "8 done, 0 failed" in r.output and "power: unavailable" in r.output
    from sqlalchemy import select

    from collectors.store.db import Store
    from collectors.store.models import Measurement, Sweep

    with Store(db).session() as s:  # a CPU sweep probes the machine's speed by default
        rows = s.scalars(select(Measurement)).all()
        policy = s.scalar(select(Sweep)).config["policy"]
    assert policy["probe"] is True and len(rows) == 8
    for row in rows:
        probe = row.params["probe"]
        assert 1 <= probe["attempts"] <= 3 and probe["ratio"] > 0.5
        assert all("calm" in r for r in row.params["rounds"])
    info = run(["db", "info", "--db", db])
    assert "8/8" in info.output and "done" in info.output
    devs = run(["devices", "--db", db])
    assert devs.exit_code == 0 and "cpu" in devs.output and "not measured" in devs.output
    from collectors.devices import CpuDevice
    from collectors.store.repo import Peak, save_peaks, upsert_device

    with Store(db).session() as s:
        save_peaks(s, upsert_device(s, CpuDevice().info),
                   [Peak("bandwidth", 28.0, "GB/s", None, "test"),
                    Peak("first_touch", 250.0, "ms/GB", None, "test")])
        s.commit()
    devs = run(["devices", "--db", db])  # each peak with its unit
    assert "bandwidth=28 GB/s, first_touch=250 ms/GB" in devs.output, devs.output


def test_collect_random_batched_gemms(tmp_path):
    from sqlalchemy import select

    from collectors.store.db import Store
    from collectors.store.models import Measurement, Sweep

    db = f"sqlite:///{tmp_path / 'b.sqlite'}"
    r = run(["collect", "gemm", "--db", db, "--shapes", "random", "--count", "3", "--batched",
             "1", "--max-batch", "4", "--max-size", "32", "--min-time", "0.01", "--rounds", "1",
             "--skip-peaks", "--no-progress", "--no-probe", "--dtype", "fp32"])
    assert r.exit_code == 0 and "3 done, 0 failed" in r.output, r.output
    with Store(db).session() as s:
        rows = s.scalars(select(Measurement)).all()
        options = s.scalar(select(Sweep)).config["options"]
    assert options["batched"] == 1.0 and options["max_batch"] == 4
    assert all(2 <= row.batch <= 4 and row.latency_ms_median > 0 for row in rows)


def test_collect_the_gemms_of_a_shapes_file(tmp_path):
    """A file as `hwnas predict gemm --out` writes it (cost columns are ignored): each row in
    its own dtype and layout, a config asked for twice measured once."""
    from sqlalchemy import select

    from collectors.store.db import Store
    from collectors.store.models import Measurement, Sweep

    shapes = tmp_path / "flagged.csv"
    shapes.write_text("m,n,k,batch,dtype,layout,latency_ms,beyond_training\n"
                      "48,32,16,1,fp32,nn,0.01,\n"
                      "48,32,16,1,fp32,nn,0.01,\n"
                      "40,24,8,3,fp32,tn,0.02,batch 3 > 1\n")
    db = f"sqlite:///{tmp_path / 'c.sqlite'}"
    common = ["collect", "gemm", "--db", db, "--min-time", "0.01", "--rounds", "1",
              "--skip-peaks", "--no-progress", "--no-probe"]
    r = run([*common, "--shapes-csv", str(shapes), "--dtype", "bf16"])
    assert r.exit_code == 0 and "2 done, 0 failed" in r.output, r.output
    with Store(db).session() as s:
        rows = s.scalars(select(Measurement).order_by(Measurement.m)).all()
        options = s.scalar(select(Sweep)).config["options"]
    assert [(r.m, r.n, r.k, r.batch, r.dtype, r.layout) for r in rows] == [
        (40, 24, 8, 3, "fp32", "tn"), (48, 32, 16, 1, "fp32", "nn")]
    assert options["shapes"] == "csv" and options["dtypes"] == ["fp32"]
    # Without dtype and layout columns: every --dtype and --layout.
    plain = tmp_path / "plain.csv"
    plain.write_text("m,n,k\n48,32,16\n")
    r = run([*common, "--shapes-csv", str(plain), "--dtype", "fp32,bf16", "--layout", "nn,nt"])
    assert r.exit_code == 0 and "4 done, 0 failed" in r.output, r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("m,n,k\n48,32,16\n48,-1,16\n")
    for args, code, says in [
            (["--shapes-csv", str(bad)], 2, "bad.csv row 2, column n: must be a positive integer"),
            (["--shapes-csv", str(plain), "--shapes", "random"], 2,
             "--shapes random and --shapes-csv: give one of them"),
            (["--shapes-csv", str(plain), "--adaptive"], 2, "--adaptive and --shapes-csv")]:
        r = run([*common, *args])
        assert r.exit_code == code and says in r.output, r.output


@pytest.mark.parametrize("args, code, needle", [
    (["--min-size", "0"], 2, "--min-size: must be a positive integer"),
    (["--min-size", "-5"], 2, "--min-size"),
    (["--max-size", "8", "--min-size", "16"], 2, "--max-size"),
    (["--dtype", "fp9"], 2, "--dtype: unknown dtype 'fp9'"),
    (["--dtype", "tf32"], 2, "--dtype tf32: the torch backend runs"),
    (["--points", "0"], 2, "--points"),
    (["--layout", "xx"], 2, "--layout"),
    (["--min-reps", "0"], 2, "'--min-reps': 0 is not in the range"),
    (["--min-time", "-1"], 2, "'--min-time': -1.0 is not in the range"),
    (["--power-window", "nan"], 2, "power_window_s: must be a non-negative number"),
    (["--cooldown", "-0.5"], 2, "'--cooldown'"),
    (["--device", "cuda:7"], 1, "--device cuda:7"),
    (["--device", "tpu"], 1, "--device 'tpu'"),
    (["--backend", "jax"], 2, "--backend jax"),
    (["--threads", "0"], 2, "--threads: must be at least 1"),
    (["--adaptive", "--budget", "2"], 2, "--budget: must be at least 4, got 2"),
    (["--batched", "2"], 2, "'--batched': 2.0 is not in the range"),
    (["--resume", "99"], 2, "--resume 99: no GEMM sweep"),
    (["--db", "postgresql://nobody@127.0.0.1:1/none"], 1, "cannot connect"),
    (["--db", "notaurl"], 1, "--db: cannot parse database URL"),
    (["--db", "mysql://x@127.0.0.1:1/y"], 1, "--db"),
])
def test_bad_options_give_clear_errors(tmp_path, args, code, needle):
    if "--db" not in args:
        args = args + ["--db", f"sqlite:///{tmp_path / 'e.sqlite'}"]
    r = run(["collect", "gemm", "--skip-peaks", "--no-progress", *args])
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    if code == 2 and "--resume" not in args:  # options are checked before the store is made
        assert not (tmp_path / "e.sqlite").exists()


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    env = {**os.environ, "HWNAS_DB": "postgresql://nobody@127.0.0.1:1/none"}
    p = subprocess.run([sys.executable, "-m", "hwnas.cli", "collect", "gemm", "--skip-peaks"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "Error: --db: cannot connect" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_adaptive_collection_measures_the_budget_from_the_pool(tmp_path):
    from sqlalchemy import select

    from collectors.store.db import Store
    from collectors.store.models import Measurement, Sweep

    db = f"sqlite:///{tmp_path / 'a.sqlite'}"
    r = run(["collect", "gemm", "--db", db, "--adaptive", "--budget", "12", "--pool", "40",
             "--round-size", "4", "--min-size", "16", "--max-size", "64", "--min-time", "0.01",
             "--dtype", "fp32", "--no-progress", "--no-probe"])
    assert r.exit_code == 0, r.output
    # Half the candidates are aligned; in 16..64 some of those coincide, and count once.
    pool = int(re.search(r"budget 12 of a pool of (\d+) configs, rounds of 4", r.output)[1])
    assert 30 <= pool <= 40, r.output
    assert "12 done, 0 failed" in r.output
    with Store(db).session() as s:
        sweep = s.scalar(select(Sweep))
        rows = s.scalars(select(Measurement).where(Measurement.sweep_id == sweep.id)).all()
    assert sweep.status == "done" and sweep.config["options"]["shapes"] == "adaptive"
    assert sweep.config["options"]["aligned"] == 0.5  # a resumed sweep draws the same pool
    assert [c["origin"] for c in sweep.config["configs"]] == ["adaptive"] * 12
    shapes = {(m.m, m.n, m.k) for m in rows}
    assert len(rows) == 12 and len(shapes) == 12  # each chosen config measured once
    assert all(16 <= d <= 64 for shape in shapes for d in shape)
    assert all(m.latency_ms_median > 0 and m.power_source == "unavailable" for m in rows)


def test_adaptive_collection_chooses_among_batched_candidates_too(tmp_path):
    from sqlalchemy import select

    from collectors.store.db import Store
    from collectors.store.models import Measurement, Sweep

    db = f"sqlite:///{tmp_path / 'ab.sqlite'}"
    r = run(["collect", "gemm", "--db", db, "--adaptive", "--budget", "8", "--pool", "30",
             "--round-size", "4", "--max-size", "64", "--batched", "1", "--max-batch", "4",
             "--min-time", "0.01", "--dtype", "fp32", "--no-progress", "--no-probe"])
    assert r.exit_code == 0 and "8 done, 0 failed" in r.output, r.output
    with Store(db).session() as s:
        options = s.scalar(select(Sweep)).config["options"]
        batches = [m.batch for m in s.scalars(select(Measurement))]
    assert options["batched"] == 1.0 and options["max_batch"] == 4  # a resume draws the same
    assert len(batches) == 8 and all(2 <= b <= 4 for b in batches)


def test_an_interrupted_adaptive_collection_resumes_to_its_budget(tmp_path, monkeypatch):
    from sqlalchemy import select

    from collectors.store.db import Store
    from collectors.store.models import Measurement
    from collectors.sweep import SweepRunner

    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    args = ["collect", "gemm", "--db", db, "--adaptive", "--budget", "10", "--pool", "30",
            "--round-size", "4", "--max-size", "48", "--min-time", "0.005", "--dtype", "fp32",
            "--aligned", "0", "--no-progress", "--no-probe"]
    real = SweepRunner.measure
    calls = []

    def stopped_by_ctrl_c(self, op, origin, sweep_id, device_id):
        calls.append(op.key())
        if len(calls) == 12:  # inside the first adaptive round, after the seed configs
            raise KeyboardInterrupt
        return real(self, op, origin, sweep_id, device_id)

    monkeypatch.setattr(SweepRunner, "measure", stopped_by_ctrl_c)
    first = run(args)
    assert first.exit_code == 130, first.output
    assert "remaining" in first.output and "--resume 1" in first.output
    with Store(db).session() as s:
        before = {m.config_key for m in s.scalars(select(Measurement))}
    assert 2 <= len(before) < 10

    monkeypatch.setattr(SweepRunner, "measure", real)
    again = run(["collect", "gemm", "--db", db, "--resume", "1", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "resuming adaptive sweep 1: budget 10 of a pool of 30 configs" in again.output
    with Store(db).session() as s:
        rows = s.scalars(select(Measurement)).all()
    keys = [m.config_key for m in rows]
    assert len(keys) == 10 and len(set(keys)) == 10  # the budget, each config once
    assert before <= set(keys)  # nothing measured before was lost or repeated


@pytest.mark.parametrize("args, needle", [
    (["worker", "--patience", "-5"], "'--patience': -5.0 is not in the range"),
    (["worker", "--max-items", "0"], "'--max-items': 0 is not in the range"),
    (["adapt", "--device", "cpu", "--min-time", "-1"], "'--min-time': -1.0 is not in the range"),
])
def test_bad_numbers_are_refused_by_name(tmp_path, args, needle):
    r = run([*args, "--db", f"sqlite:///{tmp_path / 'e.sqlite'}"])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
