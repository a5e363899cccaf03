"""The registry on the command line: ``hwnas models`` lists registered models and describes
one in full."""

from __future__ import annotations

import click

from hwnas.cli.app import friendly_errors, main, open_store
from hwnas.cli.options import DB_OPTION
from hwnas.output import print_table

_METRIC_COLUMNS = [("MAPE %", "mape", ".1f"), ("median APE %", "mdape", ".1f"),
                   ("within ±10% %", "within_10", ".1f"), ("R^2", "r2", ".3f"),
                   ("Spearman", "spearman", ".3f"), ("median pred/meas", "median_ratio", ".2f")]


def print_metrics(records: list[dict]) -> None:
    """A table of held-out metrics, one row per target and dtype (``Evaluation.tables``
    records, as evaluated or as a registered model stored them; '-' for one not stored)."""
    def cell(r: dict, key: str, fmt: str) -> str:
        value = r.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    print_table(["target", "dtype", "n", *(c[0] for c in _METRIC_COLUMNS)],
                [[r.get("target"), r.get("dtype"), r.get("n"),
                  *(cell(r, key, fmt) for _, key, fmt in _METRIC_COLUMNS)] for r in records])


def held_out_scores(meta: dict) -> tuple[str, str]:
    """(MAPE %, within ±10% %) on held-out data as the model's evaluation stored them: shapes
    for a GEMM model, architectures for a network model (which records RMSPE, not MAPE); '-'
    where there is none (a few-shot model has a rank correlation)."""
    metrics = meta.get("metrics") or {}
    gemm = (metrics.get("shape-held-out (GroupKFold)") or [{}])[0]
    scores = gemm or metrics.get("held_out") or {}
    return tuple(f"{scores[k]:.1f}" if k in scores else "-" for k in ("mape", "within_10"))


def _registered_device(rows, spec: str) -> str:
    """The device model ``spec`` names among those with registered models (cpu and cuda:N
    name this machine's)."""
    from collectors.devices import local_model, matching_models
    from predictor.data import DataError

    names = sorted({r.device_model for r in rows})
    local = local_model(spec.strip())
    hits = [local] if local in names else matching_models(spec, names)
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise DataError(f"--device {spec!r} matches several device models: {'; '.join(hits)}")
    raise DataError(f"--device {spec!r}: no registered model for such a device (registered: "
                    f"{'; '.join(names) or 'none: run hwnas train first'})")


def _chosen(rows, target: str | None, version: int | None):
    """The row of one device's ``rows`` to describe: the latest (or ``version``) of
    ``target``, which defaults to gemm where the device has a GEMM model, else its only one."""
    from predictor.data import DataError

    targets = sorted({r.target for r in rows})
    if target is None:
        if "gemm" not in targets and len(targets) > 1:
            raise DataError(f"--target: {rows[0].device_model} has models of "
                            f"{', '.join(targets)}; name one")
        target = "gemm" if "gemm" in targets else targets[0]
    of_target = [r for r in rows if r.target == target]
    if not of_target:
        raise DataError(f"--target {target}: {rows[0].device_model} has models of "
                        f"{', '.join(targets)} only")
    if version is None:  # the default, else (every version retired) the newest
        from predictor.registry import defaults

        return defaults(of_target).get((of_target[0].device_model, target), of_target[-1])
    for r in of_target:
        if r.version == version:
            return r
    raise DataError(f"--version {version}: {rows[0].device_model} has {target} versions "
                    f"{', '.join(str(r.version) for r in of_target)}")


def _record(row, latest: bool) -> dict:
    """Everything the registry holds of one model, and whether its file still matches."""
    from predictor.registry import file_problem, model_file

    problem = file_problem(row)
    if problem is None:
        where = model_file(row)
        problem = "matches its registered SHA-256" + (
            "" if str(where) == row.path else f" (found at {where}, this machine's models)")
    return {"device_model": row.device_model, "target": row.target, "version": row.version,
            "default": latest, "path": row.path, "sha256": row.sha256, "file": problem,
            "created_utc": row.created_at.isoformat(timespec="seconds"),
            "samples": row.n_samples, "power": row.has_power, "meta": row.meta}


