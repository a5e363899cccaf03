"""Models: ``hwnas train``, ``hwnas eval``, ``hwnas predict gemm|network`` and ``hwnas adapt``
(a few-shot model for a new device); ``hwnas models`` is in :mod:`hwnas.cli.registered`."""

from __future__ import annotations

import click

from collectors.devices import names_local_device
from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.costs import (
    POWER_EXTRAPOLATED,
    echo_network,
    measure_here,
    network_spec,
    network_to_measure,
    padding_hint,
    shapes_with_padding,
)
from hwnas.cli.options import (
    BASELINE_FIT_OPTION,
    DB_OPTION,
    DEVICE_ARG,
    OUT_OPTION,
    SHAPES_CSV_OPTION,
    network_options,
)
from hwnas.cli.registered import print_metrics
from hwnas.cli.service import rpc_errors
from hwnas.output import print_table


def _print_evaluation(ev) -> None:
    click.echo(f"{ev.device_model}: {ev.n_rows} measurements, {ev.n_shapes} shapes; peaks "
               f"{ev.profile.peaks_source}; power "
               f"{'trained' if ev.has_power else 'unavailable (latency-only model)'}")
    for name, table in ev.tables().items():
        click.echo(f"\n{name}:")
        print_metrics(table.to_dict("records"))
    if ev.devices is not None:
        click.echo("\nheld out one at a time (trained on the others' rows of shapes it did not "
                   "measure):")
        print_table(["device", "rows", "latency MAPE %", "within ±10% %", "median pred/meas"],
                    [[r.device[:12], r.n, f"{r.mape:.1f}", f"{r.within_10:.1f}",
                      f"{r.median_ratio:.2f}"] for r in ev.per_device().itertuples()])
    one, two = ev.spread_coverage()
    click.echo(f"\nthe ± of a latency prediction (its spread across trees) held {one:.0f}% of "
               f"the held-out latencies within one spread, {two:.0f}% within two (a normal "
               "error: 68%, 95%)")
    if ev.has_power:
        one, two = ev.spread_coverage("power_w")
        click.echo(f"the ± of a power prediction held {one:.0f}% of the held-out powers within "
                   f"one spread, {two:.0f}% within two")
    from predictor.features import ALIGNED_MEANING, GPU_TILE
    from predictor.forest import few_aligned, training_range

    def counted(names: list[str]) -> str:
        return ", ".join(f"{b} {names.count(b)}" for b in sorted(set(names)))

    click.echo("\nbaseline the forest chose from its training shapes (of "
               f"{len(ev.bounds)} fits): {counted(ev.bounds)} (roofline: max(FLOPs/peak, "
               f"bytes/bandwidth); waves: compute paid in whole waves of {GPU_TILE}x{GPU_TILE} "
               f"tiles over the SMs); its fixed cost and scale per dtype: "
               f"{counted(ev.baseline_fits)} (affine: both fitted to the training calls; "
               "overhead: the fastest call's fixed cost, scale 1; hwnas train prints them)")
    few = few_aligned(training_range(ev.kfold))
    if few:
        click.echo(f"\nfew aligned shapes ({ALIGNED_MEANING}): "
                   + ", ".join(f"{d} {n}" for d, n in sorted(few.items()))
                   + ". Most real layers are aligned, and on a GPU they run on faster kernels; "
                   "predictions for them are flagged as beyond the training shapes. Sweep "
                   "`--shapes random` (half aligned by default) or `--shapes grid` to cover them.")
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
@BASELINE_FIT_OPTION
@click.option("--dtype", "network_dtype", type=click.Choice(["fp32", "fp16", "bf16"]),
              default=None,
              help="With --target network: learn the networks of this dtype (a network model "
                   "learns one; default: one model for each dtype stored).")
