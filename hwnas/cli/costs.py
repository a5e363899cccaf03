"""Naming a network on the command line (a NAS-Bench-201 cell, a JSON op list or a torch
module), printing the costs a prediction gives, and measuring the network here beside them;
shared by ``hwnas query``, ``hwnas predict`` and ``hwnas collect network --module``."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

POWER_EXTRAPOLATED = "power extrapolated: shorter than any op whose power was read on its own"
LATENCY_EXTRAPOLATED = "beyond the shapes the model was trained on"


def cost_line(label: str, c) -> str:
    """One prediction (a client Cost) on one line: latency, and power and energy or why not."""
    power = (f"{c.power_w:.4g} W ± {c.power_std_w:.2g}, {c.energy_j:.4g} J ± "
             f"{c.energy_std_j:.2g}" if c.power_w is not None else "power unavailable")
    if c.power_extrapolated:
        power += f" ({POWER_EXTRAPOLATED})"
    beyond = f" ({LATENCY_EXTRAPOLATED})" if c.latency_extrapolated else ""
    return f"{label}: {c.latency_ms:.5g} ms ± {c.latency_std_ms:.2g}{beyond}; {power}"


PADDING_GAIN = 1.2  # how much faster a padded shape must be predicted for the hint


def shapes_with_padding(dims: tuple[int, int, int], trans_a: int = 0, trans_b: int = 0
                        ) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
    """The shape with its operand rows padded to alignment
    (:func:`predictor.features.padded_to_alignment`), and the shapes to predict in one pass for
    :func:`padding_hint`: the query, then the padded shape where it differs, so the last is the
    padded shape either way."""
    from predictor.features import padded_to_alignment

    padded = padded_to_alignment(*dims, trans_a, trans_b)
    return padded, list(dict.fromkeys([dims, padded]))


def padding_hint(dims: tuple[int, int, int], padded: tuple[int, int, int], latency_ms: float,
                 padded_ms: float, padded_beyond: bool) -> str | None:
    """What padding a GEMM's operand rows to whole aligned vectors would gain
    (:func:`predictor.features.padded_to_alignment` gives ``padded``), where the padded shape
    is predicted at least :data:`PADDING_GAIN` times faster (on a GPU, the tensor-core kernels)
    and lies within the model's training shapes; else None."""
    from predictor.features import ALIGNMENT

    if padded == dims or padded_beyond or padded_ms * PADDING_GAIN > latency_ms:
        return None
    odd = [f"{name} = {d}" for name, d, p in zip("mnk", dims, padded, strict=True) if p != d]
    verb = "is a row length not a multiple" if len(odd) == 1 else "are row lengths not multiples"
    return (f"{' and '.join(odd)} {verb} of {ALIGNMENT}: padded with zeros to "
            f"{'x'.join(map(str, padded))} it is predicted at {padded_ms:.6g} ms, "
            f"x{latency_ms / padded_ms:.1f} faster")


@dataclass
class NetworkSpec:
    """The network the options name: a NAS-Bench-201 cell string or op dicts, as
    PredictNetwork takes it; what the user must be told of a --module's ops (layers no op kind
    covers, functions not seen where torch.fx could not trace the model); and the --module
    itself with its input, to run it."""

    arch: str | None
    ops: list[dict] | None
    notes: list[str] = field(default_factory=list)
    module: object = None
    shape: tuple[int, ...] | None = None
    input_dtype: str = "float"
    # calls that ran on empty tensors on the example input (Decomposition.empty)
    empty: list[str] = field(default_factory=list)


