"""What the gRPC service computes, without gRPC: device resolution, a model cache that picks up
new registry versions without a restart, and op/network predictions.

Errors are :class:`ServiceError` with the name of the gRPC status code they map to, so this
module stays importable (and testable) without grpcio.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from collectors.devices import matching_models
from collectors.ops import Op
from collectors.store.db import Store
from collectors.store.models import Device, Measurement, ModelVersion
from predictor import network, registry
from predictor.forest import CostPrediction, GemmCostForest
from predictor.op_costs import OpCost, predict_ops, total

log = logging.getLogger("hwnas.service")


class ServiceError(Exception):
    """``code`` is a grpc.StatusCode name: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION..."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    device: str
    version: int
    model: GemmCostForest


def no_default_reason(exc: registry.RegistryError) -> str:
    """Why a device has no default model, in the request's terms (model_version, not the
    command line's --version)."""
    if isinstance(exc, registry.NoDefaultError):
        return (f"device: every {exc.target} model of {exc.device_model!r} is retired "
                f"(versions {', '.join(map(str, exc.versions))}): ask for one by "
                "model_version, or have one restored or trained")
    return f"device: {exc}"


# How a network at another batch than its network model's training networks is answered
# (predictor.network.batch_scaled): every such method starts with BATCH_SCALED.
BATCH_SCALED = "network model at another batch: "
SCALED_UP = BATCH_SCALED + "its answer at its batch + the GEMM model's change with the batch"
SCALED_DOWN = (BATCH_SCALED + "the geometric mean of its answer as is and at its batch + the "
               "GEMM model's change with the batch")


