"""Versioned model registry: model files in skops format (no pickle), SHA-256 and metadata in
the store. A file whose checksum differs from the registered one is refused on load."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

from sqlalchemy import false, func, select, text, update

from collectors.paths import data_dir
from collectors.store.db import Store
from collectors.store.models import ModelVersion, utcnow
from predictor.features import FEATURE_NAMES
from predictor.forest import GemmCostForest

# The only types a registered forest file may contain beyond skops' own trusted defaults.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class RegistryError(LookupError):
    """No such model, or a model that cannot be loaded."""


class NoDefaultError(RegistryError):
    """Every version of a device's model of one kind is retired: none answers by default."""

    def __init__(self, message: str, device_model: str, target: str, versions: list[int]):
        super().__init__(message)
        self.device_model, self.target, self.versions = device_model, target, versions


class ChecksumError(RegistryError):
    """The model file does not match the checksum recorded when it was registered."""


def models_dir() -> Path:
    if os.environ.get("HWNAS_MODELS"):
        return Path(os.environ["HWNAS_MODELS"])
    return data_dir() / "models"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _record(store: Store, device_model: str, target: str, suffix: str, write, has_power: bool,
            n_samples: int, meta: dict, directory: Path | None,
            reuse_identical: bool = False) -> tuple[ModelVersion, bool]:
    """Write a model file with ``write(path)`` and add version N+1 of (device, target):
    (the row, True). With ``reuse_identical``, a version not deleted whose file has the same
    SHA-256 is returned instead and nothing is added: (that row, False)."""
    directory = directory or models_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # Written and hashed before the lock, under a name of its own: the slow part, which
    # concurrent registrations may do side by side.
    # (Not mkstemp: its file is private to this user, and a model folder may be shared.)
    tmp = directory / f".registering-{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        digest = sha256_file(tmp)
        with store.session() as s:
            _lock_versions(s)
            if reuse_identical:
                same = identical(s, device_model, target, digest)
                if same is not None:
                    return same, False
            last = s.scalar(select(func.max(ModelVersion.version)).where(
                ModelVersion.device_model == device_model, ModelVersion.target == target)) or 0
            version = last + 1
            path = directory / f"{_slug(device_model)}-{target}-v{version}{suffix}"
            # Under its final name before the record exists: a crash in between leaves a
            # stray file (the next registration of this version replaces it), never a record
            # whose file is missing.
            os.replace(tmp, path)
            row = ModelVersion(device_model=device_model, target=target, version=version,
                               path=str(path), sha256=digest, has_power=has_power,
                               n_samples=n_samples, meta=meta)
            s.add(row)
            s.commit()
            return row, True
    finally:
        tmp.unlink(missing_ok=True)


def identical(s, device_model: str, target: str, digest: str) -> ModelVersion | None:
    """A version of (device, target), not deleted, whose file has SHA-256 ``digest`` (a
    deleted one's file is gone), or None; ``s`` is an open session."""
    return next((r for r in s.scalars(select(ModelVersion).where(
        ModelVersion.device_model == device_model, ModelVersion.target == target,
        ModelVersion.sha256 == digest).order_by(ModelVersion.version)) if not deleted(r)), None)


# PostgreSQL advisory lock key of the right to add model versions (any 64-bit number that
# nothing else on the server locks; this one spells "hwnasmv" in ASCII).
VERSIONS_LOCK_KEY = 0x68776E61736D76


def _lock_versions(s) -> None:
    """Hold the right to add model versions until the session's transaction ends, so that
    concurrent registrations (two `hwnas train` runs on machines sharing a store, one bundle
    imported twice at once) take turns: each sees the versions the others added, and none
    takes a number another holds. Reading models is not blocked."""
    if s.get_bind().dialect.name == "postgresql":
        # An advisory lock, not LOCK TABLE: that one asks for UPDATE on the table, which a role
        # that may only read models and add versions does not hold.
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": VERSIONS_LOCK_KEY})
    else:
        # SQLite: a write statement, even one that changes no row, takes the database's write
        # lock; other writers wait for it (busy_timeout).
        s.execute(update(ModelVersion).where(false()).values(version=ModelVersion.version))


