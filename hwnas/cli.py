"""The ``hwnas`` command line. Heavy imports (torch, CuPy) happen inside commands so that
``hwnas --help`` stays instant."""

from __future__ import annotations

import functools
import json
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from hwnas.output import print_table

DB_OPTION = click.option(
    "--db", "db_url", envvar="HWNAS_DB", default=None, metavar="URL",
    help="SQLAlchemy URL of the store (sqlite:///file or postgresql://user@host/db). "
         "Default: $HWNAS_DB, else a SQLite file under $XDG_DATA_HOME/hwnas.")


def friendly_errors(fn):
    """Turn the project's own errors into one clear line and an exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from collectors.devices import DeviceError
        from collectors.gemm.backends import BackendError
        from collectors.ops import OpError
        from collectors.store.db import StoreError
        from predictor.data import DataError
        from predictor.registry import RegistryError

        try:
            return fn(*args, **kwargs)
        except (OpError, BackendError) as exc:
            raise click.UsageError(str(exc)) from None
        except (StoreError, DeviceError, DataError, RegistryError) as exc:
            raise click.ClickException(str(exc)) from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        except SQLAlchemyError as exc:
            first = str(exc).strip().splitlines()[0]
            raise click.ClickException(f"database error: {first}") from None

    return wrapper


def open_store(db_url: str | None):
    from collectors.store.db import Store

    return Store(db_url)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hwnas")
def main() -> None:
    """hwnas: measure GEMMs and networks on CPUs and NVIDIA GPUs, store the measurements,
    predict latency, power and energy from them, serve the predictions over gRPC, and search
    for networks that fit a hardware budget.

    Start with `hwnas demo`: it measures a small GEMM sweep on this CPU, trains a model, serves
    it on a local port and queries it.
    """


@main.command()
@DB_OPTION
@click.option("--measure-peaks", is_flag=True,
              help="Measure achievable compute (TFLOP/s) and bandwidth (GB/s) peaks now and "
                   "store them with each device.")
@friendly_errors
def devices(db_url: str | None, measure_peaks: bool) -> None:
    """List the CPU and every NVIDIA GPU with their specs and stored peaks."""
    from collectors import nvml
    from collectors.devices import detect_devices
    from collectors.store.repo import device_peaks, upsert_device

    found = detect_devices()
    store = open_store(db_url)
    rows = []
    with store.session() as s:
        for dev in found:
            row = upsert_device(s, dev.info)
            if measure_peaks:
                from collectors.gemm.backends import backend_for
                from collectors.peaks import measure_peaks as run_peaks
                from collectors.probe import SpeedProbe, default_probe
                from collectors.store.repo import save_peaks

                click.echo(f"measuring peaks of {dev.info.name} ...", err=True)
                backend = backend_for(dev.info.kind, index=getattr(dev, "index", 0))
                probe = (SpeedProbe.for_backend(backend)
                         if default_probe(None, dev.info.kind) else None)
                save_peaks(s, row, run_peaks(dev, backend, probe=probe))
            peaks = device_peaks(s, row.id)
            reader = dev.power_reader()
            i = dev.info
            rows.append([
                i.name, i.model, i.sm_count or "-",
                f"{i.memory_bytes / 2**30:.1f}" if i.memory_bytes else "-",
                i.driver_version or "-", f"{i.max_sm_clock_mhz:.0f}" if i.max_sm_clock_mhz else "-",
                f"{i.power_limit_w:.0f}" if i.power_limit_w else "-",
                reader.source if reader.available else f"unavailable ({reader.reason})",
                ", ".join(f"{k}={v:.3g}" for k, v in sorted(peaks.items())) or "not measured",
                row.fingerprint[:12],
            ])
        s.commit()
    print_table(["device", "model", "cores/SMs", "mem GiB", "driver", "max MHz", "power limit W",
                 "power source", "peaks (TFLOP/s, GB/s)", "fingerprint"], rows)
    if len(found) == 1:
        click.echo(f"no NVIDIA GPU: {nvml.unavailable_reason or 'NVML found none'}")


def _stack(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco


plan_options = _stack([
    click.option("--dtype", "dtypes", default="fp32", show_default=True,
                 help="Comma-separated dtypes: fp32, tf32, fp16, bf16 (fp64 on CPU)."),
    click.option("--shapes", "shape_set", type=click.Choice(["grid", "random", "networks"]),
                 default="grid", show_default=True,
                 help="grid: log-spaced M,N,K; random: log-uniform draws; networks: conv layers as "
                      "implicit GEMMs and transformer projections/attention matmuls."),
    click.option("--min-size", type=int, default=16, show_default=True,
                 help="Smallest dimension."),
    click.option("--max-size", type=int, default=1024, show_default=True,
                 help="Largest dimension."),
    click.option("--points", type=click.IntRange(1, 1000), default=4, show_default=True,
                 help="Sizes per dimension for --shapes grid (points^3 shapes)."),
    click.option("--count", type=click.IntRange(1, 10_000_000), default=50, show_default=True,
                 help="Number of shapes for --shapes random."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed for --shapes random."),
    click.option("--layout", "layouts", default="nn", show_default=True,
                 help="Comma-separated transposes of A and B: nn, nt, tn, tt."),
])
timing_options = _stack([
    click.option("--warmup", type=click.FloatRange(min=0), default=0.05, show_default=True,
                 help="Warm-up time per config (s)."),
    click.option("--min-reps", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Minimum timed repetitions per config."),
    click.option("--min-time", type=click.FloatRange(min=0), default=0.2, show_default=True,
                 help="Minimum timed time per config (s)."),
    click.option("--power-window", type=click.FloatRange(min=0), default=1.0,
                 show_default=True,
                 help="Steady-state window for energy (s); only used where power is readable."),
    click.option("--l2-flush", is_flag=True, help="GPU: overwrite 256 MiB between repetitions "
                                                   "(cold-cache timing)."),
    click.option("--cooldown", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="Pause between configs (s), keeps temperature comparable."),
])

ROUNDS_OPTION = click.option(
    "--rounds", type=click.IntRange(1, 100), default=None,
    help="Passes over all configs, each in a new random order; a config's latency is its "
         "lowest round p10 (fastest decile), every round is kept with the row. Default: 3 on a "
         "CPU (shared and virtual CPUs drift in phases of seconds, so one pass repeats only to "
         "~10%), 1 on a GPU.")

QUEUE_OPTION = click.option(
    "--queue-ahead/--no-queue-ahead", default=True, show_default=True,
    help="GPU: queue each repetition's calls behind a spin kernel so the CUDA events time the "
         "kernels back to back; without it, a GEMM that runs shorter than its launch through "
         "CuPy takes is timed at the host's launch pace. Rows say how they were timed "
         "(params.timer). No effect on a CPU.")

PROBE_OPTION = click.option(
    "--probe/--no-probe", default=None,
    help="Time a small reference GEMM next to every measurement, and measure a config again "
         "(up to 3 times, after waiting up to 1 s in all for the reference to run within 10% "
         "of its full speed) when the machine ran slow around it; rows keep how calm they "
         "were (params.probe). Default: on for a CPU (+10-40% sweep time on a calm machine, "
         "up to a few times that while it runs slow), off for a GPU.")


@main.group()
def collect() -> None:
    """Measure ops on this machine into the store."""


@collect.command("gemm")
@DB_OPTION
@click.option("--device", "device_name", default="cpu", show_default=True,
              help="cpu, or cuda:N for an NVIDIA GPU.")
@click.option("--backend", default=None,
              help="torch or numpy on a CPU (default torch); cupy on a GPU.")
@click.option("--threads", type=int, default=None,
              help="CPU threads per GEMM (default: all cores); stored with every row.")
@plan_options
@timing_options
@QUEUE_OPTION
@ROUNDS_OPTION
@PROBE_OPTION
@click.option("--resume", "resume_id", type=int, default=None, metavar="SWEEP",
              help="Resume sweep SWEEP: measure only what it has not stored yet (its own "
                   "timing options and rounds apply); an adaptive sweep then goes on choosing "
                   "shapes until its budget is spent.")
@click.option("--skip-peaks", is_flag=True,
              help="Do not measure the device's peaks before the sweep if missing.")
@click.option("--adaptive", is_flag=True,
              help="Choose shapes where a forest fitted on the measurements so far is least "
                   "sure, weighed by how many candidates each stands for (within "
                   "--min-size..--max-size), instead of --shapes.")
@click.option("--budget", type=int, default=100, show_default=True,
              help="With --adaptive: configs to measure in all.")
@click.option("--pool", type=click.IntRange(10, 1_000_000), default=2000, show_default=True,
              help="With --adaptive: random candidate shapes to choose from.")
@click.option("--round-size", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="With --adaptive: configs measured between refits.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@friendly_errors
def collect_gemm(db_url, device_name, backend, threads, dtypes, shape_set, min_size, max_size,
                 points, count, seed, layouts, warmup, min_reps, min_time, power_window, l2_flush,
                 queue_ahead, cooldown, rounds, probe, resume_id, skip_peaks, adaptive, budget,
                 pool, round_size, no_progress) -> None:
    """Sweep GEMM shapes x dtypes on one device; every config is committed as it completes.

    Interrupt with Ctrl-C at any time; `--resume SWEEP` carries on where it stopped.
    """
    from hwnas.gemm_job import GemmJob

    job = GemmJob.from_options(
        db_url=db_url, device_name=device_name, backend=backend, threads=threads,
        dtypes=dtypes,
        shape_set=shape_set, min_size=min_size, max_size=max_size, points=points, count=count,
        seed=seed, layouts=layouts, warmup=warmup, min_reps=min_reps, min_time=min_time,
        power_window=power_window, l2_flush=l2_flush, queue_ahead=queue_ahead,
        cooldown=cooldown, rounds=rounds, probe=probe, resume_id=resume_id,
        progress=not no_progress,
        adaptive=adaptive and resume_id is None,
        budget=budget, pool=pool, round_size=round_size)
    if job.is_adaptive():
        summary = job.run_adaptive()
    else:
        summary = job.run(measure_missing_peaks=not skip_peaks)
    job.print_summary(summary)
    if summary.interrupted:
        sys.exit(130)


@collect.command("network")
@DB_OPTION
@click.option("--family", "families", default="nb201,proxyless,resnet,mobilenet,transformer",
              show_default=True,
              help="Comma-separated: nb201, proxyless (the `hwnas search --space mobilenet` "
                   "space), resnet, mobilenet, transformer (sampled whole networks), or layers "
                   "(single conv2d/depthwise/linear/attention layers over grids).")
@click.option("--count", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Architectures per family.")
@click.option("--batch", "batches", default="1", show_default=True,
              help="Batch size (comma-separated for layer sweeps).")
@click.option("--layer-kinds", default=",".join(("conv2d", "depthwise_conv2d", "linear",
                                                 "attention")), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", "device_name", default="cpu", show_default=True,
              help="cpu, or cuda:N for an NVIDIA GPU (CUDA events, NVML energy; needs a CUDA "
                   "build of torch).")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--resume", "resume_id", type=int, default=None, metavar="SWEEP")
@click.option("--no-progress", is_flag=True)
@timing_options
@ROUNDS_OPTION
@PROBE_OPTION
@friendly_errors
def collect_network(db_url, families, count, batches, layer_kinds, seed, device_name, threads,
                    resume_id, no_progress, warmup, min_reps, min_time, power_window, l2_flush,
                    cooldown, rounds, probe) -> None:
    """Measure whole sampled networks (or single layers) on this CPU or a GPU; each decomposed
    into its ops (stored with the row) so network predictors can learn from them."""
    from collectors.devices import get_device
    from collectors.networks.sweep import LAYER_KINDS, NetworkSweep, layer_grid, network_plan
    from collectors.probe import default_probe
    from collectors.rounds import default_rounds
    from collectors.timing import TimingPolicy
    from hwnas.gemm_job import echo_slow_configs, split_list

    device = get_device(device_name)
    policy = TimingPolicy(warmup_s=warmup, min_reps=min_reps, min_time_s=min_time,
                          power_window_s=power_window, l2_flush=l2_flush, cooldown_s=cooldown,
                          rounds=default_rounds(rounds, device.info.kind),
                          probe=default_probe(probe, device.info.kind))
    batch_list = [int(b) for b in split_list(batches, "--batch")]
    if any(b < 1 for b in batch_list):
        raise click.UsageError("--batch: must be positive integers")
    sweeper = NetworkSweep(open_store(db_url), device, policy, threads,
                           progress=not no_progress)
    if resume_id is None:
        fams = split_list(families, "--family")
        if "layers" in fams:
            kinds = split_list(layer_kinds, "--layer-kinds")
            bad = sorted(set(kinds) - set(LAYER_KINDS))
            if bad:
                raise click.UsageError(f"--layer-kinds: unknown {bad}; choose from "
                                       f"{', '.join(LAYER_KINDS)}")
            plan, kind = layer_grid(kinds, batch_list), "layers"
        else:
            plan, kind = network_plan(fams, count, batch_list[0], seed), "network"
        resume_id = sweeper.create(plan, kind)
    summary = sweeper.run(resume_id)
    click.echo(f"sweep {resume_id}: {summary.done} measured, {summary.failed} failed, "
               f"{summary.already_done} stored earlier in {summary.seconds:.0f} s"
               + (f"; resume with --resume {resume_id}" if summary.interrupted else ""))
    echo_slow_configs(sweeper.store, resume_id)


@main.command()
@DB_OPTION
@friendly_errors
def demo(db_url: str | None) -> None:
    """The main job on embedded defaults: measure a small GEMM sweep on this CPU (fp32, and bf16
    where it runs), train and register a latency model, measure 8 NAS-Bench-201 networks and
    fit the network model, start the gRPC service on a free local port, query it through the
    Python client (GEMMs, and a ninth network also measured here), print the answers and stop
    the service."""
    from hwnas.demo import run_demo

    run_demo(db_url)


@main.group()
def db() -> None:
    """Inspect the store and move its data between machines."""


@db.command("info")
@DB_OPTION
@friendly_errors
def db_info(db_url: str | None) -> None:
    """Show the store's URL, devices and sweeps with their progress."""
    from sqlalchemy import func, select

    from collectors.store.models import Device, Measurement, Sweep

    store = open_store(db_url)
    click.echo(f"store: {store.display_url}")
    with store.session() as s:
        counts = dict(s.execute(select(Measurement.sweep_id, func.count())
                                .group_by(Measurement.sweep_id)).all())
        devs = {d.id: d for d in s.scalars(select(Device))}
        rows = [[sw.id, sw.kind, devs[sw.device_id].name if sw.device_id in devs else "-",
                 devs[sw.device_id].model if sw.device_id in devs else "-", sw.status,
                 f"{counts.get(sw.id, 0)}/{sw.n_planned}", sw.host or "-",
                 sw.started_at.strftime("%Y-%m-%d %H:%M")]
                for sw in s.scalars(select(Sweep).order_by(Sweep.id))]
    print_table(["sweep", "kind", "device", "model", "status", "stored/planned", "host",
                 "started (UTC)"], rows)


