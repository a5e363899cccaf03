"""Measuring only while the machine runs at full speed: a reference kernel as a speed probe.

Shared and virtual CPUs run slow in phases (other tenants, steal time, frequency) that last from
seconds to minutes. Interleaved rounds (collectors.rounds) keep a config's fastest round, which
removes short phases, but not one that covers every round of a config: on the 2-core
development VM, re-measuring configs of earlier benchmark runs found 8-31% of their latencies
more than 8% above today's figures (some by 30-70%), spread evenly over small and large shapes.

The probe times a fixed small GEMM over a short window (its fastest decile) next to every
measurement. Over 360 measurements on that VM (6 rounds over 60 configs), the slower of the
probe windows right before and right after a config, against the probe's full speed, told the
configs' slow figures apart: where it was within 10%, 2.4% of the figures were more than 5%
above the config's best; where it was 10-20% slow, 61%; beyond 20%, 83%. So a measurement
counts as *calm* when both windows are within ``TOLERANCE`` of full speed; otherwise the config
is measured again, after waiting for the probe to come back. Full speed is the probe's 10th
percentile window so far, not its fastest one: a minimum over thousands of windows is an outlier
that window-to-window noise (3-10% on a busy VM) would never reach again. What was measured is
never dropped: after ``ATTEMPTS`` the fastest attempt is kept and stored as not calm.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from collectors.timing import Timer, TimingPolicy, time_kernel

T = TypeVar("T")

TOLERANCE = 0.10  # a probe window within 10% of full speed is calm (see above)
ATTEMPTS = 3  # measurements of a config per round at most, while the probe says slow
WAIT_S = 1.0  # longest wait for a calm probe, over all attempts at a config (s)
FRESH_S = 0.25  # a calm window this recent (the previous config's last) serves as "before"
REFERENCE = (192, 192, 192)  # the probe's fp32 GEMM: ~0.1 ms on one core, in cache
WINDOW = TimingPolicy(warmup_s=0.005, min_warmup_calls=2, min_reps=5, min_time_s=0.02)


def default_probe(probe: bool | None, device_kind: str) -> bool:
    """``probe`` if given, else on for a CPU (shared hosts run slow in phases) and off for a
    GPU (steady clocks; its state is recorded instead, and a small GEMM there would measure
    launch overhead, not the machine's speed)."""
    if probe is not None:
        return probe
    return device_kind == "cpu"


@dataclass
class Calmness:
    """How one stored measurement relates to the machine's speed.

    ``ratio`` is the slower of the probe windows before and after the kept attempt
    (``window_ms``) over the probe's full speed at that time (1.0 = full speed); ``attempts``
    how many times the config was measured in this round; ``waited_s`` the time spent waiting
    for a calm probe."""

    calm: bool
    ratio: float
    attempts: int
    waited_s: float
    window_ms: float = math.nan

    def to_dict(self) -> dict:
        return {"calm": self.calm, "ratio": round(self.ratio, 4), "attempts": self.attempts,
                "waited_s": round(self.waited_s, 3)}

    def slow_by_now(self, probe: SpeedProbe) -> bool:
        """Whether ``probe``, knowing more of the machine now, finds this measurement's window
        slow: a probe judges by the fastest windows it has seen, so one that started inside a
        slow phase took that phase for full speed until the machine sped up."""
        return not math.isnan(self.window_ms) and not probe.is_calm(self.window_ms)


class SpeedProbe:
    """Times a reference kernel (``fn`` with ``timer``) over a short window (ms, fastest decile
    of its calls); the 10th percentile of every window so far is the machine's full speed."""

    def __init__(self, fn: Callable[[], object], timer: Timer, tolerance: float = TOLERANCE,
                 window: TimingPolicy = WINDOW, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not (0 < tolerance < 1):
            raise ValueError(f"tolerance: must be between 0 and 1, got {tolerance}")
        self.fn, self.timer, self.tolerance, self.window = fn, timer, tolerance, window
        self.clock, self.sleep = clock, sleep
        self.windows: list[float] = []  # every window so far (ms), kept sorted
        self.full_speed_ms = math.inf  # full speed: the 10th percentile window (ms)
        self.last_ms = math.inf
        self.last_at = -math.inf

    @classmethod
    def for_backend(cls, backend) -> SpeedProbe:
        """The probe of a GEMM backend: its own fp32 GEMM of :data:`REFERENCE`."""
        from collectors.ops import Op

        prepared = backend.prepare(Op.gemm(*REFERENCE, "fp32"))
        probe = cls(prepared.fn, prepared.timer)
        for _ in range(5):  # a first notion of full speed before anything is judged by it
            probe.read()
        return probe

    def read(self) -> float:
        """One window: the reference kernel's fastest decile now (ms)."""
        self.last_ms = time_kernel(self.fn, self.timer, self.window).p10_ms
        self.last_at = self.clock()
        # Sorted on insertion, so the 10th percentile (numpy's linear interpolation) costs
        # O(1) here instead of a pass over every window at each read of a long sweep.
        bisect.insort(self.windows, self.last_ms)
        at = 0.1 * (len(self.windows) - 1)
        lo = int(at)
        hi = min(lo + 1, len(self.windows) - 1)
        self.full_speed_ms = self.windows[lo] + (at - lo) * (self.windows[hi] - self.windows[lo])
        return self.last_ms

    def ratio(self, ms: float) -> float:
        return ms / self.full_speed_ms

    def is_calm(self, ms: float) -> bool:
        return self.ratio(ms) <= 1 + self.tolerance

    def wait_calm(self, timeout_s: float, pause_s: float = 0.05) -> float:
        """Read until a window is calm or ``timeout_s`` passed; returns the seconds waited. A
        calm window read less than :data:`FRESH_S` ago counts without reading again."""
        t0 = self.clock()
        if t0 - self.last_at < FRESH_S and self.is_calm(self.last_ms):
            return 0.0
        while not self.is_calm(self.read()) and self.clock() - t0 < timeout_s:
            self.sleep(pause_s)
        return self.clock() - t0


def measure_when_calm(measure: Callable[[], T], latency: Callable[[T], float | None],
                      probe: SpeedProbe | None, attempts: int = ATTEMPTS,
                      wait_s: float = WAIT_S) -> tuple[T, Calmness | None]:
    """Run ``measure`` between two probe windows, after waiting for a calm one (``wait_s`` at
    most over all attempts); again (up to ``attempts`` times) while either window was slow.
    Returns the first calm result, else the one with the lowest ``latency``, with how calm it
    was. A result whose ``latency`` is None (a failed or skipped config) is returned as it is,
    never retried. Without a probe, ``measure()`` once and None."""
    if attempts < 1:
        raise ValueError(f"attempts: must be at least 1, got {attempts}")
    if probe is None:
        return measure(), None
    waited = 0.0
    kept: tuple[float, T, float, float] | None = None  # (latency, result, ratio, window)
    for attempt in range(1, attempts + 1):
        waited += probe.wait_calm(max(wait_s - waited, 0.0))
        before = probe.last_ms
        result = measure()
        window = max(before, probe.read())
        ratio, calm = probe.ratio(window), probe.is_calm(window)
        value = latency(result)
        if value is None or calm:
            return result, Calmness(calm, ratio, attempt, waited, window)
        if kept is None or value < kept[0]:
            kept = (value, result, ratio, window)
    return kept[1], Calmness(False, kept[2], attempts, waited, kept[3])
