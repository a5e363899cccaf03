"""Model bundles: one registered model in a single zip file (its model file and its registry
record), so that a model trained where the measurements are (a GPU machine, say) can be
registered and served from another store.

A bundle is checked in full before anything is registered: its manifest field by field, the
model file's SHA-256 against the manifest's, the file's types against those a registered model
may hold (it is never loaded before that), and then a trial load of the model here. The file is
registered byte for byte, so its SHA-256 stays the one it was trained with."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from collectors.store.db import Store
from collectors.store.models import Device, ModelVersion, utcnow
from predictor.data import DataError

BUNDLE_FORMAT = "hwnas-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Models whose whole state is one skops file; a few-shot nb201 model also names a reference
# table by its path on the machine that fitted it, which a bundle cannot carry over.
TARGETS = ("gemm", "network")
# A model file larger than this is refused rather than read into memory (a zip can claim any
# size); the largest forests here are tens of MB.
MAX_MODEL_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 16 << 20  # a record with its evaluation tables takes tens of kB


class BundleError(DataError):
    """A bundle that cannot be written or registered; the message names the field or file."""


@dataclass
class Imported:
    row: ModelVersion
    added: bool  # False: the same file was already registered for the device, nothing added
    manifest: dict


def export_bundle(row: ModelVersion, out: str | Path) -> Path:
    """Write ``row``'s model (its file, checked against the registered SHA-256 first) and its
    registry record to the zip ``out``."""
    from importlib.metadata import version

    from predictor import registry

    if row.target not in TARGETS:
        raise BundleError(f"--target {row.target}: only {', '.join(TARGETS)} models can be "
                          "exported (a few-shot nb201 model refers to a reference table on "
                          "this machine; run hwnas adapt on the other store instead)")
    path = registry.verified_file(row)
    manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION,
                "device_model": row.device_model, "target": row.target,
                "version": row.version, "file": path.name, "sha256": row.sha256,
                "has_power": bool(row.has_power), "n_samples": row.n_samples,
                "created_utc": row.created_at.isoformat(timespec="seconds"),
                "exported_utc": _now(), "hwnas": version("hwnas"), "meta": row.meta}
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2, default=str))
            z.write(path, path.name)
        os.replace(tmp, out)  # never leave a half-written bundle under the final name
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"--export {out}: cannot write it ({exc.strerror or exc})") from None
    return out


def read_bundle(path: str | Path) -> tuple[dict, bytes]:
    """The manifest and the model file's bytes, after every check that needs no store."""
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as z:
            manifest = _manifest(z, name)
            info = z.getinfo(manifest["file"]) if manifest["file"] in z.namelist() else None
            if info is None:
                raise BundleError(f"{name}: holds no file {manifest['file']!r}, which its "
                                  "manifest names")
            if info.file_size > MAX_MODEL_BYTES:
                raise BundleError(f"{name}: {manifest['file']} is {info.file_size} bytes, "
                                  f"more than a model file may be ({MAX_MODEL_BYTES})")
            data = z.read(info)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{name}: not a model bundle (not a zip file: {exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest["sha256"]:
        raise BundleError(f"{name}: {manifest['file']} has SHA-256 {actual[:12]}..., its "
                          f"manifest {manifest['sha256'][:12]}...: the file changed after "
                          "export; refusing it")
    return manifest, data


def _manifest(z: zipfile.ZipFile, name: str) -> dict:
    try:
        info = z.getinfo(MANIFEST)
    except KeyError:
        raise BundleError(f"{name}: not a model bundle (no {MANIFEST})") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{name}: {MANIFEST} is {info.file_size} bytes, more than a "
                          f"manifest may be ({MAX_MANIFEST_BYTES})")
    try:
        manifest = json.loads(z.read(info))
    except ValueError as exc:
        raise BundleError(f"{name}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{name}: {MANIFEST} field format: expected {BUNDLE_FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{name}: {MANIFEST} field format_version: "
                          f"{manifest.get('format_version')!r}; this hwnas reads "
                          f"{FORMAT_VERSION} (a newer hwnas wrote it?)")

    def field(key: str, ok, expected: str):
        value = manifest.get(key)
        if not ok(value):
            raise BundleError(f"{name}: {MANIFEST} field {key}: expected {expected}, got "
                              f"{value!r}")

    field("device_model", lambda v: isinstance(v, str) and 0 < len(v.strip()) <= 128,
          "a device model name of 1-128 characters")
    field("target", lambda v: v in TARGETS, " or ".join(TARGETS))
    field("version", lambda v: _is_int(v) and v >= 1, "a version number")
    field("file", lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]+\.skops", v),
          "a .skops file name")
    field("sha256", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v),
          "64 hex digits")
    field("has_power", lambda v: isinstance(v, bool), "true or false")
    field("n_samples", lambda v: _is_int(v) and v >= 0, "a count")
    field("meta", lambda v: isinstance(v, dict), "an object")
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def import_bundle(store: Store, path: str | Path, directory: Path | None = None) -> Imported:
    """Register the bundle's model as the next version of its device model and target in
    ``store`` (its device becomes known to the store if it was not, so that predictions and
    the service can name it); a file already registered there is not added twice."""
    from predictor import registry

    manifest, data = read_bundle(path)
    device_model, target = manifest["device_model"].strip(), manifest["target"]
    with store.session() as s:
        same = registry.identical(s, device_model, target, manifest["sha256"])
    if same is not None:  # saves the trial load; registration checks again, under its lock
        return Imported(same, False, manifest)
    # Retirement is a store's choice of default, not part of the model: an exported retired
    # version arrives as an ordinary one.
    meta = {**{k: v for k, v in manifest["meta"].items() if k != "retired"}, "imported": {
        "bundle": Path(path).name, "version": manifest["version"],
        "created_utc": manifest.get("created_utc"), "exported_utc": manifest.get("exported_utc"),
        "hwnas": manifest.get("hwnas"), "imported_utc": _now()}}
    _trial_load(manifest, meta, data, Path(path).name)
    with store.session() as s:
        if s.scalar(select(Device.id).where(Device.model == device_model).limit(1)) is None:
            from collectors.store.repo import upsert_device

            upsert_device(s, _device_info(device_model, meta))
            s.commit()
    # A deleted version's file is gone: the bundle brings it back as a new version.
    row, added = registry.register_file(store, device_model, target, data, ".skops",
                                        manifest["has_power"], manifest["n_samples"], meta,
                                        directory)
    return Imported(row, added, manifest)