@db.command("export")
@DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="File to write.")
@click.option("--sweep", "sweep_ids", type=int, multiple=True, help="Only these sweeps.")
@friendly_errors
def db_export(db_url, fmt, out_path, sweep_ids) -> None:
    """Write measurements (with their devices) to CSV or Parquet."""
    from collectors.store.exchange import export_measurements

    n = export_measurements(open_store(db_url), out_path, fmt, sweep_ids or None)
    click.echo(f"exported {n} measurements to {out_path}")


@db.command("import")
@DB_OPTION
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@friendly_errors
def db_import(db_url, path) -> None:
    """Load a file written by `hwnas db export` (CSV or Parquet); rows already here are skipped."""
    from collectors.store.exchange import import_measurements

    added, skipped = import_measurements(open_store(db_url), path)
    click.echo(f"imported {added} measurements from {path} ({skipped} already present)")


@main.group()
def sweep() -> None:
    """Distributed sweeps: create one in a shared store, watch workers finish it."""


@sweep.command("create")
@DB_OPTION
@click.option("--device-type", "device_types", multiple=True, default=("cpu",),
              show_default=True,
              help="Who measures: a device model as `hwnas devices` shows it (e.g. 'NVIDIA H100 "
                   "80GB HBM3'), or cpu / gpu for any device of that kind. Repeat for several; "
                   "each config is measured once per device type.")
