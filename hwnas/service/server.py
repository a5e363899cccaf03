"""The gRPC prediction server: hwnas.v1.Predictor plus grpc.health.v1 and server reflection.

Binds 127.0.0.1 by default. Optional TLS (``tls_cert``/``tls_key``) and bearer-token auth; every
error is a proper status code with a message naming the bad field, one JSON log line per error,
and Prometheus metrics (requests by method and code, a latency histogram).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collectors.ops import Op, OpError, check_dtype, check_gemm_columns
from hwnas.rpc.v1 import predictor_pb2 as pb
from hwnas.rpc.v1 import predictor_pb2_grpc as pb_grpc
from hwnas.service.engine import PredictionEngine, ServiceError, no_default_reason
from predictor import registry
from predictor.nasbench201 import network_ops
from predictor.op_costs import OpCost

SERVICE = pb.DESCRIPTOR.services_by_name["Predictor"].full_name
# The kinds of model the registry holds: GEMM models (hwnas train), network models (hwnas
# train --target network) and few-shot NAS-Bench-201 models (hwnas adapt).
MODEL_TARGETS = ("gemm", "network", "nb201")
log = logging.getLogger("hwnas.service")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    workers: int = 16
    max_batch: int = 10_000  # shapes/ops per request
    # ops of one network (PredictNetwork): a recurrent layer is an op or three per step
    max_network_ops: int = 100_000
    max_message_bytes: int = 16 << 20
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None
    metrics_port: int | None = None
    refresh_s: float = 1.0
    grace_s: float = 10.0


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("hwnas_rpc_requests", "RPCs by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("hwnas_rpc_latency_seconds", "RPC latency", ["method"],
                                 buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
                                          5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                 registry=self.registry)
        self.predictions = Counter("hwnas_predictions", "Shapes/ops predicted",
                                   registry=self.registry)

    def watch(self, engine: PredictionEngine) -> None:
        """Export, at every scrape, the version of each device's model that answers by
        default (``hwnas_model_version``): a hot reload or a rollback shows there."""
        self.registry.register(_ServedModels(engine))

    def serve(self, port: int, host: str) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)


class _ServedModels:
    """A Prometheus collector reading the engine's default models when scraped."""

    def __init__(self, engine: PredictionEngine):
        self.engine = engine

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily("hwnas_model_version", "Version of each device's model that "
                                  "answers requests naming none (models loaded so far)",
                                  labels=["device", "target"])
        for device, target, version in self.engine.serving():
            gauge.add_metric([device, target], version)
        yield gauge


class Interceptor(grpc.ServerInterceptor):
    """Bearer-token check, metrics and one structured log line per failed call."""

    def __init__(self, token: str | None, metrics: Metrics):
        self.token = token
        self.metrics = metrics
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        # One wrapped handler per method, built once: the token is checked per call from the
        # call's own metadata, so nothing per-call lives in the wrapper.
        key = details.method
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrap(key, handler)
            self._wrapped[key] = wrapped
        return wrapped

    def _wrap(self, full_method: str, handler):
        method = full_method.rsplit("/", 1)[-1]
        public = full_method.startswith(("/grpc.health.", "/grpc.reflection."))
        inner = handler.unary_unary
        expected = None if self.token is None or public else f"Bearer {self.token}"
        requests, latency = self.metrics.requests, self.metrics.latency.labels(method)

        def wrapped(request, context):
            t0 = time.perf_counter()
            code = "OK"
            try:
                if expected is not None:
                    meta = dict(context.invocation_metadata() or ())
                    if not hmac.compare_digest(meta.get("authorization", ""), expected):
                        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                      "authorization: missing or wrong bearer token")
                return inner(request, context)
            except Exception:
                c = context.code()
                code = c.name if c is not None else "UNKNOWN"
                if code == "UNKNOWN":
                    log.exception("unexpected error in %s", method)
                raise
            finally:
                c = context.code()
                if c is not None and code == "OK":
                    code = c.name
                requests.labels(method, code).inc()
                latency.observe(time.perf_counter() - t0)
                if code != "OK":
                    log.warning(json.dumps({"event": "rpc_error", "method": method,
                                            "code": code, "peer": context.peer(),
                                            "message": context.details() or ""}))

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _fail(context, code: str, message: str):
    context.abort(getattr(grpc.StatusCode, code), message)


def _nz(value: int, default: int) -> int:
    return value if value else default


