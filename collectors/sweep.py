"""Running a GEMM sweep into the store: one committed row per config, resumable, crash-safe.

Each config is committed the moment it is measured, so a killed collector loses at most the
config in flight; the unique (sweep, config_key) pair makes a resumed sweep skip what is done and
makes a double measurement impossible.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from collectors.devices import ComputeDevice, DeviceError, get_device
from collectors.gemm.backends import GemmBackend
from collectors.gemm.shapes import Shape
from collectors.ops import DTYPES, Op, gemm_bytes, gemm_flops
from collectors.probe import SpeedProbe, default_probe, measure_when_calm
from collectors.rounds import rounds_done, rounds_progress, run_rounds, sweep_rounds
from collectors.store.db import Store
from collectors.store.models import Device, Measurement, Sweep, utcnow
from collectors.store.repo import get_sweep, upsert_device
from collectors.timing import KernelResult, TimingPolicy, measure_kernel

# Share of free device memory a config may use; the rest is headroom for the allocator and
# the L2-flush buffer.
MEMORY_HEADROOM = 0.8


def plan_gemm(shapes: Iterable[Shape], dtypes: Iterable[str],
              layouts: Iterable[str] = ("nn",)) -> list[tuple[Op, str]]:
    """Every shape x dtype x layout as (op, origin)."""
    plan = []
    for layout in layouts:
        if layout not in ("nn", "nt", "tn", "tt"):
            raise ValueError(f"--layout: expected nn, nt, tn or tt, got {layout!r}")
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                op = Op.gemm(shape.m, shape.n, shape.k, dtype, shape.batch,
                             trans_a=int(layout[0] == "t"), trans_b=int(layout[1] == "t"))
                plan.append((op, shape.origin))
    return plan


@dataclass
class SweepSummary:
    sweep_id: int
    planned: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    tflops: list[float] = field(default_factory=list)
    power_sources: set[str] = field(default_factory=set)
    # Configs not yet through every round, as the store says when the run ends (None before):
    # with rounds, a resumed run also finishes the later rounds of configs stored earlier,
    # which the counts above do not see.
    unfinished: int | None = None

    @property
    def remaining(self) -> int:
        if self.unfinished is not None:
            return self.unfinished
        return self.planned - self.already_done - self.done - self.failed - self.skipped


class SweepRunner:
    """Creates, resumes and runs GEMM sweeps for one device with one backend."""

    def __init__(self, store: Store, device: ComputeDevice, backend: GemmBackend,
                 policy: TimingPolicy | None = None, progress: bool = True):
        self.store, self.device, self.backend = store, device, backend
        self.policy = policy or TimingPolicy()
        self.progress = progress
        self.reader = device.power_reader()
        self._probe: SpeedProbe | None = None

    def probe(self) -> SpeedProbe | None:
        """The speed probe when the policy asks for one (made on first use: it runs kernels)."""
        if self._probe is None and default_probe(self.policy.probe, self.backend.device_kind):
            self._probe = SpeedProbe.for_backend(self.backend)
        return self._probe

    def create(self, plan: list[tuple[Op, str]], options: dict | None = None) -> int:
        with self.store.session() as s:
            dev = upsert_device(s, self.device.info)
            sweep = Sweep(kind="gemm", device_id=dev.id, host=socket.gethostname(),
                          n_planned=len(plan), status="running",
                          config={"device_fingerprint": dev.fingerprint,
                                  "device": self.device.info.name,
                                  "backend": self.backend.name,
                                  "policy": dataclasses.asdict(self.policy),
                                  "options": options or {},
                                  "configs": [{**op.to_dict(), "origin": origin}
                                              for op, origin in plan]})
            s.add(sweep)
            s.commit()
            return sweep.id

    def extend(self, sweep_id: int, plan: list[tuple[Op, str]]) -> int:
        """Append configs to a sweep's plan (adaptive sampling grows its sweep round by round);
        configs already planned are ignored. Returns how many were added."""
        with self.store.session() as s:
            sweep = s.get(Sweep, sweep_id)
            configs = list(sweep.config["configs"])
            known = {Op.from_dict(c).key() for c in configs}
            new = [{**op.to_dict(), "origin": origin} for op, origin in plan
                   if op.key() not in known]
            sweep.config = {**sweep.config, "configs": configs + new}
            sweep.n_planned = len(configs) + len(new)
            s.commit()
            return len(new)

    @staticmethod
    def load_plan(store: Store, sweep_id: int) -> tuple[SweepOrigin, list[tuple[Op, str]]]:
        """Where a stored GEMM sweep was made, and its (op, origin) plan."""
        origin = sweep_origin(store, sweep_id, ("gemm",), "GEMM")
        return origin, [(Op.from_dict(c), c.get("origin", "")) for c in origin.config["configs"]]

    def run(self, sweep_id: int) -> SweepSummary:
        origin, plan = self.load_plan(self.store, sweep_id)
        check_resumed_on(origin, sweep_id, self.device)
        # A sweep is measured by the policy it was created with, resumed or not.
        self.policy = stored_policy(origin.config, self.policy)
        items = [(op.key(), (op, label)) for op, label in plan]
        return run_sweep(self.store, sweep_id, origin.config, items,
                         lambda item: self.measure(item[0], item[1], sweep_id,
                                                   origin.device_id),
                         self.progress, "gemm sweep")

    def measure(self, op: Op, origin: str, sweep_id: int, device_id: int) -> Measurement:
        """Measure one config; failures and skips come back as rows too, never exceptions."""
        row = Measurement(sweep_id=sweep_id, device_id=device_id, config_key=op.key(),
                          op_kind=op.kind, m=op["m"], n=op["n"], k=op["k"], batch=op.batch,
                          dtype=op.dtype, layout=op.layout, backend=self.backend.name,
                          params={"origin": origin}, power_source=self.reader.source,
                          l2_flushed=self.policy.l2_flush)
        need = 1.1 * gemm_bytes(op["m"], op["n"], op["k"], op.dtype, op.batch)
        if op.dtype == "bf16" and self.backend.device_kind == "cpu":
            need *= 3  # torch builds bf16 operands from fp32 copies
        free = self.device.free_memory_bytes()
        if free is not None and need > MEMORY_HEADROOM * free:
            row.status = "skipped"
            row.error = (f"does not fit memory: needs {need / 2**30:.2f} GiB, "
                         f"{free / 2**30:.2f} GiB free")
            return row
        try:
            prepared = self.backend.prepare(op)
            result = measure_probed(
                lambda: measure_kernel(prepared.fn, prepared.timer, self.device, self.reader,
                                       self.policy), self.probe(), row)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if "OutOfMemory" in type(exc).__name__ or isinstance(exc, MemoryError):
                row.status, row.error = "skipped", f"does not fit memory: {exc}"
            else:
                row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
            return row
        self._fill(row, op, prepared, result)
        return row

    def _fill(self, row: Measurement, op: Op, prepared, result: KernelResult) -> None:
        row.compute_type = prepared.compute_type
        row.tensor_core = prepared.tensor_core and DTYPES[op.dtype].tensor_core
        row.threads = prepared.threads
        fill_result(row, result, gemm_flops(op["m"], op["n"], op["k"], op.batch))


def measure_probed(measure: Callable[[], KernelResult], probe: SpeedProbe | None,
                   row: Measurement) -> KernelResult:
    """``measure()``, or, with a speed probe, measured until calm (collectors.probe); then
    ``row.params["probe"]`` says how calm it was."""
    result, calm = measure_when_calm(measure, lambda r: r.timing.p10_ms, probe)
    if calm is not None:
        row.params = {**(row.params or {}), "probe": calm.to_dict()}
    return result


# Policy fields added after sweeps were first stored, with how those older sweeps measured, so
# that a resumed sweep goes on measuring as it began.
_BEFORE_FIELD = {"queue_ahead": False}


@dataclass(frozen=True)
class SweepOrigin:
    """The device a stored sweep was created on: its store id, its name there (cpu, cuda:0),
    its model and fingerprint; and the sweep's own config."""

    device_id: int
    name: str
    model: str
    fingerprint: str
    config: dict


