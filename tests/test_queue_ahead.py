"""CudaEventTimer's queue-ahead timing against a simulated GPU (no CuPy needed).

The fake GPU runs one stream: each launch starts when both the host has issued it and the
previous work has finished; an event completes when the work queued before it has; the host
spends ``launch_ms`` on every call. So a loop of short kernels is timed at the host's launch
rate, and kernels queued behind a long enough spin run back to back, as on a real GPU.
"""

from __future__ import annotations

import sys
import types

import pytest

from collectors.timing import TimingPolicy, time_kernel


class FakeGpu:
    def __init__(self, launch_ms: float, clock_ghz: float = 1.98):
        self.host_ms = 0.0  # host time
        self.free_at = 0.0  # when the GPU finishes everything queued so far
        self.launch_ms = launch_ms
        self.cycles_per_ms = clock_ghz * 1e6
        self.spins: list[int] = []
        self.kernel_calls = 0
        self.spin_fails = False
        self.spin_scale = 1.0  # < 1: the spin kernel ends early (a clock that lies)

    def launch(self, duration_ms: float) -> None:
        start = max(self.host_ms, self.free_at)
        self.free_at = start + duration_ms
        self.host_ms += self.launch_ms

    def kernel(self, duration_ms: float):
        def fn():
            self.kernel_calls += 1
            self.launch(duration_ms)
        return fn

    def clock(self) -> float:
        return self.host_ms / 1e3

    def module(self) -> types.ModuleType:
        gpu = self

        class Event:
            def __init__(self):
                self.at = None

            def record(self, stream=None):
                self.at = max(gpu.host_ms, gpu.free_at)
                gpu.host_ms += 0.001

            @property
            def done(self) -> bool:
                return self.at <= gpu.host_ms

            def synchronize(self):
                gpu.host_ms = max(gpu.host_ms, self.at)

        class Device:
            def synchronize(self):
                gpu.host_ms = max(gpu.host_ms, gpu.free_at)

        def raw_kernel(source, name):
            assert "clock64" in source and name == "hwnas_spin"
            if gpu.spin_fails:
                raise RuntimeError("nvrtc: not found")

            def spin(grid, block, args):
                cycles = int(args[0])
                gpu.spins.append(cycles)
                gpu.launch(cycles / gpu.cycles_per_ms * gpu.spin_scale)
            return spin

        cuda = types.SimpleNamespace(
            Event=Event, Device=Device,
            get_elapsed_time=lambda a, b: b.at - a.at)
        return types.SimpleNamespace(cuda=cuda, RawKernel=raw_kernel)


@pytest.fixture
def gpu(monkeypatch):
    fake = FakeGpu(launch_ms=0.010)
    monkeypatch.setitem(sys.modules, "cupy", fake.module())
    return fake


def _timer(gpu, queue_ahead=True):
    from collectors.gemm.backends import CudaEventTimer

    timer = CudaEventTimer(clock=gpu.clock)
    timer.configure(TimingPolicy(queue_ahead=queue_ahead))
    return timer


def test_a_loop_of_short_kernels_times_the_launch_rate(gpu):
    timer = _timer(gpu, queue_ahead=False)
    assert timer.time(gpu.kernel(0.003), 100) == pytest.approx(0.010, rel=0.01)
    assert timer.method == "cuda_events"
    assert gpu.spins == []


def test_queued_behind_a_spin_the_kernels_are_timed_alone(gpu):
    timer = _timer(gpu)
    fn = gpu.kernel(0.003)
    per_call = [timer.time(fn, 100) for _ in range(5)]
    assert per_call == pytest.approx([0.003] * 5, rel=1e-6)
    assert timer.method == "cuda_events_queued"
    spins = [c for c in gpu.spins if c]  # the first, of 0 cycles, compiles the kernel
    assert len(spins) == 5
    # After the first spin the SM clock is known: the spin lasts about twice the 1 ms the
    # host takes to queue 100 calls.
    assert [c / gpu.cycles_per_ms for c in spins[1:]] == pytest.approx([2.02] * 4, rel=0.01)


def test_a_spin_that_ends_too_soon_is_lengthened(monkeypatch):
    slow_host = FakeGpu(launch_ms=0.05)  # 5 ms to queue 100 calls: the first guess falls short
    monkeypatch.setitem(sys.modules, "cupy", slow_host.module())
    timer = _timer(slow_host)
    assert timer.time(slow_host.kernel(0.003), 100) == pytest.approx(0.003)
    spins = [c / slow_host.cycles_per_ms for c in slow_host.spins if c]
    assert len(spins) == 2 and spins[0] < 5 < spins[1]
    assert timer.method == "cuda_events_queued"