@click.option("--backend", default=None, help="CPU backend for CPU workers (torch or numpy).")
@plan_options
@timing_options
@QUEUE_OPTION
@PROBE_OPTION
@friendly_errors
def sweep_create(db_url, device_types, backend, dtypes, shape_set, min_size, max_size, points,
                 count, seed, layouts, warmup, min_reps, min_time, power_window, l2_flush,
                 queue_ahead, cooldown, probe) -> None:
    """Queue a GEMM sweep in the store for `hwnas worker` processes on any number of machines."""
    import dataclasses

    from collectors.gemm.backends import CPU_BACKENDS
    from collectors.ops import check_dtype
    from collectors.queue import create_distributed_sweep
    from collectors.timing import TimingPolicy
    from hwnas.gemm_job import build_plan, split_list

    if backend is not None and backend not in CPU_BACKENDS:
        raise click.UsageError(f"--backend {backend}: CPU backends are "
                               f"{', '.join(CPU_BACKENDS)}")
    # probe None: each worker decides by its device's kind (CPU workers probe, GPU ones not).
    policy = TimingPolicy(warmup_s=warmup, min_reps=min_reps, min_time_s=min_time,
                          power_window_s=power_window, l2_flush=l2_flush, cooldown_s=cooldown,
                          probe=probe, queue_ahead=queue_ahead)
    dtype_list = [check_dtype(d, "--dtype").name for d in split_list(dtypes, "--dtype")]
    plan, options = build_plan(shape_set, min_size, max_size, points, count, seed, layouts,
                               dtype_list)
    types = [t.strip() for t in device_types if t.strip()]
    sweep_id = create_distributed_sweep(open_store(db_url), plan, types, backend,
                                        dataclasses.asdict(policy), options)
    click.echo(f"sweep {sweep_id}: {len(plan)} configs x {len(types)} device type(s) queued; "
               f"start workers with: hwnas worker --db URL --device cpu|cuda:N")


@sweep.command("status")
@DB_OPTION
@click.option("--sweep", "sweep_id", type=int, default=None, help="One sweep (default: all).")
@friendly_errors
def sweep_status(db_url, sweep_id) -> None:
    """Progress per device type and per worker (done, pending, leased, failed), with ETA."""
    import datetime as dt

    from collectors.queue import progress
    from collectors.store.models import utcnow

    store = open_store(db_url)
    with store.session() as s:
        p = progress(s, sweep_id)
    now = utcnow()
    rows = []
    for (sid, dtype), counts in sorted(p["by_type"].items()):
        done, failed = counts.get("done", 0), counts.get("failed", 0)
        pending, leased = counts.get("pending", 0), counts.get("leased", 0)
        spans = [(n, t0, t1) for n, t0, t1 in p["per_worker"].values()]
        total_done = sum(n for n, _, _ in spans)
        first = min((t0 for _, t0, _ in spans), default=None)
        rate = total_done / max((now - first).total_seconds(), 1e-9) if first else 0.0
        eta = (f"{dt.timedelta(seconds=round((pending + leased) / rate))}"
               if rate > 0 and pending + leased else ("done" if not pending + leased else "-"))
        rows.append([sid, dtype, done, failed, pending, leased, done + failed + pending + leased,
                     eta])
    print_table(["sweep", "device type", "done", "failed", "pending", "leased", "total", "ETA"],
                rows)
    click.echo("")
    wrows = []
    for wid, w in sorted(p["workers"].items()):
        n, t0, t1 = p["per_worker"].get(wid, (0, None, None))
        age = (now - w.heartbeat_at).total_seconds()
        rate = n / max((t1 - t0).total_seconds(), 1e-9) if n > 1 else 0.0
        held = p["held"].get(wid, {})
        wrows.append([wid, w.status, n, held.get("leased", 0), held.get("failed", 0),
                      f"{rate:.2f}/s" if rate else "-", f"{age:.0f} s ago"])
    print_table(["worker", "status", "done", "leased", "failed", "rate", "heartbeat"], wrows)


@main.command()
@DB_OPTION
@click.option("--device", "device_name", default="cpu", show_default=True,
              help="cpu, or cuda:N.")
@click.option("--lease", type=float, default=60.0, show_default=True,
              help="Seconds a claimed config stays ours without a heartbeat; a dead worker's "
                   "configs return to the queue after this.")
@click.option("--patience", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds to keep retrying (with backoff) while the store is unreachable.")
@click.option("--max-items", type=click.IntRange(min=1), default=None,
              help="Stop after this many configs.")
@click.option("--threads", type=int, default=None, help="CPU threads per GEMM.")
@click.option("--keep-polling", is_flag=True,
              help="Wait for new sweeps instead of exiting when nothing is left.")
@friendly_errors
def worker(db_url, device_name, lease, patience, max_items, threads, keep_polling) -> None:
    """Work queued sweeps for this device until none is left: claim a config under a lease,
    measure it, store it; safe to run on many machines at once against one PostgreSQL."""
    import logging

    from collectors.devices import get_device
    from collectors.worker import StoreUnavailable, Worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    w = Worker(open_store(db_url), get_device(device_name), lease, patience, threads)
    click.echo(f"worker {w.id} on {w.device.info.name} ({w.device.info.model})", err=True)
    try:
        stats = w.run(max_items=max_items, exit_when_done=not keep_polling)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        w.stop()
        stats = w.stats
    click.echo(f"worker {w.id}: {stats.done} done, {stats.failed} failed, "
               f"{stats.duplicates_dropped} duplicates dropped, {stats.retries} store retries")


@main.command()
@DB_OPTION
@click.option("--device", required=True,
              help="cpu or cuda:N: measure this machine's CPU or GPU; else the name of a device "
                   "that cannot be reached from here (becomes its model name), read with "
                   "--from-csv.")
@click.option("--samples", type=int, default=10, show_default=True,
              help="Architectures to measure on the new device.")
@click.option("--from-csv", "source_csv", type=click.Path(exists=True, dir_okay=False),
              default=None,
              help="Latencies of the new device: a CSV with arch_str and a column named after "
                   "the device (or --column), for devices this machine cannot reach.")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.3, show_default=True,
              help="With --device cpu/cuda:N: timed seconds per architecture and round.")
