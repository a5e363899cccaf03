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

A probe knows full speed only from the windows it has read, so a command that measures one
thing and exits (a search measuring its result, ``hwnas verify``) would take a slow phase it
started in for full speed: on this VM, with two busy processes beside it, a network measured
1.7-2.3x its quiet figure and passed as calm. Probes therefore leave the full speed they found
(once they have read :data:`TRUST_OWN` windows) in a small per-machine file
(:class:`ReferenceSpeeds`), and a new probe judges by the median of the last few until it has
read that many windows of its own. A machine that became slower for good moves that median
within a few sweeps; until then its first configs are measured again, never dropped.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import socket
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from collectors.paths import data_dir, write_json
from collectors.timing import Timer, TimingPolicy, time_kernel

T = TypeVar("T")

TOLERANCE = 0.10  # a probe window within 10% of full speed is calm (see above)
ATTEMPTS = 3  # measurements of a config per round at most, while the probe says slow
WAIT_S = 1.0  # longest wait for a calm probe, over all attempts at a config (s)
FRESH_S = 0.25  # a calm window this recent (the previous config's last) serves as "before"
REFERENCE = (192, 192, 192)  # the probe's fp32 GEMM: ~0.1 ms on one core, in cache
WINDOW = TimingPolicy(warmup_s=0.005, min_warmup_calls=2, min_reps=5, min_time_s=0.02)
# A window whose mean time per call is over 1.5x its own fastest decile was shared with other
# processes: the kernel ran at full speed when it ran, but was descheduled for a third of the
# window or more. The fastest decile alone misses that (its 2 ms repetitions fit between the
# scheduler's switches), while a network or large GEMM measured then, whose calls outlast a
# time slice, ran 1.7-2.3x slow. On the 2-core VM: 1.5% of 400 quiet windows were over 1.5x,
# 92% of windows with one or two busy processes beside the probe. Such a window is judged by
# its mean, which tells how much of the machine the process got.
CONTENDED = 1.5
TRUST_OWN = 50  # windows after which a probe judges by its own full speed alone, and records it
SESSIONS_KEPT = 5  # recorded full speeds per probe kind; the reference is their median


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


class ReferenceSpeeds:
    """Full speeds (ms) of the probe's reference kernel that earlier probes on this machine
    found, per kind of probe (host, backend and its version, threads), in a JSON file (default
    ``$XDG_DATA_HOME/hwnas/probe_reference.json``). Each probe (a session) keeps one entry,
    updated as it reads more windows; the last :data:`SESSIONS_KEPT` sessions are kept. A file
    that cannot be read or written is treated as empty: the probe then works on its own."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else data_dir() / "probe_reference.json"

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _entries(data: dict, key: str) -> list[dict]:
        entries = data.get(key)
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def reference_ms(self, key: str) -> float | None:
        """Median full speed (ms) of the kept sessions of ``key``, or None."""
        speeds = [e["full_speed_ms"] for e in self._entries(self._read(), key)
                  if isinstance(e.get("full_speed_ms"), (int, float)) and e["full_speed_ms"] > 0]
        return float(statistics.median(speeds)) if speeds else None

    def record(self, key: str, session: str, full_speed_ms: float, windows: int) -> None:
        data = self._read()
        entries = [e for e in self._entries(data, key) if e.get("session") != session]
        entries.append({"session": session, "full_speed_ms": full_speed_ms, "windows": windows,
                        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        data[key] = entries[-SESSIONS_KEPT:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, data)
        except OSError:
            pass  # a read-only home: probes still work, each on its own windows


class SpeedProbe:
    """Times a reference kernel (``fn`` with ``timer``) over a short window (ms, fastest decile
    of its calls); the 10th percentile of every window so far is the machine's full speed.

    With ``reference`` (and its ``key``), full speed is at most the reference's figure from
    earlier probes until :data:`TRUST_OWN` windows are read, and the probe's own full speed is
    recorded there from then on."""

    def __init__(self, fn: Callable[[], object], timer: Timer, tolerance: float = TOLERANCE,
                 window: TimingPolicy = WINDOW, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 reference: ReferenceSpeeds | None = None, key: str = ""):
        if not (0 < tolerance < 1):
            raise ValueError(f"tolerance: must be between 0 and 1, got {tolerance}")
        self.fn, self.timer, self.tolerance, self.window = fn, timer, tolerance, window
        self.clock, self.sleep = clock, sleep
        self.reference, self.key, self.session = reference, key, uuid.uuid4().hex[:12]
        self.reference_ms = reference.reference_ms(key) if reference is not None else None
        self.windows: list[float] = []  # every window so far (ms), kept sorted
        self.full_speed_ms = self.reference_ms or math.inf  # what windows are judged against
        self.last_ms = math.inf
        self.last_at = -math.inf
        self._record_at = TRUST_OWN

    @classmethod
    def for_backend(cls, backend, reference: ReferenceSpeeds | None = None) -> SpeedProbe:
        """The probe of a GEMM backend: its own fp32 GEMM of :data:`REFERENCE`, judged against
        this machine's recorded full speed (``reference``, default the per-user file) until it
        has seen enough of its own."""
        from collectors.ops import Op

        prepared = backend.prepare(Op.gemm(*REFERENCE, "fp32"))
        key = (f"{socket.gethostname()} {backend.name}{getattr(backend, 'index', '')} "
               f"{backend.library_version} {REFERENCE[0]}^3 fp32 "
               f"{prepared.threads or 'default'} threads")
        probe = cls(prepared.fn, prepared.timer, reference=reference or ReferenceSpeeds(),
                    key=key)
        for _ in range(5):  # a first notion of full speed before anything is judged by it
            probe.read()
        return probe

    def read(self) -> float:
        """One window: the reference kernel's fastest decile now (ms), or its mean time per
        call where the window was shared with other processes (see :data:`CONTENDED`)."""
        stats = time_kernel(self.fn, self.timer, self.window)
        contended = stats.mean_ms > CONTENDED * stats.p10_ms
        self.last_ms = stats.mean_ms if contended else stats.p10_ms
        self.last_at = self.clock()
        # Full speed comes from the fastest deciles alone: sharing the cores does not change
        # what the kernel does when it runs. Sorted on insertion, so the 10th percentile
        # (numpy's linear interpolation) costs O(1) here instead of a pass over every window.
        bisect.insort(self.windows, stats.p10_ms)
        n = len(self.windows)
        at = 0.1 * (n - 1)
        lo = int(at)
        hi = min(lo + 1, n - 1)
        own = self.windows[lo] + (at - lo) * (self.windows[hi] - self.windows[lo])
        trust_own = self.reference_ms is None or n >= TRUST_OWN
        self.full_speed_ms = own if trust_own else min(own, self.reference_ms)
        if self.reference is not None and n >= self._record_at:
            self.reference.record(self.key, self.session, own, n)
            self._record_at *= 2  # 50, 100, 200, ... windows: a few writes per sweep
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
