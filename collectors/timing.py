"""Timing and energy protocol shared by every collector.

A kernel is warmed up, then timed in repetitions until both a minimum count and a minimum time
are reached. Tiny kernels are called ``inner`` times per repetition so the timer's own cost and
launch jitter do not dominate. Energy is read over a separate steady-state window of at least
``power_window_s`` seconds: power sensors update every ~100 ms and average, so a shorter window
reads noise.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from collectors.devices import ComputeDevice, DeviceState
from collectors.power import PowerReader


@dataclass
class TimingPolicy:
    """How long and how often to measure. Times in seconds unless named ``_ms``."""

    warmup_s: float = 0.05
    min_warmup_calls: int = 2
    min_reps: int = 10
    min_time_s: float = 0.2
    max_reps: int = 2000
    target_rep_ms: float = 2.0
    power_window_s: float = 1.0
    l2_flush: bool = False
    cooldown_s: float = 0.0
    # Whole passes over a sweep's configs, each in a new random order; a config's latency is
    # the lowest of its round p10s (see collectors.rounds).
    rounds: int = 1
    # Measure only while a reference kernel runs at full speed (see collectors.probe); None:
    # decided by the measuring device's kind (collectors.probe.default_probe), as a
    # distributed sweep's workers of different kinds do.
    probe: bool | None = False
    # GPU: hold the stream with a spin kernel while a repetition's launches are queued, so the
    # CUDA events time the kernels back to back instead of the host's launch rate (see
    # collectors.gemm.backends.CudaEventTimer). No effect on a CPU.
    queue_ahead: bool = True

    def __post_init__(self) -> None:
        for name in ("min_reps", "max_reps", "min_warmup_calls", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        for name in ("warmup_s", "min_time_s", "target_rep_ms", "power_window_s", "cooldown_s"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: must be a non-negative number, got {v}")
        if self.queue_ahead not in (True, False):
            raise ValueError(f"queue_ahead: must be true or false, got {self.queue_ahead!r}")
        if self.probe not in (True, False, None):
            raise ValueError(f"probe: must be true, false or null, got {self.probe!r}")
        if self.max_reps < self.min_reps:
            raise ValueError("max_reps: must be at least min_reps")


@dataclass
class TimingStats:
    """Latency of one call in milliseconds, over ``repetitions`` repetitions."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    repetitions: int
    inner: int
    method: str | None = None  # how the repetitions were timed (Timer.method)

    @classmethod
    def from_samples(cls, samples_ms: list[float], inner: int,
                     method: str | None = None) -> TimingStats:
        a = np.asarray(samples_ms, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 10)),
                   float(np.percentile(a, 90)), float(a.mean()),
                   float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size), inner, method)

    @property
    def cv(self) -> float:
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else 0.0


class Timer(ABC):
    """Times ``inner`` back-to-back calls of a kernel; returns ms per call. ``method`` names
    how (stored with each row), as of the repetitions timed so far."""

    method: str = "unnamed"

    @abstractmethod
    def time(self, fn: Callable[[], object], inner: int) -> float: ...

    def configure(self, policy: TimingPolicy) -> None:  # noqa: B027 - optional hook
        """Adopt the policy's settings that concern this timer (GPU: ``queue_ahead``)."""

    def sync(self) -> None:  # noqa: B027 - optional hook, a no-op on CPUs
        """Wait for queued work (GPU); nothing to do on a CPU."""

    def before_rep(self) -> None:  # noqa: B027 - optional hook, a no-op on CPUs
        """Hook run outside the timed region before each repetition (L2 flush)."""


