"""The speed probe (collectors.probe): a config is measured again while a reference kernel says
the machine runs slow, and every row says how calm its measurement was. The machine here is a
fake whose slowness the test scripts, on a fake clock."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from collectors.devices import CpuDevice
from collectors.gemm.backends import NumpyBackend
from collectors.gemm.shapes import Shape
from collectors.probe import SpeedProbe, default_probe, measure_when_calm
from collectors.rounds import is_calm, not_calm_count
from collectors.store.db import Store
from collectors.store.models import Measurement
from collectors.sweep import SweepRunner, plan_gemm
from collectors.timing import Timer, TimingPolicy


class Machine:
    """A machine whose speed follows a script: ``slow`` over [start, end) of the fake clock
    makes every timed call ``factor`` times slower."""

    def __init__(self):
        self.now, self.factor = 0.0, 1.0
        self.phases: list[tuple[float, float, float]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s

    def speed(self) -> float:
        return next((f for a, b, f in self.phases if a <= self.now < b), self.factor)


class ReferenceTimer(Timer):
    def __init__(self, machine: Machine, base_ms: float = 0.1):
        self.machine, self.base_ms = machine, base_ms

    def time(self, fn, inner: int) -> float:
        return self.base_ms * self.machine.speed()


INSTANT = TimingPolicy(warmup_s=0.0, min_warmup_calls=1, min_reps=3, min_time_s=0.0)


def probe_on(machine: Machine, history: int = 50) -> SpeedProbe:
    """A probe of ``machine`` that has read ``history`` windows (at full speed, unless the
    machine is scripted slow)."""
    probe = SpeedProbe(lambda: None, ReferenceTimer(machine), window=INSTANT,
                       clock=machine.clock, sleep=machine.sleep)
    for _ in range(history):
        probe.read()
    return probe


def config(machine: Machine, base_ms: float = 2.0, took_s: float = 0.5):
    """A measurement taking ``took_s`` on the fake clock; returns its latency (ms)."""
    calls = []

    def measure() -> float:
        value = base_ms * machine.speed()
        machine.now += took_s
        calls.append(value)
        return value

    return measure, calls


def test_a_calm_machine_measures_once():
    m = Machine()
    probe = probe_on(m)
    measure, calls = config(m)
    value, calm = measure_when_calm(measure, lambda v: v, probe)
    assert calls == [2.0] and value == 2.0
    assert calm.calm and calm.attempts == 1 and calm.ratio == pytest.approx(1.0)


def test_a_slow_phase_during_the_measurement_is_measured_again_after_it():
    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 1.2, 1.4)]  # slow until t = 1.2 s: the first attempt and its after-probe
    measure, calls = config(m)
    value, calm = measure_when_calm(measure, lambda v: v, probe)
    assert calls[0] == pytest.approx(2.8) and value == 2.0  # the calm attempt is kept
    assert calm.calm and calm.attempts == 2 and 0.5 <= calm.waited_s <= 1.0


def test_a_machine_slow_throughout_keeps_the_fastest_attempt_and_says_so():
    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 100.0, 1.3)]
    speeds = iter([1.5, 1.3, 1.4])

    def measure() -> float:
        m.now += 0.1
        return 2.0 * next(speeds)

    value, calm = measure_when_calm(measure, lambda v: v, probe, attempts=3, wait_s=1.0)
    assert value == pytest.approx(2.6) and not calm.calm and calm.attempts == 3
    assert calm.ratio == pytest.approx(1.3) and calm.waited_s == pytest.approx(1.0, abs=0.1)


def test_a_failed_config_is_not_measured_again():
    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 100.0, 2.0)]
    calls = []
    value, calm = measure_when_calm(lambda: calls.append(1) or "failed", lambda v: None, probe,
                                    wait_s=0.0)
    assert value == "failed" and calls == [1] and not calm.calm


def test_waiting_for_a_calm_window_ends_when_the_phase_does_or_at_the_timeout():
    m = Machine()
    probe = probe_on(m)
    assert probe.wait_calm(2.0) == 0.0  # a calm window just read serves
    m.now, m.phases = 1.0, [(0.0, 2.0, 1.5)]
    assert probe.wait_calm(2.0) == pytest.approx(1.0, abs=0.06)
    assert probe.is_calm(probe.last_ms)
    m.phases = [(0.0, 100.0, 1.5)]
    m.now += 1.0  # the last calm window is stale now
    assert probe.wait_calm(0.3) == pytest.approx(0.3, abs=0.06)
    assert not probe.is_calm(probe.last_ms)
    with pytest.raises(ValueError, match="tolerance"):
        SpeedProbe(lambda: None, ReferenceTimer(m), tolerance=0.0)


def test_the_probe_is_on_by_default_on_a_cpu_only_and_its_help_says_how_it_works():
    from click.testing import CliRunner

    from collectors.probe import ATTEMPTS, TOLERANCE, WAIT_S
    from hwnas.cli import main

    assert default_probe(None, "cpu") and not default_probe(None, "gpu")
    assert default_probe(True, "gpu") and not default_probe(False, "cpu")
    text = " ".join(CliRunner().invoke(main, ["collect", "gemm", "--help"]).output.split())
    assert (f"up to {ATTEMPTS} times, after waiting up to {WAIT_S:g} s in all" in text
            and f"within {TOLERANCE:.0%} of its full speed" in text)


@pytest.mark.parametrize("slow, expect_calm", [(1.0, True), (1.5, False)])
def test_sweep_rows_and_rounds_say_how_calm_they_were(tmp_path, monkeypatch, slow, expect_calm):
    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 1e9, slow)]
    monkeypatch.setattr(SpeedProbe, "for_backend", classmethod(lambda cls, backend: probe))
    store = Store(f"sqlite:///{tmp_path / 'p.sqlite'}")
    policy = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.0, rounds=2, probe=True)
    runner = SweepRunner(store, CpuDevice(), NumpyBackend(), policy, progress=False)
    plan = plan_gemm([Shape(16, 16, 16), Shape(32, 16, 8)], ["fp32"])
    sweep_id = runner.run(runner.create(plan)).sweep_id
    with store.session() as s:
        rows = s.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)).all()
    assert len(rows) == 2
    for row in rows:
        assert row.params["probe"]["calm"] is expect_calm
        assert [r["calm"] for r in row.params["rounds"]] == [expect_calm] * 2
        assert row.params["probe"]["attempts"] == (1 if expect_calm else 3)
        assert is_calm(row.params) is expect_calm
    assert not_calm_count(store, sweep_id) == (0 if expect_calm else 2)


def test_a_resumed_sweep_is_measured_by_its_own_policy(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.sqlite'}")
    created = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.001, rounds=1)
    runner = SweepRunner(store, CpuDevice(), NumpyBackend(), created, progress=False)
    sweep_id = runner.create(plan_gemm([Shape(16, 16, 16)], ["fp32"]))
    other = SweepRunner(store, CpuDevice(), NumpyBackend(), TimingPolicy(probe=True),
                        progress=False)
    other.run(sweep_id)
    assert other.policy == created and other._probe is None


def test_one_freak_fast_window_does_not_make_every_later_one_slow():
    m = Machine()
    probe = probe_on(m)
    m.factor = 0.7  # one window far faster than the machine ever runs again
    probe.read()
    m.factor = 1.05  # ordinary window-to-window noise
    assert probe.full_speed_ms == pytest.approx(0.1)
    assert probe.is_calm(probe.read())


def test_network_sweeps_probe_on_a_cpu_and_refuse_to_on_a_gpu(tmp_path, monkeypatch):
    from collectors import nvml
    from collectors.devices import NvidiaGpu
    from collectors.networks.sweep import NetworkSweep, layer_grid
    from tests.fake_nvml import FakeNvml

    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 1e9, 1.5)]
    monkeypatch.setattr(SpeedProbe, "for_backend", classmethod(lambda cls, backend: probe))
    store = Store(f"sqlite:///{tmp_path / 'n.sqlite'}")
    policy = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.0, probe=True)
    sweeper = NetworkSweep(store, CpuDevice(), policy, threads=1, progress=False)
    sweep_id = sweeper.create(list(layer_grid(["linear"], [1]))[:2], "layers")
    sweeper.run(sweep_id)
    with store.session() as s:
        rows = s.scalars(select(Measurement)).all()
    assert len(rows) == 2 and all(r.params["probe"]["attempts"] == 3 for r in rows)
    assert all("config" in r.params for r in rows) and not_calm_count(store, sweep_id) == 2
    nvml.set_nvml(FakeNvml())
    with pytest.raises(ValueError, match="--probe: network sweeps probe .* on a CPU only"):
        NetworkSweep(store, NvidiaGpu(0), policy, progress=False)


def test_peaks_are_measured_through_the_probe(monkeypatch):
    from collectors.peaks import measure_peaks

    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 1e9, 1.5)]  # slow throughout: every peak is tried three times
    quick = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.0, power_window_s=0)
    before = len(probe.windows)
    peaks = measure_peaks(CpuDevice(), NumpyBackend(), ["fp32"], policy=quick, probe=probe,
                          beyond_roofline=False)
    assert {p.metric for p in peaks} == {"compute_fp32", "bandwidth"}
    assert all(p.value > 0 for p in peaks)
    assert len(probe.windows) - before >= 2 * 3  # a window after each of three attempts, twice


def test_the_first_touch_of_fresh_outputs_is_read_from_the_sizes_that_pay():
    from collectors.peaks import first_touch_peaks, measure_first_touch

    sizes = (4, 8, 16, 32, 64, 128)

    def read(excess):
        cost, start = first_touch_peaks(sizes, excess)
        assert (cost.metric, cost.unit, start.metric, start.unit) == (
            "first_touch", "ms/GB", "first_touch_from", "MiB")
        return cost.value, start.value

    # glibc: nothing below its mmap threshold, a few GB/s of page faults above it
    assert read([1, 5, 9, 260, 240, 250]) == (pytest.approx(250), 32)
    # a size that paid below one that did not is no threshold
    assert read([1, 200, 2, 0, 240, 250]) == (pytest.approx(245), 64)
    # an allocator that keeps freed memory (or noise only): nothing to charge
    assert read([0.5, 1, 0, 2, 1, 2]) == (0.0, 256)
    assert read([1, 2, 3, 250, 240, 2]) == (0.0, 256)
    # measured for real, briefly: two figures, never negative
    quick = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.0, power_window_s=0)
    cost, start = measure_first_touch(quick, sizes_mib=(1, 2))
    assert cost.value >= 0 and start.value in (1, 2, 4)


def test_pool_rates_are_measured_per_mode():
    from collectors.peaks import measure_pool_rates

    quick = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.0, power_window_s=0)
    rates = {p.metric: p for p in measure_pool_rates(quick)}
    assert set(rates) == {"pool_max", "pool_avg"}
    assert all(p.unit == "ns/output" and p.value > 0 for p in rates.values())


def test_a_gpu_gets_no_cpu_figures_beyond_the_roofline(monkeypatch):
    """GPU frameworks keep freed memory in caching allocators, and their pools were never
    measured below the bandwidth: a GPU's peaks hold neither figure."""
    from types import SimpleNamespace

    import collectors.peaks as peaks

    def refuse(*args, **kwargs):
        raise AssertionError("measured on a GPU")

    monkeypatch.setattr(peaks, "measure_first_touch", refuse)
    monkeypatch.setattr(peaks, "measure_pool_rates", refuse)
    gpu = SimpleNamespace(info=SimpleNamespace(kind="gpu"))
    assert peaks.measure_peaks(gpu, SimpleNamespace(), dtypes=[], bandwidth=False,
                               beyond_roofline=True) == []