def sweep_origin(store: Store, sweep_id: int, kinds: tuple[str, ...], what: str) -> SweepOrigin:
    """Where sweep ``sweep_id`` (of one of ``kinds``) was made; a clear error if the store has
    no such sweep."""
    with store.session() as s:
        sweep = get_sweep(s, sweep_id)
        if sweep is None or sweep.kind not in kinds:
            raise ValueError(f"--resume {sweep_id}: no {what} sweep with that id in the store")
        if sweep.device_id is None:  # its rows belong to whichever devices take its items
            raise ValueError(f"--resume {sweep_id}: a distributed sweep; workers on the devices "
                             "it names carry it on (`hwnas worker`, `hwnas sweep status`)")
        dev = s.get(Device, sweep.device_id)
        return SweepOrigin(dev.id, dev.name, dev.model,
                           sweep.config.get("device_fingerprint", dev.fingerprint),
                           dict(sweep.config))


def resume_device(origin: SweepOrigin, sweep_id: int, asked: str | None) -> ComputeDevice:
    """The device to resume a sweep on: ``asked`` (--device), else the one it was made on;
    either way it must be that very device (:func:`check_resumed_on`)."""
    try:
        device = get_device(asked or origin.name)
    except DeviceError as exc:
        if asked:
            raise
        raise DeviceError(f"--resume {sweep_id}: the sweep was made on {origin.model} "
                          f"({origin.name}), which this machine cannot open ({exc}); resume "
                          "it where it started") from None
    check_resumed_on(origin, sweep_id, device)
    return device


