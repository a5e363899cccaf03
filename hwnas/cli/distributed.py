"""Distributed sweeps on a shared store: ``hwnas sweep create|status`` and ``hwnas worker``."""

from __future__ import annotations

import click

from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.options import (
    DB_OPTION,
    PROBE_OPTION,
    QUEUE_OPTION,
    check_shapes_csv,
    plan_options,
    timing_options,
)
from hwnas.output import print_table


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
def sweep_create(db_url, device_types, backend, dtypes, shape_set, shapes_csv, min_size,
                 max_size, points,
                 count, seed, aligned, batched, max_batch, layouts, warmup, min_reps, min_time,
                 power_window, l2_flush, queue_ahead, cooldown, probe) -> None:
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
    if shapes_csv is not None:
        check_shapes_csv(shape_set)
    plan, options = build_plan(shape_set, min_size, max_size, points, count, seed, layouts,
                               dtype_list, aligned, batched, max_batch, shapes_csv=shapes_csv)
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