def _trial_load(manifest: dict, meta: dict, data: bytes, name: str) -> None:
    """Load the model from a scratch copy as the registry would, so that a bundle this hwnas
    cannot serve (types it does not trust, another feature set, libraries that cannot read
    it) is refused before it is registered."""
    from predictor import network, registry

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / manifest["file"]
        scratch.write_bytes(data)
        row = ModelVersion(device_model=manifest["device_model"], target=manifest["target"],
                           version=manifest["version"], path=str(scratch),
                           sha256=manifest["sha256"], has_power=manifest["has_power"],
                           n_samples=manifest["n_samples"], meta=meta)
        try:
            registry.checked_skops_types(scratch)
            if registry.outdated(row):
                raise BundleError(f"{name}: the model was fitted on the GEMM features of "
                                  "another hwnas; train it again where its measurements are "
                                  "(or bring them here with hwnas db export / import and run "
                                  "hwnas train)")
            registry.load(row) if row.target == "gemm" else network.load(row)
        except BundleError:
            raise
        except registry.RegistryError as exc:
            raise BundleError(f"{name}: {exc}") from None
        except Exception as exc:  # a file these library versions cannot rebuild
            raise BundleError(f"{name}: the model does not load here ({type(exc).__name__}: "
                              f"{exc}); it was written with {meta.get('libraries')}") from None


def _device_info(device_model: str, meta: dict):
    from collectors.devices import DeviceInfo

    profile = (meta.get("params") or {}).get("profile") or {}
    kind = profile.get("kind") if profile.get("kind") in ("cpu", "gpu") else "other"
    return DeviceInfo(name=device_model, kind=kind, model=device_model, host="imported",
                      sm_count=profile.get("sm_count"),
                      extra={"source": "hwnas import model"})


def _now() -> str:
    return utcnow().isoformat(timespec="seconds")
