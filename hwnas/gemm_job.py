"""A GEMM sweep as the CLI runs it: options in, device + store + backend + sweep out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click
import numpy as np

from collectors.devices import ComputeDevice, get_device
from collectors.gemm.backends import GemmBackend, backend_for
from collectors.gemm.shapes import log_grid, network_shapes, random_shapes
from collectors.ops import check_dtype
from collectors.probe import TOLERANCE, default_probe
from collectors.rounds import default_rounds, not_calm_count
from collectors.store.db import Store
from collectors.sweep import (
    SweepRunner,
    SweepSummary,
    plan_gemm,
    resume_device,
    sweep_origin,
)
from collectors.timing import TimingPolicy
from hwnas.output import peaks_text, print_table


def split_list(text: str, option: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{option}: give at least one value")
    return items


def build_plan(shape_set: str, min_size: int, max_size: int, points: int, count: int, seed: int,
               layouts: str, dtypes: list[str], aligned: float = 0.0, batched: float = 0.0,
               max_batch: int = 64, shapes_csv: str | None = None) -> tuple[list, dict]:
    """The (op, origin) list of a GEMM sweep and the options that made it; ``shapes_csv``
    (:func:`plan_from_csv`) instead of ``shape_set``."""
    if shapes_csv is not None:
        return plan_from_csv(shapes_csv, dtypes, split_list(layouts, "--layout"))
    if shape_set == "grid":
        shapes = log_grid(min_size, max_size, points)
    elif shape_set == "random":
        shapes = random_shapes(count, min_size, max_size, seed, aligned, batched, max_batch)
    else:
        if max_size <= 0:
            raise ValueError(f"--max-size: must be a positive integer, got {max_size}")
        shapes = network_shapes(max_size=max_size)
    layout_list = split_list(layouts, "--layout")
    options = {"shapes": shape_set, "min_size": min_size, "max_size": max_size,
               "points": points, "count": count, "seed": seed, "dtypes": dtypes,
               "layouts": layout_list,
               **({"aligned": aligned, "batched": batched, "max_batch": max_batch}
                  if shape_set == "random" else {})}
    return plan_gemm(shapes, dtypes, layout_list), options


def plan_from_csv(path: str, dtypes: list[str], layouts: list[str]) -> tuple[list, dict]:
    """The GEMMs of a CSV file (columns m, n, k and optionally batch, dtype, layout, as
    ``hwnas predict gemm --shapes-csv`` reads and ``--out`` writes them), each in its row's
    dtype and layout, or in every one of ``dtypes`` and ``layouts`` where the file has no
    such column; and the options that made the plan. Rows that ask for the same config once
    are measured once."""
    from pathlib import Path

    from collectors.gemm.shapes_csv import LAYOUTS, read_gemm_csv
    from collectors.ops import Op

    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"--layout: expected nn, nt, tn or tt, got {layout!r}")
    frame = read_gemm_csv(path, dtypes[0], layouts[0])
    columns = frame.attrs["given"]
    plan, seen = [], set()
    for i, r in enumerate(frame.itertuples()):
        row_dtypes = [r.dtype] if "dtype" in columns else dtypes
        row_layouts = ([f"{'t' if r.trans_a else 'n'}{'t' if r.trans_b else 'n'}"]
                       if "layout" in columns else layouts)
        for dtype in row_dtypes:
            for layout in row_layouts:
                op = Op.gemm(int(r.m), int(r.n), int(r.k), dtype, int(r.batch),
                             trans_a=int(layout[0] == "t"), trans_b=int(layout[1] == "t"))
                if op.key() not in seen:
                    seen.add(op.key())
                    plan.append((op, f"{Path(path).name} row {i + 1}"))
    used = sorted({op.dtype for op, _ in plan})
    return plan, {"shapes": "csv", "file": str(Path(path).resolve()), "dtypes": used,
                  "layouts": sorted({op.layout for op, _ in plan})}


def echo_slow_configs(store: Store, sweep_id: int) -> None:
    """Say how many configs of a sweep never had a round at full speed (collectors.probe)."""
    slow = not_calm_count(store, sweep_id)
    if slow:
        click.echo(f"{slow} configs were measured only while the machine ran slow (a reference "
                   f"GEMM more than {TOLERANCE:.0%} slower than its full speed around every "
                   "attempt): their latencies may be high; params.probe says by how much")


@dataclass
class GemmJob:
    store: Store
    device: ComputeDevice
    backend: GemmBackend
    runner: SweepRunner
    sweep_id: int
    resumed: bool
    # How calm the machine was for each peak this job measured (metric -> Calmness).
    peak_calmness: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_options(cls, *, db_url=None, device_name=None, backend=None, threads=None,
                     dtypes="fp32",
                     shape_set="grid", min_size=16, max_size=1024, points=4, count=50, seed=0,
                     aligned=0.0, batched=0.0, max_batch=64, shapes_csv=None, layouts="nn",
                     warmup=0.05, min_reps=10, min_time=0.2,
                     power_window=1.0, l2_flush=False, queue_ahead=True, cooldown=0.0,
                     rounds=None, probe=None, resume_id=None,
                     progress=True,
                     skip_unsupported_dtypes=False, adaptive=False, budget=100, pool=2000,
                     round_size=10) -> GemmJob:
        # Validate every option before touching hardware or the store.
        policy = TimingPolicy(warmup_s=warmup, min_reps=min_reps, min_time_s=min_time,
                              power_window_s=power_window, l2_flush=l2_flush,
                              queue_ahead=queue_ahead, cooldown_s=cooldown)
        dtype_list = [check_dtype(d, "--dtype").name for d in split_list(dtypes, "--dtype")]
        if adaptive:
            if min_size <= 0 or max_size < min_size:
                raise ValueError("--min-size/--max-size: need 0 < min-size <= max-size")
            if budget < 4:
                raise ValueError(f"--budget: must be at least 4, got {budget}")
            # The adaptive sampler plans its sweep round by round; what it needs to carry on
            # after an interruption is stored with the sweep.
            plan, options = [], {"shapes": "adaptive", "min_size": min_size,
                                 "max_size": max_size, "seed": seed, "aligned": aligned,
                                 "batched": batched, "max_batch": max_batch,
                                 "dtypes": dtype_list,
                                 "layouts": ["nn"], "budget": budget, "pool": pool,
                                 "round_size": round_size}
        elif resume_id is None:
            plan, options = build_plan(shape_set, min_size, max_size, points, count, seed,
                                       layouts, dtype_list, aligned, batched, max_batch,
                                       shapes_csv=shapes_csv)
            dtype_list = options["dtypes"]  # a shapes file's own dtypes, where it names them
        origin = None
        if resume_id is not None:
            # A resumed sweep measures on its own device, with its own backend and dtypes,
            # unless told otherwise (and then only on that same device).
            store = Store(db_url)
            origin = sweep_origin(store, resume_id, ("gemm",), "GEMM")
            device = resume_device(origin, resume_id, device_name)
            backend = backend or origin.config.get("backend")
            dtype_list = origin.config.get("options", {}).get("dtypes") or dtype_list
        else:
            device = get_device(device_name or "cpu")
        policy = dataclasses.replace(policy, rounds=default_rounds(rounds, device.info.kind),
                                     probe=default_probe(probe, device.info.kind))
        backend_impl = backend_for(device.info.kind, backend, getattr(device, "index", 0),
                                   threads)
        if skip_unsupported_dtypes:
            dtype_list = [d for d in dtype_list if d in backend_impl.dtypes()]
        for d in dtype_list:
            backend_impl.check(d)
        if origin is None:  # opened only once every option is known to be good
            store = Store(db_url)
        runner = SweepRunner(store, device, backend_impl, policy, progress=progress)
        if resume_id is not None:
            return cls(store, device, backend_impl, runner, resume_id, True)
        return cls(store, device, backend_impl, runner, runner.create(plan, options), False)

    def describe_device(self) -> None:
        i = self.device.info
        mem = f"{i.memory_bytes / 2**30:.1f} GiB" if i.memory_bytes else "unknown memory"
        click.echo(f"device: {i.name} = {i.model} ({i.sm_count} cores, {mem}); "
                   f"backend {self.backend.name}; store {self.store.display_url}")

    def ensure_peaks(self) -> None:
        """Measure the peaks this sweep's dtypes need and the device does not have yet."""
        from collectors.peaks import BEYOND_ROOFLINE, measure_peaks
        from collectors.store.repo import device_peaks, save_peaks, upsert_device

        with self.store.session() as s:
            row = upsert_device(s, self.device.info)
            have = device_peaks(s, row.id)
            dtypes = sorted(set(self._options().get("dtypes", [])) - {
                m.removeprefix("compute_") for m in have})
            dtypes = [d for d in dtypes if d != "fp64"]
            # stores from before a CPU's figures beyond the roofline get them on their next
            # sweep
            beyond = self.device.info.kind != "gpu" and not set(BEYOND_ROOFLINE) <= set(have)
            memory = (["bandwidth"] * ("bandwidth" not in have)
                      + ["first touch and pool rates"] * beyond)
            if not dtypes and not memory:
                return
            click.echo(f"measuring peaks of {self.device.info.name} "
                       f"({', '.join(dtypes + memory)}; once per device) ...", err=True)
            measured = measure_peaks(self.device, self.backend, dtypes,
                                     bandwidth="bandwidth" not in have, probe=self.runner.probe(),
                                     calmness=self.peak_calmness, beyond_roofline=beyond)
            save_peaks(s, row, measured)
            s.commit()
        if measured:
            click.echo(f"  {peaks_text(measured)}", err=True)

    def recheck_peaks(self) -> None:
        """Peaks measured at the start of this sweep, when the speed probe had seen only a few
        windows, are measured again if the probe now, after the sweep, finds that the machine
        ran slow while they were measured; a higher figure replaces the stored one."""
        from collectors.peaks import remeasure_peaks, slow_peaks
        from collectors.store.repo import device_peaks, save_peaks, upsert_device

        probe = self.runner.probe()
        slow = slow_peaks(self.peak_calmness, probe) if probe is not None else []
        if not slow:
            return
        click.echo("the peaks were measured while the machine ran slow (the sweep's reference "
                   "GEMM has run faster since); measuring them again ...", err=True)
        with self.store.session() as s:
            row = upsert_device(s, self.device.info)
            raised = remeasure_peaks(self.device, self.backend, probe, slow,
                                     device_peaks(s, row.id))
            save_peaks(s, row, [peak for peak, _ in raised])
            s.commit()
        self.peak_calmness.clear()
        for peak, before in raised:
            click.echo(f"  {peak.metric}: {before:.4g} -> {peak.value:.4g} {peak.unit}", err=True)
        if not raised:
            click.echo("  none came out higher: the stored peaks stand", err=True)

    def run(self, measure_missing_peaks: bool = True) -> SweepSummary:
        if measure_missing_peaks:
            self.ensure_peaks()
        verb = "resuming" if self.resumed else "starting"
        click.echo(f"{verb} sweep {self.sweep_id}", err=True)
        summary = self.runner.run(self.sweep_id)
        if not summary.interrupted:
            self.recheck_peaks()
        return summary

    def is_adaptive(self) -> bool:
        """Whether this sweep's shapes are chosen by the adaptive sampler (and it can go on)."""
        opts = self._options()
        return opts.get("shapes") == "adaptive" and "budget" in opts

    def run_adaptive(self) -> SweepSummary:
        """Measure the sweep's budget of configs, chosen where the current forest is least
        sure; a resumed sweep first finishes the round it was stopped in, then goes on choosing
        from the same candidate pool until the budget is spent."""
        from collectors.ops import Op
        from collectors.store.repo import device_peaks, upsert_device
        from predictor.adaptive import AdaptiveSampler, candidate_pool
        from predictor.features import DeviceProfile

        self.ensure_peaks()
        opts = self._options()
        with self.store.session() as s:
            peaks = device_peaks(s, upsert_device(s, self.device.info).id)
            s.commit()
        i = self.device.info
        profile = DeviceProfile(i.model, i.kind, int(i.sm_count or 1), peaks)
        # Sweeps stored before the aligned or batched shares had none: resumed, they keep
        # their pool.
        frame = candidate_pool(opts["pool"], opts["min_size"], opts["max_size"],
                               opts["dtypes"], opts["seed"], opts.get("aligned", 0.0),
                               opts.get("batched", 0.0), opts.get("max_batch", 64))
        ops = [Op.gemm(int(r.m), int(r.n), int(r.k), r.dtype, int(r.batch))
               for r in frame.itertuples()]
        row_of = {op.key(): idx for idx, op in enumerate(ops)}
        sampler = AdaptiveSampler(profile, frame, seed=opts["seed"])
        total = SweepSummary(self.sweep_id, 0)

        def run_planned(resumed: bool = False) -> None:
            got = self.runner.run(self.sweep_id)
            if resumed:  # later rounds count the earlier ones as stored before: not again
                total.already_done = got.already_done
            for name in ("done", "failed", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(got, name))
            total.tflops += got.tflops
            total.seconds += got.seconds
            total.interrupted = got.interrupted
            if got.interrupted:
                raise KeyboardInterrupt

        def measure(indices: list[int]) -> dict[int, float]:
            self.runner.extend(self.sweep_id, [(ops[idx], "adaptive") for idx in indices])
            run_planned()
            return self._latencies({ops[idx].key(): idx for idx in indices})

        _, plan = SweepRunner.load_plan(self.store, self.sweep_id)
        tried = {row_of[op.key()] for op, _ in plan if op.key() in row_of}
        budget, batch = opts["budget"], opts["round_size"]
        verb = "resuming" if tried else "starting"
        click.echo(f"{verb} adaptive sweep {self.sweep_id}: budget {budget} of a pool of "
                   f"{len(frame)} configs, rounds of {batch}"
                   + (f"; {len(tried)} chosen before" if tried else ""), err=True)
        try:
            if tried:
                run_planned(resumed=True)  # the round an interruption cut short
            measured = self._latencies({ops[idx].key(): idx for idx in tried})
            sampler.run(measure, budget, batch, measured=measured, tried=tried)
        except KeyboardInterrupt:
            total.interrupted = True
        else:
            self.recheck_peaks()
        total.planned = min(budget, len(frame))  # so "remaining" is what is left to choose
        return total

    def _options(self) -> dict:
        from collectors.store.repo import get_sweep

        with self.store.session() as s:
            return dict(get_sweep(s, self.sweep_id).config["options"])

    def _latencies(self, keys: dict[str, int]) -> dict[int, float]:
        """Latency (ms) of this sweep's measured configs among ``keys`` (config key -> pool
        row), by pool row; failed or unmeasured configs are left out."""
        from sqlalchemy import select

        from collectors.store.models import Measurement

        with self.store.session() as s:
            rows = s.execute(select(Measurement.config_key, Measurement.latency_ms)
                             .where(Measurement.sweep_id == self.sweep_id,
                                    Measurement.status == "ok",
                                    Measurement.config_key.in_(list(keys))))
            return {keys[k]: float(v) for k, v in rows}

    def print_summary(self, summary: SweepSummary) -> None:
        from sqlalchemy import select

        from collectors.store.models import Measurement

        with self.store.session() as s:
            rows = s.execute(select(Measurement.dtype, Measurement.status, Measurement.tflops,
                                    Measurement.latency_ms, Measurement.power_w)
                             .where(Measurement.sweep_id == self.sweep_id)).all()
        table = []
        for dtype in sorted({r.dtype for r in rows}):
            ok = [r for r in rows if r.dtype == dtype and r.status == "ok"]
            bad = [r for r in rows if r.dtype == dtype and r.status != "ok"]
            tf = np.array([r.tflops for r in ok]) if ok else np.array([np.nan])
            lat = np.array([r.latency_ms for r in ok]) if ok else np.array([np.nan])
            pw = [r.power_w for r in ok if r.power_w is not None]
            table.append([dtype, len(ok), len(bad), f"{np.nanmin(lat):.4g}",
                          f"{np.nanmax(lat):.4g}", f"{np.nanmin(tf):.3g}",
                          f"{np.nanmedian(tf):.3g}", f"{np.nanmax(tf):.3g}",
                          f"{np.median(pw):.1f}" if pw else "unavailable"])
        click.echo("")
        print_table(["dtype", "ok", "failed/skipped", "min ms", "max ms", "min TFLOP/s",
                     "median TFLOP/s", "max TFLOP/s", "median power W"], table)
        state = "interrupted" if summary.interrupted else "finished"
        click.echo(f"\nsweep {self.sweep_id} {state} in {summary.seconds:.1f} s: "
                   f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped, "
                   f"{summary.already_done} stored earlier, {summary.remaining} remaining")
        echo_slow_configs(self.store, self.sweep_id)
        reader = self.runner.reader
        if not reader.available:
            click.echo(f"power: unavailable on {self.device.info.name} ({reader.reason}); "
                       "rows are stored with power_source='unavailable'")
        if summary.interrupted or summary.remaining:
            click.echo(f"resume with: hwnas collect gemm --resume {self.sweep_id}")