def test_long_kernels_need_only_a_short_spin(gpu):
    timer = _timer(gpu)
    assert timer.time(gpu.kernel(5.0), 1) == pytest.approx(5.0)
    assert gpu.spins[0] / gpu.cycles_per_ms < 0.2


def test_queued_calls_are_capped_by_the_launch_queue(gpu):
    from collectors.gemm.backends import CudaEventTimer

    timer = _timer(gpu)
    fn = gpu.kernel(0.002)
    timer.time(fn, 100)  # learn the spin
    gpu.kernel_calls = 0
    assert timer.time(fn, 5000) == pytest.approx(0.002)
    assert gpu.kernel_calls == CudaEventTimer.MAX_QUEUED


def test_no_spin_kernel_falls_back_to_a_loop(gpu):
    gpu.spin_fails = True
    timer = _timer(gpu)
    assert timer.time(gpu.kernel(0.003), 100) == pytest.approx(0.010, rel=0.01)
    assert timer.method == "cuda_events"
    assert "nvrtc" in timer.unqueued_reason


def test_a_spin_that_never_covers_the_queue_is_given_up(gpu):
    gpu.spin_scale = 0.0  # ends at once whatever it is asked
    timer = _timer(gpu)
    assert timer.time(gpu.kernel(0.003), 100) == pytest.approx(0.010, rel=0.01)
    assert timer.method == "cuda_events"
    assert "4 times" in timer.unqueued_reason
    spins = len(gpu.spins)
    timer.time(gpu.kernel(0.003), 100)
    assert len(gpu.spins) == spins  # not tried again for this kernel


def test_time_kernel_records_the_method(gpu):
    timer = _timer(gpu)
    stats = time_kernel(gpu.kernel(0.003), timer,
                        TimingPolicy(warmup_s=0, min_reps=10, min_time_s=0))
    assert stats.method == "cuda_events_queued"
    assert stats.p10_ms == pytest.approx(0.003)
    stats = time_kernel(gpu.kernel(0.003), timer,
                        TimingPolicy(warmup_s=0, min_reps=10, min_time_s=0, queue_ahead=False))
    assert stats.method == "cuda_events"
    assert stats.p10_ms == pytest.approx(0.010, rel=0.01)


def test_a_sweep_records_how_its_gpu_rows_were_timed(gpu, store):
    """Through the real sweep (timing policy, rounds, row filling) with the simulated GPU."""
    from sqlalchemy import select

    from collectors.devices import CpuDevice
    from collectors.gemm.backends import CudaEventTimer, GemmBackend, PreparedGemm
    from collectors.gemm.shapes import log_grid
    from collectors.store.models import Measurement
    from collectors.sweep import SweepRunner, plan_gemm

    class SimulatedGpuBackend(GemmBackend):
        name, device_kind = "simulated", "gpu"

        def dtypes(self):
            return ["fp16"]

        def prepare(self, op):
            kernel_ms = 2e-9 * op["m"] * op["n"] * op["k"]  # 64^3: 0.5 us; 256^3: 34 us
            return PreparedGemm(gpu.kernel(kernel_ms), CudaEventTimer(clock=gpu.clock),
                                "fp16", True, None)

    fast = TimingPolicy(warmup_s=0.0, min_reps=5, min_time_s=0.0, power_window_s=0.0)
    for queue_ahead in (True, False):
        policy = TimingPolicy(**{**fast.__dict__, "queue_ahead": queue_ahead})
        runner = SweepRunner(store, CpuDevice(), SimulatedGpuBackend(), policy, progress=False)
        sweep_id = runner.create(plan_gemm(log_grid(64, 256, 2), ["fp16"], ["nn"]))
        assert runner.run(sweep_id).done == 8
        with store.session() as s:
            rows = s.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)).all()
        small = [r for r in rows if r.m * r.n * r.k == 64 ** 3]
        assert {r.params["timer"] for r in rows} == (
            {"cuda_events_queued"} if queue_ahead else {"cuda_events"})
        # 64^3 takes the simulated GPU 0.5 us and the host 10 us to launch.
        expected = 0.0005 if queue_ahead else 0.010
        assert small[0].latency_ms_p10 == pytest.approx(expected, rel=0.05)