class PredictionEngine:
    """Thread-safe: many RPC threads share it. ``refresh_s`` bounds how often the registry is
    asked whether a newer version exists."""

    def __init__(self, store: Store, refresh_s: float = 1.0):
        self.store = store
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._latest: dict[str, LoadedModel] = {}
        self._checked: dict[str, float] = {}
        self._pinned: dict[tuple[str, int], LoadedModel] = {}
        self._pinned_checked: dict[tuple[str, int], float] = {}
        self._devices: list[str] = []
        self._resolved: dict[str, str] = {}
        self._nb201: dict[tuple[str, int], tuple] = {}
        self._networks: dict[tuple[str, int], tuple] = {}
        self._rows: dict[tuple[str, str, int, str | None], tuple[float, object]] = {}
        self._references: dict[str, pd.DataFrame] = {}
        # The model versions warm_up could not load, with why: each is logged once, not at
        # every retry of the health watcher (a stale model stays stale until retrained).
        self._unloadable: dict[tuple[str, str, int], str] = {}

    # -- devices -------------------------------------------------------------------------
    def device_models(self, refresh: bool = False) -> list[str]:
        if refresh or not self._devices:
            with self.store.session() as s:
                self._devices = sorted(set(s.scalars(select(Device.model))))
        return self._devices

    def resolve_device(self, spec: str) -> str:
        hit = self._resolved.get(spec)
        if hit is not None:
            return hit
        resolved = self._resolve(spec)
        self._resolved[spec] = resolved
        return resolved

    def _resolve(self, spec: str) -> str:
        key = (spec or "").strip()
        if not key:
            raise ServiceError("INVALID_ARGUMENT", "device: is required (a device model name)")
        for refresh in (False, True):
            hits = matching_models(key, self.device_models(refresh))
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ServiceError("INVALID_ARGUMENT",
                                   f"device: {spec!r} matches several: {'; '.join(hits)}")
        raise ServiceError("NOT_FOUND", f"device: no device model matches {spec!r}")

    # -- models --------------------------------------------------------------------------
    def warm_up(self) -> int:
        """Load the latest model of every device that has one; returns how many loaded."""
        loaded = 0
        for row in registry.list_models(self.store):
            try:
                if row.target == "gemm" and row.device_model not in self._latest:
                    self.model_for(row.device_model, 0)
                    loaded += 1
                elif row.target == "network" and self.network_model(row.device_model, 0):
                    loaded += 1
            except ServiceError as exc:
                key = (row.target, row.device_model, row.version)
                if self._unloadable.get(key) != str(exc):
                    self._unloadable[key] = str(exc)
                    log.error("could not load %s model for %s: %s", row.target,
                              row.device_model, exc)
        return loaded

    def model_for(self, device: str, version: int = 0) -> LoadedModel:
        if version < 0:
            raise ServiceError("INVALID_ARGUMENT", f"model_version: must be >= 0, got {version}")
        now = time.monotonic()
        if version:
            key = (device, version)
            # Re-asked every refresh_s, as the default is: a version deleted since
            # (`hwnas models --delete`) stops answering.
            if key not in self._pinned or now - self._pinned_checked.get(key, 0) >= \
                    self.refresh_s:
                try:
                    row = registry.find(self.store, device, version)
                except registry.RegistryError as exc:
                    self._pinned.pop(key, None)
                    raise ServiceError("NOT_FOUND", f"model_version: {exc}") from None
                if key not in self._pinned:
                    self._pinned[key] = self._load(row)
                self._pinned_checked[key] = now
            return self._pinned[key]
        current = self._latest.get(device)
        if current is not None and now - self._checked.get(device, 0) < self.refresh_s:
            return current
        with self._lock:
            current = self._latest.get(device)
            if current is not None and now - self._checked.get(device, 0) < self.refresh_s:
                return current
            self._checked[device] = now
            try:
                row = registry.find(self.store, device)
            except registry.RegistryError as exc:
                # No default version any more (every one retired, or removed from the store):
                # stop answering by default rather than serve what the registry withdrew.
                self._latest.pop(device, None)
                raise ServiceError("FAILED_PRECONDITION", no_default_reason(exc)) from None
            if current is not None and current.version == row.version:
                return current
            try:
                fresh = self._load(row)
            except ServiceError:
                if current is not None:  # a broken new version never replaces a working one
                    log.error("keeping %s v%d: v%d failed to load", device, current.version,
                              row.version)
                    return current
                raise
            self._latest[device] = fresh  # swapped atomically; in-flight calls keep the old one
            log.info("serving %s model v%d", device, fresh.version)
            return fresh

    @staticmethod
    def _load(row: ModelVersion) -> LoadedModel:
        try:
            return LoadedModel(row.device_model, row.version, registry.load(row))
        except registry.RegistryError as exc:
            raise ServiceError("FAILED_PRECONDITION", f"model {row.device_model} "
                               f"v{row.version} cannot be loaded: {exc}") from None

    def serving(self) -> list[tuple[str, str, int]]:
        """(device model, target, version) of each model loaded so far that answers requests
        naming no version: GEMM models, and the network models found since the last refresh;
        a network model that answers one dtype's networks in place of the device's default
        one has the target ``network/<dtype>``."""
        out = {(d, "gemm"): lm.version for d, lm in list(self._latest.items())}
        for (d, target, v, dtype), hit in list(self._rows.items()):
            if target != "network" or v != 0 or hit[1] is None:
                continue
            default = self._find(d, target, 0)
            own = dtype is not None and (default is None or default.version != hit[1].version)
            out[(d, f"network/{dtype}" if own else "network")] = hit[1].version
        return sorted((d, target, v) for (d, target), v in out.items())

    def loaded(self) -> list:
        return list(self._latest.values()) + list(self._networks.values())

    # -- predictions ---------------------------------------------------------------------
    def predict(self, device_spec: str, version: int, ops: list[Op]
                ) -> tuple[str, int, list[OpCost]]:
        """Per-op costs: from the device's network model (per-op-type forests plus learned
        per-op overheads) when one is registered and its training networks held the ops'
        dtypes and kinds, else from the GEMM forest (memory-bound ops at the bandwidth
        bound plus the dtype's fixed cost per call)."""
        device = self.resolve_device(device_spec)
        return self._op_costs(device, version, ops,
                              self._network_for(device, version, ops, whole=False))

    def _network_for(self, device: str, version: int, ops: list[Op], whole: bool = True):
        """The device's network model if it covers ``ops`` (the dtypes and op kinds of its
        training networks, and as a ``whole`` network not far smaller than they were:
        NetworkCostModel.covers), else None (the GEMM forest answers, or refuses a dtype it
        was not trained on either). A ``version`` that names only a network model, which does
        not cover ``ops``, is a FAILED_PRECONDITION saying why."""
        net = self.network_model(device, version, ops)
        if net is None:
            return None
        reason = net[1].uncovered(ops, whole)
        if reason is None:
            return net
        if version and self._find(device, "gemm", version) is None:
            # the version names that network model only: no GEMM model of it sums the ops
            raise ServiceError("FAILED_PRECONDITION", f"model_version: network model "
                               f"v{version} of {device!r} does not answer for these ops "
                               f"({reason}), and there is no GEMM model v{version} to sum "
                               "them; ask without a version for the default GEMM model's sum")
        return None

    def _op_costs(self, device: str, version: int, ops: list[Op], net
                  ) -> tuple[str, int, list[OpCost]]:
        if net is not None:
            v, model, rmspe = net
            shares, _ = model.per_op(ops)
            return device, v, [OpCost(float(c), float(c) * rmspe, None, None, None, None,
                                      "network model", 0) for c in shares]
        lm = self.model_for(device, version)
        try:
            costs = predict_ops(lm.model, ops)
        except ValueError as exc:
            raise ServiceError("INVALID_ARGUMENT", str(exc)) from None
        # recurrent layers from the network model's forest of them, where layer sweeps made one
        latest = self.network_model(device, 0, ops) if any(
            op.kind in network.FOREST_PRICED for op in ops) else None
        if latest is not None:
            costs = network.forest_priced(latest[1], latest[0], ops, costs)
        return device, lm.version, costs

    def predict_gemm(self, device_spec: str, version: int, arrays: dict
                     ) -> tuple[str, int, CostPrediction]:
        """The fast path for GEMM batches: column arrays straight into the forest."""
        device = self.resolve_device(device_spec)
        lm = self.model_for(device, version)
        return device, lm.version, lm.model.predict_costs(arrays)

    def predict_nb201(self, device_spec: str, version: int, arch: str, batch: int = 1,
                      dtype: str = "fp32") -> tuple[str, int, OpCost] | None:
        """Whole-architecture latency from a few-shot NAS-Bench-201 model (``hwnas adapt``), or
        None when the device has none, or has one measured at another batch size or dtype
        (callers then sum op predictions, with ``version`` naming the model that sums them)."""
        from predictor.adapt import TARGET, load_reference
        from predictor.fewshot import FewShotModel
        from predictor.nasbench201 import parse_cell

        device = self.resolve_device(device_spec)
        row = self._find(device, TARGET, version)
        if row is None:
            # A version names a few-shot model only on a device that has them; elsewhere it
            # is the network or GEMM model's that sums the cell's ops.
            if version and self._find(device, TARGET, 0) is not None:
                raise ServiceError("NOT_FOUND", f"model_version: no nb201 model v{version} "
                                   f"for {device!r}")
            return None
        made = row.meta.get("measured_at")
        if made and (made.get("batch"), made.get("dtype")) != (batch, dtype):
            if version:
                raise ServiceError("INVALID_ARGUMENT", f"batch/dtype: nb201 model v{version} "
                                   f"of {device!r} was measured at batch {made.get('batch')} "
                                   f"{made.get('dtype')}, not batch {batch} {dtype}")
            return None
        key = (device, row.version)
        if key not in self._nb201:
            try:
                model = FewShotModel.from_json(registry.read_json(row))
            except registry.RegistryError as exc:
                raise ServiceError("FAILED_PRECONDITION", str(exc)) from None
            path = row.meta["reference_csv"]
            if path not in self._references:
                if registry.sha256_file(path) != row.meta["reference_sha256"]:
                    raise ServiceError("FAILED_PRECONDITION",
                                       f"reference table {path} changed since adapt")
                archs, table = load_reference(path)
                self._references[path] = table.set_index(archs)
            self._nb201[key] = (model, self._references[path])
        model, table = self._nb201[key]
        parse_cell(arch)  # raises OpError naming the field when malformed
        key_arch = arch.strip()
        if key_arch not in table.index:
            raise ServiceError("INVALID_ARGUMENT", "nasbench201: not in the reference table")
        ref = table.loc[[key_arch]]
        ms = float(model.predict(pd.Series([key_arch]), ref)[0])
        std = ms * row.meta.get("sample_log_residual_std", 0.0)
        return device, row.version, OpCost(ms, std, None, None, None, None,
                                           "nb201 few-shot model (architecture level)", 0)

    def _find(self, device: str, target: str, version: int, dtype: str | None = None):
        """The registry row of (device, target, version; 0 = latest, the latest that learned
        ``dtype`` where one is given and there is such a version), or None. Lookups are
        re-asked at most every ``refresh_s`` (new versions arrive, and deleted ones go, without
        a restart), so per-request calls do not each query the store."""
        dtype = None if version else dtype
        key = (device, target, version, dtype)
        now = time.monotonic()
        hit = self._rows.get(key)
        if hit is not None and now - hit[0] < self.refresh_s:
            return hit[1]
        try:
            row = registry.find(self.store, device, version or None, target=target,
                                dtype=dtype)
        except registry.RegistryError:
            row = None
        self._rows[key] = (now, row)
        return row

    def network_model(self, device: str, version: int, ops: list[Op] | None = None):
        """(version, model, held-out RMSPE) of the device's network model, or None. Without a
        ``version``, the latest that learned the dtype of ``ops``, where one did: a device may
        have one network model per dtype its networks were measured in."""
        dtype = network.network_dtype(ops) if ops else None
        row = self._find(device, network.TARGET, version, dtype)
        if row is None:
            return None
        key = (device, row.version)
        if key not in self._networks:
            try:
                model = network.load(row)
            except registry.RegistryError as exc:
                raise ServiceError("FAILED_PRECONDITION", str(exc)) from None
            rmspe = row.meta.get("metrics", {}).get("held_out", {}).get("rmspe", 0.0) / 100
            self._networks[key] = (row.version, model, rmspe)
        return self._networks[key]

    def predict_network(self, device_spec: str, version: int, ops: list[Op]
                        ) -> tuple[str, int, OpCost, list[OpCost]]:
        """A registered network model when the device has one (additive, so per-layer shares
        sum to the total), or one fitted at another batch than the network's
        (:meth:`_batch_scaled`); otherwise the sum of op predictions."""
        device = self.resolve_device(device_spec)
        shifted = self._network_at_another_batch(device, version, ops)
        if shifted is not None:
            return self._batch_scaled(device, ops, shifted)
        net = self._network_for(device, version, ops)
        device, v, costs = self._op_costs(device, version, ops, net)
        if net is None:
            return device, v, total(costs), costs
        _, model, rmspe = net
        lat = sum(c.latency_ms for c in costs) + model.constant_ms
        return device, v, OpCost(lat, lat * rmspe, None, None, None, None,
                                 "network model: per-op forests + additive residual terms",
                                 0), costs

    def _network_at_another_batch(self, device: str, version: int, ops: list[Op]):
        """The device's network model where its training networks all ran at one batch and it
        covers ``ops`` but for theirs; else None."""
        net = self.network_model(device, version, ops)
        return net if net is not None and network.at_another_batch(net[1], ops) else None

    def _batch_scaled(self, device: str, ops: list[Op], net
                      ) -> tuple[str, int, OpCost, list[OpCost]]:
        """A network at another batch than the network model ``net``'s, answered by
        :func:`predictor.network.batch_scaled` with the default GEMM model. Layers are the
        second answer's, scaled to the total."""
        version, model, rmspe = net
        try:
            lat, per_op, spread, now, blended = network.batch_scaled(
                model, self.model_for(device, 0).model, ops)
        except ValueError as exc:
            raise ServiceError("INVALID_ARGUMENT", str(exc)) from None
        method = SCALED_DOWN if blended else SCALED_UP
        layers = [OpCost(float(x), float(x) * rmspe, None, None, None, None, method,
                         c.gemm_count, latency_extrapolated=c.latency_extrapolated)
                  for x, c in zip(per_op, now, strict=True)]
        # the network model's error, and half the two answers' spread (in log terms)
        std = lat * float(np.hypot(rmspe, spread))
        return device, version, OpCost(
            lat, std, None, None, None, None, method, sum(c.gemm_count for c in layers),
            latency_extrapolated=any(c.latency_extrapolated for c in layers)), layers

    def device_table(self) -> list[dict]:
        with self.store.session() as s:
            counts = dict(s.execute(
                select(Device.model, func.count(Measurement.id))
                .join(Measurement, Measurement.device_id == Device.id)
                .where(Measurement.status == "ok").group_by(Device.model)).all())
            with_model = set(s.scalars(select(ModelVersion.device_model)))
            out = {}
            for d in s.scalars(select(Device).order_by(Device.last_seen)):
                out[d.model] = {"model": d.model, "kind": d.kind, "sm_count": d.sm_count or 0,
                                "memory_bytes": d.memory_bytes or 0,
                                "measurements": counts.get(d.model, 0),
                                "has_model": d.model in with_model}
            return list(out.values())