def register(store: Store, model: GemmCostForest, device_model: str, meta: dict,
             directory: Path | None = None) -> ModelVersion:
    """Write the GEMM model file and add a new version row (1, 2, ... per device model)."""
    import skops.io as sio

    forests = {"latency": model.forest_,
               **({"power": model.power_forest_} if model.has_power_ else {})}
    return _record(store, device_model, "gemm", ".skops", lambda p: sio.dump(forests, p),
                   bool(model.has_power_), model.n_train_,
                   {**meta, "params": model.get_params(), "y_ndim": model.y_ndim_,
                    "features": model.feature_names_, "overhead_ms": model.overhead_ms_,
                    "bound_scale": model.bound_scale_, "baseline_fit": model.baseline_fit_,
                    "aligned_baseline": model.aligned_baseline_,
                    "train_range": model.train_range_,
                    "bound": model.bound_,
                    **({"power_min_latency_ms": model.power_min_latency_ms_}
                       if model.has_power_ else {})},
                   directory)[0]


def register_skops(store: Store, device_model: str, target: str, obj, n_samples: int,
                   meta: dict, directory: Path | None = None) -> ModelVersion:
    """Register scikit-learn objects (a forest, or a dict of forests) in skops format."""
    import skops.io as sio

    return _record(store, device_model, target, ".skops", lambda p: sio.dump(obj, p), False,
                   n_samples, meta, directory)[0]


def load_skops(row: ModelVersion):
    """The objects of a skops model file, after its checksum and its types are checked."""
    import skops.io as sio

    path = verified_file(row)
    return sio.load(path, trusted=checked_skops_types(path))