def test_a_store_from_before_the_cpu_figures_gets_them_on_its_next_sweep(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import collectors.peaks
    from collectors.peaks import BEYOND_ROOFLINE
    from collectors.store.repo import Peak, device_peaks, save_peaks, upsert_device
    from hwnas.cli import main

    calls = []

    def fake_peaks(device, backend=None, dtypes=None, bandwidth=True, policy=None, probe=None,
                   calmness=None, beyond_roofline=None):
        calls.append((list(dtypes), bandwidth, beyond_roofline))
        return [Peak(metric, 1.0, "units", None, "fake")
                for metric in BEYOND_ROOFLINE] if beyond_roofline else []

    monkeypatch.setattr(collectors.peaks, "measure_peaks", fake_peaks)
    db = f"sqlite:///{tmp_path / 'old.sqlite'}"
    store = Store(db)
    with store.session() as s:  # what a sweep before the probe left
        save_peaks(s, upsert_device(s, CpuDevice().info),
                   [Peak("compute_fp32", 0.2, "TFLOP/s", None, "old"),
                    Peak("bandwidth", 28.0, "GB/s", None, "old")])
        s.commit()
    sweep = ["collect", "gemm", "--db", db, "--backend", "numpy", "--max-size", "16",
             "--points", "2", "--min-time", "0.0", "--dtype", "fp32", "--no-progress",
             "--no-probe"]
    outputs = [CliRunner().invoke(main, sweep) for _ in range(2)]
    assert all(r.exit_code == 0 for r in outputs), outputs[-1].output
    assert calls == [([], False, True)]  # the first sweep measures it alone, the next none
    assert "(first touch and pool rates; once per device)" in outputs[0].output
    # and says what it measured
    assert ", ".join(f"{m}=1 units" for m in BEYOND_ROOFLINE) in outputs[0].output
    with store.session() as s:
        assert device_peaks(s, 1) == {"compute_fp32": 0.2, "bandwidth": 28.0,
                                      **dict.fromkeys(BEYOND_ROOFLINE, 1.0)}


def test_a_distributed_sweep_leaves_the_probe_to_each_workers_device_kind(tmp_path,
                                                                          monkeypatch):
    from click.testing import CliRunner

    from collectors.worker import Worker
    from hwnas.cli import main

    m = Machine()
    probe = probe_on(m)
    monkeypatch.setattr(SpeedProbe, "for_backend", classmethod(lambda cls, backend: probe))
    db = f"sqlite:///{tmp_path / 'd.sqlite'}"
    r = CliRunner().invoke(main, ["sweep", "create", "--db", db, "--backend", "numpy",
                                  "--shapes", "random", "--count", "2", "--max-size", "32"])
    assert r.exit_code == 0, r.output
    worker = Worker(Store(db), CpuDevice(), threads=1)
    runner = worker.runner_for(1)
    assert runner.policy.probe is None and runner.probe() is probe  # a CPU worker probes

    class GpuKind(NumpyBackend):
        device_kind = "gpu"

    store = Store(f"sqlite:///{tmp_path / 'g.sqlite'}")
    gpu = SweepRunner(store, CpuDevice(), GpuKind(), TimingPolicy(probe=None), progress=False)
    assert gpu.probe() is None  # a GPU worker does not, unless the sweep asked
    with pytest.raises(ValueError, match="probe: must be true, false or null"):
        TimingPolicy(probe="yes")


def test_a_kernel_measured_alone_waits_out_a_slow_phase():
    from collectors.timing import lowest_round

    m = Machine()
    probe = probe_on(m)
    m.phases = [(0.0, 0.3, 1.5)]  # slow for the first 0.3 s of the fake clock
    kernel = ReferenceTimer(m, base_ms=2.0)
    assert lowest_round(lambda: None, kernel, INSTANT, rounds=3, gap_s=0)[0] == 3.0
    ms, calm = lowest_round(lambda: None, kernel, INSTANT, rounds=3, gap_s=0, probe=probe)
    assert ms == pytest.approx(2.0) and calm.calm
    assert m.now >= 0.3  # it waited for the phase to end


def test_a_probe_started_in_a_slow_phase_finds_it_slow_once_it_has_seen_full_speed():
    m = Machine()
    m.factor = 1.5  # slow from the start: the probe knows nothing faster yet
    probe = probe_on(m, history=5)  # as SpeedProbe.for_backend starts
    measure, _ = config(m)
    _, calm = measure_when_calm(measure, float, probe)
    assert calm.calm and calm.window_ms == pytest.approx(0.15)
    assert not calm.slow_by_now(probe)
    m.factor = 1.0
    for _ in range(50):  # a sweep's worth of windows at full speed
        probe.read()
    assert calm.slow_by_now(probe)


@pytest.mark.parametrize("slow_start, slow_again", [(True, False), (True, True),
                                                   (False, False)])
def test_peaks_measured_in_a_slow_phase_are_measured_again_after_the_sweep(tmp_path,
                                                                           monkeypatch,
                                                                           slow_start,
                                                                           slow_again):
    from click.testing import CliRunner

    import collectors.peaks
    from collectors.store.repo import Peak, device_peaks
    from hwnas.cli import main

    m = Machine()
    m.factor = 1.5 if slow_start else 1.0
    probe = probe_on(m, history=1)
    monkeypatch.setattr(SpeedProbe, "for_backend", classmethod(lambda cls, backend: probe))
    calls = []

    def fake_peaks(device, backend=None, dtypes=None, bandwidth=True, policy=None, probe=None,
                   calmness=None, beyond_roofline=None):
        """Peaks that run as fast as the fake machine (1 unit at full speed)."""
        metrics = [f"compute_{d}" for d in dtypes] + (["bandwidth"] if bandwidth else [])
        calls.append(metrics)
        out = []
        for metric in metrics:
            value, calm = measure_when_calm(lambda: 1.0 / m.speed(), lambda v: 1.0 / v, probe)
            if slow_again and len(calls) > 1:
                value = 0.5  # measured again, and lower still (another slow phase)
            out.append(Peak(metric, value, "units", 0.0, "fake"))
            if calmness is not None:
                calmness[metric] = calm
        m.factor = 1.0  # the slow phase ends with the peaks
        return out

    monkeypatch.setattr(collectors.peaks, "measure_peaks", fake_peaks)
    db = f"sqlite:///{tmp_path / 'k.sqlite'}"
    r = CliRunner().invoke(main, ["collect", "gemm", "--db", db, "--backend", "numpy",
                                  "--max-size", "32", "--points", "2", "--min-time", "0.0",
                                  "--dtype", "fp32", "--rounds", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    store = Store(db)
    with store.session() as s:
        peaks = device_peaks(s, 1)
    if slow_start and slow_again:  # the higher figure of the two stands
        assert calls == [["compute_fp32", "bandwidth"]] * 2
        assert "none came out higher: the stored peaks stand" in r.output
        assert peaks == {"compute_fp32": pytest.approx(2 / 3), "bandwidth": pytest.approx(2 / 3)}
    elif slow_start:
        assert calls == [["compute_fp32", "bandwidth"]] * 2
        assert "measuring them again" in r.output
        assert "compute_fp32: 0.6667 -> 1 units" in r.output
        assert peaks == {"compute_fp32": pytest.approx(1.0), "bandwidth": pytest.approx(1.0)}
    else:
        assert calls == [["compute_fp32", "bandwidth"]]
        assert "measuring them again" not in r.output
        assert peaks == {"compute_fp32": pytest.approx(1.0), "bandwidth": pytest.approx(1.0)}


class SharedTimer(ReferenceTimer):
    """The reference kernel on a machine whose cores are shared with other processes while
    ``machine.shared``: it runs at full speed when it runs, but every third repetition waits
    out another process's time slice."""

    def __init__(self, machine: Machine, base_ms: float = 0.1):
        super().__init__(machine, base_ms)
        self.calls = 0

    def time(self, fn, inner: int) -> float:
        self.calls += 1
        shared = getattr(self.machine, "shared", False) and self.calls % 3 == 0
        return self.base_ms * (6.0 if shared else 1.0)


def test_a_window_shared_with_other_processes_is_slow_though_its_fastest_decile_is_not():
    from collectors.probe import CONTENDED

    m = Machine()
    m.shared = True  # from the start: a fresh probe has never seen the machine to itself
    probe = SpeedProbe(lambda: None, SharedTimer(m), window=INSTANT, clock=m.clock,
                       sleep=m.sleep)
    for _ in range(5):
        probe.read()
    # Full speed is the kernel's own (0.1 ms); the windows' mean says the process got less.
    assert probe.full_speed_ms == pytest.approx(0.1)
    assert probe.last_ms > CONTENDED * 0.1
    measure, _ = config(m)
    _, calm = measure_when_calm(measure, float, probe, wait_s=0.5)
    assert not calm.calm and calm.ratio > CONTENDED
    m.shared = False
    _, calm = measure_when_calm(measure, float, probe)
    assert calm.calm and calm.ratio == pytest.approx(1.0)


def reference_probe(machine: Machine, book, history: int) -> SpeedProbe:
    probe = SpeedProbe(lambda: None, ReferenceTimer(machine), window=INSTANT,
                       clock=machine.clock, sleep=machine.sleep, reference=book, key="here")
    for _ in range(history):
        probe.read()
    return probe


def test_a_new_probe_judges_by_the_machines_recorded_full_speed_until_it_has_its_own(tmp_path):
    from collectors.probe import TRUST_OWN, ReferenceSpeeds

    book = ReferenceSpeeds(tmp_path / "ref.json")
    m = Machine()
    reference_probe(m, book, TRUST_OWN)  # an earlier sweep on this machine, at full speed
    assert book.reference_ms("here") == pytest.approx(0.1)
    assert book.reference_ms("elsewhere") is None

    m.factor = 1.5  # a one-off measurement that starts in a slow phase
    probe = reference_probe(m, book, 5)
    measure, _ = config(m)
    _, calm = measure_when_calm(measure, float, probe, wait_s=0.5)
    assert not calm.calm and calm.ratio == pytest.approx(1.5)
    # Without the record, the same probe took the slow phase for full speed.
    _, alone = measure_when_calm(measure, float, probe_on(m, history=5))
    assert alone.calm

    # A machine that stays slower: after TRUST_OWN windows of its own the probe trusts them,
    # and what it records moves the reference for the probes after it.
    for _ in range(TRUST_OWN):
        probe.read()
    assert probe.full_speed_ms == pytest.approx(0.15)
    _, calm = measure_when_calm(measure, float, probe)
    assert calm.calm
    for _ in range(2):
        reference_probe(m, book, TRUST_OWN)
    assert book.reference_ms("here") == pytest.approx(0.15)  # median of 0.1, 0.15 x 3


def test_the_reference_file_keeps_the_last_sessions_and_survives_bad_files(tmp_path):
    from collectors.probe import SESSIONS_KEPT, ReferenceSpeeds

    path = tmp_path / "ref.json"
    book = ReferenceSpeeds(path)
    for i in range(SESSIONS_KEPT + 3):
        book.record("k", f"s{i}", 1.0 + i, 50)
    book.record("k", f"s{SESSIONS_KEPT + 2}", 100.0, 100)  # a session updates its own entry
    entries = json.loads(path.read_text())["k"]
    assert [e["session"] for e in entries] == [f"s{i}" for i in range(3, SESSIONS_KEPT + 3)]
    assert book.reference_ms("k") == pytest.approx(6.0)  # median of 4, 5, 6, 7, 100

    path.write_text("{half a file")
    assert book.reference_ms("k") is None
    book.record("k", "new", 2.0, 50)  # a damaged file is replaced, not a crash
    assert book.reference_ms("k") == pytest.approx(2.0)

    blocked = ReferenceSpeeds(tmp_path / "a-file" / "ref.json")
    (tmp_path / "a-file").write_text("not a folder")
    blocked.record("k", "s", 1.0, 50)  # nowhere to write: the probe works on its own
    assert blocked.reference_ms("k") is None


def test_probes_of_backends_record_and_use_this_machines_reference(tmp_path, monkeypatch):
    from collectors.probe import TRUST_OWN, ReferenceSpeeds

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    import numpy

    probe = SpeedProbe.for_backend(NumpyBackend())
    assert probe.reference_ms is None and probe.reference.path.parent == tmp_path / "hwnas"
    assert f"numpy {numpy.__version__} " in probe.key  # another version may run at another speed
    for _ in range(TRUST_OWN):
        probe.read()
    again = SpeedProbe.for_backend(NumpyBackend())
    assert again.key == probe.key and again.reference_ms == pytest.approx(
        ReferenceSpeeds().reference_ms(probe.key))
