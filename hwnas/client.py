"""A small typed client for the hwnas prediction service.

One channel per client (connections are reused), a deadline on every call, and retries with
exponential backoff when the server is UNAVAILABLE (starting, restarting, or briefly away).

    with PredictorClient("127.0.0.1:50051") as c:
        for p in c.predict_gemm("H100", [(4096, 4096, 4096, "bf16")]):
            print(p.latency_ms, p.power_w)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from hwnas.rpc.v1 import predictor_pb2 as pb
from hwnas.rpc.v1 import predictor_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"


def default_server() -> str:
    return os.environ.get("HWNAS_SERVER", DEFAULT_SERVER)


@dataclass(frozen=True)
class Cost:
    """One prediction. Power and energy are None where the device had no power sensor;
    ``power_extrapolated``: shorter than any op whose power was read on its own;
    ``latency_extrapolated``: beyond the shapes the GEMM model was trained on (or the layers
    the forest that priced it learned)."""

    latency_ms: float
    latency_std_ms: float
    power_w: float | None
    power_std_w: float | None
    energy_j: float | None
    energy_std_j: float | None
    name: str = ""
    power_extrapolated: bool = False
    latency_extrapolated: bool = False

    @classmethod
    def from_pb(cls, p: pb.Prediction) -> Cost:
        if not p.power_available:
            return cls(p.latency_ms, p.latency_std_ms, None, None, None, None, p.name,
                       latency_extrapolated=p.latency_extrapolated)
        return cls(p.latency_ms, p.latency_std_ms, p.power_w, p.power_std_w, p.energy_j,
                   p.energy_std_j, p.name, p.power_extrapolated, p.latency_extrapolated)


@dataclass(frozen=True)
class Answer:
    device: str
    model_version: int
    costs: list[Cost]


@dataclass(frozen=True)
class NetworkAnswer:
    device: str
    model_version: int
    total: Cost
    layers: list[Cost]
    method: str


GemmSpec = tuple | Mapping


def _gemm(spec: GemmSpec) -> pb.GemmShape:
    if isinstance(spec, Mapping):
        return pb.GemmShape(**spec)
    m, n, k, *rest = spec
    return pb.GemmShape(m=m, n=n, k=k, dtype=rest[0] if rest else "fp32",
                        batch=rest[1] if len(rest) > 1 else 1)


def _integer(value, field: str, minimum: int) -> int:
    from collectors.ops import OpError

    # JSON's true/false are fine for flags; 3.0 or "3" are not silently taken as 3.
    if not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "an integer"
        raise OpError(field, f"must be {kind}, got {value!r}")
    if value >= 2**63:  # the wire's int64
        raise OpError(field, f"must be below 2^63, got {value}")
    return int(value)


def _op(spec: Mapping, field: str) -> pb.Op:
    """One op dict (as ``collectors.ops.Op.to_dict`` writes it) as the wire's Op, checked where
    the wire would lose the mistake: params are int64 there, and a batch of 0 reads as 1."""
    from collectors.ops import OpError

    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise OpError(f"{field}.kind", "every op needs a kind (a string)")
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise OpError(f"{field}.params", f"must map names to integers, got {params!r}")
    for key in ("dtype", "name"):
        if not isinstance(spec.get(key, ""), str):
            raise OpError(f"{field}.{key}", f"must be a string, got {spec[key]!r}")
    batch = _integer(spec["batch"], f"{field}.batch", 1) if "batch" in spec else 0
    return pb.Op(kind=spec["kind"],
                 params={k: _integer(v, f"{field}.params.{k}", -2**63) for k, v in params.items()},
                 dtype=spec.get("dtype", ""), batch=batch, name=spec.get("name", ""))


class PredictorClient:
    def __init__(self, address: str | None = None, *, token: str | None = None,
                 tls_ca: str | None = None, timeout_s: float = 10.0, retries: int = 4,
                 backoff_s: float = 0.2):
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s: must be a positive number of seconds, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries: must be 0 or more, got {retries}")
        self.address = address or default_server()
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        opts = [("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20)]
        if tls_ca:
            with open(tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(self.address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(self.address, options=opts)
        self.stub = pb_grpc.PredictorStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> PredictorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request, timeout_s: float | None = None):
        fn = getattr(self.stub, method)
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2

    def predict_gemm(self, device: str, shapes: Iterable[GemmSpec], model_version: int = 0,
                     timeout_s: float | None = None) -> Answer:
        """Shapes as (m, n, k[, dtype[, batch]]) tuples or GemmShape field mappings."""
        r = self._call("PredictGemm", pb.PredictGemmRequest(
            device=device, model_version=model_version, shapes=[_gemm(s) for s in shapes]),
            timeout_s)
        return Answer(r.device, r.model_version, [Cost.from_pb(p) for p in r.predictions])

    def predict_gemm_columns(self, device: str, m, n, k, dtype="fp32", batch=1,
                             trans_a=None, trans_b=None, model_version: int = 0,
                             timeout_s: float | None = None) -> dict:
        """Many GEMMs as columns (sequences or numpy arrays of M, N, K; dtype and batch one
        value or one per shape). Returns numpy arrays: latency_ms, latency_std_ms,
        latency_extrapolated (bool: beyond the model's training shapes) and, where
        the device has measured power, power_w, power_std_w, energy_j, energy_std_j and
        power_extrapolated (bool: shorter than any GEMM whose power was read on its own)."""
        import numpy as np

        cols = pb.GemmColumns(
            m=np.asarray(m, np.int64).tolist(), n=np.asarray(n, np.int64).tolist(),
            k=np.asarray(k, np.int64).tolist(),
            dtype=[dtype] if isinstance(dtype, str) else list(dtype),
            batch=np.atleast_1d(np.asarray(batch, np.int64)).tolist(),
            trans_a=[] if trans_a is None else [bool(t) for t in trans_a],
            trans_b=[] if trans_b is None else [bool(t) for t in trans_b])
        r = self._call("PredictGemmColumns", pb.PredictGemmColumnsRequest(
            device=device, model_version=model_version, shapes=cols), timeout_s)
        out = {"device": r.device, "model_version": r.model_version,
               "latency_ms": np.array(r.latency_ms), "latency_std_ms": np.array(r.latency_std_ms),
               "latency_extrapolated": (np.array(r.latency_extrapolated, dtype=bool)
                                        if len(r.latency_extrapolated)
                                        else np.zeros(len(r.latency_ms), dtype=bool))}
        if r.power_available:
            for name in ("power_w", "power_std_w", "energy_j", "energy_std_j"):
                out[name] = np.array(getattr(r, name))
            out["power_extrapolated"] = np.array(r.power_extrapolated, dtype=bool)
        return out

    def predict_ops(self, device: str, ops: Sequence[Mapping], model_version: int = 0,
                    timeout_s: float | None = None) -> Answer:
        """Ops as mappings: {"kind": "conv2d", "params": {...}, "dtype": "fp16", "batch": 8}."""
        wire = [_op(o, f"ops[{i}]") for i, o in enumerate(ops)]
        r = self._call("PredictOps", pb.PredictOpsRequest(
            device=device, model_version=model_version, ops=wire), timeout_s)
        return Answer(r.device, r.model_version, [Cost.from_pb(p) for p in r.predictions])

    def predict_network(self, device: str, *, nasbench201: str | None = None,
                        ops: Sequence[Mapping] | None = None, batch: int = 1,
                        dtype: str = "fp32", model_version: int = 0,
                        timeout_s: float | None = None) -> NetworkAnswer:
        req = pb.PredictNetworkRequest(device=device, model_version=model_version,
                                       batch=batch, dtype=dtype)
        if nasbench201 is not None:
            req.nasbench201 = nasbench201
        elif ops is not None:
            req.ops.ops.extend(_op(o, f"ops[{i}]") for i, o in enumerate(ops))
        r = self._call("PredictNetwork", req, timeout_s)
        return NetworkAnswer(r.device, r.model_version, Cost.from_pb(r.total),
                             [Cost.from_pb(p) for p in r.layers], r.method)

    def list_devices(self) -> list[pb.Device]:
        return list(self._call("ListDevices", pb.ListDevicesRequest()).devices)

    def list_models(self, device: str = "") -> list[pb.ModelMetadata]:
        return list(self._call("ListModels", pb.ListModelsRequest(device=device)).models)

    def model_metadata(self, device: str, version: int = 0, target: str = "gemm",
                       dtype: str = "") -> pb.ModelMetadata:
        """A registered model's metadata: version ``version`` of the device's ``target`` model
        (gemm, network or nb201), else its default; for a network model without a version,
        the newest that learned ``dtype``, where one is given."""
        return self._call("GetModelMetadata", pb.GetModelMetadataRequest(
            device=device, version=version, target=target, dtype=dtype))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the server's health service reports SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service="hwnas.v1.Predictor"),
                               timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.address} not SERVING after {timeout_s} s")
            time.sleep(0.1)