@friendly_errors
def train(db_url, device_spec, folds, trees, target, baseline_fit, network_dtype) -> None:
    """Fit a model for a device model, evaluate it on held-out shapes (or architectures) and
    register it as a new version."""
    from predictor.data import resolve_device_model
    from predictor.registry import default_row
    from predictor.training import train_and_register

    if network_dtype is not None and target != "network":
        raise click.UsageError("--dtype goes with --target network (a GEMM model learns every "
                               "dtype stored)")
    store = open_store(db_url)
    model = resolve_device_model(store, device_spec)
    if target == "network":
        from predictor import network

        # one model per dtype stored (a network model learns one), or the one asked for
        dtypes = [network_dtype] if network_dtype else network.stored_dtypes(store, model)
        for i, dtype in enumerate(dtypes):
            if len(dtypes) > 1:
                click.echo(f"{'' if i == 0 else chr(10)}{dtype} networks:")
            _train_network_model(store, model, folds, dtype)
        return
    previous = default_row(store, model)
    row, ev = train_and_register(store, model, folds, n_estimators=trees,
                                 baseline_fit=baseline_fit)
    _print_evaluation(ev)
    if row.meta.get("data_note"):
        click.echo(f"\ndata: {row.meta['data_note']}")
    click.echo(f"\nregistered {row.device_model} v{row.version}: {row.path} "
               f"(sha256 {row.sha256[:16]}..., baseline {row.meta['bound']})")
    if previous is not None:
        _compare_with(previous, row)
    scale = row.meta.get("bound_scale") or {}
    apart = row.meta.get("aligned_baseline") or {}

    def line(ms: float, k: float) -> str:
        return f"{ms * 1e3:.3g} us + {k:.3g} x {row.meta['bound']}"

    click.echo(f"baseline per dtype ({row.meta.get('baseline_fit', 'overhead')}): " + "; ".join(
        (f"{d} {line(ms, scale.get(d, 1.0))}" if d not in apart else
         f"{d} {line(*apart[d])} aligned, {line(ms, scale.get(d, 1.0))} others")
        for d, ms in sorted(row.meta["overhead_ms"].items())))


def _fixed_kinds(fixed: dict) -> str:
    """How a network model bounds the op kinds all its training networks held the same of."""
    if not fixed:
        return ""
    from predictor.network import EXTRAPOLATION

    held = ", ".join(f"{count} {kind}" for kind, (count, _) in sorted(fixed.items()))
    return (f", and at most {EXTRAPOLATION}x the ops and FLOPs of the kinds every training "
            f"network held the same of ({held}: their cost was never learned apart)")


def _compare_with(previous, row) -> None:
    """The new version's held-out share within ±10% beside the version it replaces as the
    default, and how to roll back where it is lower."""
    from hwnas.cli.registered import held_out_scores

    new, old = (held_out_scores(r.meta)[1] for r in (row, previous))
    if "-" in (new, old):
        return
    click.echo(f"held-out within ±10%: v{row.version} {new}% ({row.n_samples} measurements), "
               f"v{previous.version} {old}% ({previous.n_samples}) when it was trained; each "
               "is scored on its own data")
    if float(new) < float(old) - 2:
        click.echo(f"v{row.version} is the default now; if it serves worse, `hwnas models "
                   f"--device '{row.device_model}' --version {row.version} --retire` makes "
                   f"v{previous.version} the default again")


@main.command("eval")
@DB_OPTION
@DEVICE_ARG
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--trees", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a predicted-vs-measured PNG of the held-out latency: shapes held "
                   "out, the largest shapes held out, and devices held out where there are "
                   "several.")
@click.option("--worst", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="List this many held-out configs whose latency was predicted worst "
                   "(0: none).")
@click.option("--predictions", "predictions_path", type=click.Path(dir_okay=False),
              default=None,
              help="Write every held-out prediction as CSV (split, fold, config, device, "
                   "measured, predicted, spread across trees, APE %), for your own analysis.")
@BASELINE_FIT_OPTION
@click.option("--registered", is_flag=True,
              help="Instead of cross-validating a new forest, score the registered model (the "
                   "default version, or --version) on the measurements stored after its "
                   "training data: shapes new to it, and shapes it was trained on measured "
                   "again (a change of the device shows there). --folds, --trees and "
                   "--baseline-fit do not apply.")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="With --registered: this model version.")
