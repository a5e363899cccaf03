"""Options that several commands take, defined once so they read and default the same."""

from __future__ import annotations

import click


def stack_options(options):
    """One decorator applying ``options`` (click options) in the order given."""
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco


DB_OPTION = click.option(
    "--db", "db_url", envvar="HWNAS_DB", default=None, metavar="URL",
    help="SQLAlchemy URL of the store (sqlite:///file or postgresql://user@host/db). "
         "Default: $HWNAS_DB, else a SQLite file under $XDG_DATA_HOME/hwnas.")


plan_options = stack_options([
    click.option("--dtype", "dtypes", default="fp32", show_default=True,
                 help="Comma-separated dtypes: fp32, tf32, fp16, bf16 (fp64 on CPU)."),
    click.option("--shapes", "shape_set", type=click.Choice(["grid", "random", "networks"]),
                 default="grid", show_default=True,
                 help="grid: log-spaced M,N,K; random: log-uniform draws; networks: conv layers as "
                      "implicit GEMMs and transformer projections/attention matmuls."),
    click.option("--shapes-csv", type=click.Path(exists=True, dir_okay=False), default=None,
                 metavar="FILE",
                 help="Instead of --shapes: the GEMMs of a CSV file with columns m, n, k and "
                      "optionally batch, dtype, layout (as `hwnas predict gemm --shapes-csv` "
                      "reads them and its --out writes them: measure the calls a model "
                      "flagged as beyond its training shapes, or your network's own GEMMs). "
                      "Without a dtype or layout column, every --dtype and --layout."),
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
    click.option("--aligned", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="Share of --shapes random (and of an --adaptive sweep's candidates) whose "
                      "dimensions are multiples of a power of two from 8 to 128, as real layers "
                      "are (a log-uniform draw almost never is, and on GPUs such shapes miss "
                      "the fastest tensor-core kernels)."),
    click.option("--batched", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="Share of --shapes random (and of an --adaptive sweep's candidates) run "
                      "as a batch of matrices (attention over heads, grouped and depthwise "
                      "convolutions): batch drawn log-uniformly from 2 to --max-batch, "
                      "dimensions shrunk by its cube root so the work stays that of one GEMM. "
                      "A model trained on none flags batched queries as beyond its training "
                      "shapes."),
    click.option("--max-batch", type=click.IntRange(min=2), default=64, show_default=True,
                 help="Largest batch of --batched shapes."),
    click.option("--layout", "layouts", default="nn", show_default=True,
                 help="Comma-separated transposes of A and B: nn, nt, tn, tt."),
])


def check_shapes_csv(shape_set: str, adaptive: bool = False, resume: bool = False) -> None:
    """--shapes-csv names the shapes itself: refuse a sweep that names them another way too."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source("shape_set") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(f"--shapes {shape_set} and --shapes-csv: give one of them")
    for flag, given in (("--adaptive", adaptive), ("--resume", resume)):
        if given:
            raise click.UsageError(f"{flag} and --shapes-csv: give one of them")


timing_options = stack_options([
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


BASELINE_FIT_OPTION = click.option(
    "--baseline-fit", type=click.Choice(["auto", "affine", "overhead"]), default="auto",
    show_default=True,
    help="GEMM model baseline per dtype: affine fits a fixed cost and a scale of the bound to "
         "the training calls (carries a GPU's rising efficiency past the largest shapes); "
         "overhead takes the bound at the measured peaks plus a fixed cost where the fastest "
         "call shows one; auto: affine on a GPU; on a CPU, whichever predicts held-out shapes "
         "of the training data better.")

SHAPES_CSV_OPTION = click.option(
    "--shapes-csv", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Predict every GEMM of this CSV in one pass instead of one GEMM: columns m, n, k, and "
         "optionally dtype, batch, layout (else --dtype, --batch, --layout). Writes the "
         "shapes with their predictions as CSV (--out).")
OUT_OPTION = click.option(
    "--out", type=click.Path(dir_okay=False, writable=True), default=None,
    help="With --shapes-csv: the CSV to write (default: standard output; the summary goes to "
         "standard error).")

DEVICE_ARG = click.option("--device", "device_spec", default=None,
                          help="cpu, cuda:N, or a device model name (or a unique part of it) "
                               "as listed by `hwnas models` / `hwnas db info`; default: the "
                               "store's only device, where it holds one.")


SERVER_OPTIONS = [
    click.option("--server", envvar="HWNAS_SERVER", default="127.0.0.1:50051",
                 show_default=True, help="host:port of `hwnas serve` (or $HWNAS_SERVER)."),
    click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None),
    click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="CA certificate to verify a TLS server."),
    click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, help="Deadline per call (s)."),
]


server_options = stack_options(SERVER_OPTIONS)


def _input_dtype(ctx, param, value: str) -> str:
    from collectors.networks.decompose import INPUT_KINDS

    if any(kind not in INPUT_KINDS for kind in value.split("+")):
        raise click.BadParameter(f"{value!r}: float or int64, or one per input joined by '+' "
                                 "(e.g. int64+float)")
    return value


# A --module's input: float, or token ids (predict/query network, collect network).
INPUT_DTYPE_OPTION = click.option(
    "--input-dtype", default="float", show_default=True, callback=_input_dtype,
    metavar="float|int64",
    help="With --module: the input's elements: float (of the model's parameter dtype) or int64 "
         "(token ids, for a model that starts with an embedding; --input-shape is then e.g. "
         "1,128; measured on ids drawn below its smallest nn.Embedding's size, from 1 up, as 0 "
         "is often padding). A model of several inputs: one per input joined by '+' "
         "(int64+float), or one for all.")

# The options that name a network for PredictNetwork (query network, predict network).
network_options = stack_options([
    click.option("--nasbench201", "arch", default=None, help="A NAS-Bench-201 cell string."),
    click.option("--ops-json", type=click.Path(exists=True, dir_okay=False), default=None,
                 help='JSON list of ops: [{"kind": "conv2d", "params": {...}, '
                      '"name": "..."}].'),
    click.option("--module", "module_spec", default=None, metavar="PACKAGE.MODULE:NAME",
                 help="A torch model to decompose into ops: NAME is an nn.Module, a "
                      "module class or a function returning one, called without "
                      "arguments (your own code, imported and run here; PACKAGE.MODULE "
                      "from the installed packages or the current directory, e.g. my_net:make "
                      "for ./my_net.py). Needs --input-shape."),
    click.option("--input-shape", default=None, metavar="B,C,H,W",
                 help="With --module: the input's shape, batch first (e.g. 1,3,224,224); "
                      "for a model that takes several tensors, one shape per input joined by "
                      "'+' (e.g. 1,128+1,128)."),
    INPUT_DTYPE_OPTION,
    click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
                 help="Batch size of a --nasbench201 network (--ops-json ops and "
                      "--module carry their own)."),
    click.option("--dtype", default=None,
                 help="dtype of a --nasbench201 network (default fp32), or the one --module's "
                      "model is cast to (default: its parameters')."),
    click.option("--layers", is_flag=True, help="Print every layer too."),
])
