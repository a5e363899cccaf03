"""Commands that measure on this machine: ``hwnas devices``, ``hwnas collect gemm|network`` and
``hwnas demo``."""

from __future__ import annotations

import sys

import click

from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.options import (
    DB_OPTION,
    INPUT_DTYPE_OPTION,
    PROBE_OPTION,
    QUEUE_OPTION,
    ROUNDS_OPTION,
    check_shapes_csv,
    plan_options,
    timing_options,
)
from hwnas.output import peaks_text, print_table


@main.command()
@DB_OPTION
@click.option("--measure-peaks", is_flag=True,
              help="Measure achievable compute (TFLOP/s) and bandwidth (GB/s) peaks now, "
                   "and on a CPU what a large fresh output costs beyond its bytes "
                   "(first_touch, ms/GB, from first_touch_from MiB on) and its pools' rates "
                   "(pool_max, pool_avg, ns/output), and store them with each device.")
@friendly_errors
def devices(db_url: str | None, measure_peaks: bool) -> None:
    """List the CPU and every NVIDIA GPU with their specs and stored peaks."""
    from collectors import nvml
    from collectors.devices import detect_devices
    from collectors.store.repo import upsert_device

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
            reader = dev.power_reader()
            i = dev.info
            rows.append([
                i.name, i.model, i.sm_count or "-",
                f"{i.memory_bytes / 2**30:.1f}" if i.memory_bytes else "-",
                i.driver_version or "-", f"{i.max_sm_clock_mhz:.0f}" if i.max_sm_clock_mhz else "-",
                f"{i.power_limit_w:.0f}" if i.power_limit_w else "-",
                reader.source if reader.available else f"unavailable ({reader.reason})",
                peaks_text(sorted(row.peaks, key=lambda p: p.metric)) or "not measured",
                row.fingerprint[:12],
            ])
        s.commit()
    print_table(["device", "model", "cores/SMs", "mem GiB", "driver", "max MHz", "power limit W",
                 "power source", "peaks", "fingerprint"], rows)
    if len(found) == 1:
        click.echo(f"no NVIDIA GPU: {nvml.unavailable_reason or 'NVML found none'}")


@main.group()
def collect() -> None:
    """Measure ops on this machine into the store."""


