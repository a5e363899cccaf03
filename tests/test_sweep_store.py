"""A real CPU sweep into SQLite and PostgreSQL, read back, exported and imported."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from collectors.devices import CpuDevice
from collectors.gemm.backends import NumpyBackend, TorchCpuBackend
from collectors.gemm.shapes import log_grid
from collectors.store.db import Store
from collectors.store.exchange import export_measurements, import_measurements
from collectors.store.models import Device, Measurement, Sweep
from collectors.store.repo import device_peaks, save_peaks, upsert_device
from collectors.sweep import SweepRunner, plan_gemm
from collectors.timing import TimingPolicy

FAST = TimingPolicy(warmup_s=0.005, min_reps=5, min_time_s=0.01, power_window_s=0.05)


def _sweep(store, backend, dtypes=("fp32",)):
    runner = SweepRunner(store, CpuDevice(), backend, FAST, progress=False)
    plan = plan_gemm(log_grid(8, 64, 2), list(dtypes), ["nn", "tn"])
    sweep_id = runner.create(plan)
    return runner, sweep_id, runner.run(sweep_id), plan


def test_cpu_sweep_is_stored_and_read_back(store):
    backend = TorchCpuBackend()
    dtypes = ["fp32"] + (["bf16"] if "bf16" in backend.dtypes() else [])
    _, sweep_id, summary, plan = _sweep(store, backend, dtypes)
    assert summary.done == len(plan) == 8 * 2 * len(dtypes)
    assert summary.failed == summary.skipped == summary.remaining == 0
    with store.session() as s:
        rows = s.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)).all()
        assert sorted(r.config_key for r in rows) == sorted(op.key() for op, _ in plan)
        for r in rows:
            assert r.status == "ok" and r.backend == "torch" and r.threads >= 1
            assert 0 < r.latency_ms_p10 <= r.latency_ms_median <= r.latency_ms_p90
            assert r.repetitions >= 5 and r.latency_ms_std >= 0 and r.tflops > 0
            assert r.layout in ("nn", "tn")
            # No power sensor on this CPU: stored as unavailable, never as a number.
            if r.power_source == "unavailable":
                assert r.power_w is None and r.energy_j is None
            assert "state_after" in r.params and r.params["inner_calls"] >= 1
            assert r.params["timer"] == "perf_counter"
        sweep = s.get(Sweep, sweep_id)
        assert sweep.status == "done" and sweep.finished_at is not None
        assert sweep.n_planned == len(plan)
        assert s.scalar(select(func.count()).select_from(Device)) == 1


def test_a_resumed_sweep_keeps_the_policy_it_was_created_with():
    from collectors.sweep import stored_policy

    default = TimingPolicy()
    assert stored_policy({}, default) is default
    now = stored_policy({"policy": {"min_reps": 7, "queue_ahead": True, "gone": 1}}, default)
    assert now.min_reps == 7 and now.queue_ahead
    # Sweeps stored before queue-ahead existed timed GPU loops plainly, and go on doing so.
    older = stored_policy({"policy": {"min_reps": 7, "l2_flush": True}}, default)
    assert older.l2_flush and not older.queue_ahead and default.queue_ahead


def test_failed_config_is_recorded_and_sweep_goes_on(store):
    class Flaky(NumpyBackend):
        def prepare(self, op):
            if op["m"] == 64 and op["n"] == 8:
                raise RuntimeError("simulated kernel failure")
            return super().prepare(op)

    _, sweep_id, summary, plan = _sweep(store, Flaky())
    assert summary.failed == 4 and summary.done == len(plan) - 4
    with store.session() as s:
        failed = s.scalars(select(Measurement).where(Measurement.status == "failed")).all()
        assert {f.error for f in failed} == {"RuntimeError: simulated kernel failure"}


def test_shape_too_large_for_memory_is_skipped_with_reason(store):
    class TinyCpu(CpuDevice):
        def free_memory_bytes(self):
            return 20_000

    runner = SweepRunner(store, TinyCpu(), NumpyBackend(), FAST, progress=False)
    sweep_id = runner.create(plan_gemm(log_grid(8, 64, 2), ["fp32"]))
    summary = runner.run(sweep_id)
    assert summary.skipped > 0 and summary.done > 0
    with store.session() as s:
        skipped = s.scalars(select(Measurement).where(Measurement.status == "skipped")).all()
        assert all(r.error.startswith("does not fit memory") for r in skipped)
        assert all(max(r.m, r.n, r.k) == 64 for r in skipped)


def test_peaks_are_stored_with_the_device(store):
    with store.session() as s:
        from collectors.peaks import PEAK_POLICY, measure_peaks

        dev = upsert_device(s, CpuDevice().info)
        quick = TimingPolicy(warmup_s=0.01, min_reps=3, min_time_s=0.02, power_window_s=0)
        peaks = measure_peaks(CpuDevice(), NumpyBackend(), ["fp32"], policy=quick,
                              beyond_roofline=False)  # measured in test_probe
        save_peaks(s, dev, peaks)
        s.commit()
        got = device_peaks(s, dev.id)
        assert set(got) == {"compute_fp32", "bandwidth"}
        assert got["compute_fp32"] > 0 and got["bandwidth"] > 0
        assert PEAK_POLICY.min_reps >= 5


@pytest.mark.parametrize("name, content, why", [
    ("m.parquet", b"not parquet", "not readable as Parquet"),
    ("m.csv", b"a,b\n1,2\n3,4,5,6\n", "not readable as CSV"),
    ("m.csv", b"a,b\n1,2\n", "not an hwnas export"),
])
def test_import_of_a_foreign_file_names_it(tmp_path, name, content, why):
    path = tmp_path / name
    path.write_bytes(content)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    with pytest.raises(ValueError, match=why) as err:
        import_measurements(store, str(path))
    assert str(err.value).startswith(str(path))
    if why.startswith("not readable"):  # every reader of a user's table file says the same
        from collectors.importers import import_gpperf
        from predictor.fewshot import read_table

        for read in (lambda: import_gpperf(store, str(path)), lambda: read_table(str(path))):
            with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {why}"):
                read()
    store.close()


def test_export_import_round_trip(store, tmp_path):
    _, sweep_id, _, plan = _sweep(store, NumpyBackend())
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"m.{fmt}"
        assert export_measurements(store, str(path), fmt) == len(plan)
        other = Store(f"sqlite:///{tmp_path / f'other-{fmt}.sqlite'}")
        assert import_measurements(other, str(path)) == (len(plan), 0)
        assert import_measurements(other, str(path)) == (0, len(plan))  # idempotent
        with store.session() as a, other.session() as b:
            def rows(s):
                return sorted((r.uid, r.m, r.n, r.k, r.dtype, r.layout, r.latency_ms_median,
                               r.power_source, r.power_w)
                              for r in s.scalars(select(Measurement)))
            assert rows(a) == rows(b)
            assert b.scalar(select(Device.fingerprint)) == a.scalar(select(Device.fingerprint))
        other.close()


def test_migrations_are_idempotent(store_url):
    a = Store(store_url)
    b = Store(store_url)  # second open: upgrade to head is a no-op
    assert {"device", "device_peak", "sweep", "measurement", "alembic_version"} <= set(b.tables())
    a.close()
    b.close()


def test_rows_with_a_power_sensor_say_how_busy_the_window_was(store):
    import time as _time

    from collectors.power import EnergyReading, PowerReader

    class SteadySensor(PowerReader):
        source, min_window_s = "fake_steady", 0.05

        def start(self):
            return _time.perf_counter()

        def stop(self, token):
            duration = _time.perf_counter() - token
            return EnergyReading(self.source, duration, 50.0 * duration)

    class SensedCpu(CpuDevice):
        def power_reader(self):
            return SteadySensor()

    runner = SweepRunner(store, SensedCpu(), NumpyBackend(), FAST, progress=False)
    sweep_id = runner.create(plan_gemm(log_grid(32, 64, 2), ["fp32"], ["nn"]))
    assert runner.run(sweep_id).done == 8
    with store.session() as s:
        rows = s.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)).all()
    for r in rows:
        assert r.power_source == "fake_steady" and r.power_w == pytest.approx(50.0)
        # On a CPU a call returns when done: the window is (nearly) all work.
        assert 0.3 < r.params["power_duty"] <= 1.0


def test_progress_goes_to_a_log_as_a_line_now_and_then_not_a_redraw_per_config(monkeypatch):
    import io

    from collectors.sweep import PIPED_INTERVAL_S, progress_bar

    log = io.StringIO()  # nohup, a CI log: not a terminal
    monkeypatch.setattr("sys.stderr", log)
    with progress_bar(500, 0, True) as bar:
        assert bar.mininterval == PIPED_INTERVAL_S
        for _ in range(500):
            bar.set_postfix(failed=0, skipped=0, refresh=False)
            bar.update(1)
    # The opening line, the closing line and perhaps one timed line: not 1,000 redraws.
    assert 1 <= log.getvalue().count("\r") <= 4 and "500/500" in log.getvalue()


def test_imported_devices_are_seen_when_they_measured_not_when_imported(tmp_path):
    """Which of a model's devices is the newest (its peaks serve a model of several) does not
    depend on the order the files are imported in."""
    from pathlib import Path

    from predictor.data import load_gemm_frame

    gpu = Path(__file__).resolve().parent.parent / "data" / "gpu"
    old, new = str(gpu / "h200_queued_run1.parquet"), str(gpu / "h200_aligned_square.parquet")
    profiles = []
    for name, order in (("a", [old, new]), ("b", [new, old])):
        store = Store(f"sqlite:///{tmp_path / name}.sqlite")
        for path in order:
            import_measurements(store, path)
        with store.session() as s:
            seen = {d.name + d.fingerprint: (d.first_seen, d.last_seen)
                    for d in s.scalars(select(Device))}
        profiles.append((seen, load_gemm_frame(store, "NVIDIA H200")[1].peaks))
    assert profiles[0] == profiles[1]
    assert profiles[0][1]["compute_bf16"] == pytest.approx(707.19, rel=1e-4)  # the newer GPU's
    first, last = min(profiles[0][0].values())
    assert first.year == 2026 and first < last