def checked_skops_types(path: Path) -> list[str]:
    """The types of a skops file beyond skops' trusted defaults, once they are known to be
    those a registered model may hold; any other type is a RegistryError that names it (the
    file is never loaded then)."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise RegistryError(f"model file {path} holds unexpected types {unexpected}")
    return untrusted


def register_file(store: Store, device_model: str, target: str, data: bytes, suffix: str,
                  has_power: bool, n_samples: int, meta: dict,
                  directory: Path | None = None) -> tuple[ModelVersion, bool]:
    """Register a model file's bytes as they are (a model brought from another store), unless
    a version not deleted holds the same bytes: (the new row, True), or (that row, False)."""
    return _record(store, device_model, target, suffix, lambda p: p.write_bytes(data),
                   has_power, n_samples, meta, directory, reuse_identical=True)


def register_json(store: Store, device_model: str, target: str, text: str, n_samples: int,
                  meta: dict, directory: Path | None = None) -> ModelVersion:
    """Register a model that is plain JSON (e.g. the NAS-Bench-201 few-shot model)."""
    def write(path: Path) -> None:
        path.write_text(text)

    return _record(store, device_model, target, ".json", write, False, n_samples, meta,
                   directory)[0]


def read_json(row: ModelVersion) -> str:
    """The text of a JSON model, after checking its SHA-256."""
    return verified_file(row).read_text()


def file_problem(row: ModelVersion) -> str | None:
    """Why the row's file would be refused on load (missing, or changed since it was
    registered), or None where it is the file that was registered."""
    try:
        verified_file(row)
    except RegistryError as exc:
        return str(exc)
    return None


def model_file(row: ModelVersion) -> Path:
    """Where the row's file is on this machine: the path it was registered at, else a file of
    the same name in this machine's :func:`models_dir` (a store shared by several machines
    records the path on the one that trained; the others may mount or sync the folder
    elsewhere). Its checksum is checked on load either way."""
    if deleted(row):
        raise RegistryError(f"{row.device_model} {row.target} model v{row.version} was "
                            f"deleted {_when(row, 'deleted')} UTC (`hwnas models --delete`): "
                            "its file is gone")
    registered = Path(row.path)
    if registered.exists():
        return registered
    here = models_dir() / registered.name
    if here.exists():
        return here
    raise RegistryError(f"model file of {row.device_model} {row.target} v{row.version} is "
                        f"missing: neither {registered} (where it was registered) nor {here} "
                        "(this machine's $HWNAS_MODELS) exists")


def verified_file(row: ModelVersion) -> Path:
    """The row's file (:func:`model_file`), after checking its SHA-256 against the
    registered one."""
    path = model_file(row)
    actual = sha256_file(path)
    if actual != row.sha256:
        raise ChecksumError(f"model file {path} has SHA-256 {actual[:12]}..., registered "
                            f"{row.sha256[:12]}...: refusing to load a changed file")
    return path


def find(store: Store, device_model: str, version: int | None = None,
         target: str = "gemm", dtype: str | None = None) -> ModelVersion:
    """Version ``version`` of the device's ``target`` model (a retired one too, when named),
    else its default: the highest version not retired; with ``dtype``, the highest not
    retired that learned that dtype (a network model learns one), where there is one."""
    with store.session() as s:
        q = select(ModelVersion).where(ModelVersion.device_model == device_model,
                                       ModelVersion.target == target)
        if version is not None:
            row = s.scalar(q.where(ModelVersion.version == version))
            if row is None:
                raise RegistryError(f"--version {version}: no such model version for "
                                    f"{device_model!r}")
            if deleted(row):
                raise RegistryError(f"--version {version}: {device_model!r} {target} v{version} "
                                    f"was deleted {_when(row, 'deleted')} UTC")
            return row
        rows = list(s.scalars(q.order_by(ModelVersion.version.desc())))
    how = {"gemm": "hwnas train", "network": "hwnas train --target network"}.get(
        target, "hwnas adapt")
    if not rows:
        raise RegistryError(f"no trained {target} model for {device_model!r}; run {how} first")
    serving = [row for row in rows if not retired(row)]
    if dtype is not None:
        learned = [row for row in serving if dtype in ((row.meta or {}).get("dtypes") or ())]
        serving = learned or serving
    if serving:
        return serving[0]
    versions = [r.version for r in reversed(rows)]
    raise NoDefaultError(f"every {target} model of {device_model!r} is retired (versions "
                         f"{', '.join(map(str, versions))}): name one with --version, restore "
                         f"one with `hwnas models --device '{device_model}' --version V "
                         f"--restore`, or run {how}", device_model, target, versions)


def retired(row: ModelVersion) -> bool:
    """A version taken out of default use by `hwnas models --retire` (still loadable by its
    number)."""
    return bool((row.meta or {}).get("retired"))


def deleted(row: ModelVersion) -> bool:
    """A retired version whose file `hwnas models --delete` removed. Its record stays, so that
    its number is never given to another model (clients and search outputs name versions by
    number), but it cannot answer."""
    return bool((row.meta or {}).get("deleted"))


def _when(row: ModelVersion, event: str) -> str:
    """When the row was retired or deleted (``event``), as recorded: 'YYYY-MM-DD HH:MM:SS'."""
    return str(((row.meta or {}).get(event) or {}).get("at_utc", "?")).replace("T", " ")


def defaults(rows: list[ModelVersion]) -> dict[tuple[str, str], ModelVersion]:
    """The default row of each (device model, target) among ``rows``: the highest version not
    retired (none for a pair whose every version is)."""
    best: dict[tuple[str, str], ModelVersion] = {}
    for r in rows:
        key = (r.device_model, r.target)
        if not retired(r) and (key not in best or r.version > best[key].version):
            best[key] = r
    return best


def dtype_defaults(rows: list[ModelVersion]) -> dict[int, list[str]]:
    """Per row id, the dtypes a network model among ``rows`` answers for by default although it
    is not its device's default (:func:`find` with a dtype): the newest not retired that
    learned that dtype, where the default did not learn it."""
    best = defaults(rows)
    out: dict[int, list[str]] = {}
    for (device, target), default in best.items():
        if target != "network":
            continue
        taken = set((default.meta or {}).get("dtypes") or ())
        for r in sorted(rows, key=lambda r: -r.version):
            if (r.device_model, r.target) != (device, target) or retired(r) or r is default:
                continue
            own = sorted(set((r.meta or {}).get("dtypes") or ()) - taken)
            if own:
                out[r.id] = own
                taken |= set(own)
    return out


def default_row(store: Store, device_model: str, target: str = "gemm") -> ModelVersion | None:
    """The device's default ``target`` model (:func:`find` without a version), or None where
    it has none: no version, or every one retired."""
    try:
        return find(store, device_model, target=target)
    except RegistryError:
        return None


def set_retired(store: Store, row: ModelVersion, retire: bool) -> ModelVersion:
    """Retire a version (the default falls back to the highest version left) or restore it;
    its file and record stay, and it can still be asked for by its number. A deleted version
    cannot be restored."""
    if deleted(row):
        raise RegistryError(f"--{'retire' if retire else 'restore'}: {row.device_model} "
                            f"{row.target} v{row.version} was deleted {_when(row, 'deleted')} "
                            "UTC; its file is gone (train, or import its bundle again, for a "
                            "new version)")
    return _mark(store, row, "retired", retire)


def _mark(store: Store, row: ModelVersion, event: str, on: bool) -> ModelVersion:
    """Record (``on``) or clear an event of the row's life in its metadata, with the time."""
    with store.session() as s:
        current = s.get(ModelVersion, row.id)
        meta = dict(current.meta or {})
        if on:
            meta[event] = {"at_utc": utcnow().isoformat(timespec="seconds")}
        else:
            meta.pop(event, None)
        current.meta = meta  # a new dict, so the JSON column is written
        s.commit()
        return current