def _echo_record(rec: dict) -> None:
    """A model's record for people: the facts first, the stored evaluation as tables."""
    import json

    from predictor.training import library_versions

    meta = dict(rec["meta"])
    retired, deleted = meta.pop("retired", None), meta.pop("deleted", None)

    def when(event: dict) -> str:
        return str(event.get("at_utc", "")).replace("T", " ")

    click.echo(f"\n{rec['device_model']}: {rec['target']} model v{rec['version']}"
               + (" (the default: its latest version not retired)" if rec["default"] else "")
               + (f" (retired {when(retired)} UTC, deleted {when(deleted)} UTC: its file is "
                  "gone, and it no longer answers)" if isinstance(deleted, dict) else
                  f" (retired {when(retired)} UTC: not the default; answers when asked for "
                  "by number)" if isinstance(retired, dict) else ""))
    facts = [("file", rec["path"]), ("sha256", rec["sha256"]), ("file check", rec["file"]),
             ("created (UTC)", rec["created_utc"].replace("T", " ")),
             ("samples", str(rec["samples"]))]
    if "n_shapes" in meta:
        facts.append(("shapes", str(meta.pop("n_shapes"))))
    if "dtypes" in meta:
        facts.append(("dtypes", ", ".join(meta.pop("dtypes")) or "-"))
    if "data_from" in meta:  # when the rows were stored: measured, or imported
        span = [str(meta.pop(k, "?")).split(".")[0] for k in ("data_from", "data_to")]
        last_id = meta.pop("data_to_id", None)
        facts.append(("training data", f"stored {span[0]} .. {span[1]} (UTC)"
                      + (f", row ids up to {last_id}" if last_id is not None else "")))
    if "power" in meta:
        facts.append(("power", str(meta.pop("power"))))
    if "data_note" in meta:
        facts.append(("data note", meta.pop("data_note")))
    if isinstance(meta.get("imported"), dict):  # brought from another store as a bundle
        got = {k: str(v).replace("T", " ") if k.endswith("_utc") else v
               for k, v in meta.pop("imported").items()}
        facts.append(("imported", f"{got.get('imported_utc')} UTC from {got.get('bundle')}: "
                      f"v{got.get('version')} where it was trained ({got.get('created_utc')} "
                      f"UTC), exported {got.get('exported_utc')} UTC by hwnas "
                      f"{got.get('hwnas')}"))
    if "features" in meta:
        features = meta.pop("features") or []
        facts.append(("features", f"{len(features)}: {', '.join(features)}"))
    if "libraries" in meta:
        now = library_versions()
        facts.append(("libraries", ", ".join(
            f"{name} {v}" + (f" (installed now: {now[name]})" if now.get(name, v) != v else "")
            for name, v in meta.pop("libraries").items())))
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        click.echo(f"  {key:<{width}}  {value}")
    metrics = meta.pop("metrics", None) or {}
    tables = {k: v for k, v in metrics.items()  # GEMM metrics: one record per target, dtype
              if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    for name, records in tables.items():
        click.echo(f"\n{name} (its evaluation when it was trained):")
        print_metrics(records)
    others = {k: v for k, v in metrics.items() if k not in tables}
    scores = {name: others.pop(name) for name in ("held_out", "flops_proxy")
              if isinstance(others.get(name), dict)}  # a network model's
    machines = others.pop("held_out_devices", None) or {}
    if scores or machines:
        click.echo("\nits evaluation when it was trained (networks held out):")
        print_table(["held out", "networks", "within ±10% %", "RMSPE %", "Spearman",
                     "median pred/meas"],
                    [[label, m.get("networks", others.get("networks", "")),
                      *(f"{m[k]:.1f}" if k in m else "-" for k in ("within_10", "rmspe")),
                      f"{m['spearman']:.3f}" if "spearman" in m else "-",
                      f"{m['median_ratio']:.2f}" if "median_ratio" in m else "-"]
                     for label, m in [*(({"held_out": "architectures",
                                          "flops_proxy": "architectures, FLOPs proxy"}[n], v)
                                        for n, v in scores.items()),
                                      *((f"machine {d[:12]}", v)
                                        for d, v in machines.items())]])
    if others:
        meta["metrics"] = others
    if isinstance(meta.get("params"), dict) and "profile" in meta:  # the profile once
        meta["params"] = {k: v for k, v in meta["params"].items() if k != "profile"}
    if meta:
        click.echo("\nmore of its record:")
        for key in sorted(meta):
            click.echo(f"  {key}: {json.dumps(meta[key], default=str)}")


def _delete(store, row, after: str = "") -> int:
    """Delete a retired version (:func:`predictor.registry.delete`), say so (then ``after``),
    and return the bytes its file freed."""
    from predictor.registry import delete

    row, path, size = delete(store, row)
    click.echo(f"deleted {row.device_model} {row.target} model v{row.version}: "
               + (f"removed {path}" if path else "its file was already missing") + after)
    return size


@main.command()
@DB_OPTION
@click.option("--device", "device_spec", default=None,
              help="Only this device model's versions (cpu, cuda:N, a device model name or a "
                   "unique part of one), followed by the whole record of one of its models: "
                   "file and checksum check, training data, features, library versions, the "
                   "held-out evaluation.")
@click.option("--target", default=None,
              help="With --device: which of its models to describe, by the target column "
                   "(gemm, network, nb201; default: gemm where it has one, else its only "
                   "kind).")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="With --device: this version instead of the default (to describe, export, "
                   "retire or restore).")
@click.option("--json", "as_json", is_flag=True,
              help="With --device: print that one model's record as JSON, nothing else.")
@click.option("--export", "export_to", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.zip",
              help="With --device: write that one model (its file, checked against its "
                   "SHA-256 first, and its record) to a bundle that `hwnas import model` "
                   "registers in another store, e.g. to serve there a model trained where the "
                   "GPU is. GEMM and network models.")