@click.option("--target", type=click.Choice(["gemm", "network"]), default="gemm",
              show_default=True,
              help="With --registered: the device's GEMM model, or its whole-network model "
                   "scored on the networks measured since (architectures new to it, those "
                   "it was trained on measured again, and those at another batch than the one "
                   "it learned, answered with the GEMM model's change as the service does).")
@friendly_errors
def eval_(db_url, device_spec, folds, trees, plot_path, worst, predictions_path,
          baseline_fit, registered, version, target) -> None:
    """Evaluate the GEMM model on whole shapes held out (GroupKFold over M,N,K and the largest
    shapes held out; where the model's rows come from several physical GPUs, each held out in
    turn with its shapes); per target and dtype: MAPE, median APE, share within ±10%, R^2, Spearman
    and the median of predicted / measured (above 1: predicted too high; too slow, for latency);
    then the configs predicted worst, to see where the model misses. With --registered, score
    the registered model on what was measured since it was trained."""
    from predictor.data import load_gemm_frame, resolve_device_model
    from predictor.evaluate import held_out_rows, plot_predicted_vs_measured, worst_configs
    from predictor.training import evaluate

    store = open_store(db_url)
    model = resolve_device_model(store, device_spec)
    if registered or version is not None or target != "gemm":
        _eval_registered(store, model, version, target, plot_path, worst, predictions_path)
        return
    frame, profile = load_gemm_frame(store, model)
    ev = evaluate(frame, profile, folds, n_estimators=trees, baseline_fit=baseline_fit)
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
    panels = {"shapes held out (GroupKFold)": ev.kfold,
              "largest shapes held out": ev.extrapolation}
    if ev.devices is not None:
        panels["devices held out"] = ev.devices
    if plot_path:
        plot_predicted_vs_measured(panels, "latency_ms", plot_path, f"{model}: GEMM latency")
        click.echo(f"\nplot: {plot_path}")
    if predictions_path:
        rows = held_out_rows(panels, ev.targets)
        rows.to_csv(predictions_path, index=False, float_format="%.6g")
        click.echo(f"held-out predictions ({len(rows)} rows): {predictions_path}")


def _eval_registered(store, device_model: str, version: int | None, target: str, plot_path,
                     worst: int, predictions_path) -> None:
    """``hwnas eval --registered``: the registered model on what was measured since."""
    from click.core import ParameterSource

    from hwnas.cli.drift import echo_networks_since_training, echo_since_training
    from predictor import registry
    from predictor.drift import score_networks_since_training, score_since_training
    from predictor.evaluate import held_out_rows, plot_predicted_vs_measured

    ctx = click.get_current_context()
    if not ctx.params["registered"]:
        flag = "--version" if version is not None else f"--target {target}"
        raise click.UsageError(f"{flag}: names a registered model to score; add --registered"
                               + (" (hwnas train --target network evaluates a new network "
                                  "model on held-out architectures)" if target != "gemm" else ""))
    unused = ("folds", "trees", "baseline_fit") + (("plot_path",) if target != "gemm" else ())
    for name in unused:
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            flag = "--plot" if name == "plot_path" else f"--{name.replace('_', '-')}"
            raise click.UsageError(f"{flag}: does not apply to --registered"
                                   + (f" --target {target}" if name == "plot_path" else
                                      " (the registered model is scored as it is)"))
    row = registry.find(store, device_model, version, target=target)
    if target == "network":
        result = score_networks_since_training(store, row)
        default = registry.default_row(store, device_model, target)
        echo_networks_since_training(result, default is not None and default.id == row.id,
                                     worst)
        if predictions_path:
            result.scored.to_csv(predictions_path, index=False, float_format="%.6g")
            click.echo(f"predictions ({len(result.scored)} networks): {predictions_path}")
        return
    result = score_since_training(store, row)
    default = registry.default_row(store, device_model)
    echo_since_training(result, default is not None and default.id == row.id, worst)
    panels = {name: rows for name, rows in result.panels.items() if len(rows)}
    if plot_path:
        plot_predicted_vs_measured(panels, "latency_ms", plot_path,
                                   f"{device_model} v{row.version}: GEMM latency since training")
        click.echo(f"\nplot: {plot_path}")
    if predictions_path:
        rows = held_out_rows(panels, result.targets)
        rows.to_csv(predictions_path, index=False, float_format="%.6g")
        click.echo(f"predictions ({len(rows)} rows): {predictions_path}")