@click.option("--column", default=None, help="Column of --from-csv (default: --device).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="NAS-Bench-201 latency table of the reference devices (default: the "
                   "shipped data/external/nasbench201_latency_train_devices.csv).")
@friendly_errors
def adapt(db_url, device, samples, source_csv, column, min_time, reference) -> None:
    """Learn a new device's NAS-Bench-201 latencies from a few measured architectures: choose
    which to measure, measure them here (--device cpu or cuda:N) or read them (--from-csv),
    fit and register the model (served by PredictNetwork)."""
    from predictor.adapt import DEFAULT_REFERENCE, adapt_by_measuring, adapt_from_csv

    local = device.strip().lower()
    if source_csv is None:
        if local != "cpu" and not local.startswith("cuda"):
            raise click.UsageError("--from-csv: required unless --device is cpu or cuda:N "
                                   "(only this machine's devices can be measured from here)")
        r = adapt_by_measuring(open_store(db_url), samples, reference or DEFAULT_REFERENCE,
                               min_time, device_name=local)
        device = r.row.device_model
    else:
        r = adapt_from_csv(open_store(db_url), device, samples, source_csv, column,
                           reference or DEFAULT_REFERENCE)
    click.echo(f"selected {len(r.samples)} architectures (k-means over the reference devices' "
               "latency space):")
    for row in r.samples.itertuples():
        click.echo(f"  {row.latency_ms:9.3f} ms  {row.arch_str}")
    click.echo(f"registered {device} nb201 model v{r.row.version} ({r.row.path})")
    if r.spearman_all is not None:
        click.echo(f"Spearman rho over all {15625} architectures in {source_csv}: "
                   f"{r.spearman_all:.3f}")


@main.command("search")
@DB_OPTION
@click.option("--space", type=click.Choice(["mobilenet", "nb201"]), default="mobilenet",
              show_default=True)
@click.option("--width", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Channels after the stem.")
@click.option("--depth", type=click.IntRange(1, 64), default=4, show_default=True,
              help="mobilenet: searchable blocks; nb201: cells per stage.")
@click.option("--strategy", type=click.Choice(["darts", "gumbel"]), default="darts",
              show_default=True, help="darts: first-order DARTS; gumbel: ProxylessNAS-style "
                                      "straight-through Gumbel sampling.")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=15, show_default=True)
@click.option("--retrain-epochs", type=click.IntRange(1, 10_000), default=30,
              show_default=True, help="Training of the exported architecture from scratch.")
@click.option("--latency-ms", type=float, default=None, help="Latency budget (ms).")
@click.option("--power-w", type=float, default=None, help="Power budget (W).")
@click.option("--energy-mj", type=float, default=None, help="Energy budget per inference (mJ).")
@click.option("--tradeoff", type=float, default=0.0, show_default=True,
              help="Weight of log(expected latency) in the loss (FBNet/LA-DARTS style).")
@click.option("--margin", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Search at budget x (1 - margin), so the measured network meets it.")
@click.option("--device", "device_spec", default=None,
              help="Device model whose costs guide the search (default: this CPU).")
@click.option("--server", default=None,
              help="host:port of a running `hwnas serve`; default: start one here on --db.")
@click.option("--pareto", "pareto_fractions", default=None,
              help="Comma-separated fractions of the unconstrained network's predicted latency "
                   "(e.g. 0.5,0.7,0.85): one search per budget plus random search, and a plot.")
@click.option("--random-samples", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="With --pareto: architectures random search trains per budget.")
@click.option("--calibrate", type=click.IntRange(min=0), default=0, show_default=True,
              help="Before searching, measure this many architectures of the space (at its "
                   "input, width and depth: the fewest- and most-FLOPs ones, then random ones; "
                   "at least 5) on the target device, here, and fit the device's network "
                   "model from them and any network data already stored, so costs include the "
                   "per-layer overhead that sums of GEMM predictions leave out. Architectures "
                   "an earlier run measured are reused. 0: off.")
@click.option("--data", "data_spec", default="digits", show_default=True,
              help="digits (scikit-learn's bundled 8x8 digits), or a local folder: CIFAR-10's "
                   "binary release (cifar-10-batches-bin) or one subfolder per class.")
@click.option("--resolution", type=click.IntRange(4, 1024), default=32, show_default=True,
              help="Image size for a class-folder data set.")
@click.option("--limit", type=click.IntRange(10, 10_000_000), default=None,
              help="Use at most this many images (quick runs on big data sets).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="hwnas-search",
              show_default=True)
@click.option("--no-progress", is_flag=True)
@friendly_errors
def search_cmd(db_url, space, width, depth, strategy, epochs, retrain_epochs, latency_ms,
               power_w, energy_mj, tradeoff, margin, device_spec, server, pareto_fractions,
               random_samples, calibrate, data_spec, resolution, limit, seed, out_dir,
               no_progress) -> None:
    """Hardware-aware differentiable NAS (digits by default, CIFAR-10 or a class-folder data set
    from a local path): find the most accurate
    network within latency/power/energy budgets on a device, using the prediction service for
    costs. Writes the architecture (JSON), an exported program (torch.export), state_dict
    and ONNX to --out, with its predicted and measured latency and its accuracy after
    retraining."""
    from pathlib import Path

    import grpc

    from collectors.devices import CpuDevice
    from search.data import load
    from search.job import (
        OP_SUM,
        pareto,
        prediction_client,
        prediction_method,
        single,
        wait_for_network_model,
    )
    from search.run import SearchConfig, local_device_for
    from search.spaces import SpaceConfig

    data = load(data_spec, resolution, seed, limit)
    _, channels, height, _ = data.x_train.shape
    space_cfg = SpaceConfig(space, in_channels=channels, resolution=height, width=width,
                            depth=depth, classes=int(data.y_train.max()) + 1)
    budgets = {k: v for k, v in (("latency_ms", latency_ms), ("power_w", power_w),
                                 ("energy_mj", energy_mj)) if v is not None}
    cfg = SearchConfig(strategy=strategy, epochs=epochs, budgets=budgets, tradeoff=tradeoff,
                       seed=seed)
    device = device_spec or CpuDevice().info.model
    try:
        with prediction_client(server, db_url) as client:
            if device_spec:
                device = client.predict_gemm(device_spec, [(8, 8, 8)]).device
            measure_on = local_device_for(device)
            if calibrate:
                version = _calibrate_search(db_url, measure_on, device, space_cfg, calibrate,
                                            seed, not no_progress)
                wait_for_network_model(client, device, space_cfg, version)
            elif prediction_method(client, device, space_cfg) == OP_SUM:
                remedy = ("add --calibrate 20 (measures 20 networks of this space here first)"
                          if measure_on is not None else "run hwnas collect network and hwnas "
                          "train --target network on the machine with it")
                click.echo(f"note: {device} has no network model, so costs are sums of GEMM "
                           "predictions per op: they leave out the framework's cost per layer "
                           "and the memory-bound ops (on a CPU often most of a small network's "
                           f"time). For budgets that hold when measured, {remedy}.", err=True)
            if pareto_fractions:
                fractions = [float(f) for f in pareto_fractions.split(",") if f.strip()]
                if not fractions or any(not 0 < f <= 1 for f in fractions):
                    raise click.UsageError("--pareto: fractions in (0, 1]")
                doc = pareto(space_cfg, client, device, cfg, fractions, random_samples,
                             retrain_epochs, measure_on, Path(out_dir), margin,
                             not no_progress, data)
                for o in doc["search"] + doc["random"]:
                    measured = ("-" if o["measured_ms"] is None
                                else f"{o['measured_ms']:.3f}")
                    click.echo(f"{o['label']:<24} test acc {o['test_acc'] * 100:5.1f}%  "
                               f"predicted {o['predicted']['latency_ms']:.3f} ms  measured "
                               f"{measured} ms")
                _echo_slow_cautions(doc["search"] + doc["random"])
                click.echo(f"plot: {Path(out_dir) / 'pareto.png'}")
                return
            doc = single(space_cfg, client, device, cfg, budgets, margin, retrain_epochs,
                         measure_on, Path(out_dir), not no_progress, data)
    except grpc.RpcError as exc:
        raise click.ClickException(f"prediction service: {exc.code().name}: "
                                   f"{exc.details()}") from None
    click.echo(f"architecture: {json.dumps(doc['arch'])}")
    p = doc["predicted"]
    click.echo(f"predicted on {device}: {p['latency_ms']:.3f} ms"
               + (f", {p['power_w']:.3g} W, {p['energy_mj']:.3g} mJ" if p.get("power_w")
                  else " (power unavailable)") + f"; from the {doc['prediction_method']}")
    if doc["measured_latency_ms"] is not None:
        energy = (f", {doc['measured_energy_mj']:.3g} mJ at {doc['measured_power_w']:.3g} W"
                  if doc["measured_energy_mj"] is not None
                  else f" (energy: {doc['measured_power_source']})")
        click.echo(f"measured on {doc['measured_on']}: {doc['measured_latency_ms']:.3f} ms "
                   f"({doc['measured_latency_ms'] / p['latency_ms']:.2f}x predicted)" + energy)
        _echo_caution(doc["measured_calm"], doc["measured_slow_ratio"],
                      f"measure it again when the machine is quiet: hwnas verify {out_dir}")
    click.echo(f"accuracy after retraining: val {doc['val_accuracy'] * 100:.1f}%, test "
               f"{doc['test_accuracy'] * 100:.1f}%; search {doc['search_seconds']:.0f} s "
               f"({doc['hardware_term_share'] * 100:.1f}% on the hardware term)")
    if budgets:
        click.echo(f"budgets {budgets}: met {doc['budget_met']}")
    click.echo(f"wrote {out_dir}/arch.json, model.pt2, state_dict.pt, model.onnx")


def _calibrate_search(db_url, local_device, device_model: str, space_cfg, count: int,
                      seed: int, progress: bool) -> int:
    """``hwnas search --calibrate``: measure networks of the space on ``local_device`` and fit
    the device's network model (hwnas.calibrate); prints what it did and returns the model
    version to search with."""
    from hwnas.calibrate import calibrate

    if local_device is None:
        raise click.UsageError(
            f"--calibrate: {device_model} is not on this machine (or torch cannot use it); "
            "calibrate where it is: hwnas collect network there, then hwnas train --target "
            "network")
    cal = calibrate(open_store(db_url), local_device, space_cfg, count, seed, progress)
    held = cal.metrics.get("held_out", {})
    click.echo(f"calibration: {cal.measured} networks of this space measured now, "
               f"{cal.stored_earlier} stored earlier, {cal.failed} failed; network model "
               f"v{cal.version} ({'fitted now' if cal.retrained else 'already fitted on them'}"
               f", {cal.metrics.get('networks', '?')} networks): held-out within ±10% "
               f"{held.get('within_10', float('nan')):.0f}%, RMSPE "
               f"{held.get('rmspe', float('nan')):.1f}%")
    return cal.version


def _list_of(kind, name: str):
    """A click callback parsing a comma-separated list of ``kind`` values."""

    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {name}: {value!r}") from None
        if not items:
            raise click.BadParameter("at least one value")
        return items

    return parse


@main.command("verify")
@click.argument("arch", type=click.Path())
@click.option("--device", "device_name", default="cpu", show_default=True,
              help="Where to measure: cpu, or cuda:N (needs a CUDA build of torch).")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Timed seconds per round.")
@click.option("--rounds", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Rounds spread over time; the latency is the lowest round's p10.")
@click.option("--no-record", is_flag=True, help="Do not append the result to arch.json.")
@friendly_errors
def verify_cmd(arch, device_name, min_time, rounds, no_record) -> None:
    """Measure a network found by `hwnas search` (ARCH: its --out folder or arch.json) on
    this machine's CPU or a GPU, by the search's own protocol, and compare with what was
    predicted and with the budgets. For a search run elsewhere against this device's model:
    only arch.json is needed (no NNI, no prediction service). The result is appended to
    arch.json's `verifications` unless --no-record. A `--pareto` output folder (or its
    pareto.json): every point is measured, recorded, and the measured front drawn
    (pareto_measured.png)."""
    from search.job import OP_SUM
    from search.verify import METRICS, arch_file, pareto_file, verify, verify_pareto

    front = pareto_file(arch)
    if front is not None:
        rows, plot = verify_pareto(front, device_name, min_time, rounds, not no_record)
        print_table(["point", "predicted ms", "measured ms", "ratio", "test acc %"],
                    [[r["label"], f"{r['predicted_ms']:.4g}", f"{r['measured_ms']:.4g}",
                      f"{r['measured_ms'] / r['predicted_ms']:.3f}",
                      f"{r['test_acc'] * 100:.1f}"] for r in rows])
        click.echo(f"measured front: {plot}"
                   + ("" if no_record else f"; recorded in {front} (verifications)"))
        _echo_slow_cautions(rows)
        return
    v = verify(arch, device_name, min_time, rounds, record=not no_record)
    units = {"latency_ms": "ms", "energy_mj": "mJ", "power_w": "W"}
    click.echo(f"measured on {v.device}; predicted for {v.predicted_for}")
    ratios = v.ratios()
    for k in METRICS:
        got, want = v.measured.get(k), v.predicted.get(k)
        shown = "unavailable" if got is None else f"{got:.4g} {units[k]}"
        if got is None and v.measured["power_source"] != "unavailable":
            shown += f" ({v.measured['power_source']})"
        pred = "" if want is None else f", predicted {want:.4g} {units[k]}"
        ratio = f" (x{ratios[k]:.3f})" if k in ratios else ""
        click.echo(f"  {k:<11} {shown}{pred}{ratio}")
    for k, budget in v.budgets.items():
        met = v.budget_met[k]
        state = "not measurable here" if met is None else ("met" if met else "NOT met")
        click.echo(f"budget {k} <= {budget:g}: {state}")
    if not v.same_device:
        click.echo(f"note: measured on {v.device_model}, predicted for {v.predicted_for}: "
                   "the comparison is across devices")
    if v.prediction_method == OP_SUM:
        click.echo("note: the search's costs were sums of GEMM predictions per op (no network "
                   "model), which leave out per-layer overhead; hwnas search --calibrate N on "
                   "this machine fits one")
    _echo_caution(v.measured["calm"], v.measured["slow_ratio"],
                  "run this again when the machine is quiet")
    if not no_record:
        click.echo(f"recorded in {arch_file(arch)} (verifications)")


def _echo_caution(calm: bool | None, slow_ratio: float | None, remedy: str,
                  label: str = "") -> None:
    """A caution line (on stderr) when a latency was measured while the machine ran slow
    (search.run.slow_caution), with the ``remedy`` that fits where it was measured."""
    from search.run import slow_caution

    caution = slow_caution(calm, slow_ratio)
    if caution:
        click.echo(f"caution{f' ({label})' if label else ''}: {caution}; {remedy}", err=True)


def _echo_slow_cautions(points: list[dict]) -> None:
    """:func:`_echo_caution` for each point (a dict with ``label`` and, in ``measured`` or
    itself, ``calm`` and ``slow_ratio``)."""
    for point in points:
        m = point.get("measured") or point
        _echo_caution(m.get("calm"), m.get("slow_ratio"), "measure again when the machine is "
                      "quiet: hwnas verify on the output folder", point["label"])


@main.command("experiment", context_settings={"ignore_unknown_options": False})
@DB_OPTION
@click.option("--server", default=None,
              help="host:port of the `hwnas serve` every trial asks for costs; default: start "
                   "one here on --db (local training service only).")
@click.option("--latency-ms", "latency_list", callback=_list_of(float, "numbers"),
              help="Latency budgets (ms) to search at, e.g. 0.4,0.6,0.8.")
@click.option("--tradeoff", "tradeoff_list", callback=_list_of(float, "numbers"),
              help="Trade-off weights of log(latency) to search with, e.g. 0,0.05,0.2.")
@click.option("--seed", "seed_list", callback=_list_of(int, "integers"),
              help="Seeds (repeats of each setting), e.g. 0,1,2.")
@click.option("--strategy", "strategy_list", callback=_list_of(str, "names"),
              help="Strategies to compare: darts,gumbel.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Trials running at once (over all machines).")
@click.option("--max-trials", type=click.IntRange(1), default=None,
              help="Stop after this many trials (default: the whole grid).")
@click.option("--training-service", type=click.Choice(["local", "remote"]), default="local",
              show_default=True, help="local: trials are processes here; remote: NNI starts "
                                      "them over SSH on each --machine.")
@click.option("--machine", "machines", multiple=True, metavar="USER@HOST[:PORT]",
              help="A remote machine (repeat the option); needs hwnas installed there.")
@click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Private key for the remote machines (default: SSH agent/~/.ssh).")
@click.option("--python", "python_exe", default=None,
              help="Python that runs each trial (default: this one locally, `python3` on "
                   "remote machines).")
@click.option("--manager-ip", default=None,
              help="This machine's address as remote machines see it (NNI manager).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port of NNI's manager and web portal (default: a free one).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="hwnas-experiment",
              show_default=True)
@click.option("--no-progress", is_flag=True)
@click.argument("search_args", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def experiment_cmd(db_url, server, latency_list, tradeoff_list, seed_list, strategy_list,
                   concurrency, max_trials, training_service, machines, ssh_key, python_exe,
                   manager_ip, port, out_dir, no_progress, search_args) -> None:
    """Run `hwnas search` over a grid of budgets, trade-offs, seeds and strategies as the trials
    of one NNI experiment. Options after `--` go to every trial's `hwnas search`, e.g.

      hwnas experiment --latency-ms 0.4,0.6 --seed 0,1 -- --epochs 10 --width 16

    Trials run as local processes by default (--concurrency at once), or on other machines with
    --training-service remote --machine user@host ... (see the README). All trials ask the same
    prediction service for costs. Writes experiment.json and experiment.png to --out; each
    trial's exported network stays in its NNI trial folder."""
    import contextlib
    import sys
    from pathlib import Path

    from search.experiment import (
        ExperimentSpec,
        Machine,
        grid_points,
        run_experiment,
        write_report,
    )
    from search.job import local_service
    from search.nni_trial import trial_argv

    grid = {k: v for k, v in (("latency_ms", latency_list), ("tradeoff", tradeoff_list),
                              ("seed", seed_list), ("strategy", strategy_list)) if v}
    if not grid:
        raise click.UsageError("give at least one of --latency-ms, --tradeoff, --seed, "
                               "--strategy with the values to try")
    if training_service == "remote" and not server:
        raise click.UsageError("--training-service remote needs --server HOST:PORT of a "
                               "prediction service the machines can reach")
    python = python_exe or (sys.executable if training_service == "local" else "python3")
    with contextlib.ExitStack() as stack:
        address = server or stack.enter_context(local_service(db_url))
        spec = ExperimentSpec(list(search_args), grid, address, concurrency, max_trials,
                              training_service, [Machine.parse(m) for m in machines], ssh_key,
                              python, manager_ip, Path(out_dir))
        # Every trial's command line must parse before any trial starts.
        for point in grid_points(spec):
            argv = trial_argv(spec.search_args, point, address, Path(out_dir))
            if search_cmd.make_context("search", argv[1:]).params["calibrate"]:
                raise click.UsageError(
                    "--calibrate: calibrate once before the experiment (hwnas search "
                    "--calibrate N with the same space options), not in every trial: trials "
                    "running at once would measure side by side")
        click.echo(f"{spec.trial_count()} trials ({training_service}), costs from {address}")
        try:
            outcomes = run_experiment(spec, port, not no_progress)
        except RuntimeError as exc:  # NNI's manager did not start, or the experiment failed
            raise click.ClickException(str(exc)) from None
    report = write_report(outcomes, spec, Path(out_dir))
    rows = []
    for o in sorted(outcomes, key=lambda o: -(o.result or {}).get("default", -1)):
        r = o.result or {}
        measured = r.get("measured_latency_ms")
        rows.append([o.trial_id, json.dumps(o.params), o.status,
                     "-" if not r else f"{r['default'] * 100:.1f}",
                     "-" if not r else f"{r['predicted_latency_ms']:.3f}",
                     "-" if measured is None else f"{measured:.3f}",
                     {None: "-", 1.0: "yes", 0.0: "no"}[r.get("budget_met")]])
    print_table(["trial", "parameters", "status", "test acc %", "predicted ms", "measured ms",
                 "budget met"], rows)
    failed = [o for o in outcomes if o.status != "SUCCEEDED"]
    for o in failed:
        click.echo(f"trial {o.trial_id} {o.status}: see trial.stderr in {o.folder}", err=True)
    click.echo(f"wrote {report} and {report.with_suffix('.png')}")
    if failed:
        raise SystemExit(1)


@main.group("import")
def import_() -> None:
    """Load public measurements made elsewhere into the store."""


@import_.command("gpperf")
@DB_OPTION
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@friendly_errors
def import_gpperf(db_url, path) -> None:
    """GPPerf's RTX 4070 SGEMM sweep (e.g. data/external/gpperf_rtx4070_sgemm.csv): runtime only;
    its power column is not a kernel measurement and is not stored as one."""
    from collectors.importers import import_gpperf as run_import

    added, rows = run_import(open_store(db_url), path)
    click.echo(f"imported {added} GEMMs ({rows} replicate rows) from {path}; power: unavailable")


DEVICE_ARG = click.option("--device", "device_spec", required=True,
                          help="cpu, cuda:N, or a device model name (or a unique part of it) "
                               "as listed by `hwnas models` / `hwnas db info`.")


def _print_evaluation(ev) -> None:
    click.echo(f"{ev.device_model}: {ev.n_rows} measurements, {ev.n_shapes} shapes; peaks "
               f"{ev.profile.peaks_source}; power "
               f"{'trained' if ev.has_power else 'unavailable (latency-only model)'}")
    for name, table in ev.tables().items():
        click.echo(f"\n{name}:")
        print_table(["target", "dtype", "n", "MAPE %", "median APE %", "within ±10% %", "R^2",
                     "Spearman"],
                    [[r.target, r.dtype, r.n, f"{r.mape:.1f}", f"{r.mdape:.1f}",
                      f"{r.within_10:.1f}", f"{r.r2:.3f}", f"{r.spearman:.3f}"]
                     for r in table.itertuples()])
    from predictor.features import GPU_TILE

    counts = {b: ev.bounds.count(b) for b in sorted(set(ev.bounds))}
    click.echo("\nbaseline the forest chose from its training shapes (of "
               f"{len(ev.bounds)} fits): " + ", ".join(f"{b} {n}" for b, n in counts.items())
               + " (roofline: max(FLOPs/peak, bytes/bandwidth); waves: compute paid in whole "
               f"waves of {GPU_TILE}x{GPU_TILE} tiles over the SMs)")
    unscored = ev.unscored()
    if unscored:
        click.echo(f"\nnot scored: {unscored} held-out rows whose dtype had no other "
                   "measurements in their fold's training data (the model refuses such dtypes)")


@main.command()
@DB_OPTION
@DEVICE_ARG
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--trees", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--target", type=click.Choice(["gemm", "network"]), default="gemm",
              show_default=True,
              help="gemm: GEMM cost forest; network: whole-network model from `hwnas collect "
                   "network` data (per-op-type forests + additive residual).")
@friendly_errors
def train(db_url, device_spec, folds, trees, target) -> None:
    """Fit a model for a device model, evaluate it on held-out shapes (or architectures) and
    register it as a new version."""
    from predictor.data import resolve_device_model
    from predictor.training import train_and_register

    store = open_store(db_url)
    model = resolve_device_model(store, device_spec)
    if target == "network":
        from predictor import network

        row, metrics = network.train_and_register(store, model, folds)
        for name in ("held_out", "flops_proxy"):
            m = metrics[name]
            click.echo(f"{name:>11}: within ±10% {m['within_10']:.1f}%, RMSPE "
                       f"{m['rmspe']:.1f}%, Spearman {m['spearman']:.3f}")
        click.echo(f"registered {model} network v{row.version} from {metrics['networks']} "
                   f"networks and {metrics['layers']} layers: {row.path}")
        return
    row, ev = train_and_register(store, model, folds, n_estimators=trees)
    _print_evaluation(ev)
    if row.meta.get("data_note"):
        click.echo(f"\ndata: {row.meta['data_note']}")
    click.echo(f"\nregistered {row.device_model} v{row.version}: {row.path} "
               f"(sha256 {row.sha256[:16]}..., baseline {row.meta['bound']})")


@main.command("eval")
@DB_OPTION
@DEVICE_ARG
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--trees", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a predicted-vs-measured PNG of the shape-held-out latency.")
@click.option("--worst", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="List this many held-out configs whose latency was predicted worst "
                   "(0: none).")
@friendly_errors
def eval_(db_url, device_spec, folds, trees, plot_path, worst) -> None:
    """Evaluate the GEMM model on whole shapes held out (GroupKFold over M,N,K and the largest
    shapes held out); per target and dtype: MAPE, median APE, share within ±10%, R^2, Spearman;
    then the configs predicted worst, to see where the model misses."""
    from predictor.data import load_gemm_frame, resolve_device_model
    from predictor.evaluate import plot_predicted_vs_measured, worst_configs
    from predictor.training import evaluate

    store = open_store(db_url)
    model = resolve_device_model(store, device_spec)
    frame, profile = load_gemm_frame(store, model)
    ev = evaluate(frame, profile, folds, n_estimators=trees)
    _print_evaluation(ev)
    if worst:
        click.echo("\nlatency predicted worst, shapes held out (GroupKFold):")
        print_table(["shape", "dtype", "layout", "measured ms", "predicted ms", "pred/meas",
                     "APE %", "fold"],
                    [[r.shape, r.dtype, r.layout, f"{r.measured:.4g}", f"{r.predicted:.4g}",
                      f"{r.ratio:.2f}", f"{r.ape_pct:.1f}", r.fold]
                     for r in worst_configs(ev.kfold, "latency_ms", worst).itertuples()])
    if frame.attrs.get("note"):
        click.echo(f"\ndata: {frame.attrs['note']}")
    if plot_path:
        plot_predicted_vs_measured(ev.kfold, "latency_ms", plot_path,
                                   f"{model}: GEMM latency, shapes held out")
        click.echo(f"\nplot: {plot_path}")


@main.command()
@DB_OPTION
@friendly_errors
def models(db_url) -> None:
    """List registered models; the highest version per device is the default."""
    from predictor.registry import list_models

    rows = []
    for r in list_models(open_store(db_url)):
        kfold = r.meta.get("metrics", {}).get("shape-held-out (GroupKFold)", [{}])[0]
        rows.append([r.device_model, r.version, r.target, r.n_samples,
                     "yes" if r.has_power else "no",
                     f"{kfold.get('mape', float('nan')):.1f}",
                     f"{kfold.get('within_10', float('nan')):.1f}",
                     r.created_at.strftime("%Y-%m-%d %H:%M"), r.sha256[:12]])
    print_table(["device model", "version", "target", "samples", "power", "MAPE %",
                 "within ±10% %", "created (UTC)", "sha256"], rows)


@main.group()
def predict() -> None:
    """Predict costs from a registered model."""


@predict.command("gemm")
@DB_OPTION
@DEVICE_ARG
@click.option("--m", "m", required=True, help="Rows of A and C.")
@click.option("--n", "n", required=True, help="Columns of B and C.")
@click.option("--k", "k", required=True, help="Inner dimension.")
@click.option("--dtype", default="fp32", show_default=True)
@click.option("--batch", default="1", show_default=True)
@click.option("--layout", default="nn", show_default=True, help="nn, nt, tn or tt.")
@click.option("--version", type=int, default=None, help="Model version (default: latest).")
@friendly_errors
def predict_gemm(db_url, device_spec, m, n, k, dtype, batch, layout, version) -> None:
    """Latency (ms), power (W) and energy (J) of one GEMM, each ± the spread across trees."""
    from collectors.ops import Op, OpError
    from predictor import registry
    from predictor.data import resolve_device_model
    from predictor.forest import gemm_frame

    if layout not in ("nn", "nt", "tn", "tt"):
        raise OpError("--layout", f"expected nn, nt, tn or tt, got {layout!r}")
    op = Op.gemm(m, n, k, dtype, batch, trans_a=int(layout[0] == "t"),
                 trans_b=int(layout[1] == "t"))
    store = open_store(db_url)
    device_model = resolve_device_model(store, device_spec)
    row = registry.find(store, device_model, version)
    model = registry.load(row)
    c = model.predict_costs(gemm_frame([op]))
    click.echo(f"{device_model} (model v{row.version}): gemm {op['m']}x{op['n']}x{op['k']} "
               f"{op.dtype} batch {op.batch} {op.layout}")
    click.echo(f"  latency  {c.latency_ms[0]:.6g} ms ± {c.latency_std_ms[0]:.3g}")
    if c.power_w is None:
        click.echo("  power    unavailable (no measured power for this device)")
        click.echo("  energy   unavailable")
    else:
        click.echo(f"  power    {c.power_w[0]:.4g} W ± {c.power_std_w[0]:.3g}")
        click.echo(f"  energy   {c.energy_j[0]:.4g} J ± {c.energy_std_j[0]:.3g}")
        if c.power_extrapolated[0]:
            click.echo(f"  ({POWER_EXTRAPOLATED}, {model.power_min_latency_ms_:.3g} ms and up)")
    if row.meta.get("data_note"):
        click.echo(f"  (training data: {row.meta['data_note']})")


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    with open(path) as f:
        token = f.read().strip()
    if not token:
        raise click.UsageError(f"--token-file {path}: the file is empty")
    return token


@main.command()
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the service to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True,
              help="0 picks a free port (printed).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Require 'authorization: Bearer <token>' with the token in this file.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Expose Prometheus metrics over HTTP on this port.")
@click.option("--max-batch", type=click.IntRange(1, 10_000_000), default=10_000,
              show_default=True, help="Most shapes/ops in one request.")
@click.option("--workers", type=click.IntRange(1, 1024), default=16, show_default=True)
@friendly_errors
def serve(db_url, host, port, tls_cert, tls_key, token_file, metrics_port, max_batch,
          workers) -> None:
    """Serve predictions over gRPC (hwnas.v1.Predictor, with health and reflection) until
    SIGTERM/Ctrl-C, then drain in-flight calls and exit 0. New model versions registered by
    `hwnas train` are picked up without a restart."""
    import logging

    from hwnas.service.engine import PredictionEngine
    from hwnas.service.server import Server, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ServerConfig(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                          token=_read_token(token_file), metrics_port=metrics_port,
                          max_batch=max_batch, workers=workers)
    server = Server(PredictionEngine(open_store(db_url)), config).start()
    click.echo(f"hwnas.v1.Predictor listening on {host}:{server.port} "
               f"({'TLS' if tls_cert else 'plaintext'}"
               f"{', token required' if config.token else ''})", err=True)
    server.serve_forever()
    click.echo("drained; bye", err=True)


SERVER_OPTIONS = [
    click.option("--server", envvar="HWNAS_SERVER", default="127.0.0.1:50051",
                 show_default=True, help="host:port of `hwnas serve` (or $HWNAS_SERVER)."),
    click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None),
    click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="CA certificate to verify a TLS server."),
    click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, help="Deadline per call (s)."),
]