@click.option("--retire", is_flag=True,
              help="With --device and --version: take that version out of default use (the "
                   "default becomes the highest version left, here and in a running service "
                   "within its refresh interval), e.g. to roll back a worse retrained model. "
                   "Its file and record stay; it still answers when asked for by number.")
@click.option("--restore", is_flag=True,
              help="With --device and --version: undo --retire.")
@click.option("--delete", is_flag=True,
              help="With --device and --version: remove a retired version's file, to free the "
                   "space a store that retrains often fills. Its record stays, marked "
                   "deleted, so its number is never reused; it no longer answers, here or in "
                   "a running service within its refresh interval. Export it first to keep a "
                   "copy.")
@click.option("--delete-retired", is_flag=True,
              help="With --device (and --target): --delete every retired version of it at "
                   "once, saying how much space that frees.")
@friendly_errors
def models(db_url, device_spec, target, version, as_json, export_to, retire, restore,
           delete, delete_retired) -> None:
    """List registered models; the highest version per device and kind that is not retired is
    the default.

    With --device, list that device's versions and describe one of its models in full (or
    write it to a bundle with --export, retire or restore it, or delete a retired one)."""
    import json

    from predictor.registry import (
        default_row,
        defaults,
        deleted,
        dtype_defaults,
        list_models,
        outdated,
        retired,
        set_retired,
    )

    if device_spec is None:
        for flag, given in (("--target", target), ("--version", version), ("--json", as_json),
                            ("--export", export_to), ("--retire", retire),
                            ("--restore", restore), ("--delete", delete),
                            ("--delete-retired", delete_retired)):
            if given:
                raise click.UsageError(f"{flag} describes one model: name it with --device")
    actions = [f for f, given in (("--json", as_json), ("--export", export_to),
                                  ("--retire", retire), ("--restore", restore),
                                  ("--delete", delete), ("--delete-retired", delete_retired))
               if given]
    if len(actions) > 1:
        raise click.UsageError(f"{' and '.join(actions)}: give one of them")
    if (retire or restore or delete) and version is None:
        raise click.UsageError(f"{actions[0]}: name the version with --version")
    if delete_retired and version is not None:
        raise click.UsageError("--delete-retired: deletes every retired version; for one, "
                               "--version V --delete")
    store = open_store(db_url)
    rows = list_models(store)
    if device_spec is not None:
        device_model = _registered_device(rows, device_spec)
        rows = [r for r in rows if r.device_model == device_model]
        row = _chosen(rows, target, version)
        if delete_retired:
            doomed = [r for r in rows if retired(r) and not deleted(r)
                      and (target is None or r.target == target)]
            freed = sum(_delete(store, r) for r in doomed)
            click.echo(f"{device_model}: {len(doomed)} retired version(s) deleted, "
                       f"{freed / 1e6:.1f} MB freed; their records stay, marked deleted"
                       if doomed else f"{device_model}: no retired version left to delete")
            return
        if delete:
            _delete(store, row, f"; its record stays, marked deleted, so v{row.version} will "
                                "not name another model")
            return
        if retire or restore:
            set_retired(store, row, retire)
            now = default_row(store, row.device_model, row.target)
            click.echo(f"{'retired' if retire else 'restored'} {row.device_model} {row.target} "
                       f"model v{row.version}; "
                       + (f"the default is v{now.version}" if now else
                          f"no {row.target} version is left to be the default (ask for one by "
                          "number, restore one, or train)"))
            return
        if export_to:
            from predictor.bundle import export_bundle

            export_bundle(row, export_to)
            click.echo(f"wrote {row.device_model} {row.target} model v{row.version} (sha256 "
                       f"{row.sha256[:12]}) to {export_to}; `hwnas import model {export_to}` "
                       "registers it in another store")
            return
    default = defaults(rows)
    if device_spec is not None:
        rec = _record(row, default.get((row.device_model, row.target)) is row)
        if as_json:
            click.echo(json.dumps(rec, indent=2, default=str))
            return

    for_dtypes = dtype_defaults(rows)

    def status(r) -> str:
        if default.get((r.device_model, r.target)) is r:
            return "yes"
        if r.id in for_dtypes:  # a network model still answering its dtype's networks
            return f"{', '.join(for_dtypes[r.id])} networks"
        return "deleted" if deleted(r) else "retired" if retired(r) else ""

    print_table(["device model", "version", "target", "samples", "power", "held-out MAPE %",
                 "within ±10% %", "created (UTC)", "sha256", "default"],
                [[r.device_model, r.version, r.target, r.n_samples,
                  "yes" if r.has_power else "no", *held_out_scores(r.meta),
                  r.created_at.strftime("%Y-%m-%d %H:%M"), r.sha256[:12], status(r)]
                 for r in rows])
    for r in default.values():
        if outdated(r):
            click.echo(f"{r.device_model} v{r.version} was fitted on the GEMM features of an "
                       f"older hwnas and cannot predict: `hwnas train --device "
                       f"'{r.device_model}'` fits a current one", err=True)
    if device_spec is not None:
        _echo_record(rec)