def check_resumed_on(origin: SweepOrigin, sweep_id: int, device: ComputeDevice) -> None:
    """A sweep resumes only on the device it was created on: its rows are stored under that
    device, so measuring them anywhere else would mislabel them."""
    here = device.info
    if here.fingerprint != origin.fingerprint:
        raise DeviceError(
            f"--resume {sweep_id}: the sweep was made on {origin.model} ({origin.name}, "
            f"fingerprint {origin.fingerprint[:12]}); {here.name} here is {here.model} "
            f"(fingerprint {here.fingerprint[:12]}): resume it on the device it started on"
            + (f" (--device {origin.name}, the default when resuming)"
               if here.name != origin.name else ""))


def stored_policy(config: dict, default: TimingPolicy) -> TimingPolicy:
    """The timing policy a sweep was created with (``default`` for a sweep that stored none);
    fields this version does not know are ignored, fields it added take the value that matches
    how older versions measured (``_BEFORE_FIELD``), else their defaults."""
    stored = config.get("policy")
    if not stored:
        return default
    known = {f.name for f in dataclasses.fields(TimingPolicy)}
    return TimingPolicy(**{**_BEFORE_FIELD,
                           **{k: v for k, v in stored.items() if k in known}})


def count_row(summary: SweepSummary, row: Measurement) -> None:
    """Add a stored row to the summary (done with its TFLOP/s and power source, skipped, or
    failed)."""
    if row.status == "ok":
        summary.done += 1
        if row.tflops:
            summary.tflops.append(row.tflops)
        summary.power_sources.add(row.power_source)
    elif row.status == "skipped":
        summary.skipped += 1
    else:
        summary.failed += 1


