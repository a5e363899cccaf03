"""``hwnas eval --registered``: a registered GEMM model scored on what was measured after it was
trained (:mod:`predictor.drift`)."""

from __future__ import annotations

import click

from hwnas.cli.registered import print_metrics
from hwnas.output import print_table

# Re-measured shapes whose median predicted / measured latency is further from 1 than this
# are called a change of the device (repeat measurements agree within a few per cent).
DRIFT = 0.05


def _echo_header(result, default: bool, what: str, groups: dict[str, int]) -> None:
    """Which model, up to when it was trained, and how many of what it is scored on."""
    row = result.row
    click.echo(f"{row.device_model} {row.target} model v{row.version}"
               + (" (the default)" if default else "")
               + f": trained on measurements up to {result.cutoff:%Y-%m-%d %H:%M:%S} UTC; "
               f"scored on the {sum(groups.values())} {what} measured since: "
               + ", ".join(f"{n} {name}" for name, n in groups.items()))


def echo_since_training(result, default: bool, worst: int) -> None:
    """The scores of each group, what they say, and the configs predicted worst."""
    from predictor.drift import BEYOND_REASONS, MEASURED_AGAIN, NEW_SHAPES
    from predictor.evaluate import worst_configs

    row = result.row
    panels = result.panels
    _echo_header(result, default, "configs", {name: len(p) for name, p in panels.items()})
    tables = result.tables()
    for name, table in tables.items():
        click.echo(f"\n{name}:")
        print_metrics(table.to_dict("records"))
    if NEW_SHAPES in tables:
        now = _latency_all(tables[NEW_SHAPES])
        then = (row.meta.get("metrics") or {}).get("shape-held-out (GroupKFold)") or []
        then = next((r for r in then if r.get("target") == "latency_ms" and
                     r.get("dtype") == "all"), None)
        click.echo(f"\nnew shapes: {now['within_10']:.1f}% within ±10%"
                   + (f" (its held-out evaluation when it was trained: "
                      f"{then['within_10']:.1f}%)" if then else ""))
        new = panels[NEW_SHAPES]
        flagged = new.beyond_training.to_numpy(bool)
        if flagged.any():
            within = (abs(new.pred_latency_ms / new.latency_ms - 1) <= 0.1).to_numpy()
            click.echo(f"  {flagged.sum()} of them were answered as beyond its training shapes "
                       f"(latency_extrapolated): {within[flagged].mean() * 100:.1f}% of those "
                       f"within ±10%"
                       + (f", {within[~flagged].mean() * 100:.1f}% of the other "
                          f"{(~flagged).sum()}" if (~flagged).any() else ""))
            for reason, says in BEYOND_REASONS.items():  # what to measure to mend them
                hit = new[f"beyond_{reason}"].to_numpy(bool)
                if hit.any():
                    click.echo(f"    {says}: {hit.sum()}, {within[hit].mean() * 100:.1f}% "
                               "within ±10%")
    if MEASURED_AGAIN in tables:
        _echo_measured_again(_latency_all(tables[MEASURED_AGAIN])["median_ratio"], "shapes",
                             "hwnas train")
    if result.not_scored:
        click.echo("not scored, a dtype the model was not trained on: " + ", ".join(
            f"{d} {n} rows" for d, n in sorted(result.not_scored.items())))
    if result.older_not_trained:
        click.echo(f"{result.older_not_trained} rows stored before its training data ended "
                   "were not part of it; they are left out")
    new = panels[NEW_SHAPES]
    if worst and len(new):
        click.echo(f"\nlatency predicted worst, {NEW_SHAPES}:")
        print_table(["shape", "dtype", "layout", "measured ms", "predicted ms", "pred/meas",
                     "APE %"],
                    [[r.shape, r.dtype, r.layout, f"{r.measured:.4g}", f"{r.predicted:.4g}",
                      f"{r.ratio:.2f}", f"{r.ape_pct:.1f}"]
                     for r in worst_configs(new, "latency_ms", worst).itertuples()])


def _latency_all(table) -> dict:
    return table[(table.target == "latency_ms") & (table.dtype == "all")].iloc[0].to_dict()


def _echo_measured_again(ratio: float, what: str, retrain: str) -> None:
    """What the median predicted / measured latency of re-measured work says of the device."""
    if abs(ratio - 1) > DRIFT:
        change = 1 / ratio - 1  # measured over predicted, less one: the time it now takes
        click.echo(f"{what} measured again: median predicted / measured {ratio:.2f}: the "
                   f"device now takes {abs(change) * 100:.0f}% "
                   f"{'longer' if change > 0 else 'less time'} on them than the model "
                   "learnt; if that holds (driver, clocks, cooling, another machine), "
                   f"retrain: {retrain}")
    else:
        click.echo(f"{what} measured again: median predicted / measured {ratio:.2f}, within "
                   f"{DRIFT:.0%} of what the model learnt")


def echo_networks_since_training(result, default: bool, worst: int) -> None:
    """A network model's scores on the networks measured since it was trained."""
    from predictor.drift import ARCHS_AGAIN, AT_OTHER_BATCH, NETWORK_GROUPS, NEW_ARCHS

    row, scored = result.row, result.scored
    counts = scored.group.value_counts()
    _echo_header(result, default, "networks",
                 {name: int(counts.get(name, 0)) for name in NETWORK_GROUPS
                  if name != AT_OTHER_BATCH or counts.get(name, 0)})
    table = result.table()
    if len(table):
        print_table(["networks", "family", "n", "MAPE %", "median APE %", "within ±10% %",
                     "Spearman", "median pred/meas"],
                    [[r.group, r.family, r.n, f"{r.mape:.1f}", f"{r.mdape:.1f}",
                      f"{r.within_10:.1f}", f"{r.spearman:.3f}", f"{r.median_ratio:.2f}"]
                     for r in table.itertuples()])
    held = ((row.meta.get("metrics") or {}).get("held_out") or {}).get("within_10")
    new = table[(table.group == NEW_ARCHS) & (table.family == "all")]
    if len(new) and held is not None:
        click.echo(f"\nnew architectures: {new.within_10.iloc[0]:.1f}% within ±10% (its "
                   f"held-out evaluation when it was trained: {held:.1f}%)")
    again = table[(table.group == ARCHS_AGAIN) & (table.family == "all")]
    if len(again):
        _echo_measured_again(float(again.median_ratio.iloc[0]), "architectures",
                             "hwnas train --target network")
    if result.not_scored:
        click.echo(f"not scored: {result.not_scored} networks the model does not answer for "
                   "(ops of a dtype or kind its training networks lacked, far fewer layers, "
                   "far more ops of a kind, or another batch than it learned where no GEMM "
                   "model scales it; the service answers them from the GEMM model's sums)")
    if worst and len(scored):
        ape = (scored.pred_latency_ms / scored.latency_ms - 1).abs() * 100
        click.echo("\nlatency predicted worst:")
        print_table(["network", "family", "measured ms", "predicted ms", "pred/meas", "APE %"],
                    [[r.key[:60], r.family, f"{r.latency_ms:.4g}", f"{r.pred_latency_ms:.4g}",
                      f"{r.pred_latency_ms / r.latency_ms:.2f}", f"{a:.1f}"]
                     for r, a in zip(scored.loc[ape.nlargest(worst).index].itertuples(),
                                     ape.nlargest(worst), strict=True)])