server_options = _stack(SERVER_OPTIONS)


def _client(server, token_file, tls_ca, timeout):
    from hwnas.client import PredictorClient

    return PredictorClient(server, token=_read_token(token_file), tls_ca=tls_ca,
                           timeout_s=timeout)


def _rpc_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import grpc

        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None

    return wrapper


POWER_EXTRAPOLATED = "power extrapolated: shorter than any op whose power was read on its own"


def _cost_line(label: str, c) -> str:
    power = (f"{c.power_w:.4g} W ± {c.power_std_w:.2g}, {c.energy_j:.4g} J ± "
             f"{c.energy_std_j:.2g}" if c.power_w is not None else "power unavailable")
    if c.power_extrapolated:
        power += f" ({POWER_EXTRAPOLATED})"
    return f"{label}: {c.latency_ms:.5g} ms ± {c.latency_std_ms:.2g}; {power}"


@main.group()
def query() -> None:
    """Ask a running prediction service (see `hwnas serve`)."""


@query.command("gemm")
@server_options
@click.option("--device", required=True, help="Device model (or a unique part of its name).")
@click.option("--m", "m", type=int, required=True)
@click.option("--n", "n", type=int, required=True)
@click.option("--k", "k", type=int, required=True)
@click.option("--dtype", default="fp32", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@friendly_errors
@_rpc_errors
def query_gemm(server, token_file, tls_ca, timeout, device, m, n, k, dtype, batch) -> None:
    """Latency, power and energy of one GEMM from the service."""
    with _client(server, token_file, tls_ca, timeout) as c:
        a = c.predict_gemm(device, [{"m": m, "n": n, "k": k, "dtype": dtype, "batch": batch}])
    click.echo(f"{a.device} (model v{a.model_version})")
    click.echo(_cost_line(f"gemm {m}x{n}x{k} {dtype} batch {batch}", a.costs[0]))


# The options that name a network for PredictNetwork (query network, predict network).
network_options = _stack([
    click.option("--nasbench201", "arch", default=None, help="A NAS-Bench-201 cell string."),
    click.option("--ops-json", type=click.Path(exists=True, dir_okay=False), default=None,
                 help='JSON list of ops: [{"kind": "conv2d", "params": {...}, '
                      '"name": "..."}].'),
    click.option("--module", "module_spec", default=None, metavar="PACKAGE.MODULE:NAME",
                 help="A torch model to decompose into ops: NAME is an nn.Module, a "
                      "module class or a function returning one, called without "
                      "arguments (your own code, imported and run here). Needs "
                      "--input-shape."),
    click.option("--input-shape", default=None, metavar="B,C,H,W",
                 help="With --module: the input's shape, batch first (e.g. 1,3,224,224)."),
    click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
                 help="Batch size of a --nasbench201 network (--ops-json ops and "
                      "--module carry their own)."),
    click.option("--dtype", default="fp32", show_default=True,
                 help="dtype of a --nasbench201 network."),
    click.option("--layers", is_flag=True, help="Print every layer too."),
])


