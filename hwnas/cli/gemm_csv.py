"""Many GEMMs from a CSV file, and their predicted costs back to CSV: the batch form of
``hwnas predict gemm`` and ``hwnas query gemm`` (``--shapes-csv``, ``--out``)."""

from __future__ import annotations

import sys

import click
import numpy as np
import pandas as pd

from collectors.gemm.shapes_csv import read_gemm_csv
from collectors.ops import layouts


def write_costs_csv(shapes: pd.DataFrame, costs: dict[str, np.ndarray | None],
                    out: str | None) -> None:
    """The shapes with their predicted costs (columns whose value is None are left out: no
    power model) to ``out``, or to standard output where ``out`` is None or ``-``."""
    frame = shapes.assign(layout=layouts(shapes.trans_a, shapes.trans_b))
    frame = frame[["m", "n", "k", "batch", "dtype", "layout"]]
    for column, values in costs.items():
        if values is not None:
            frame[column] = values
    frame.to_csv(sys.stdout if out in (None, "-") else out, index=False, float_format="%.6g")


def write_network_gemms(named_ops, path: str) -> tuple[int, int]:
    """The GEMMs that ``named_ops`` ((layer name, Op) pairs) run, one row per layer and GEMM
    (columns layer, m, n, k, batch, dtype, layout: what :func:`read_gemm_csv` reads back, so
    that ``hwnas collect gemm --shapes-csv`` measures them), to ``path``; returns (rows,
    distinct configs; a recurrent layer's step GEMM is one row, however many steps run it).
    Ops without GEMMs (pooling, norms, elementwise) have no row."""
    from collectors.ops import op_gemms

    def layout(op) -> str:  # convolutions, linear layers, attention: as op_gemms lowers them
        return "".join("t" if op.params.get(t) else "n" for t in ("trans_a", "trans_b"))

    rows = [(name, m, n, k, b, op.dtype, layout(op))
            for name, op in named_ops for m, n, k, b in op_gemms(op)]
    frame = pd.DataFrame(rows, columns=["layer", "m", "n", "k", "batch", "dtype", "layout"])
    frame.to_csv(path, index=False)
    return len(frame), len(frame.drop(columns="layer").drop_duplicates())


def shapes_from_options(shapes_csv: str | None, m, n, k, out: str | None, dtype: str,
                        layout: str, batch) -> pd.DataFrame | None:
    """The GEMMs of ``--shapes-csv`` (:func:`read_gemm_csv`), or None where the command asks
    for the one GEMM of --m, --n and --k; the two ways are not mixed, and ``--out`` belongs to
    the first."""
    given = [flag for flag, v in (("--m", m), ("--n", n), ("--k", k)) if v is not None]
    if shapes_csv is None:
        missing = [f for f in ("--m", "--n", "--k") if f not in given]
        if missing:
            raise click.UsageError(f"{', '.join(missing)}: give the GEMM's dimensions "
                                   "(or many GEMMs with --shapes-csv FILE)")
        if out is not None:
            raise click.UsageError("--out writes the predictions of --shapes-csv")
        return None
    if given:
        raise click.UsageError(f"{', '.join(given)}: the shapes come from --shapes-csv; "
                               "give one or the other")
    return read_gemm_csv(shapes_csv, dtype, layout, batch)


COST_COLUMNS = ("latency_ms", "latency_std_ms", "latency_extrapolated", "power_w",
                "power_std_w", "energy_j", "energy_std_j", "power_extrapolated")


def cost_columns(costs: dict) -> dict:
    """The predicted columns of a batch answer (local or from the service) in one order;
    the power columns are None where the device has no power model."""
    power = costs.get("power_w") is not None
    return {c: costs.get(c) if power or not c.startswith(("power", "energy")) else None
            for c in COST_COLUMNS}


def echo_batch_summary(source: str, count: int, beyond: int, power: bool,
                       out: str | None, why: dict[str, int] | None = None) -> None:
    """What a batch prediction wrote, on standard error (standard output may be the CSV);
    ``why``: how many rows each reason for lying beyond the training shapes flagged, where
    known."""
    where = out if out not in (None, "-") else "stdout"
    reasons = ", ".join(f"{reason} {n}" for reason, n in (why or {}).items() if n)
    click.echo(f"{source}: {count} GEMMs predicted -> {where}; {beyond} beyond the shapes "
               "the model was trained on" + (f" (by reason: {reasons})" if reasons else "")
               + ("" if power else "; power unavailable (no measured power for this device)"),
               err=True)