@main.group()
def predict() -> None:
    """Predict costs from a registered model."""


@predict.command("gemm")
@DB_OPTION
@DEVICE_ARG
@click.option("--m", "m", help="Rows of A and C.")
@click.option("--n", "n", help="Columns of B and C.")
@click.option("--k", "k", help="Inner dimension.")
@click.option("--dtype", default="fp32", show_default=True,
              help="The GEMM's dtype (with --shapes-csv: of rows that name none).")
@click.option("--batch", default="1", show_default=True,
              help="GEMMs of this shape in one batched call (strided batched GEMM; with "
                   "--shapes-csv: of rows that name none).")
@click.option("--layout", default="nn", show_default=True, help="nn, nt, tn or tt.")
@click.option("--version", type=int, default=None, help="Model version (default: latest).")
@SHAPES_CSV_OPTION
@OUT_OPTION
@friendly_errors
def predict_gemm(db_url, device_spec, m, n, k, dtype, batch, layout, version, shapes_csv,
                 out) -> None:
    """Latency (ms), power (W) and energy (J) of one GEMM, each ± the spread across trees;
    of many in one pass with --shapes-csv (a CSV out)."""
    from collectors.gemm.shapes_csv import LAYOUTS, cell
    from collectors.ops import Op, OpError
    from hwnas.cli.gemm_csv import (
        cost_columns,
        echo_batch_summary,
        shapes_from_options,
        write_costs_csv,
    )
    from predictor import registry
    from predictor.data import resolve_device_model
    from predictor.forest import gemm_frame

    if layout not in LAYOUTS:
        raise OpError("--layout", f"expected nn, nt, tn or tt, got {layout!r}")
    shapes = shapes_from_options(shapes_csv, m, n, k, out, dtype, layout, batch)
    op = None if shapes is not None else Op.gemm(m, n, k, dtype, batch,
                                                 trans_a=int(layout[0] == "t"),
                                                 trans_b=int(layout[1] == "t"))
    store = open_store(db_url)
    device_model = resolve_device_model(store, device_spec)
    row = registry.find(store, device_model, version)
    model = registry.load(row)
    if shapes is not None:
        model.check_dtypes(shapes, lambda row: cell(shapes_csv, "dtype", row))
        c = model.predict_costs(shapes)
        beyond = model.outside_training(shapes)
        write_costs_csv(shapes, {**cost_columns(vars(c)),
                                 "beyond_training": [why or "" for why in beyond]}, out)
        echo_batch_summary(f"{device_model} (model v{row.version})", len(shapes),
                           sum(why is not None for why in beyond), c.power_w is not None, out,
                           {reason: int(rows.sum()) for reason, rows in
                            model.beyond_training_by(shapes).items()})
        return
    dims = (op["m"], op["n"], op["k"])
    padded, shapes = shapes_with_padding(dims, op["trans_a"], op["trans_b"])
    frame = gemm_frame([Op.gemm(*d, op.dtype, op.batch, trans_a=op["trans_a"],
                                trans_b=op["trans_b"]) for d in shapes])
    c = model.predict_costs(frame)
    beyond = model.outside_training(frame)
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
    if beyond[0]:
        how = (": `hwnas collect gemm --shapes random --batched 0.25` measures batched ones"
               if model.beyond_training_by(frame)["batch"][0] else "")
        click.echo(f"  (beyond the {op.dtype} shapes this model was trained on: {beyond[0]}; "
                   "the forest repeats what the nearest of them did, so measure shapes like "
                   f"this one to trust it{how})")
    hint = padding_hint(dims, padded, c.latency_ms[0], c.latency_ms[-1], bool(beyond[-1]))
    if hint:
        click.echo(f"  ({hint})")
    if row.meta.get("data_note"):
        click.echo(f"  (training data: {row.meta['data_note']})")


