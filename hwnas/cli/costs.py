"""Naming a network on the command line (a NAS-Bench-201 cell, a JSON op list or a torch
module) and printing the costs a prediction gives; shared by ``hwnas query`` and ``hwnas
predict``."""

from __future__ import annotations

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


def network_spec(arch: str | None, ops_json: str | None, module_spec: str | None,
                  input_shape: str | None, input_dtype: str = "float"
                  ) -> tuple[str | None, list[dict] | None, list[str]]:
    """The network the options name: (NAS-Bench-201 cell string, or op dicts) and what the user
    must be told of a --module's ops: layers no op kind covers (not costed), and functions the
    ops were not read from where torch.fx could not trace the model."""
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
            d = decompose(model, shape, input_dtype=input_dtype)
        except Exception as exc:  # the model's forward pass at that shape
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise click.UsageError(f"--module {module_spec} --input-shape {input_shape}: the "
                                   f"model did not run on that input ({type(exc).__name__}: "
                                   f"{first})") from None
        if not d.ops:
            raise click.UsageError(f"--module {module_spec}: no op of a known kind found "
                                   f"(not costed: {', '.join(d.unsupported) or 'nothing'})")
        notes = [f"not costed (no op kind covers them): {', '.join(d.unsupported)}"
                 ] if d.unsupported else []
        if d.note:
            notes.append(d.note)
        return None, [{**op.to_dict(), "name": name} for name, op in d.ops], notes
    with open(ops_json) as f:
        try:
            ops = json.load(f)
        except json.JSONDecodeError as exc:
            raise click.UsageError(f"--ops-json: not JSON ({exc})") from None
    if not isinstance(ops, list) or not all(isinstance(o, dict) and "kind" in o for o in ops):
        raise click.UsageError("--ops-json: expected a list of objects with a 'kind'")
    return None, ops, []


def echo_network(a, layers: bool, notes: list[str]) -> None:
    click.echo(f"{a.device} (model v{a.model_version}); {len(a.layers)} layers; {a.method}")
    if layers:
        for layer in a.layers:
            click.echo("  " + cost_line(layer.name, layer))
    click.echo(cost_line("total", a.total))
    for note in notes:
        click.echo(f"note: {note}", err=True)