def _torch_module(spec: str):
    """The nn.Module that ``package.module:name`` names (an instance, or a class or function
    called without arguments)."""
    import importlib

    import torch

    path, _, name = spec.partition(":")
    if not path or not name:
        raise click.UsageError(f"--module {spec!r}: expected PACKAGE.MODULE:NAME")
    try:
        obj = getattr(importlib.import_module(path), name)
    except (ImportError, AttributeError) as exc:
        raise click.UsageError(f"--module {spec!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise click.UsageError(f"--module {spec!r}: {name} is neither a torch module nor "
                                   "callable")
        try:
            obj = obj()
        except Exception as exc:  # the user's own code: say where it failed, no traceback
            raise click.UsageError(f"--module {spec!r}: {name}() failed: "
                                   f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        raise click.UsageError(f"--module {spec!r}: {name}() returned a "
                               f"{type(obj).__name__}, not a torch.nn.Module")
    return obj


def _network_spec(arch: str | None, ops_json: str | None, module_spec: str | None,
                  input_shape: str | None) -> tuple[str | None, list[dict] | None, list[str]]:
    """The network the options name: (NAS-Bench-201 cell string, or op dicts) and the names of
    a --module's layers that no op kind covers (not costed)."""
    import json

    if sum(x is not None for x in (arch, ops_json, module_spec)) != 1:
        raise click.UsageError("give exactly one of --nasbench201, --ops-json and --module")
    if (input_shape is None) != (module_spec is None):
        raise click.UsageError("--input-shape goes with --module (and only with it)")
    if arch is not None:
        return arch, None, []
    if module_spec is not None:
        from collectors.networks.decompose import decompose

        try:
            shape = [int(x) for x in input_shape.split(",")]
        except ValueError:
            shape = []
        if not shape or min(shape) < 1:
            raise click.UsageError(f"--input-shape: positive integers, batch first, e.g. "
                                   f"1,3,224,224; got {input_shape!r}")
        model = _torch_module(module_spec)
        try:
            d = decompose(model, shape)
        except Exception as exc:  # the model's forward pass at that shape
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise click.UsageError(f"--module {module_spec} --input-shape {input_shape}: the "
                                   f"model did not run on that input ({type(exc).__name__}: "
                                   f"{first})") from None
        if not d.ops:
            raise click.UsageError(f"--module {module_spec}: no op of a known kind found "
                                   f"(not costed: {', '.join(d.unsupported) or 'nothing'})")
        return None, [{**op.to_dict(), "name": name} for name, op in d.ops], d.unsupported
    with open(ops_json) as f:
        try:
            ops = json.load(f)
        except json.JSONDecodeError as exc:
            raise click.UsageError(f"--ops-json: not JSON ({exc})") from None
    if not isinstance(ops, list) or not all(isinstance(o, dict) and "kind" in o for o in ops):
        raise click.UsageError("--ops-json: expected a list of objects with a 'kind'")
    return None, ops, []


def _echo_network(a, layers: bool, unsupported: list[str]) -> None:
    click.echo(f"{a.device} (model v{a.model_version}); {len(a.layers)} layers; {a.method}")
    if layers:
        for layer in a.layers:
            click.echo("  " + _cost_line(layer.name, layer))
    click.echo(_cost_line("total", a.total))
    if unsupported:
        click.echo(f"not costed (no op kind covers them): {', '.join(unsupported)}", err=True)


@query.command("network")
@server_options
@click.option("--device", required=True, help="Device model (or a unique part of its name).")
@network_options
@friendly_errors
@_rpc_errors
def query_network(server, token_file, tls_ca, timeout, device, arch, ops_json, module_spec,
                  input_shape, batch, dtype, layers) -> None:
    """Whole-network latency, power and energy from the service."""
    arch, ops, unsupported = _network_spec(arch, ops_json, module_spec, input_shape)
    with _client(server, token_file, tls_ca, timeout) as c:
        a = c.predict_network(device, nasbench201=arch, ops=ops, batch=batch, dtype=dtype)
    _echo_network(a, layers, unsupported)


@predict.command("network")
@DB_OPTION
@DEVICE_ARG
@network_options
@click.option("--version", type=int, default=0, help="Model version (default: latest).")
@friendly_errors
@_rpc_errors
def predict_network(db_url, device_spec, arch, ops_json, module_spec, input_shape, batch, dtype,
                    layers, version) -> None:
    """Whole-network latency (ms), power (W) and energy (J), and per layer with --layers, from
    the store's registered models: the answer `hwnas serve` would give (a service over --db
    is started in this process for the question). The network is a NAS-Bench-201 cell, a JSON
    op list, or your own torch model (--module pkg.mod:make_model --input-shape 1,3,224,224).
    The device's network model is used where one is registered (`hwnas train --target
    network`), else the sum of its ops' predictions."""
    from predictor.data import resolve_device_model
    from search.job import prediction_client

    arch, ops, unsupported = _network_spec(arch, ops_json, module_spec, input_shape)
    store = open_store(db_url)
    device_model = resolve_device_model(store, device_spec)
    with prediction_client(None, store) as c:
        a = c.predict_network(device_model, nasbench201=arch, ops=ops, batch=batch,
                              dtype=dtype, model_version=version)
    _echo_network(a, layers, unsupported)


if __name__ == "__main__":
    main()