@predict.command("network")
@DB_OPTION
@DEVICE_ARG
@network_options
@click.option("--version", type=int, default=0, help="Model version (default: latest).")
@click.option("--measure", is_flag=True,
              help="Also run the network on this machine's device of --device (the CPU, or an "
                   "NVIDIA GPU with a CUDA build of torch), as `hwnas verify` measures a "
                   "searched network, and print its latency (and power, where readable) beside "
                   "the prediction.")
@click.option("--min-time", type=click.FloatRange(min=0.01), default=0.1, show_default=True,
              help="With --measure: timed seconds per round (5 rounds).")
@click.option("--gemms-csv", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write the GEMMs the network runs (convolutions as implicit GEMMs, "
                   "attention as batched ones), a row per layer and GEMM, to FILE: `hwnas "
                   "collect gemm --shapes-csv FILE` measures them on the device, so the model "
                   "learns this network's own calls.")
@friendly_errors
@rpc_errors
def predict_network(db_url, device_spec, arch, ops_json, module_spec, input_shape, input_dtype,
                    batch, dtype, layers, version, measure, min_time, gemms_csv) -> None:
    """Whole-network latency (ms), power (W) and energy (J), and per layer with --layers, from
    the store's registered models: the answer `hwnas serve` would give (a service over --db
    is started in this process for the question). The network is a NAS-Bench-201 cell, a JSON
    op list, or your own torch model (--module pkg.mod:make_model --input-shape 1,3,224,224).
    The device's network model is used where one is registered (`hwnas train --target
    network`; of several, the latest that learned the network's dtype) and covers the network
    (the op dtypes and kinds of its training networks, at least half the layers of the
    smallest, their batch), else the sum of its ops' predictions;
    a network at a larger batch than the one all its training networks ran at is answered by
    the model at its batch plus how the GEMM model's predictions change with the batch, at a
    smaller one by the geometric mean of that and the model as is."""
    from collectors.ops import Op
    from hwnas.service.engine import BATCH_SCALED
    from predictor.data import resolve_device_model
    from predictor.nasbench201 import network_ops
    from predictor.op_costs import FIRST_TOUCH
    from search.job import OP_SUM, prediction_client

    spec = network_spec(arch, ops_json, module_spec, input_shape, input_dtype, dtype)
    arch, ops, dtype = spec.arch, spec.ops, dtype or "fp32"
    store = open_store(db_url)
    device_model = resolve_device_model(store, device_spec)
    runnable = network_to_measure(spec, device_model, batch, dtype) if measure else None
    with prediction_client(None, store) as c:
        a = c.predict_network(device_model, nasbench201=arch, ops=ops, batch=batch,
                              dtype=dtype, model_version=version)
    echo_network(a, layers, spec.notes)
    if a.method.startswith(BATCH_SCALED):
        how = ("--family nb201 --batch B" if arch is not None else
               "--module ... --input-shape S" if spec.module is not None else "...")
        click.echo("note: the device's network model learned one batch only; at another it "
                   "answers from its batch and the GEMM model's change with the batch (x1.06-"
                   "1.11 off on average, up to x1.5, on a CPU and an H200 in docs/results.md); "
                   f"`hwnas collect network {how}` at a batch or two you use, then `hwnas "
                   "train --target network`, learn it", err=True)
    # the network's named ops, for the note on the op sum and the GEMMs file
    named = ((network_ops(arch, batch, dtype) if arch is not None else
              [(o.get("name") or f"op{i}", Op.from_dict(o)) for i, o in enumerate(ops)])
             if a.method.startswith(OP_SUM) or gemms_csv else [])
    if a.method.startswith(OP_SUM):
        _why_no_network_model(store, device_model, version, [op for _, op in named])
    if FIRST_TOUCH in a.method:
        click.echo("note: part of it is the first touch of large new outputs: this CPU's "
                   "allocator hands blocks of first_touch_from MiB or more back to the system, "
                   "so each such output faults its pages in again (`hwnas devices` shows the "
                   "figures); layers run in place (inplace=True) or into kept outputs do not "
                   "pay it", err=True)
    if a.method == OP_SUM and any(op.kind == "recurrent" for _, op in named):
        click.echo("note: its recurrent layers are the GEMM model's sum of their steps, which "
                   "misses how cuDNN and oneDNN run them (0.2-1.4x the measured time on a CPU "
                   "in docs/results.md); `hwnas collect network --family layers --layer-kinds "
                   "recurrent --batch 1,8,32`, then `hwnas train --target network`, price them "
                   "by measured layers", err=True)
    if runnable:
        measure_here(spec, runnable, a, min_time)
    if gemms_csv:
        from hwnas.cli.gemm_csv import write_network_gemms

        rows, distinct = write_network_gemms(named, gemms_csv)
        click.echo(f"\nwrote the {rows} GEMMs of its layers ({distinct} distinct) to "
                   f"{gemms_csv}; `hwnas collect gemm --shapes-csv {gemms_csv}` measures them")


def _train_network_model(store, model: str, folds: int, dtype: str | None) -> None:
    """Fit, evaluate and register the network model of ``model``'s networks of ``dtype``,
    and say how it did and what it answers for."""
    from predictor import network

    row, metrics = network.train_and_register(store, model, folds, dtype)
    for name in ("held_out", "flops_proxy"):
        m = metrics[name]
        click.echo(f"{name:>11}: within ±10% {m['within_10']:.1f}%, RMSPE "
                   f"{m['rmspe']:.1f}%, Spearman {m['spearman']:.3f}")
    if metrics.get("held_out_devices"):
        click.echo("\nheld out one machine at a time (trained on the others' networks of "
                   "architectures it did not measure):")
        print_table(["device", "networks", "within ±10% %", "RMSPE %", "Spearman",
                     "median pred/meas"],
                    [[d[:12], m["networks"], f"{m['within_10']:.1f}", f"{m['rmspe']:.1f}",
                      f"{m['spearman']:.3f}", f"{m['median_ratio']:.2f}"]
                     for d, m in metrics["held_out_devices"].items()])
        click.echo("")
    click.echo(f"registered {model} network v{row.version} from {metrics['networks']} "
               f"networks and {metrics['layers']} layers: {row.path}")
    meta, fewest = row.meta, (row.meta["min_layers"] + 1) // 2
    least, most = meta["batches"]
    batch = (f"at batch {least}" if least == most else
             f"at batch {least} to {network.EXTRAPOLATION * most}")
    variants = "".join(f" ({kind}: {', '.join(seen)} only)"
                       for kind, seen in (meta.get("variants") or {}).items())
    click.echo(f"it answers networks of {', '.join(meta['dtypes'])} "
               f"{', '.join(meta['network_kinds'])} ops{variants} with at least {fewest} "
               f"layer{'s' if fewest != 1 else ''} {batch} (as its training networks "
               "were)" + _fixed_kinds(meta.get("fixed_kinds") or {})
               + "; others are summed from op predictions"
               + _forest_priced(meta.get("kinds") or []))


def _forest_priced(forest_kinds: list[str]) -> str:
    """What the per-op forests of a new network model add to sums of op predictions."""
    from predictor.network import FOREST_PRICED

    kinds = [kind for kind in FOREST_PRICED if kind in forest_kinds]
    return (f", whose {', '.join(kinds)} layers its forest of the swept ones prices" if kinds
            else "")


def _why_no_network_model(store, device_model: str, version: int, ops) -> None:
    """Where the device has a network model that did not answer for ``ops``, say why."""
    from predictor import network, registry

    try:
        row = registry.find(store, device_model, version or None, target=network.TARGET,
                            dtype=network.network_dtype(ops) if ops else None)
    except registry.RegistryError:
        return  # none (of that version): the sum is all there is
    reason = network.load(row).uncovered(ops)
    if reason:
        click.echo(f"note: network model v{row.version} does not answer for it: {reason}; "
                   "the sum of op predictions does", err=True)


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
        if not names_local_device(local):
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