@collect.command("gemm")
@DB_OPTION
@click.option("--device", "device_name", default=None,
              help="cpu (the default), or cuda:N for an NVIDIA GPU. With --resume: the "
                   "sweep's own device.")
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
def collect_gemm(db_url, device_name, backend, threads, dtypes, shape_set, shapes_csv, min_size,
                 max_size,
                 points, count, seed, aligned, batched, max_batch, layouts, warmup, min_reps,
                 min_time, power_window, l2_flush, queue_ahead, cooldown, rounds, probe,
                 resume_id, skip_peaks, adaptive, budget, pool, round_size, no_progress) -> None:
    """Sweep GEMM shapes x dtypes on one device; every config is committed as it completes.

    Interrupt with Ctrl-C at any time; `--resume SWEEP` carries on where it stopped.
    """
    from hwnas.gemm_job import GemmJob

    if shapes_csv is not None:
        check_shapes_csv(shape_set, adaptive=adaptive, resume=resume_id is not None)
    job = GemmJob.from_options(
        db_url=db_url, device_name=device_name, backend=backend, threads=threads,
        dtypes=dtypes,
        shape_set=shape_set, min_size=min_size, max_size=max_size, points=points, count=count,
        seed=seed, aligned=aligned, batched=batched, max_batch=max_batch,
        shapes_csv=shapes_csv, layouts=layouts,
        warmup=warmup, min_reps=min_reps,
        min_time=min_time, power_window=power_window, l2_flush=l2_flush, queue_ahead=queue_ahead,
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
@click.option("--module", "module_spec", default=None, metavar="PACKAGE.MODULE:NAME",
              help="Instead of --family: your own torch model (as `hwnas predict network "
                   "--module` takes it), measured at every --input-shape, so `hwnas train "
                   "--target network` learns networks like yours. Its ops must all be of "
                   "known kinds.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="B,C,H,W",
              help="With --module: an input shape, batch first; repeat for several (a model "
                   "of several tensors: one shape per input joined by '+', 1,128+1,128).")
@INPUT_DTYPE_OPTION
@click.option("--dtype", "dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="The dtype the networks (or layers) are held and run in: fp32 (the "
                   "default), or fp16 / bf16 as GPUs run them; a --module model is cast to it "
                   "(default: its own). `hwnas train --target network --dtype` learns one "
                   "dtype's networks.")
@click.option("--count", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Architectures per family.")
@click.option("--batch", "batches", default="1", show_default=True,
              help="Batch size (comma-separated for layer sweeps).")
@click.option("--layer-kinds", default="conv2d,depthwise_conv2d,linear,attention",
              show_default=True,
              help="With --family layers: the op kinds whose single layers are measured, "
                   "comma-separated; add recurrent for RNN, GRU and LSTM layers (240 per "
                   "batch: 10-200 steps, 32-512 wide, one way and bidirectional), whose "
                   "forest then prices recurrent layers as cuDNN or oneDNN runs them.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", "device_name", default=None,
              help="cpu (the default), or cuda:N for an NVIDIA GPU (CUDA events, NVML energy; "
                   "needs a CUDA build of torch). With --resume: the sweep's own device.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--resume", "resume_id", type=int, default=None, metavar="SWEEP")
@click.option("--no-progress", is_flag=True)
@timing_options
@ROUNDS_OPTION
@PROBE_OPTION
@friendly_errors
def collect_network(db_url, families, module_spec, input_shapes, input_dtype, dtype, count,
                    batches, layer_kinds, seed, device_name, threads, resume_id, no_progress,
                    warmup, min_reps, min_time, power_window, l2_flush, cooldown, rounds,
                    probe) -> None:
    """Measure whole sampled networks (or single layers, or your own model) on this CPU or a
    GPU; each decomposed into its ops (stored with the row) so network predictors can learn
    from them."""
    from collectors.devices import get_device
    from collectors.networks.sweep import (
        LAYER_KINDS,
        NETWORK_SWEEP_KINDS,
        NetworkSweep,
        layer_grid,
        network_plan,
    )
    from collectors.probe import default_probe
    from collectors.rounds import default_rounds
    from collectors.sweep import resume_device, sweep_origin
    from collectors.timing import TimingPolicy
    from hwnas.gemm_job import echo_slow_configs, split_list

    batch_list = [int(b) for b in split_list(batches, "--batch")]
    if any(b < 1 for b in batch_list):
        raise click.UsageError("--batch: must be positive integers")
    if resume_id is not None and (module_spec or input_shapes or dtype):
        raise click.UsageError("--resume carries on its own sweep (its models, shapes and "
                               "dtype); --module, --input-shape and --dtype start a new one")
    user_plan = _module_plan(module_spec, input_shapes, input_dtype, dtype) if (
        module_spec or input_shapes) else None
    store = open_store(db_url)
    if resume_id is not None:
        device = resume_device(sweep_origin(store, resume_id, NETWORK_SWEEP_KINDS, "network"),
                               resume_id, device_name)
    else:
        device = get_device(device_name or "cpu")
    policy = TimingPolicy(warmup_s=warmup, min_reps=min_reps, min_time_s=min_time,
                          power_window_s=power_window, l2_flush=l2_flush, cooldown_s=cooldown,
                          rounds=default_rounds(rounds, device.info.kind),
                          probe=default_probe(probe, device.info.kind))
    sweeper = NetworkSweep(store, device, policy, threads,
                           progress=not no_progress)
    if resume_id is None and user_plan is not None:
        resume_id = sweeper.create(user_plan, "network")
    elif resume_id is None:
        fams = split_list(families, "--family")
        if "layers" in fams:
            kinds = split_list(layer_kinds, "--layer-kinds")
            bad = sorted(set(kinds) - set(LAYER_KINDS))
            if bad:
                raise click.UsageError(f"--layer-kinds: unknown {bad}; choose from "
                                       f"{', '.join(LAYER_KINDS)}")
            plan, kind = layer_grid(kinds, batch_list, dtype or "fp32"), "layers"
        else:
            plan = network_plan(fams, count, batch_list[0], seed, dtype or "fp32")
            kind = "network"
        resume_id = sweeper.create(plan, kind)
    summary = sweeper.run(resume_id)
    click.echo(f"sweep {resume_id}: {summary.done} measured, {summary.failed} failed, "
               f"{summary.already_done} stored earlier in {summary.seconds:.0f} s"
               + (f"; resume with --resume {resume_id}" if summary.interrupted else ""))
    echo_slow_configs(sweeper.store, resume_id)


def _module_plan(module_spec: str | None, input_shapes: tuple[str, ...], input_dtype: str,
                 dtype: str | None = None) -> list[dict]:
    """The sweep plan of ``collect network --module``, after checking here, before anything is
    measured, that the model builds, runs at every shape and decomposes into known ops."""
    from collectors.networks.sweep import module_plan
    from hwnas.cli.costs import network_spec, refuse_meta

    if click.get_current_context().get_parameter_source("families").name != "DEFAULT":
        raise click.UsageError("give --family or --module, not both")
    if not module_spec or not input_shapes:
        raise click.UsageError("--module and --input-shape go together")
    shapes = []
    for text in input_shapes:
        spec = network_spec(None, None, module_spec, text, input_dtype, dtype)
        refuse_meta(spec.module, "collect network --module")
        uncosted = [n for n in spec.notes if n.startswith("not costed")]
        if uncosted:
            raise click.UsageError(f"--module {module_spec} at {text}: {uncosted[0]}; a network "
                                   "model learns only from networks whose ops are all costed")
        if spec.empty:
            raise click.UsageError(f"--module {module_spec} at {text}: {len(spec.empty)} of its "
                                   f"calls ran on empty tensors on the example input "
                                   f"({', '.join(spec.empty[:3])}): their sizes depend on the "
                                   "data, so no one op list describes what a measurement runs")
        shapes.append(spec.shape)
    return module_plan(module_spec, shapes, input_dtype, dtype)


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