def run_sweep(store: Store, sweep_id: int, config: dict, items: list[tuple[str, object]],
              measure: Callable[[object], Measurement], progress: bool,
              desc: str) -> SweepSummary:
    """Measure a sweep's ``(config_key, item)`` pairs through its rounds (collectors.rounds)
    with a progress bar: the sweep is marked running, then done, or interrupted on Ctrl-C;
    what was stored before counts as already done."""
    with store.session() as s:
        s.get(Sweep, sweep_id).status = "running"
        s.commit()
    rounds = sweep_rounds(config)
    done = rounds_done(store, sweep_id, rounds)
    keys = [k for k, _ in items]
    finished, measured = rounds_progress(done, keys, rounds)
    summary = SweepSummary(sweep_id, len(items), already_done=finished)
    t0 = time.perf_counter()
    bar = progress_bar(len(items) * rounds, measured, progress,
                       unit="cfg" if rounds == 1 else "measurement", desc=desc)

    def commit_first(row: Measurement) -> None:
        if commit_once(store, row):
            count_row(summary, row)

    def advance() -> None:
        bar.set_postfix(failed=summary.failed, skipped=summary.skipped, refresh=False)
        bar.update(1)

    status = "done"
    try:
        run_rounds(store, sweep_id, items, rounds, done, measure, commit_first, advance)
    except KeyboardInterrupt:
        summary.interrupted = True
        status = "interrupted"
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - t0
        with store.session() as s:
            sw = s.get(Sweep, sweep_id)
            sw.status = status
            sw.finished_at = utcnow()
            s.commit()
        finished_now, _ = rounds_progress(rounds_done(store, sweep_id, rounds), keys, rounds)
        summary.unfinished = len(items) - finished_now
    return summary


def fill_result(row: Measurement, result: KernelResult, flops: float) -> None:
    """Timing, power and device state of a measured kernel into ``row`` (status ok, or
    failed when the latency is not finite)."""
    t, p = result.timing, result.power
    row.status = "ok"
    row.latency_ms_median, row.latency_ms_p10, row.latency_ms_p90 = (
        t.median_ms, t.p10_ms, t.p90_ms)
    row.latency_ms_mean, row.latency_ms_std = t.mean_ms, t.std_ms
    row.repetitions = t.repetitions
    row.tflops = flops / (t.median_ms * 1e-3) / 1e12
    row.power_w, row.energy_j = p.power_w, p.energy_j_per_call
    row.power_source, row.power_window_s = p.source, p.window_s
    b, a = result.before, result.after
    row.sm_clock_mhz, row.mem_clock_mhz = b.sm_clock_mhz, b.mem_clock_mhz
    row.temperature_c, row.throttle_reasons = b.temperature_c, b.throttle_reasons
    duty = p.duty(t.median_ms)
    row.params = {**(row.params or {}), "inner_calls": t.inner,
                  **({"timer": t.method} if t.method else {}),
                  "state_after": dataclasses.asdict(a),
                  **({"power_note": p.note} if p.note else {}),
                  **({"power_duty": round(duty, 3)} if duty is not None else {})}
    if not math.isfinite(row.latency_ms_median):
        row.status, row.error = "failed", "non-finite latency"


def commit_once(store: Store, row: Measurement, extra=None) -> bool:
    """Add ``row`` (and run ``extra(session)``) in one transaction; False, with nothing
    stored, when the config was already stored by someone else (a unique key says so)."""
    with store.session() as s:
        s.add(row)
        if extra is not None:
            extra(s)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return False
    return True


PIPED_INTERVAL_S = 30.0  # seconds between progress lines when stderr is a file or a pipe


def progress_bar(total: int, initial: int, enabled: bool, unit: str = "cfg",
                 desc: str = "gemm sweep"):
    """A tqdm bar with ETA (on stderr), or a silent one when not ``enabled``. Where stderr is
    not a terminal (nohup, a CI log, a pipe), it writes a line every :data:`PIPED_INTERVAL_S`
    instead of redrawing ten times a second, so a night's sweep leaves a readable log."""
    import sys

    from tqdm import tqdm

    piped = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, initial=initial, disable=not enabled, unit=unit, desc=desc,
                dynamic_ncols=True, mininterval=PIPED_INTERVAL_S if piped else 0.1)