def gemm_arrays(shapes) -> dict[str, np.ndarray]:
    """GEMM shapes as column arrays, validated in bulk; the first bad field is named
    (``shapes[i].m``), as :class:`collectors.ops.Op` would name it."""
    n = len(shapes)
    cols = {c: np.fromiter((getattr(s, c) for s in shapes), np.int64, n)
            for c in ("m", "n", "k", "batch")}
    cols["batch"][cols["batch"] == 0] = 1
    cols["dtype"] = np.array([(s.dtype or "fp32").strip().lower() for s in shapes])
    check_gemm_columns(cols, lambda c, i: f"shapes[{i}].{c}")
    cols["trans_a"] = np.fromiter((s.trans_a for s in shapes), np.int64, n)
    cols["trans_b"] = np.fromiter((s.trans_b for s in shapes), np.int64, n)
    return cols


def column_arrays(cols: pb.GemmColumns) -> dict[str, np.ndarray]:
    """Columnar GEMM shapes as arrays, validated in bulk; names the first bad entry
    (``shapes.m[i]``)."""
    n = len(cols.m)
    out = {c: np.array(getattr(cols, c), dtype=np.int64) for c in ("m", "n", "k")}
    for c in ("n", "k"):
        if len(out[c]) != n:
            raise OpError(f"shapes.{c}", f"has {len(out[c])} entries, shapes.m has {n}")

    def per_row(name: str, values, default):
        if len(values) == 0:
            return np.full(n, default)
        if len(values) == 1:
            return np.full(n, values[0])
        if len(values) != n:
            raise OpError(f"shapes.{name}", f"needs 1 or {n} entries, got {len(values)}")
        return np.array(values)

    out["batch"] = per_row("batch", cols.batch, 1).astype(np.int64)
    out["batch"][out["batch"] == 0] = 1
    out["dtype"] = per_row("dtype", [d.strip().lower() or "fp32" for d in cols.dtype],
                           "fp32").astype(str)
    check_gemm_columns(out, lambda c, i: f"shapes.{c}[{i}]")
    for c in ("trans_a", "trans_b"):
        values = getattr(cols, c)
        if len(values) not in (0, n):
            raise OpError(f"shapes.{c}", f"needs 0 or {n} entries, got {len(values)}")
        out[c] = np.array(values, dtype=np.int64) if len(values) else np.zeros(n, np.int64)
    return out


def generic_op(op: pb.Op, field: str) -> Op:
    try:
        return Op.make(op.kind, dict(op.params), op.dtype or "fp32", _nz(op.batch, 1))
    except OpError as exc:
        raise OpError(f"{field}.{exc.field}", str(exc).split(": ", 1)[1]) from None


def to_prediction(c: OpCost, name: str = "") -> pb.Prediction:
    p = pb.Prediction(latency_ms=c.latency_ms, latency_std_ms=c.latency_std_ms, name=name,
                      gemm_count=c.gemm_count, power_available=c.power_w is not None,
                      latency_extrapolated=c.latency_extrapolated)
    if c.power_w is not None:
        p.power_w, p.power_std_w = c.power_w, c.power_std_w
        p.energy_j, p.energy_std_j = c.energy_j, c.energy_std_j
        p.power_extrapolated = c.power_extrapolated
    if not all(math.isfinite(v) for v in (p.latency_ms, p.latency_std_ms)):
        raise ServiceError("INTERNAL", "model produced a non-finite prediction")
    return p