class PerfCounterTimer(Timer):
    method = "perf_counter"

    def time(self, fn: Callable[[], object], inner: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        return (time.perf_counter_ns() - t0) / 1e6 / inner


@dataclass
class PowerResult:
    power_w: float | None
    energy_j_per_call: float | None
    source: str
    window_s: float | None
    note: str | None = None
    calls: int | None = None  # calls looped in the window

    def duty(self, busy_ms: float) -> float | None:
        """Share of the window the device spent on the op, given its time per call alone
        (``busy_ms``): below 1 when the op runs shorter than the host takes to issue it, so
        the power read is that of the op issued at the host's pace (idle gaps included)."""
        if not (self.calls and self.window_s):
            return None
        return min(1.0, busy_ms * self.calls / (self.window_s * 1e3))


@dataclass
class KernelResult:
    timing: TimingStats
    power: PowerResult
    before: DeviceState
    after: DeviceState


def time_kernel(fn: Callable[[], object], timer: Timer, policy: TimingPolicy) -> TimingStats:
    """Warm up, pick ``inner`` and time repetitions per ``policy``."""
    timer.configure(policy)
    t_end = time.perf_counter() + policy.warmup_s
    calls = 0
    t0 = time.perf_counter()
    while calls < policy.min_warmup_calls or time.perf_counter() < t_end:
        fn()
        calls += 1
        if calls % 8 == 0:
            timer.sync()
    timer.sync()
    per_call_ms = max((time.perf_counter() - t0) * 1e3 / calls, 1e-6)
    inner = max(1, math.ceil(policy.target_rep_ms / per_call_ms))

    samples: list[float] = []
    t_start = time.perf_counter()
    while len(samples) < policy.max_reps and (
            len(samples) < policy.min_reps or time.perf_counter() - t_start < policy.min_time_s):
        if policy.l2_flush:
            timer.before_rep()
        samples.append(timer.time(fn, inner))
    return TimingStats.from_samples(samples, inner, timer.method)


def lowest_round(fn: Callable[[], object], timer: Timer, policy: TimingPolicy,
                 rounds: int = 5, gap_s: float = 0.2, probe=None, wait_s: float | None = None):
    """Latency (ms) of one kernel measured alone, by the sweeps' statistic: the lowest
    fastest decile (p10) of ``rounds`` timed rounds spread over time (``gap_s`` apart), so
    that a slow phase of the machine does not decide the figure (see collectors.rounds);
    each round through ``probe`` (a collectors.probe.SpeedProbe) when given, waiting up to
    ``wait_s`` (s, default the probe's) for a calm machine. Returns the latency and how calm
    the machine was in the round that gave it (a collectors.probe.Calmness; None without a
    probe)."""
    from collectors.probe import WAIT_S, measure_when_calm  # they build on this module

    kept = None
    for r in range(rounds):
        if r:
            time.sleep(gap_s)
        ms, calm = measure_when_calm(lambda: time_kernel(fn, timer, policy).p10_ms, float,
                                     probe, wait_s=WAIT_S if wait_s is None else wait_s)
        if kept is None or ms < kept[0]:
            kept = (ms, calm)
    return kept


def energy_window(fn: Callable[[], object], timer: Timer, reader: PowerReader,
                  per_call_ms: float, window_s: float) -> PowerResult:
    """Loop ``fn`` for at least ``window_s`` seconds and read the energy of the whole window.

    ``per_call_ms`` only sizes the chunks between clock checks: the loop runs until the
    device has really been busy for the window, so a stale or wrong estimate (a kernel that
    got faster after warm-up, a clock that rose) cannot shorten it below what the sensor needs.
    """
    if not reader.available:
        return PowerResult(None, None, reader.source, None, getattr(reader, "reason", None))
    window_s = max(window_s, reader.min_window_s)
    # About ten clock checks per window, at most 1024 queued calls between syncs (bounds the
    # launch queue on a GPU).
    chunk = min(1024, max(1, math.ceil(window_s * 1e2 / max(per_call_ms, 1e-6))))
    calls = 0
    timer.sync()
    token = reader.start()
    t0 = time.perf_counter()
    while True:
        for _ in range(chunk):
            fn()
        calls += chunk
        timer.sync()
        if time.perf_counter() - t0 >= window_s:
            break
    reading = reader.stop(token)
    if reading.energy_j is None:
        return PowerResult(None, None, reading.source, reading.duration_s, reading.note)
    return PowerResult(reading.power_w, reading.energy_j / calls, reading.source,
                       reading.duration_s, reading.note, calls)


def measure_kernel(fn: Callable[[], object], timer: Timer, device: ComputeDevice,
                   reader: PowerReader, policy: TimingPolicy) -> KernelResult:
    """The full protocol for one config: state, timing, energy window, state again."""
    before = device.state()
    timing = time_kernel(fn, timer, policy)
    power = energy_window(fn, timer, reader, timing.median_ms, policy.power_window_s)
    after = device.state()
    if policy.cooldown_s > 0:
        time.sleep(policy.cooldown_s)
    return KernelResult(timing, power, before, after)