def delete(store: Store, row: ModelVersion) -> tuple[ModelVersion, Path | None, int]:
    """Remove a retired version's file and mark its record deleted: (the record, the file
    removed, None where it was already missing, and the bytes that freed). Only a retired
    version, so that no request
    naming no version ever moves to or from it here; a running service stops answering
    requests that name it within its refresh interval."""
    if deleted(row):
        raise RegistryError(f"--delete: {row.device_model} {row.target} v{row.version} was "
                            f"already deleted {_when(row, 'deleted')} UTC")
    if not retired(row):
        raise RegistryError(f"--delete: {row.device_model} {row.target} v{row.version} is not "
                            "retired; retire it first (--retire), then delete it")
    try:
        path: Path | None = model_file(row)
        size = path.stat().st_size
    except (RegistryError, OSError):
        path, size = None, 0
    # The record first: a crash in between leaves a stray file, never a record that offers
    # a model whose file is gone.
    marked = _mark(store, row, "deleted", True)
    if path is not None:
        path.unlink(missing_ok=True)
    return marked, path, size


def outdated(row: ModelVersion) -> bool:
    """A GEMM model fitted on another feature set than this hwnas computes (an older hwnas): it
    cannot predict until it is retrained."""
    return row.target == "gemm" and row.meta.get("features") != FEATURE_NAMES


def load(row: ModelVersion) -> GemmCostForest:
    """Rebuild the estimator from a registry row, after checking the file's SHA-256."""
    forests = load_skops(row)
    if not isinstance(forests, dict):  # before latency and power had a forest each
        if forests.n_outputs_ != 1:
            raise RegistryError(f"{row.device_model!r} model v{row.version} predicts latency "
                                "and power with one forest (an older hwnas, less accurate); "
                                "retrain it with `hwnas train`")
        forests = {"latency": forests}
    params = dict(row.meta["params"])
    model = GemmCostForest(**params)
    model.forest_ = forests["latency"]
    model.power_forest_ = forests.get("power")
    model.y_ndim_ = row.meta.get("y_ndim", 1)
    model.feature_names_ = row.meta.get("features")
    if outdated(row):
        raise RegistryError(f"{row.device_model!r} model v{row.version} was trained on another "
                            "feature set (an older hwnas); retrain it with `hwnas train`")
    # Models from before the overhead term have none, which is how they were fitted.
    model.overhead_ms_ = dict(row.meta.get("overhead_ms") or {})
    # Before the fitted baseline: scale 1 for every dtype, the overhead as the data showed it.
    model.bound_scale_ = dict(row.meta.get("bound_scale") or {})
    model.baseline_fit_ = row.meta.get("baseline_fit", "overhead")
    # Before aligned calls had a baseline of their own, every call of a dtype shared one.
    model.aligned_baseline_ = {d: tuple(v) for d, v in
                               (row.meta.get("aligned_baseline") or {}).items()}
    model.bound_ = row.meta.get("bound", "roofline")  # the only baseline before the choice
    if "power_min_latency_ms" in row.meta:
        model.power_min_latency_ms_ = row.meta["power_min_latency_ms"]
    model.train_range_ = dict(row.meta.get("train_range") or {})  # none recorded before
    model.n_train_ = row.n_samples
    return model.compile()


def list_models(store: Store) -> list[ModelVersion]:
    """Registered models by device model, kind (target) and version."""
    with store.session() as s:
        return list(s.scalars(select(ModelVersion).order_by(
            ModelVersion.device_model, ModelVersion.target, ModelVersion.version)))