class PredictorService(pb_grpc.PredictorServicer):
    def __init__(self, engine: PredictionEngine, config: ServerConfig, metrics: Metrics):
        self.engine, self.config, self.metrics = engine, config, metrics

    def _check_batch(self, n: int, field: str, most: int | None = None) -> None:
        most = most or self.config.max_batch
        if n == 0:
            raise OpError(field, "must hold at least one entry")
        if n > most:
            raise OpError(field, f"at most {most} per request, got {n}")

    def _run(self, context, fn):
        try:
            return fn()
        except OpError as exc:
            _fail(context, "INVALID_ARGUMENT", str(exc))
        except ServiceError as exc:
            _fail(context, exc.code, str(exc))

    def PredictGemm(self, request, context):
        def go():
            self._check_batch(len(request.shapes), "shapes")
            arrays = gemm_arrays(request.shapes)
            device, version, c = self.engine.predict_gemm(request.device,
                                                          request.model_version, arrays)
            self.metrics.predictions.inc(len(request.shapes))
            resp = pb.PredictResponse(device=device, model_version=version)
            if not (np.all(np.isfinite(c.latency_ms)) and np.all(np.isfinite(c.latency_std_ms))):
                raise ServiceError("INTERNAL", "model produced a non-finite prediction")
            add = resp.predictions.add
            beyond = c.latency_extrapolated.tolist()
            if c.power_w is None:
                for lat, sd, out in zip(c.latency_ms.tolist(), c.latency_std_ms.tolist(),
                                        beyond, strict=True):
                    add(latency_ms=lat, latency_std_ms=sd, gemm_count=1,
                        latency_extrapolated=out)
            else:
                for row in zip(c.latency_ms.tolist(), c.latency_std_ms.tolist(),
                               c.power_w.tolist(), c.power_std_w.tolist(),
                               c.energy_j.tolist(), c.energy_std_j.tolist(),
                               c.power_extrapolated.tolist(), beyond, strict=True):
                    add(latency_ms=row[0], latency_std_ms=row[1], power_available=True,
                        power_w=row[2], power_std_w=row[3], energy_j=row[4],
                        energy_std_j=row[5], gemm_count=1, power_extrapolated=row[6],
                        latency_extrapolated=row[7])
            return resp
        return self._run(context, go)

    def PredictGemmColumns(self, request, context):
        def go():
            self._check_batch(len(request.shapes.m), "shapes.m")
            arrays = column_arrays(request.shapes)
            device, version, c = self.engine.predict_gemm(request.device,
                                                          request.model_version, arrays)
            if not (np.all(np.isfinite(c.latency_ms)) and np.all(np.isfinite(c.latency_std_ms))):
                raise ServiceError("INTERNAL", "model produced a non-finite prediction")
            self.metrics.predictions.inc(len(request.shapes.m))
            resp = pb.PredictionColumns(device=device, model_version=version,
                                        power_available=c.power_w is not None)
            resp.latency_ms.extend(c.latency_ms.tolist())
            resp.latency_std_ms.extend(c.latency_std_ms.tolist())
            if c.latency_extrapolated.any():  # empty means none: the usual answer costs nothing
                resp.latency_extrapolated.extend(c.latency_extrapolated.tolist())
            if c.power_w is not None:
                for name in ("power_w", "power_std_w", "energy_j", "energy_std_j",
                             "power_extrapolated"):
                    getattr(resp, name).extend(getattr(c, name).tolist())
            return resp
        return self._run(context, go)

    def PredictOps(self, request, context):
        def go():
            self._check_batch(len(request.ops), "ops")
            ops = [generic_op(o, f"ops[{i}]") for i, o in enumerate(request.ops)]
            device, version, costs = self.engine.predict(request.device,
                                                         request.model_version, ops)
            self.metrics.predictions.inc(len(ops))
            return pb.PredictResponse(
                predictions=[to_prediction(c, o.name) for c, o in zip(costs, request.ops,
                                                                       strict=True)],
                device=device, model_version=version)
        return self._run(context, go)

    def PredictNetwork(self, request, context):
        def go():
            which = request.WhichOneof("network")
            batch = _nz(request.batch, 1)
            if batch < 0:
                raise OpError("batch", f"must be a positive integer, got {batch}")
            dtype = request.dtype or "fp32"
            if which == "nasbench201":
                few = self.engine.predict_nb201(request.device, request.model_version,
                                                request.nasbench201, batch, dtype)
                if few is not None:
                    device, version, cost = few
                    self.metrics.predictions.inc()
                    return pb.PredictNetworkResponse(total=to_prediction(cost), device=device,
                                                     model_version=version, method=cost.source)
                named = network_ops(request.nasbench201, batch, dtype)
            elif which == "ops":
                self._check_batch(len(request.ops.ops), "ops.ops", self.config.max_network_ops)
                named = [(o.name or f"op{i}", generic_op(o, f"ops.ops[{i}]"))
                         for i, o in enumerate(request.ops.ops)]
            else:
                raise OpError("network", "give either ops or nasbench201")
            self._check_batch(len(named), "network", self.config.max_network_ops)
            device, version, tot, costs = self.engine.predict_network(
                request.device, request.model_version, [op for _, op in named])
            self.metrics.predictions.inc(len(named))
            return pb.PredictNetworkResponse(
                total=to_prediction(tot), layers=[to_prediction(c, n) for c, (n, _) in
                                                  zip(costs, named, strict=True)],
                device=device, model_version=version, method=tot.source)
        return self._run(context, go)

    def ListDevices(self, request, context):
        return pb.ListDevicesResponse(devices=[pb.Device(**d)
                                               for d in self.engine.device_table()])

    def _metadata(self, row, latest: bool, for_dtypes: list[str] | None = None
                  ) -> pb.ModelMetadata:
        meta = row.meta

        def utc(key: str) -> str:  # stored as str(timestamp): "2026-11-27 17:34:40.172650"
            return str(meta[key]).split(".")[0].replace(" ", "T") + "Z" if meta.get(key) else ""

        return pb.ModelMetadata(
            device=row.device_model, version=row.version, target=row.target,
            training_samples=row.n_samples, has_power=row.has_power,
            created_utc=row.created_at.isoformat() + "Z", sha256=row.sha256,
            metrics_json=json.dumps(meta.get("metrics", {})), latest=latest,
            data_from_utc=utc("data_from"), data_to_utc=utc("data_to"),
            libraries={k: str(v) for k, v in (meta.get("libraries") or {}).items()},
            features=list(meta.get("features") or []),
            dtypes=[str(d) for d in meta.get("dtypes") or []],
            retired=registry.retired(row),
            default_for_dtypes=for_dtypes or [])

    def _offered(self, device: str | None) -> list:
        """The registered models of ``device`` (of every device where None), less deleted
        versions: a deleted version's record keeps its number taken; it is no model to offer."""
        return [r for r in registry.list_models(self.engine.store) if not registry.deleted(r)
                and (device is None or r.device_model == device)]

    def ListModels(self, request, context):
        def go():
            rows = self._offered(self.engine.resolve_device(request.device)
                                 if request.device else None)
            default = registry.defaults(rows)
            for_dtypes = registry.dtype_defaults(rows)
            return pb.ListModelsResponse(models=[
                self._metadata(r, default.get((r.device_model, r.target)) is r,
                               for_dtypes.get(r.id))
                for r in rows])
        return self._run(context, go)

    def GetModelMetadata(self, request, context):
        def go():
            device = self.engine.resolve_device(request.device)
            if request.version < 0:
                raise OpError("version", f"must be >= 0, got {request.version}")
            target = request.target or "gemm"
            if target not in MODEL_TARGETS:
                raise OpError("target", f"expected {', '.join(MODEL_TARGETS)}, got {target!r}")
            dtype = check_dtype(request.dtype).name if request.dtype else None
            try:
                row = registry.find(self.engine.store, device, request.version or None, target,
                                    dtype)
            except registry.RegistryError as exc:
                if request.version:
                    raise ServiceError("NOT_FOUND", str(exc)) from None
                raise ServiceError("FAILED_PRECONDITION", no_default_reason(exc)) from None
            rows = self._offered(device)
            default = registry.defaults(rows).get((device, target))
            return self._metadata(row, default is not None and default.id == row.id,
                                  registry.dtype_defaults(rows).get(row.id))
        return self._run(context, go)