def network_spec(arch: str | None, ops_json: str | None, module_spec: str | None,
                  input_shape: str | None, input_dtype: str = "float",
                  dtype: str | None = None) -> NetworkSpec:
    """The network the options name (exactly one of the three); a --module model cast to
    ``dtype`` where one is given."""
    import json

    if sum(x is not None for x in (arch, ops_json, module_spec)) != 1:
        raise click.UsageError("give exactly one of --nasbench201, --ops-json and --module")
    if (input_shape is None) != (module_spec is None):
        raise click.UsageError("--input-shape goes with --module (and only with it)")
    if dtype is not None and ops_json is not None:
        raise click.UsageError("--dtype: --ops-json ops carry their own")
    if arch is not None:
        return NetworkSpec(arch, None)
    if module_spec is not None:
        from collectors.networks.decompose import DecomposeError, decompose
        from collectors.networks.user import parse_input_shape, user_module

        try:
            shape = parse_input_shape(input_shape)
        except ValueError as exc:
            raise click.UsageError(f"--input-shape: {exc}") from None
        try:
            model = user_module(module_spec)
        except ValueError as exc:
            raise click.UsageError(f"--module {exc}") from None
        if dtype is not None:
            from collectors.networks.decompose import torch_dtype
            from collectors.ops import OpError

            try:
                model = model.to(torch_dtype(dtype, "--dtype"))
            except OpError as exc:
                raise click.UsageError(str(exc)) from None
        from collectors.networks.decompose import input_kinds, input_shapes

        given = len(input_shapes(shape))
        try:
            input_kinds(input_dtype, given)
        except ValueError as exc:
            raise click.UsageError(f"--input-dtype: {exc}") from None
        try:
            d = decompose(model, shape, input_dtype=input_dtype)
        except DecomposeError as exc:  # a model of a form no decomposition reads
            raise click.UsageError(f"--module {module_spec}: {exc}") from None
        except Exception as exc:  # the model's forward pass at that shape
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            hint = (f"; it is given {given} tensor{'s' if given != 1 else ''}: give one shape "
                    "per input joined by '+' (--input-shape 1,128+1,128; --input-dtype "
                    "int64+float where they differ)"
                    if isinstance(exc, TypeError) and "positional argument" in first
                    else "")
            raise click.UsageError(f"--module {module_spec} --input-shape {input_shape}: the "
                                   f"model did not run on that input ({type(exc).__name__}: "
                                   f"{first}){hint}") from None
        if not d.ops:
            raise click.UsageError(f"--module {module_spec}: no op of a known kind found "
                                   f"(not costed: {', '.join(d.unsupported) or 'nothing'})")
        notes = [f"not costed (no op kind covers them): {', '.join(d.unsupported)}"
                 ] if d.unsupported else []
        if d.note:
            notes.append(d.note)
        return NetworkSpec(None, [{**op.to_dict(), "name": name} for name, op in d.ops],
                           notes, model, shape, input_dtype, d.empty)
    with open(ops_json) as f:
        try:
            ops = json.load(f)
        except json.JSONDecodeError as exc:
            raise click.UsageError(f"--ops-json: not JSON ({exc})") from None
    if not isinstance(ops, list) or not all(isinstance(o, dict) and "kind" in o for o in ops):
        raise click.UsageError("--ops-json: expected a list of objects with a 'kind'")
    return NetworkSpec(None, ops)


def refuse_meta(model, option: str) -> None:
    """UsageError where ``model`` is on the meta device: it can be decomposed and predicted,
    not run."""
    from collectors.networks.decompose import on_meta_device

    if on_meta_device(model):
        raise click.UsageError(f"{option}: the model is on the meta device (its parameters hold "
                               "no data), so it cannot be run; build it on the CPU (or a GPU) "
                               "to measure it")


def network_to_measure(spec: NetworkSpec, device_model: str, batch: int, dtype: str):
    """(torch module, input shape, this machine's device of ``device_model``) to measure the
    network on, checked before anything is predicted."""
    from search.run import local_device_for

    if spec.arch is not None:
        from collectors.networks.decompose import torch_dtype
        from collectors.networks.zoo import nb201_network
        from collectors.ops import OpError

        try:  # held and run in the dtype it is predicted in, as collect network --dtype does
            model = nb201_network(spec.arch).to(torch_dtype(dtype, "--dtype"))
        except OpError as exc:
            raise click.UsageError(f"--measure: {exc}") from None
        shape = (batch, 3, 32, 32)
    elif spec.module is not None:
        model, shape = spec.module, spec.shape
        refuse_meta(model, "--measure")
    else:
        raise click.UsageError("--measure: an --ops-json list names no network to run; give "
                               "--module or --nasbench201")
    device = local_device_for(device_model)
    if device is None:
        raise click.ClickException(f"--measure: no {device_model} on this machine to run it on "
                                   "(or no CUDA build of torch for its GPU)")
    return model, shape, device


def measure_here(spec: NetworkSpec, runnable, answer, min_time_s: float) -> None:
    """Run the network (``runnable``, from :func:`network_to_measure`) by the protocol a search
    verifies its result with, and print the measurement beside the prediction ``answer``."""
    from search.job import OP_SUM
    from search.run import measure_network

    model, shape, device = runnable
    m = measure_network(model, shape, device, min_time_s=min_time_s,
                        input_dtype=spec.input_dtype)

    predicted = answer.total.latency_ms
    power = (f"{m.power_w:.4g} W, {m.energy_mj:.4g} mJ per inference" if m.power_w is not None
             else "power not readable here")
    click.echo(f"measured here on {m.device}: {m.latency_ms:.5g} ms "
               f"(x{m.latency_ms / predicted:.2f} the prediction); {power}")
    if answer.method.startswith(OP_SUM):
        run_it = ("--module ... --input-shape ..." if spec.module is not None
                  else "--family nb201")
        click.echo("note: the prediction sums the ops' predictions, which leaves out the "
                   "framework's per-layer cost; a network model learns it for networks like "
                   f"this one: `hwnas collect network {run_it}` (a few shapes), then `hwnas "
                   "train --target network`", err=True)
    caution = m.caution()
    if caution:
        click.echo(f"caution: {caution}; measure again on a quiet machine", err=True)


def echo_network(a, layers: bool, notes: list[str]) -> None:
    n = len(a.layers)
    click.echo(f"{a.device} (model v{a.model_version}); {n} layer{'s' if n != 1 else ''}; "
               f"{a.method}")
    if layers:
        for cost in a.layers:
            click.echo("  " + cost_line(cost.name, cost))
    click.echo(cost_line("total", a.total))
    for note in notes:
        click.echo(f"note: {note}", err=True)
