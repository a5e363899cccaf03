"""Commands on the store's contents: ``hwnas db info|export|import`` and ``hwnas import
gpperf``."""

from __future__ import annotations

import click

from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.options import DB_OPTION
from hwnas.output import print_table


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


@main.group("import")
def import_() -> None:
    """Load what was made elsewhere into the store: public measurements, or a model bundle."""


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


@import_.command("model")
@DB_OPTION
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@friendly_errors
def import_model(db_url, path) -> None:
    """Register a model bundle written by `hwnas models --device D --export FILE` as the next
    version of its device's models here. The bundle is checked before anything is registered:
    its manifest, its file's SHA-256, the types the file holds, and a trial load here. A file
    already registered for the device is not added twice."""
    from predictor.bundle import import_bundle

    got = import_bundle(open_store(db_url), path)
    r, m = got.row, got.manifest
    if not got.added:
        click.echo(f"{path}: already registered as {r.device_model} {r.target} model "
                   f"v{r.version} (same SHA-256 {r.sha256[:12]}); nothing added")
        return
    click.echo(f"registered {r.device_model} {r.target} model v{r.version} from {path} (v"
               f"{m['version']} where it was trained, {m.get('created_utc', '?')} UTC; sha256 "
               f"{r.sha256[:12]}; file {r.path})")