class Server:
    """A running server; ``port`` is the bound port (useful with ``port=0``)."""

    def __init__(self, engine: PredictionEngine, config: ServerConfig):
        self.engine, self.config = engine, config
        self.metrics = Metrics()
        self.metrics.watch(engine)
        opts = [("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers),
                                interceptors=[Interceptor(config.token, self.metrics)],
                                options=opts)
        pb_grpc.add_PredictorServicer_to_server(PredictorService(engine, config, self.metrics),
                                                self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        addr = f"{config.host}:{config.port}"
        if config.tls_cert or config.tls_key:
            if not (config.tls_cert and config.tls_key):
                raise ValueError("--tls-cert and --tls-key: give both or neither")
            with open(config.tls_key, "rb") as k, open(config.tls_cert, "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.port = self.grpc.add_secure_port(addr, creds)
        else:
            self.port = self.grpc.add_insecure_port(addr)
        if not self.port:
            raise OSError(f"--port: cannot bind {addr}")
        self._stop = threading.Event()
        self._set_health(False)

    def _set_health(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            self.health.set(name, status)

    def _watch_models(self) -> None:
        """NOT_SERVING until at least one model is loaded; then SERVING."""
        while not self._stop.is_set():
            try:
                if self.engine.warm_up() or self.engine.loaded():
                    self._set_health(True)
                    return
            except Exception as exc:  # the store may be briefly unreachable
                log.error(json.dumps({"event": "model_load_failed", "error": str(exc)}))
            self._stop.wait(self.config.refresh_s)

    def start(self) -> Server:
        self.grpc.start()
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port, self.config.host)
        threading.Thread(target=self._watch_models, daemon=True).start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls finish."""
        self._stop.set()
        self._set_health(False)
        self.grpc.stop(self.config.grace_s if grace is None else grace).wait()

    def serve_forever(self) -> None:
        """Block until SIGTERM or SIGINT, then drain and return."""
        done = threading.Event()

        def on_signal(signum, _frame):
            log.info("signal %d: draining", signum)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        done.wait()
        self.stop()
