"""Architecture search: ``hwnas search``, ``hwnas verify`` (measure what a search found) and
``hwnas experiment`` (many searches as one NNI experiment)."""

from __future__ import annotations

import json

import click

from collectors.devices import local_model, matching_models, names_local_device
from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.options import DB_OPTION
from hwnas.output import print_table


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
              help="Device whose costs guide the search: cpu or cuda:N (this machine's), or "
                   "a device model name the service knows, or a unique part of it (default: "
                   "this CPU).")
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
@click.option("--model-version", type=click.IntRange(min=1), default=None,
              help="Cost every network with this version of the device's model (the "
                   "`prediction_model_version` an earlier search recorded), to repeat that "
                   "search as it ran; default: the version the service answers with now.")
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
               random_samples, calibrate, model_version, data_spec, resolution, limit, seed,
               out_dir, no_progress) -> None:
    """Hardware-aware differentiable NAS (digits by default, CIFAR-10 or a class-folder data set
    from a local path): find the most accurate
    network within latency/power/energy budgets on a device, using the prediction service for
    costs. Writes the architecture (JSON), an exported program (torch.export), state_dict
    and ONNX to --out, with its predicted and measured latency and its accuracy after
    retraining."""
    from pathlib import Path

    import grpc

    from collectors.devices import CpuDevice
    from search.cost import PinnedVersion
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

    if model_version and calibrate:
        raise click.UsageError("--model-version and --calibrate: --calibrate fits a new "
                               "network model to search with; give one of them")
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
            if model_version:
                client = PinnedVersion(client, model_version)
            if device_spec:
                device = _served_device(client, device_spec)
            measure_on = local_device_for(device)
            if calibrate:
                version = _calibrate_search(db_url, measure_on, device, space_cfg, calibrate,
                                            seed, not no_progress)
                wait_for_network_model(client, device, space_cfg, version)
            elif prediction_method(client, device, space_cfg).startswith(OP_SUM):
                remedy = ("add --calibrate 20 (measures 20 networks of this space here first)"
                          if measure_on is not None else "run hwnas collect network and hwnas "
                          "train --target network on the machine with it")
                click.echo(f"note: {device} has no network model for this space's networks "
                           "(none, or one fitted on networks of other op kinds or far more "
                           "layers), so costs are sums of GEMM predictions per op: they leave "
                           "out the framework's cost per layer and much of the memory-bound "
                           "ops' (on a CPU often most of a small network's time). For budgets "
                           f"that hold when measured, {remedy}.", err=True)
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
        remedy = ""
        if (not calibrate and server is None and _is_local(device)
                and exc.code() in (grpc.StatusCode.NOT_FOUND,
                                   grpc.StatusCode.FAILED_PRECONDITION)):
            remedy = ("; to search for a device of this machine, add --calibrate 20: it "
                      "measures 20 networks of the space here first and fits the model the "
                      "search needs")
        raise click.ClickException(f"prediction service: {exc.code().name}: "
                                   f"{exc.details()}{remedy}") from None
    click.echo(f"architecture: {json.dumps(doc['arch'])}")
    p = doc["predicted"]
    click.echo(f"predicted on {device}: {p['latency_ms']:.3f} ms"
               + (f", {p['power_w']:.3g} W, {p['energy_mj']:.3g} mJ" if p.get("power_w")
                  else " (power unavailable)") + f"; from the {doc['prediction_method']}"
               + (f" (model v{doc['prediction_model_version']})"
                  if doc.get("prediction_model_version") else ""))
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


def _is_local(spec: str) -> bool:
    """Whether ``--device`` names this machine's CPU or GPU (cpu, cuda:N) or its model."""
    from search.run import local_device_for

    return names_local_device(spec) or local_device_for(spec.strip()) is not None


def _served_device(client, spec: str) -> str:
    """The device model ``--device`` names: this machine's for cpu / cuda:N, else the one the
    service resolves the name to (exactly, or a unique part of it), whether it has a GEMM
    model, a network model or (before --calibrate) none yet."""
    key = spec.strip()
    local = local_model(key)
    if local is not None:
        return local
    models = client.list_models(key)  # NOT_FOUND or INVALID_ARGUMENT (several) when unresolved
    if models:
        return models[0].device
    return matching_models(key, [d.model for d in client.list_devices()])[0]


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
    if v.prediction_method.startswith(OP_SUM):
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


def _check_models_served(address: str, devices: list[str], version: int | None = None) -> None:
    """Refuse to start an experiment whose trials would all fail: a device the prediction
    service at ``address`` has no model for, or not the ``version`` the trials pin (UsageError
    naming it and the remedy)."""
    import grpc

    from hwnas.client import PredictorClient

    with PredictorClient(address) as client:
        for device in devices:
            try:
                models = client.list_models(device)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise click.ClickException(f"prediction service at {address}: "
                                               f"{exc.code().name}: {exc.details()}") from None
                models = []
            if version is not None:
                if not any(m.version == version for m in models):  # deleted ones are not listed
                    held = sorted({m.version for m in models})
                    raise click.UsageError(
                        f"--model-version {version}: the prediction service at {address} has "
                        f"no version {version} of {device}'s models (it has "
                        f"{', '.join(map(str, held)) or 'none'}), so every trial would fail; "
                        "see hwnas models --device")
            elif not any(m.latest for m in models):  # none, or every version retired
                raise click.UsageError(
                    f"{device}: the prediction service at {address} has no model for it, so "
                    "every trial would fail; first run hwnas search --calibrate 20 with the "
                    "trials' space options on that device (or hwnas train --device there)")


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
        devices, pinned = set(), None
        for point in grid_points(spec):
            argv = trial_argv(spec.search_args, point, address, Path(out_dir))
            params = search_cmd.make_context("search", argv[1:]).params
            if params["calibrate"]:
                raise click.UsageError(
                    "--calibrate: calibrate once before the experiment (hwnas search "
                    "--calibrate N with the same space options), not in every trial: trials "
                    "running at once would measure side by side")
            pinned = params["model_version"]  # the same in every trial: the grid leaves it
            named = (params["device_spec"] or "cpu").strip()
            if not names_local_device(named):
                devices.add(named)
            elif training_service == "local":  # on remote machines it names theirs
                devices.add(local_model(named))
        _check_models_served(address, sorted(devices), pinned)
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
