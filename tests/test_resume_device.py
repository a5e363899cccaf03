"""`--resume` measures on the sweep's own device, with its own backend: resumed elsewhere, the
rows would be stored under a device that did not measure them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select

from collectors.devices import CpuDevice
from collectors.networks.sweep import NetworkSweep, network_plan
from collectors.store.db import Store
from collectors.store.models import Device, DevicePeak, Measurement, Sweep
from collectors.timing import TimingPolicy
from hwnas.cli import main

SMALL = ["--max-size", "32", "--points", "2", "--min-time", "0.005", "--dtype", "fp32",
         "--no-progress", "--no-probe", "--rounds", "1"]


def run(args):
    return CliRunner().invoke(main, args)


def counts(db: str) -> tuple[int, int]:
    with Store(db).session() as s:
        return (s.scalar(select(func.count()).select_from(Measurement)),
                s.scalar(select(func.count()).select_from(DevicePeak)))


def move_sweep_to(db: str, sweep_id: int, name: str, fingerprint: str) -> None:
    """Make the stored sweep look as if another device had made it."""
    with Store(db).session() as s:
        sweep = s.get(Sweep, sweep_id)
        dev = s.get(Device, sweep.device_id)
        dev.name, dev.model, dev.fingerprint = name, "NVIDIA H200", fingerprint
        sweep.config = {**sweep.config, "device_fingerprint": fingerprint}
        s.commit()


def test_a_resumed_gemm_sweep_keeps_its_backend(tmp_path):
    db = f"sqlite:///{tmp_path / 'b.sqlite'}"
    first = run(["collect", "gemm", "--db", db, "--backend", "numpy", "--skip-peaks", *SMALL])
    assert first.exit_code == 0, first.output
    with Store(db).session() as s:  # as if the sweep had been stopped before its last two
        keys = s.scalars(select(Measurement.config_key).limit(2)).all()
        s.execute(delete(Measurement).where(Measurement.config_key.in_(keys)))
        s.commit()
    again = run(["collect", "gemm", "--db", db, "--resume", "1", "--skip-peaks", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "2 done" in again.output and "6 stored earlier" in again.output
    with Store(db).session() as s:
        backends = s.scalars(select(Measurement.backend)).all()
    assert backends == ["numpy"] * 8  # not the CPU's default backend, torch


@pytest.mark.parametrize("name", ["cpu", "cuda:3"])
def test_a_gemm_sweep_does_not_resume_on_another_device(tmp_path, name):
    db = f"sqlite:///{tmp_path / 'g.sqlite'}"
    assert run(["collect", "gemm", "--db", db, "--skip-peaks", *SMALL]).exit_code == 0
    with Store(db).session() as s:
        s.execute(delete(Measurement).where(Measurement.id > 5))
        s.commit()
    move_sweep_to(db, 1, name, "f" * 32)
    before = counts(db)
    # Without --device, the sweep's own (cuda:3: no such GPU here); cpu here is not its cpu.
    r = run(["collect", "gemm", "--db", db, "--resume", "1", "--no-progress"])
    assert r.exit_code == 1, r.output
    needle = ("the sweep was made on NVIDIA H200 (cuda:3), which this machine cannot open"
              if name == "cuda:3"
              else "the sweep was made on NVIDIA H200 (cpu, fingerprint ffffffffffff)")
    assert needle in r.output and "Traceback" not in r.output
    assert "measuring peaks" not in r.output
    assert counts(db) == before  # nothing measured, no peaks of this machine stored


def test_a_network_sweep_does_not_resume_on_another_device(tmp_path):
    db = f"sqlite:///{tmp_path / 'n.sqlite'}"
    store = Store(db)
    sweeper = NetworkSweep(store, CpuDevice(), TimingPolicy(min_time_s=0.005, rounds=1),
                           threads=1, progress=False)
    sweep_id = sweeper.create(network_plan(["resnet"], 1, 1, 0), "network")
    move_sweep_to(db, sweep_id, "cpu", "e" * 32)
    r = run(["collect", "network", "--db", db, "--resume", str(sweep_id), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "the sweep was made on NVIDIA H200 (cpu, fingerprint eeeeeeeeeeee)" in r.output
    assert "resume it on the device it started on" in r.output
    assert counts(db)[0] == 0
    wrong = run(["collect", "network", "--db", db, "--resume", "7", "--no-progress"])
    assert wrong.exit_code == 2 and "--resume 7: no network sweep" in wrong.output


def test_a_distributed_sweep_is_not_resumed_by_collect(tmp_path):
    db = f"sqlite:///{tmp_path / 'd.sqlite'}"
    made = run(["sweep", "create", "--db", db, "--max-size", "32", "--points", "2"])
    assert made.exit_code == 0, made.output
    r = run(["collect", "gemm", "--db", db, "--resume", "1", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "--resume 1: a distributed sweep; workers" in r.output
    assert "Traceback" not in r.output and counts(db)[0] == 0


def test_a_resumed_sweep_with_rounds_reports_what_is_left(tmp_path, monkeypatch):
    from collectors.sweep import SweepRunner

    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    args = ["collect", "gemm", "--db", db, "--skip-peaks", *SMALL[:-2], "--rounds", "3"]
    real, calls = SweepRunner.measure, []

    def stopped_by_ctrl_c(self, op, origin, sweep_id, device_id):
        calls.append(op.key())
        if len(calls) == 5:  # in the first round: 4 configs have one round, 4 none
            raise KeyboardInterrupt
        return real(self, op, origin, sweep_id, device_id)

    monkeypatch.setattr(SweepRunner, "measure", stopped_by_ctrl_c)
    first = run(args)
    assert first.exit_code == 130 and "8 remaining" in first.output, first.output
    monkeypatch.setattr(SweepRunner, "measure", real)
    again = run(["collect", "gemm", "--db", db, "--resume", "1", "--skip-peaks", "--no-progress"])
    assert again.exit_code == 0, again.output
    # The four new configs, and the later rounds of the four stored earlier: nothing is left.
    assert "sweep 1 finished" in again.output and "0 remaining" in again.output, again.output
    assert "resume with" not in again.output
