"""The gRPC service, for real: a server on an ephemeral loopback port and real clients."""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collectors.devices import DeviceInfo
from collectors.store.db import Store
from collectors.store.models import ModelVersion
from collectors.store.repo import Peak, save_peaks, upsert_device
from hwnas.client import PredictorClient
from hwnas.rpc.v1 import predictor_pb2 as pb
from hwnas.rpc.v1 import predictor_pb2_grpc as pb_grpc
from hwnas.service.engine import PredictionEngine
from hwnas.service.server import Server, ServerConfig
from predictor import registry
from predictor.features import FEATURE_NAMES
from predictor.forest import gemm_frame
from predictor.training import fit_full, library_versions
from search.experiment import free_port
from tests.test_predictor import PROFILE, synthetic

ARCH = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+"
        "|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")


# A user's model of two tensors, token ids and a float mask (after `import torch.nn as nn`).
MASKED_SOURCE = ("class Masked(nn.Module):\n"
                 "    def __init__(self):\n"
                 "        super().__init__()\n"
                 "        self.emb, self.fc = nn.Embedding(50, 16), nn.Linear(16, 16)\n"
                 "    def forward(self, ids, mask):\n"
                 "        return self.fc(self.emb(ids)) * mask.unsqueeze(-1)\n")


def make_store(tmp_path, with_model: bool = True) -> Store:
    return make_store_at(f"sqlite:///{tmp_path / 'svc.sqlite'}", tmp_path, with_model)


def make_store_at(url: str, tmp_path, with_model: bool = True) -> Store:
    """A store with a "Test GPU" (peaks, optionally a registered model) and an "Other CPU"."""
    store = Store(url)
    with store.session() as s:
        dev = upsert_device(s, DeviceInfo(name="cuda:0", kind="gpu", model=PROFILE.model,
                                          host="h", sm_count=8))
        save_peaks(s, dev, [Peak(k, v, "x", None, "test") for k, v in PROFILE.peaks.items()])
        upsert_device(s, DeviceInfo(name="cpu", kind="cpu", model="Other CPU", host="h"))
        s.commit()
    if with_model:
        register(store, tmp_path, seed=0)
    return store


def register(store, tmp_path, seed: int, trees: int = 15):
    frame = synthetic(30, power=True, seed=seed)
    model = fit_full(frame, PROFILE, n_estimators=trees)
    meta = {"metrics": {"k": [{"mape": 1}]}, "libraries": library_versions(),
            "data_from": str(frame.created_at.min()), "data_to": str(frame.created_at.max()),
            "dtypes": sorted(frame.dtype.unique())}  # as hwnas train records them
    return registry.register(store, model, PROFILE.model, meta, tmp_path / "models"), model


@pytest.fixture
def served(tmp_path):
    store = make_store(tmp_path)
    server = Server(PredictionEngine(store, refresh_s=0.2),
                    ServerConfig(port=0, max_batch=2000, max_network_ops=3000,
                                 refresh_s=0.2)).start()
    client = PredictorClient(f"127.0.0.1:{server.port}", timeout_s=20)
    client.wait_ready(30)
    yield store, server, client, tmp_path
    client.close()
    server.stop(0)


def test_every_rpc_answers_in_order(served):
    store, server, client, _ = served
    shapes = [(2048, 64, 512, "fp16"), (16, 16, 16, "fp32"), (512, 512, 512, "fp32", 4)]
    a = client.predict_gemm("Test", shapes)
    assert a.device == PROFILE.model and a.model_version == 1
    model = registry.load(registry.find(store, PROFILE.model))
    from collectors.ops import Op
    ops = [Op.gemm(*s[:4], batch=s[4] if len(s) > 4 else 1) for s in shapes]
    direct = model.predict_costs(gemm_frame(ops))
    assert np.allclose([c.latency_ms for c in a.costs], direct.latency_ms, rtol=1e-9)
    assert np.allclose([c.power_w for c in a.costs], direct.power_w, rtol=1e-9)
    assert all(c.latency_std_ms >= 0 and c.energy_j > 0 for c in a.costs)
    rev = client.predict_gemm(PROFILE.model, list(reversed(shapes)))
    assert [c.latency_ms for c in rev.costs] == [c.latency_ms for c in reversed(a.costs)]

    o = client.predict_ops("Test GPU", [
        {"kind": "conv2d", "params": {"in_channels": 16, "out_channels": 32, "kernel": 3,
                                      "height": 32, "width": 32}, "name": "c1"},
        {"kind": "linear", "params": {"in_features": 64, "out_features": 10, "tokens": 1}},
        {"kind": "attention", "params": {"seq_len": 128, "heads": 4, "head_dim": 32}},
        {"kind": "pool", "params": {"channels": 16, "kernel": 2, "height": 32, "width": 32,
                                    "stride": 2}}])
    assert [c.name for c in o.costs][0] == "c1" and len(o.costs) == 4
    assert o.costs[3].power_w is None  # bandwidth bound: no power claimed

    net = client.predict_network("Test GPU", nasbench201=ARCH, batch=2)
    assert net.total.latency_ms == pytest.approx(sum(c.latency_ms for c in net.layers))
    assert len(net.layers) > 50 and net.method == "sum of op predictions"
    net2 = client.predict_network("Test GPU", ops=[{"kind": "gemm", "params": {"m": 64, "n": 64,
                                                                               "k": 64}}])
    assert net2.total.power_w is not None and net2.total.energy_j > 0

    devices = {d.model: d for d in client.list_devices()}
    assert devices[PROFILE.model].has_model and not devices["Other CPU"].has_model
    models = client.list_models()
    assert [(m.device, m.version, m.latest) for m in models] == [(PROFILE.model, 1, True)]
    meta = client.model_metadata("Test GPU")
    assert meta.training_samples == 60 and meta.has_power and len(meta.sha256) == 64
    assert '"mape"' in meta.metrics_json
    assert meta.data_from_utc == meta.data_to_utc == "2026-11-25T00:00:00Z"
    assert meta.libraries["scikit-learn"] and list(meta.dtypes) == ["fp16", "fp32"]
    assert list(meta.features) == FEATURE_NAMES


def test_every_rpc_says_when_a_power_is_extrapolated(served):
    store, _, client, tmp_path = served
    model = fit_full(synthetic(30, power=True, seed=2), PROFILE, n_estimators=10)
    # As if the shortest GEMM whose power was read on its own took 0.05 ms.
    model.power_min_latency_ms_ = 0.05
    registry.register(store, model, PROFILE.model, {}, tmp_path / "models")
    short, long = (16, 16, 16, "fp32"), (2048, 2048, 2048, "fp32")
    a = client.predict_gemm("Test GPU", [short, long], model_version=2)
    assert a.costs[0].latency_ms < 0.05 < a.costs[1].latency_ms
    assert [c.power_extrapolated for c in a.costs] == [True, False]
    cols = client.predict_gemm_columns("Test GPU", [16, 2048], [16, 2048], [16, 2048],
                                       model_version=2)
    assert cols["power_extrapolated"].tolist() == [True, False]
    gemm = [{"kind": "gemm", "params": {"m": m, "n": n, "k": k}} for m, n, k, _ in (short, long)]
    ops = client.predict_ops("Test GPU", gemm, model_version=2)
    assert [c.power_extrapolated for c in ops.costs] == [True, False]
    net = client.predict_network("Test GPU", ops=gemm, model_version=2)
    assert net.total.power_extrapolated  # one of its ops is
    assert not client.predict_network("Test GPU", ops=gemm[1:], model_version=2
                                      ).total.power_extrapolated


def test_every_rpc_says_when_a_gemm_lies_beyond_the_training_shapes(served):
    _, _, client, _ = served
    # Trained up to 2048 on random shapes, almost none aligned: 64^3 is flagged too.
    inside, beyond, aligned = (60, 60, 60, "fp32"), (65536, 60, 60, "fp32"), (64, 64, 64, "fp32")
    a = client.predict_gemm("Test GPU", [inside, beyond, aligned])
    assert [c.latency_extrapolated for c in a.costs] == [False, True, True]
    cols = client.predict_gemm_columns("Test GPU", [60, 65536, 64], [60, 60, 64], [60, 60, 64])
    assert cols["latency_extrapolated"].tolist() == [False, True, True]
    gemm = [{"kind": "gemm", "params": {"m": m, "n": n, "k": k}} for m, n, k, _ in
            (inside, beyond)]
    assert [c.latency_extrapolated for c in client.predict_ops("Test GPU", gemm).costs] == [
        False, True]
    assert client.predict_network("Test GPU", ops=gemm).total.latency_extrapolated
    assert not client.predict_network("Test GPU", ops=gemm[:1]).total.latency_extrapolated


def test_query_commands_print_the_service_answers(served, tmp_path):
    import json

    from click.testing import CliRunner

    from hwnas.cli import main

    _, server, _, _ = served
    at = ["--server", f"127.0.0.1:{server.port}", "--device", "Test GPU"]
    r = CliRunner().invoke(main, ["query", "gemm", *at, "--m", "60", "--n", "60", "--k", "60"])
    assert r.exit_code == 0, r.output
    assert "gemm 60x60x60 fp32 batch 1: " in r.output and " W ± " in r.output
    assert "beyond the shapes" not in r.output
    assert "padded" not in r.output  # 60x64x64 is no faster on a device without aligned kernels
    r = CliRunner().invoke(main, ["query", "gemm", *at, "--m", "65536", "--n", "60", "--k", "60"])
    assert r.exit_code == 0 and "(beyond the shapes the model was trained on)" in r.output
    ops = tmp_path / "ops.json"
    ops.write_text(json.dumps([{"kind": "linear", "name": "fc",
                                "params": {"in_features": 256, "out_features": 64,
                                           "tokens": 8}}]))
    r = CliRunner().invoke(main, ["query", "network", *at, "--ops-json", str(ops), "--layers"])
    assert r.exit_code == 0, r.output
    assert "  fc: " in r.output and "total: " in r.output
    r = CliRunner().invoke(main, ["query", "gemm", *at[:2], "--device", "nope", "--m", "8",
                                  "--n", "8", "--k", "8"])
    assert r.exit_code == 1 and "NOT_FOUND" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["query", "models", *at])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith("Test GPU"))
    assert row.split()[2:5] == ["1", "gemm", str(30 * 2)] and row.split()[-1] == "yes", row
    r = CliRunner().invoke(main, ["query", "models", *at[:2], "--device", "nope"])
    assert r.exit_code == 1 and "NOT_FOUND" in r.output, r.output
    # A version by number: the one asked for answers, one that does not exist is named.
    for cmd in (["gemm", "--m", "8", "--n", "8", "--k", "8"], ["network", "--ops-json", str(ops)]):
        r = CliRunner().invoke(main, ["query", *cmd, *at, "--version", "1"])
        assert r.exit_code == 0 and "model v1" in r.output, r.output
        r = CliRunner().invoke(main, ["query", *cmd, *at, "--version", "7"])
        assert r.exit_code == 1 and "NOT_FOUND" in r.output and "7" in r.output, r.output


def test_many_gemms_from_a_csv_here_and_from_the_service_agree(served):
    from click.testing import CliRunner

    from hwnas.cli import main

    store, server, client, tmp_path = served
    rng = np.random.default_rng(3)
    count = 2500  # three requests of --chunk 1000: the answers must come back in order
    src, here, there = tmp_path / "shapes.csv", tmp_path / "here.csv", tmp_path / "there.csv"
    pd.DataFrame({"m": rng.integers(16, 2048, count), "n": rng.integers(16, 2048, count),
                  "k": rng.integers(16, 2048, count),
                  "dtype": rng.choice(["fp32", " FP16", ""], count),  # blank: --dtype
                  "batch": rng.choice(["", "2"], count),  # blank: --batch
                  "layout": rng.choice(["nn", "nt", "tn", "tt"], count)}).to_csv(src, index=False)
    r = CliRunner().invoke(main, ["query", "gemm", "--server", f"127.0.0.1:{server.port}",
                                  "--device", "Test GPU", "--shapes-csv", str(src), "--out",
                                  str(there), "--chunk", "1000"])
    assert r.exit_code == 0, r.output
    assert f"Test GPU (model v1): {count} GEMMs predicted -> {there}" in r.output
    r = CliRunner().invoke(main, ["predict", "gemm", "--db", store.url, "--device", "test gpu",
                                  "--shapes-csv", str(src), "--out", str(here)])
    assert r.exit_code == 0, r.output
    a, b = pd.read_csv(here), pd.read_csv(there)
    assert len(a) == len(b) == count and set(a.dtype) == {"fp32", "fp16"}
    assert set(a.batch) == {1, 2} and set(a.layout) == {"nn", "nt", "tn", "tt"}
    shape = ["m", "n", "k", "batch", "dtype", "layout"]
    assert a[shape].equals(b[shape])
    for c in ("latency_ms", "latency_std_ms", "power_w", "energy_j", "energy_std_j"):
        np.testing.assert_allclose(a[c], b[c], rtol=1e-5)  # the CSV keeps 6 digits
    np.testing.assert_allclose(a.energy_j, a.power_w * a.latency_ms / 1e3, rtol=1e-4)
    assert a.latency_extrapolated.equals(b.latency_extrapolated)
    assert (a.beyond_training.notna() == a.latency_extrapolated).all()
    # Here the summary says why, reason by reason: the batch-2 rows, every one of them.
    assert re.search(rf"{a.latency_extrapolated.sum()} beyond the shapes the model was trained "
                     rf"on \(by reason: .*batch {(a.batch == 2).sum()}[,)]", r.output), r.output
    # Each row is the answer to that GEMM alone.
    for i in (0, 1234, count - 1):
        row = a.iloc[i]
        one = client.predict_gemm("Test GPU", [{
            "m": int(row.m), "n": int(row.n), "k": int(row.k), "dtype": row["dtype"],
            "batch": int(row.batch), "trans_a": row.layout[0] == "t",
            "trans_b": row.layout[1] == "t"}]).costs[0]
        assert one.latency_ms == pytest.approx(row.latency_ms, rel=1e-5)
        assert one.power_w == pytest.approx(row.power_w, rel=1e-5)
    # Pinned to a version by number: every chunk from that version, here a newer default's
    # predecessor (the answers are v1's, as above).
    register(store, tmp_path, seed=6)
    deadline = time.time() + 20
    while time.time() < deadline and client.predict_gemm("Test GPU", [(64, 64, 64)]
                                                         ).model_version != 2:
        time.sleep(0.1)
    pinned = tmp_path / "pinned.csv"
    r = CliRunner().invoke(main, ["query", "gemm", "--server", f"127.0.0.1:{server.port}",
                                  "--device", "Test GPU", "--shapes-csv", str(src), "--out",
                                  str(pinned), "--chunk", "1000", "--version", "1"])
    assert r.exit_code == 0 and "(model v1)" in r.output, r.output
    np.testing.assert_allclose(pd.read_csv(pinned).latency_ms, b.latency_ms, rtol=1e-6)
    # A dtype the model never saw is named at its first row.
    src.write_text("m,n,k,dtype\n8,8,8,fp32\n8,8,8,fp16\n8,8,8,bf16\n")
    r = CliRunner().invoke(main, ["predict", "gemm", "--db", store.url, "--device", "test gpu",
                                  "--shapes-csv", str(src)])
    assert r.exit_code == 2 and f"{src} row 3, column dtype: bf16: this model was trained on " \
        "fp16, fp32 only" in r.output, r.output


def test_columnar_batches_equal_row_wise_answers(served):
    _, _, client, _ = served
    rng = np.random.default_rng(3)
    dims = rng.integers(16, 4096, size=(300, 3))
    dtypes = rng.choice(["fp32", "fp16"], 300)  # the dtypes the served model was trained on
    rows = client.predict_gemm("Test GPU", [(int(m), int(n), int(k), str(d))
                                            for (m, n, k), d in zip(dims, dtypes, strict=True)])
    cols = client.predict_gemm_columns("Test GPU", dims[:, 0], dims[:, 1], dims[:, 2],
                                       dtype=list(dtypes))
    assert cols["model_version"] == rows.model_version
    assert np.allclose(cols["latency_ms"], [c.latency_ms for c in rows.costs], rtol=1e-12)
    assert np.allclose(cols["energy_j"], [c.energy_j for c in rows.costs], rtol=1e-12)
    one = client.predict_gemm_columns("Test GPU", [64], [64], [64], dtype="fp16", batch=[4])
    assert one["latency_ms"][0] == client.predict_gemm(
        "Test GPU", [{"m": 64, "n": 64, "k": 64, "dtype": "fp16", "batch": 4}]).costs[0].latency_ms
    stub = pb_grpc.PredictorStub(client.channel)
    for shapes, needle in ((pb.GemmColumns(m=[8, 8], n=[8], k=[8, 8]), "shapes.n"),
                           (pb.GemmColumns(m=[8, 0], n=[8, 8], k=[8, 8]), "shapes.m[1]"),
                           (pb.GemmColumns(m=[8], n=[8], k=[8], dtype=["fp9"]), "shapes.dtype[0]"),
                           (pb.GemmColumns(m=[8], n=[8], k=[8], dtype=["bf16"]),
                            "dtype: bf16: this model was trained on fp16, fp32 only"),
                           (pb.GemmColumns(m=[8, 8], n=[8, 8], k=[8, 8], batch=[1, 2, 3]),
                            "shapes.batch"),
                           (pb.GemmColumns(), "shapes.m")):
        req = pb.PredictGemmColumnsRequest(device="Test GPU", shapes=shapes)
        with pytest.raises(grpc.RpcError) as err:
            stub.PredictGemmColumns(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in err.value.details()


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def raw(stub, method, **fields):
    req = getattr(pb, f"{method}Request")(**fields)
    return lambda: getattr(stub, method)(req, timeout=10)


def gemm(**kw):
    base = {"m": 8, "n": 8, "k": 8}
    base.update(kw)
    return pb.GemmShape(**base)


def op(kind, **params):
    return pb.Op(kind=kind, params=params)


IA, NF, FP = "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"
MALFORMED = [
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(m=0)]}, IA, "shapes[0].m"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(n=-4)]}, IA, "shapes[0].n"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(k=1 << 40)]}, IA, "shapes[0].k"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(), gemm(m=-1)]}, IA, "shapes[1].m"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(dtype="fp8x")]}, IA, "dtype"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(dtype="int4")]}, IA, "dtype"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(), gemm(dtype="tf32")]}, IA,
     "dtype: tf32: this model was trained on fp16, fp32 only"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm(batch=-2)]}, IA, "batch"),
    ("PredictGemm", {"device": "Test GPU", "shapes": []}, IA, "shapes"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm()] * 2001}, IA, "at most 2000"),
    ("PredictGemm", {"device": "", "shapes": [gemm()]}, IA, "device"),
    ("PredictGemm", {"device": "Test", "shapes": [gemm()], "model_version": -1}, IA,
     "model_version"),
    ("PredictGemm", {"device": "H100", "shapes": [gemm()]}, NF, "device"),
    ("PredictGemm", {"device": "Test GPU", "shapes": [gemm()], "model_version": 9}, NF,
     "model_version"),
    ("PredictGemm", {"device": "Other CPU", "shapes": [gemm()]}, FP, "no trained gemm model"),
    ("PredictGemm", {"device": "e", "shapes": [gemm()]}, IA, "matches several"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("conv3d", kernel=3)]}, IA, "ops[0].kind"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("")]}, IA, "kind"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("conv2d", in_channels=3)]}, IA,
     "out_channels"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("linear", in_features=4, out_features=4,
                                                     tokens=0)]}, IA, "tokens"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("gemm", m=4, n=4, k=4, dilation=2)]}, IA,
     "dilation"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("gemm", m=4, n=4, k=4, trans_a=3)]}, IA,
     "trans_a"),
    ("PredictOps", {"device": "Test GPU", "ops": [op("conv2d", in_channels=3, out_channels=8,
                                                     kernel=3, height=8, width=8, groups=2)]},
     IA, "groups"),
    ("PredictOps", {"device": "Test GPU", "ops": []}, IA, "ops"),
    ("PredictOps", {"device": "nope", "ops": [op("gemm", m=4, n=4, k=4)]}, NF, "device"),
    ("PredictNetwork", {"device": "Test GPU"}, IA, "network"),
    ("PredictNetwork", {"device": "Test GPU", "nasbench201": "garbage"}, IA, "nasbench201"),
    ("PredictNetwork", {"device": "Test GPU", "nasbench201": "|conv~0|+|none~0|none~1|+"
                        "|none~0|none~1|none~2|"}, IA, "nasbench201"),
    ("PredictNetwork", {"device": "Test GPU", "nasbench201":
                        "|none~0|+|none~0|none~0|+|none~0|none~1|none~2|"}, IA, "node 2"),
    ("PredictNetwork", {"device": "Test GPU", "nasbench201": ARCH, "batch": -3}, IA, "batch"),
    ("PredictNetwork", {"device": "Test GPU", "nasbench201": ARCH, "dtype": "fp7"}, IA,
     "dtype"),
    ("PredictNetwork", {"device": "Test GPU", "ops": pb.OpList(ops=[op("pool")])}, IA,
     "ops.ops[0]"),
    ("PredictNetwork", {"device": "Test GPU", "ops": pb.OpList()}, IA, "ops.ops"),
    ("PredictNetwork", {"device": "Test GPU", "ops": pb.OpList(ops=[op(
        "elementwise", elements=64)] * 3001)}, IA, "ops.ops: at most 3000 per request"),
    ("PredictNetwork", {"device": "Gone", "nasbench201": ARCH}, NF, "device"),
    ("GetModelMetadata", {"device": "Test GPU", "version": 5}, NF, "version"),
    ("GetModelMetadata", {"device": "Other CPU"}, FP, "no trained gemm model"),
    ("GetModelMetadata", {"device": "x-unknown"}, NF, "device"),
    ("GetModelMetadata", {"device": "Test GPU", "version": -1}, IA, "version"),
    ("ListModels", {"device": "no-such"}, NF, "device"),
]


def test_malformed_requests_get_the_right_codes_and_the_server_stays_healthy(served):
    _, server, client, _ = served
    assert len(MALFORMED) >= 30
    stub = pb_grpc.PredictorStub(client.channel)
    for method, fields, code, needle in MALFORMED:
        with pytest.raises(grpc.RpcError) as err:
            raw(stub, method, **fields)()
        assert err.value.code().name == code, (method, fields, err.value.details())
        assert needle in err.value.details(), (needle, err.value.details())
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="hwnas.v1.Predictor")).status \
        == health_pb2.HealthCheckResponse.SERVING
    assert client.predict_gemm("Test GPU", [(64, 64, 64)]).costs[0].latency_ms > 0
    # a network may hold more ops than a batch of ops (a long recurrent layer's steps)
    long = [{"kind": "elementwise", "params": {"elements": 64}}] * 2500
    assert len(client.predict_network("Test GPU", ops=long).layers) == 2500
    # an oversized message is refused by gRPC itself, not by a crash
    small = Server(PredictionEngine(server.engine.store),
                   ServerConfig(port=0, max_message_bytes=1024)).start()
    try:
        big = pb_grpc.PredictorStub(grpc.insecure_channel(f"127.0.0.1:{small.port}"))
        req = pb.PredictGemmRequest(device="Test GPU", shapes=[gemm()] * 500)
        assert _code(lambda: big.PredictGemm(req, timeout=10)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        small.stop(0)


def test_health_goes_serving_when_a_model_appears(tmp_path):
    store = make_store(tmp_path, with_model=False)
    server = Server(PredictionEngine(store, refresh_s=0.1),
                    ServerConfig(port=0, refresh_s=0.1)).start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        req = health_pb2.HealthCheckRequest(service="hwnas.v1.Predictor")
        assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        register(store, tmp_path, seed=1)
        PredictorClient(f"127.0.0.1:{server.port}").wait_ready(20)
        assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


def test_query_gemm_says_what_padding_unaligned_rows_would_gain(tmp_path):
    from click.testing import CliRunner

    from hwnas.cli import main
    from tests.test_predictor import tensor_core_device

    store = make_store(tmp_path, with_model=False)
    registry.register(store, fit_full(tensor_core_device(), PROFILE, n_estimators=20),
                      PROFILE.model, {"metrics": {}}, tmp_path / "models")
    server = Server(PredictionEngine(store), ServerConfig(port=0)).start()
    try:
        at = ["--server", f"127.0.0.1:{server.port}", "--device", "Test GPU", "--dtype", "fp16"]
        r = CliRunner().invoke(main, ["query", "gemm", *at, "--m", "1000", "--n", "1001",
                                      "--k", "1003"])
        assert r.exit_code == 0, r.output
        assert ("n = 1001 and k = 1003 are row lengths not multiples of 8: padded with zeros to "
                "1000x1008x1008 it is predicted at ") in r.output, r.output
        r = CliRunner().invoke(main, ["query", "gemm", *at, "--m", "1001", "--n", "1000",
                                      "--k", "1000"])
        assert r.exit_code == 0 and "padded" not in r.output, r.output
    finally:
        server.stop(0)


def test_a_model_that_cannot_be_loaded_is_logged_once_not_at_every_retry(tmp_path, caplog):
    store = make_store(tmp_path)
    row = registry.find(store, PROFILE.model)
    with store.session() as s:  # as a model registered by an older hwnas reads
        stored = s.get(ModelVersion, row.id)
        stored.meta = {**stored.meta, "features": ["log2_m"]}
        s.commit()
    engine = PredictionEngine(store)
    with caplog.at_level(logging.ERROR, logger="hwnas.service"):
        assert engine.warm_up() == 0
        assert engine.warm_up() == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "another feature set" in errors[0], errors
    register(store, tmp_path, seed=1)  # a new version loads
    assert engine.warm_up() == 1


def test_local_service_over_a_store_without_models_answers_at_once(tmp_path):
    """What `hwnas search --calibrate` and `hwnas predict network` start on a fresh store: the
    client is usable at once (no wait for SERVING, which needs a model) and a device without a
    model gets FAILED_PRECONDITION naming the remedy; once one is registered it is served."""
    from search.job import prediction_client

    store = make_store(tmp_path, with_model=False)
    t0 = time.monotonic()
    with prediction_client(None, store) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.predict_gemm("Test GPU", [(64, 64, 64)])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "hwnas train" in err.value.details()
        assert time.monotonic() - t0 < 20
        register(store, tmp_path, seed=1)
        time.sleep(1.1)  # the engine re-reads the registry about once a second
        assert client.predict_gemm("Test GPU", [(64, 64, 64)]).model_version == 1


def test_reflection_lists_the_service(served):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    _, _, client, _ = served
    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = set(db.get_services())
    assert {"hwnas.v1.Predictor", "grpc.health.v1.Health"} <= services
    desc = db.FindFileContainingSymbol("hwnas.v1.Predictor")
    assert desc.package == "hwnas.v1"


def test_token_auth(tmp_path):
    store = make_store(tmp_path)
    server = Server(PredictionEngine(store), ServerConfig(port=0, token="s3cret")).start()
    addr = f"127.0.0.1:{server.port}"
    try:
        PredictorClient(addr).wait_ready(30)  # health stays public
        for token in (None, "wrong"):
            c = PredictorClient(addr, token=token)
            assert _code(lambda c=c: c.predict_gemm("Test", [(8, 8, 8)])) == \
                grpc.StatusCode.UNAUTHENTICATED
        ok = PredictorClient(addr, token="s3cret")
        assert ok.predict_gemm("Test", [(8, 8, 8)]).costs[0].latency_ms > 0
    finally:
        server.stop(0)


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    store = make_store(tmp_path)
    server = Server(PredictionEngine(store), ServerConfig(port=0, tls_cert=str(cert),
                                                          tls_key=str(key))).start()
    try:
        c = PredictorClient(f"localhost:{server.port}", tls_ca=str(cert))
        c.wait_ready(30)
        assert c.predict_gemm("Test", [(8, 8, 8)]).costs[0].latency_ms > 0
        plain = PredictorClient(f"localhost:{server.port}", retries=0, timeout_s=3)
        assert _code(lambda: plain.predict_gemm("Test", [(8, 8, 8)])) == \
            grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_hot_reload_during_queries(served):
    store, server, client, tmp_path = served
    errors, versions = [], []
    stop = threading.Event()

    def hammer():
        c = PredictorClient(client.address)
        while not stop.is_set():
            try:
                versions.append(c.predict_gemm("Test GPU", [(256, 256, 256)]).model_version)
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    register(store, tmp_path, seed=2)
    deadline = time.time() + 20
    while time.time() < deadline and (not versions or versions[-1] != 2):
        time.sleep(0.1)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    print(f"{len(versions)} queries during reload, {len(errors)} errors")
    assert not errors and versions[0] == 1 and versions[-1] == 2


def test_tampered_new_version_is_refused_and_previous_keeps_serving(served):
    store, _, client, tmp_path = served
    row, _ = register(store, tmp_path, seed=3)
    with open(row.path, "r+b") as f:
        f.seek(64)
        f.write(b"\x00\x01\x02\x03")
    time.sleep(0.5)
    a = client.predict_gemm("Test GPU", [(128, 128, 128)])
    assert a.model_version == 1
    stub = pb_grpc.PredictorStub(client.channel)
    req = pb.PredictGemmRequest(device="Test GPU", shapes=[gemm()], model_version=2)
    with pytest.raises(grpc.RpcError) as err:
        stub.PredictGemm(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SHA-256" in err.value.details()


def test_sigterm_drains_in_flight_calls_and_exits_0(tmp_path):
    store = make_store(tmp_path)
    port = free_port()
    env = {**os.environ, "HWNAS_DB": store.url, "HWNAS_MODELS": str(tmp_path / "models")}
    proc = subprocess.Popen([sys.executable, "-m", "hwnas.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = PredictorClient(f"127.0.0.1:{port}", timeout_s=60)
        client.wait_ready(60)
        results, errors = [], []
        shapes = [(64 + i, 128, 256) for i in range(2000)]

        def call():
            try:
                results.append(len(client.predict_gemm("Test GPU", shapes).costs))
            except grpc.RpcError as exc:
                errors.append(exc.code())

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"in flight at SIGTERM: {len(results)} completed, errors {errors}")
    assert proc.returncode == 0, err
    assert "drained" in err
    # Calls already accepted finish; calls that arrive after the drain began are refused with
    # UNAVAILABLE (the client may retry elsewhere), never half-answered.
    assert results and all(n == 2000 for n in results)
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in errors)


def test_generated_code_is_in_sync_with_the_proto(tmp_path):
    from hwnas.rpc import codegen

    codegen.generate(tmp_path)
    here = codegen.ROOT / "hwnas" / "rpc" / "v1"
    for name in ("predictor_pb2.py", "predictor_pb2_grpc.py", "predictor_pb2.pyi"):
        assert filecmp.cmp(here / name, tmp_path / "hwnas" / "rpc" / "v1" / name,
                           shallow=False), f"{name} is stale: run python -m hwnas.rpc.codegen"


def test_memory_bound_ops_cost_their_bound_plus_the_dtypes_fixed_cost_per_call():
    from collectors.ops import Op, op_bytes
    from predictor.op_costs import ROOFLINE, predict_ops

    model = fit_full(synthetic(30, seed=0), PROFILE, n_estimators=5)
    fixed = model.overhead_ms_["fp16"]
    assert fixed > 0  # the synthetic calls' fixed cost (5 us)
    norm = Op.make("norm", {"channels": 8, "elements": 1024}, "fp16", 2)
    pool = Op.make("pool", {"channels": 8, "kernel": 2, "height": 16, "width": 16, "stride": 2},
                   "fp16")
    for op, cost in zip([norm, pool], predict_ops(model, [norm, pool]), strict=True):
        bound = op_bytes(op) / (PROFILE.peaks["bandwidth"] * 1e9) * 1e3
        assert cost.latency_ms == pytest.approx(fixed + bound, rel=1e-12)
        assert cost.source == ROOFLINE and cost.latency_std_ms == cost.latency_ms


def test_fresh_outputs_from_the_measured_size_on_pay_their_first_touch():
    """On a device whose peaks price fresh outputs (a CPU: collectors.peaks), an op whose new
    output is at least that size pays ms per GB of it on top; smaller ones, ops in place and
    devices without the figure do not; a sum names it."""
    from dataclasses import replace

    from collectors.ops import Op, op_output_bytes
    from predictor.op_costs import FIRST_TOUCH, FOREST, ROOFLINE, predict_ops, total

    big = Op.make("elementwise", {"elements": 1 << 22}, "fp32", 4)  # 64 MiB out
    small = Op.make("elementwise", {"elements": 1 << 18}, "fp32", 4)  # 4 MiB
    in_place = Op.make("elementwise", {"elements": 1 << 22, "in_place": 1}, "fp32", 4)
    linear = Op.make("linear", {"in_features": 64, "out_features": 4096, "tokens": 4096},
                     "fp32", 1)
    assert op_output_bytes(big) == 64 << 20 and op_output_bytes(in_place) == 0
    assert op_output_bytes(linear) == 4 * 4096 * 4096
    ops = [big, small, in_place, linear]
    model = fit_full(synthetic(30, seed=0), PROFILE, n_estimators=5)
    plain = predict_ops(model, ops)
    assert all(c.first_touch_ms == 0 for c in plain)  # no figure: nothing charged
    assert total(plain).source == "sum of op predictions"
    model.profile = replace(PROFILE, peaks={**PROFILE.peaks, "first_touch": 250.0,
                                            "first_touch_from": 32.0}).to_dict()
    charged = predict_ops(model, ops)
    assert [c.first_touch_ms for c in charged] == pytest.approx(
        [(64 << 20) / 1e9 * 250, 0, 0, (64 << 20) / 1e9 * 250])
    for before, after in zip(plain, charged, strict=True):
        assert after.latency_ms == pytest.approx(before.latency_ms + after.first_touch_ms)
        assert after.source == before.source
    assert [c.source for c in charged] == [ROOFLINE] * 3 + [FOREST]
    assert total(charged).source == f"sum of op predictions; {FIRST_TOUCH}"
    assert total(charged).first_touch_ms == pytest.approx(2 * (64 << 20) / 1e9 * 250)


def test_predict_network_says_what_the_first_touch_of_fresh_outputs_is(tmp_path):
    from dataclasses import replace

    from click.testing import CliRunner

    from hwnas.cli import main

    store = make_store(tmp_path, with_model=False)
    touching = replace(PROFILE, peaks={**PROFILE.peaks, "first_touch": 250.0,
                                       "first_touch_from": 32.0})
    registry.register(store, fit_full(synthetic(30, seed=0), touching, n_estimators=5),
                      PROFILE.model, {}, tmp_path / "models")
    path = tmp_path / "ops.json"
    for in_place, noted in ((0, True), (1, False)):
        path.write_text(json.dumps([{"kind": "elementwise", "batch": 4, "params": {
            "elements": 1 << 22, "in_place": in_place}}]))  # 64 MiB out, or written in place
        r = CliRunner().invoke(main, ["predict", "network", "--db", store.url, "--device",
                                      PROFILE.model, "--ops-json", str(path)])
        assert r.exit_code == 0, r.output
        assert ("first touch of fresh outputs" in r.output) is noted, r.output
        assert ("note: part of it is the first touch of large new outputs" in r.stderr) is \
            noted, r.stderr


def test_a_recurrent_layer_costs_its_projections_and_its_steps_gates():
    from collectors.ops import Op
    from predictor.op_costs import FOREST, predict_ops

    model = fit_full(synthetic(30, seed=0), PROFILE, n_estimators=5)
    lstm = Op.make("recurrent", {"input_size": 64, "hidden": 128, "steps": 20, "gates": 4,
                                 "directions": 2}, "fp16", 4)
    # the same as its ops one by one: per direction the input projection, then per step the
    # recurrent projection and the gate arithmetic
    ih = Op.make("linear", {"in_features": 64, "out_features": 512, "tokens": 20}, "fp16", 4)
    hh = Op.make("linear", {"in_features": 128, "out_features": 512, "tokens": 1}, "fp16", 4)
    cell = Op.make("elementwise", {"elements": 512, "inputs": 2}, "fp16", 4)
    [cost], (c_ih, c_hh, c_cell) = predict_ops(model, [lstm]), predict_ops(model, [ih, hh, cell])
    assert cost.latency_ms == pytest.approx(
        2 * c_ih.latency_ms + 40 * (c_hh.latency_ms + c_cell.latency_ms), rel=1e-9)
    assert cost.source == FOREST and cost.gemm_count == 42 and cost.power_w is None
    # a step's GEMM is predicted once however many steps there are
    long = Op.make("recurrent", {"input_size": 64, "hidden": 128, "steps": 10 ** 7, "gates": 3},
                   "fp16", 4)
    assert predict_ops(model, [long])[0].latency_ms > 1e4 * cost.latency_ms


def test_a_sum_of_ops_prices_recurrent_layers_by_the_forest_of_swept_ones(served):
    """Where layer sweeps measured recurrent layers, the sum of op predictions takes them from
    the network model's forest of them (the GEMM model's sum of their steps misses how cuDNN
    and oneDNN run them), and says so; other ops, and dtypes the forest did not learn, stay
    with the GEMM model."""
    from collectors.ops import Op
    from predictor import network

    store, _, client, _ = served

    def rnn(steps: int, hidden: int = 64, dtype: str = "fp32") -> Op:
        return Op.make("recurrent", {"input_size": 32, "hidden": hidden, "steps": steps,
                                     "gates": 4}, dtype, 2)

    layers = [rnn(steps, hidden) for steps in (10, 20, 40, 80) for hidden in (32, 64, 128)]
    kinds = network.OpKindForests(n_estimators=10).fit(
        layers, np.array([0.003 * op.params["steps"] for op in layers]))
    # its networks hold linear layers only: it does not answer for a recurrent network
    nets = [[linear_op(64 * (i % 3 + 1), 8)] * (i % 4 + 1) for i in range(20)]
    model = network.NetworkCostModel(kinds).fit(nets, np.array([0.02 * len(n) for n in nets]))
    row = network.register(store, PROFILE.model, model, {"networks": 20, "held_out": {}})
    ops = [rnn(20), linear_op(64, 1), rnn(20, dtype="fp16"), rnn(500)]
    a = client.predict_network("Test GPU", ops=[op.to_dict() for op in ops])
    assert a.method == (f"sum of op predictions; recurrent layers' forest (network model "
                        f"v{row.version})"), a.method
    assert a.layers[0].latency_ms == pytest.approx(0.06, rel=0.05)  # 20 steps of 3 us
    assert not a.layers[0].latency_extrapolated and a.layers[3].latency_extrapolated
    gemm = client.predict_ops("Test GPU", [ops[1].to_dict(), ops[2].to_dict()],
                              model_version=1).costs
    assert [a.layers[1].latency_ms, a.layers[2].latency_ms] == pytest.approx(
        [c.latency_ms for c in gemm])
    assert a.total.latency_ms == pytest.approx(sum(c.latency_ms for c in a.layers))
    assert a.total.power_w is None


def linear_network_model(trees: int = 10):
    """A network model of linear layers whose latency is known: 30 layers, 20 networks."""
    from predictor import network

    rng = np.random.default_rng(0)
    layer_ops = [linear_op(int(rng.choice([64, 128, 256])), int(rng.choice([1, 16, 64])))
                 for _ in range(30)]
    layer_ms = np.array([1e-4 * op["in_features"] * op["tokens"] + 0.01 for op in layer_ops])
    kinds = network.OpKindForests(n_estimators=trees).fit(layer_ops, layer_ms)
    nets = [[linear_op(64 * (i % 3 + 1), 8)] * (i % 4 + 1) for i in range(20)]
    return network.NetworkCostModel(kinds).fit(nets, np.array([0.02 * len(n) + 0.05
                                                               for n in nets]))


def test_network_model_answers_predict_network_with_additive_layers(served):
    from predictor import network

    store, _, client, tmp_path = served
    model = linear_network_model()
    metrics = {"networks": 20, "layers": 30, "held_out": {"rmspe": 5.0}}
    network.register(store, PROFILE.model, model, metrics)
    ops = [{"kind": "linear", "params": {"in_features": 128, "out_features": 64, "tokens": 8},
            "name": f"fc{i}"} for i in range(3)]
    a = client.predict_network("Test GPU", ops=ops)
    assert a.method.startswith("network model") and [c.name for c in a.layers] == \
        ["fc0", "fc1", "fc2"]
    expected = model.predict([[linear_op(128, 8)] * 3])[0]
    assert a.total.latency_ms == pytest.approx(expected, rel=1e-9)
    shares, const = model.per_op([linear_op(128, 8)] * 3)
    assert sum(c.latency_ms for c in a.layers) + const == pytest.approx(a.total.latency_ms)
    assert a.total.latency_std_ms == pytest.approx(0.05 * a.total.latency_ms)
    # PredictOps answers from the same per-op model
    o = client.predict_ops("Test GPU", ops)
    assert [c.latency_ms for c in o.costs] == pytest.approx(list(shares))
    # Its networks all ran at batch 1: at batch 4, each layer's share at batch 1 plus how the
    # GEMM model's prediction of it grows from batch 1 to 4; layers in those proportions.
    four = client.predict_network("Test GPU", ops=[{**op, "batch": 4} for op in ops])
    gemm_sums = {b: PredictionEngine(store)._op_costs(PROFILE.model, 0,
                                                      [linear_op(128, 8, b)] * 3, None)[2]
                 for b in (1, 4)}
    scaled = [s + c4.latency_ms - c1.latency_ms
              for s, c4, c1 in zip(shares, gemm_sums[4], gemm_sums[1], strict=True)]
    assert four.method == ("network model at another batch: its answer at its batch + the "
                           "GEMM model's change with the batch")
    assert four.total.latency_ms == pytest.approx(sum(scaled) + const)
    assert four.total.latency_ms == pytest.approx(
        sum(c.latency_ms for c in four.layers) + const)
    assert [c.latency_ms / four.layers[0].latency_ms for c in four.layers] == pytest.approx(
        [x / scaled[0] for x in scaled])
    assert four.total.latency_ms > a.total.latency_ms and four.total.latency_std_ms > 0
    from click.testing import CliRunner

    from hwnas.cli import main

    path = tmp_path / "four.json"
    path.write_text(json.dumps([{**op, "batch": 4} for op in ops]))
    r = CliRunner().invoke(main, ["predict", "network", "--db", store.url, "--device",
                                  "Test GPU", "--ops-json", str(path)])
    assert r.exit_code == 0 and f"total: {four.total.latency_ms:.5g} ms" in r.output, r.output
    assert "note: the device's network model learned one batch only" in r.stderr
    # The network model knows fp32 networks only: fp16 layers are summed from the GEMM model
    # (trained on fp16), and bf16, which neither model has seen, is refused by name.
    half = client.predict_network("Test GPU", ops=[{**o, "dtype": "fp16"} for o in ops])
    assert not half.method.startswith("network model") and half.total.latency_ms > 0
    with pytest.raises(grpc.RpcError) as err:
        client.predict_network("Test GPU", ops=[{**o, "dtype": "bf16"} for o in ops])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dtype: bf16: this model was trained on fp16, fp32 only" in err.value.details()
    # Nor does it answer for a kind its networks never held (it learned no cost for it), in a
    # network or alone.
    norm = {"kind": "norm", "params": {"channels": 8, "elements": 1024}}
    mixed = client.predict_network("Test GPU", ops=[*ops, norm])
    assert mixed.method == "sum of op predictions" and mixed.layers[-1].latency_ms > 0
    assert client.predict_ops("Test GPU", [norm]).costs[0].latency_ms > 0  # not 0 ms
    # `hwnas predict network` says why the network model did not answer.
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([*ops, norm]))
    r = CliRunner().invoke(main, ["predict", "network", "--db", store.url, "--device",
                                  "Test GPU", "--ops-json", str(path)])
    assert r.exit_code == 0, r.output
    assert ("note: network model v1 does not answer for it: its training networks held no "
            "norm ops (only linear); the sum of op predictions does") in r.stderr, r.output
    # A version naming only a network model that does not cover the ops (no GEMM model has
    # that number to sum them) says so, rather than that no such version exists.
    network.register(store, PROFILE.model, model, metrics)
    assert client.predict_network("Test GPU", ops=ops, model_version=2).model_version == 2
    with pytest.raises(grpc.RpcError) as err:
        client.predict_network("Test GPU", ops=[*ops, norm], model_version=2)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("model_version: network model v2 of 'Test GPU' does not answer for these ops (its "
            "training networks held no norm ops (only linear)), and there is no GEMM model v2"
            ) in err.value.details()


def test_a_network_model_asked_below_its_batch_blends_its_two_answers():
    """From a model of batch-4 networks, a network at batch 1 is the geometric mean of the
    model as is and of its batch-4 shares plus the GEMM model's change (which alone takes too
    much away going down); at batch 8, the second alone."""
    from predictor import network
    from predictor.op_costs import predict_ops, total

    gemm = fit_full(synthetic(30, seed=0), PROFILE, n_estimators=5)
    nets = [[linear_op(64 * (i % 3 + 1), 8, 4)] * (i % 4 + 1) for i in range(20)]
    model = network.NetworkCostModel().fit(nets, np.array([0.02 * len(n) + 0.05
                                                           for n in nets]))
    for batch, blended in ((1, True), (8, False)):
        ops = [linear_op(128, 8, batch)] * 3
        lat, per_op, _, _, mean = network.batch_scaled(model, gemm, ops)
        shares, const = model.per_op([linear_op(128, 8, 4)] * 3)
        second = (sum(shares) + const + total(predict_ops(gemm, ops)).latency_ms
                  - total(predict_ops(gemm, [linear_op(128, 8, 4)] * 3)).latency_ms)
        as_is = model.predict([ops])[0]
        assert mean is blended
        assert lat == pytest.approx(np.sqrt(as_is * second) if blended else second)
        assert per_op.sum() + const == pytest.approx(lat)


def linear_op(inp: int, tokens: int, batch: int = 1):
    from collectors.ops import Op

    return Op.make("linear", {"in_features": inp, "out_features": 64, "tokens": tokens},
                   batch=batch)


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout_s": 0}, "timeout_s: must be a positive number"),
    ({"timeout_s": float("nan")}, "timeout_s"),
    ({"retries": -1}, "retries: must be 0 or more"),
])
def test_client_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PredictorClient("127.0.0.1:1", **kwargs)


def test_predict_command_says_what_the_training_data_was(tmp_path):
    from click.testing import CliRunner

    from hwnas.cli import main

    store = make_store(tmp_path)
    frame = synthetic(20, power=True, seed=1)
    model = fit_full(frame, PROFILE, n_estimators=5)
    registry.register(store, model, PROFILE.model, {"data_note": "20 rows timed as a loop"},
                      tmp_path / "models")
    r = CliRunner().invoke(main, ["predict", "gemm", "--db", store.url, "--device", "Test GPU",
                                  "--m", "64", "--n", "64", "--k", "64", "--dtype", "fp16"])
    assert r.exit_code == 0, r.output
    assert "(model v2)" in r.output and "(training data: 20 rows timed as a loop)" in r.output


def test_predict_network_answers_here_for_a_torch_model_as_the_service_does(tmp_path,
                                                                           monkeypatch):
    from click.testing import CliRunner

    from collectors.networks.decompose import decompose
    from hwnas.cli import main

    (tmp_path / "user_net.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Flatten(), nn.Linear(8 * 16 * 16, 10))\n"
        "NOT_A_MODEL = 3\n"
        "def needs_width(width):\n"
        "    return nn.Linear(width, width)\n"
        "def encoder():\n"
        "    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)\n"
        "    return nn.Sequential(nn.Embedding(50, 16), layer)\n"
        "def two_inputs():\n"
        "    return nn.Bilinear(4, 4, 2)\n"
        "def scripted():\n"
        "    import torch, warnings\n"
        "    with warnings.catch_warnings():\n"
        "        warnings.simplefilter('ignore', DeprecationWarning)\n"
        "        return torch.jit.script(make())\n"
        "def on_meta():\n"
        "    import torch\n"
        "    with torch.device('meta'):\n"
        "        return make()\n"
        "def gru():\n"
        "    return nn.Sequential(nn.Linear(8, 8), nn.GRU(8, 16))\n" + MASKED_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = make_store(tmp_path)
    run = CliRunner().invoke
    args = ["predict", "network", "--db", store.url, "--device", "Test GPU"]
    # A model of two tensors: token ids and a float mask, one shape each joined by '+'.
    r = run(main, [*args, "--module", "user_net:Masked", "--input-shape", "2,5+2,5",
                   "--input-dtype", "int64+float", "--layers"])
    assert r.exit_code == 0 and "3 layers" in r.output, r.output
    assert [line.split(":")[0].strip() for line in r.output.splitlines()[1:4]] == [
        "emb", "fc", "mul"], r.output
    r = run(main, [*args, "--module", "user_net:make", "--input-shape", "2,3,16,16",
                   "--layers"])
    assert r.exit_code == 0, r.output
    assert f"{PROFILE.model} (model v1); 3 layers; sum of op predictions" in r.output
    assert "  0: " in r.output and "  3: " in r.output  # its own layer names (2: Flatten, no op)

    # The same answer as the engine behind `hwnas serve` gives for the decomposed ops.
    import user_net

    ops = [op for _, op in decompose(user_net.make(), (2, 3, 16, 16)).ops]
    _, _, total, _ = PredictionEngine(store).predict_network(PROFILE.model, 0, ops)
    shown = float(r.output.split("total: ")[1].split(" ms")[0])
    assert shown == pytest.approx(total.latency_ms, rel=1e-4)
    # A model built on the meta device (no memory for its weights) is predicted alike, and
    # not run.
    r = run(main, [*args, "--module", "user_net:on_meta", "--input-shape", "2,3,16,16",
                   "--layers"])
    assert r.exit_code == 0 and float(r.output.split("total: ")[1].split(" ms")[0]) == shown
    r = run(main, [*args, "--module", "user_net:on_meta", "--input-shape", "2,3,16,16",
                   "--measure"])
    assert r.exit_code == 2 and "--measure: the model is on the meta device" in r.output

    r = run(main, [*args, "--nasbench201", ARCH])
    assert r.exit_code == 0 and "total: " in r.output
    # Without few-shot models of the device, a version names the model that sums its ops.
    r = run(main, [*args, "--nasbench201", ARCH, "--version", "1"])
    assert r.exit_code == 0 and "(model v1)" in r.output, r.output
    # Token ids in; a layer fx cannot trace is read from the calls of one forward pass (its
    # attention, residual adds and activation among them), and the user is told so.
    r = run(main, [*args, "--module", "user_net:encoder", "--input-shape", "2,5",
                   "--input-dtype", "int64", "--layers"])
    assert r.exit_code == 0, r.output
    assert "13 layers" in r.output and "  1.self_attn.attention: " in r.output
    assert "  1.add: " in r.output and "  1.relu: " in r.output
    assert "note: torch.fx could not trace 1 (" in r.stderr
    assert "other inputs may run other ops" in r.stderr and "note:" not in r.stdout
    # --dtype casts the model: this GEMM model knows fp16 and fp32, so bf16 is refused.
    r = run(main, [*args, "--module", "user_net:make", "--input-shape", "2,3,16,16",
                   "--dtype", "fp16"])
    assert r.exit_code == 0 and "total: " in r.output, r.output
    r = run(main, [*args, "--module", "user_net:make", "--input-shape", "2,3,16,16",
                   "--dtype", "bf16"])
    assert "dtype: bf16: this model was trained on fp16, fp32 only" in r.output, r.output
    # A recurrent layer is one op per layer, its steps within it.
    r = run(main, [*args, "--module", "user_net:gru", "--input-shape", "3,2,8", "--layers"])
    assert r.exit_code == 0 and "2 layers" in r.output, r.output
    assert [line.split(":")[0].strip() for line in r.output.splitlines()[1:3]] == [
        "0", "1.l0"], r.output
    assert "note: its recurrent layers are the GEMM model's sum of their steps" in r.stderr
    # The network's own GEMMs to a file that `hwnas collect gemm --shapes-csv` reads.
    from collectors.gemm.shapes_csv import read_gemm_csv

    out = tmp_path / "gemms.csv"
    r = run(main, [*args, "--module", "user_net:make", "--input-shape", "2,3,16,16",
                   "--gemms-csv", str(out)])
    assert r.exit_code == 0 and f"wrote the 2 GEMMs of its layers (2 distinct) to {out}" in \
        r.output, r.output
    assert pd.read_csv(out, dtype={"layer": str}).layer.tolist() == ["0", "3"]
    # The conv as an implicit GEMM (2 x 16 x 16 pixels, 8 filters, 3 x 3 x 3 inputs), then
    # the linear layer.
    assert read_gemm_csv(str(out), "bf16", "tt")[["m", "n", "k", "batch"]].values.tolist() == [
        [512, 8, 27, 1], [2, 10, 2048, 1]]
    r = run(main, [*args, "--nasbench201", ARCH, "--gemms-csv", str(out)])
    assert r.exit_code == 0 and len(pd.read_csv(out)) > 10, r.output

    def op_file(params=(), **fields):
        return _ops_file(tmp_path, params, **fields)

    r = run(main, [*args, "--ops-json", op_file(batch=3, params={"bias": True})])
    assert r.exit_code == 0 and "total: " in r.output, r.output
    for bad, needle in [
        (["--nasbench201", ARCH, "--module", "user_net:make", "--input-shape", "1,3,8,8"],
         "exactly one of --nasbench201, --ops-json and --module"),
        (["--module", "user_net:make"], "--input-shape goes with --module"),
        (["--module", "user_net:NOT_A_MODEL", "--input-shape", "1,3,8,8"], "neither a torch"),
        (["--module", "no_such_package:make", "--input-shape", "1,3,8,8"], "ModuleNotFound"),
        (["--module", "user_net:make", "--input-shape", "1,0"], "--input-shape: positive"),
        (["--module", "user_net:make", "--input-shape", "1,4,16,16"],
         "did not run on that input (RuntimeError"),
        (["--module", "user_net:needs_width", "--input-shape", "1,4"],
         "needs_width() failed: TypeError"),
        (["--module", "user_net:scripted", "--input-shape", "1,3,16,16"],
         "--module user_net:scripted: a TorchScript module (torch.jit.script or torch.jit.trace) "
         "hides its layers"),
        (["--module", "user_net:two_inputs", "--input-shape", "1,4"],
         "missing 1 required positional argument: 'input2'); it is given 1 tensor: give one "
         "shape per input joined by '+' (--input-shape 1,128+1,128"),
        (["--module", "user_net:Masked", "--input-shape", "2,5+2,5", "--input-dtype",
          "int64+float+float"], "--input-dtype: 'int64+float+float': expected float or int64, "
         "or one of them per input joined by '+' (2 inputs)"),
        (["--module", "user_net:Masked", "--input-shape", "2,5", "--input-dtype", "half"],
         "'half': float or int64, or one per input joined by '+'"),
        (["--module", "user_net:make", "--input-shape", "2,3+0,1"], "--input-shape: positive"),
        (["--nasbench201", ARCH, "--version", "9"], "NOT_FOUND"),
        (["--module", "user_net:make", "--input-shape", "1,3,8,8", "--dtype", "tf32"],
         "--dtype: tf32: a model's parameters are held in fp32"),
        (["--ops-json", op_file(), "--dtype", "bf16"], "--dtype: --ops-json ops carry"),
        # The wire reads a batch of 0 as 1 and holds integers only: caught before it.
        (["--ops-json", op_file(batch=0)], "ops[0].batch: must be a positive integer, got 0"),
        (["--ops-json", op_file(params={"in_features": "8"})],
         "ops[0].params.in_features: must be an integer, got '8'"),
        (["--ops-json", op_file(params={"tokens": 2.5})],
         "ops[0].params.tokens: must be an integer, got 2.5"),
        (["--ops-json", op_file(dtype=16)], "ops[0].dtype: must be a string, got 16"),
    ]:
        r = run(main, [*args, *bad])
        assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output


def test_predict_network_measure_runs_the_network_here_beside_its_prediction(tmp_path,
                                                                          monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main

    (tmp_path / "lm_net.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    store, cpu = cpu_store_with_gemm_model(tmp_path)
    args = ["predict", "network", "--db", store.url, "--min-time", "0.01"]
    module = ["--module", "lm_net:make", "--input-shape", "2,7", "--input-dtype", "int64"]
    r = CliRunner().invoke(main, [*args, *module, "--measure"])
    assert r.exit_code == 0, r.output
    predicted = float(r.stdout.split("total: ")[1].split(" ms")[0])
    line = r.stdout.split(f"measured here on {cpu.info.model} (cpu): ")[1].splitlines()[0]
    measured, ratio = float(line.split(" ms")[0]), float(line.split("(x")[1].split(" ")[0])
    assert ratio == pytest.approx(measured / predicted, abs=0.006)
    assert "power not readable here" in line or " W, " in line
    assert "sums the ops' predictions" in r.stderr  # no network model for this CPU
    # A NAS-Bench-201 cell is run in the dtype it is predicted in.
    r = CliRunner().invoke(main, [*args, "--nasbench201", ARCH, "--dtype", "fp16", "--measure"])
    assert r.exit_code == 0 and "measured here on " in r.stdout, r.output
    for bad, needle in [
        (["--nasbench201", ARCH, "--dtype", "tf32", "--measure"],
         "--measure: --dtype: tf32: a model's parameters are held in fp32"),
        (["--ops-json", _ops_file(tmp_path), "--measure"], "names no network to run"),
    ]:
        r = CliRunner().invoke(main, [*args, *bad])
        assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output
    # A device model that is not this machine's is predicted, not measured.
    (tmp_path / "other").mkdir()
    other = make_store(tmp_path / "other")
    r = CliRunner().invoke(main, ["predict", "network", "--db", other.url, "--device", "Test GPU",
                                  *module, "--measure"])
    assert r.exit_code == 1 and "--measure: no Test GPU on this machine" in r.output, r.output


def cpu_store_with_gemm_model(tmp_path):
    """A store holding this CPU with a GEMM model registered under its name, fitted on
    synthetic data (for tests of what is built on the model, not of the model); and the CPU."""
    from collectors.devices import CpuDevice

    store = Store(f"sqlite:///{tmp_path / 'cpu.sqlite'}")
    cpu = CpuDevice()
    with store.session() as s:
        upsert_device(s, cpu.info)
        s.commit()
    registry.register(store, fit_full(synthetic(30, seed=0), PROFILE, n_estimators=10),
                      cpu.info.model, {}, tmp_path / "models")
    return store, cpu


def _ops_file(tmp_path, params=(), **fields) -> str:
    """A JSON op list of one linear layer (its params and fields overridden), in a new file."""
    op = {"kind": "linear", "params": {"in_features": 8, "out_features": 4, "tokens": 1,
                                       **dict(params)}, **fields}
    path = tmp_path / f"ops{len(list(tmp_path.glob('ops*.json')))}.json"
    path.write_text(json.dumps([op]))
    return str(path)


def test_a_retired_version_stops_being_the_default_and_answers_when_named(served):
    """Rolling back a retrained model: the service falls back to the version left, lists the
    retired one as such, and still answers a client that pins it."""
    store, _, client, tmp_path = served
    row, _ = register(store, tmp_path, seed=4)
    deadline = time.time() + 20
    while time.time() < deadline and client.predict_gemm("Test GPU", [(64, 64, 64)]
                                                         ).model_version != 2:
        time.sleep(0.1)
    registry.set_retired(store, row, True)
    while time.time() < deadline and client.predict_gemm("Test GPU", [(64, 64, 64)]
                                                         ).model_version != 1:
        time.sleep(0.1)
    assert client.predict_gemm("Test GPU", [(64, 64, 64)]).model_version == 1
    assert client.predict_gemm("Test GPU", [(64, 64, 64)], model_version=2).model_version == 2
    listed = {m.version: (m.latest, m.retired) for m in client.list_models("Test GPU")}
    assert listed == {1: (True, False), 2: (False, True)}
    assert client.model_metadata("Test GPU").version == 1
    assert client.model_metadata("Test GPU", 2).retired
    registry.set_retired(store, row, False)
    assert {m.version: m.latest for m in client.list_models("Test GPU")} == {1: False, 2: True}
    # With every version retired there is no default: the service says so, and still answers
    # a client that names a version.
    for version in (1, 2):
        registry.set_retired(store, registry.find(store, PROFILE.model, version), True)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as err:
        client.predict_gemm("Test GPU", [(64, 64, 64)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == ("device: every gemm model of 'Test GPU' is retired "
                                   "(versions 1, 2): ask for one by model_version, or have one "
                                   "restored or trained")
    assert client.predict_gemm("Test GPU", [(64, 64, 64)], model_version=1).model_version == 1


def test_a_deleted_version_stops_answering_even_where_a_client_pinned_it(served):
    store, _, client, tmp_path = served
    row, _ = register(store, tmp_path, seed=4)
    assert client.predict_gemm("Test GPU", [(64, 64, 64)], model_version=2).model_version == 2
    registry.delete(store, registry.set_retired(store, row, True))
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            client.predict_gemm("Test GPU", [(64, 64, 64)], model_version=2)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert "model_version: --version 2: 'Test GPU' gemm v2 was deleted" in err.details()
            break
        time.sleep(0.1)
    else:
        pytest.fail("the deleted version still answered after 20 s")
    assert [m.version for m in client.list_models("Test GPU")] == [1]
    assert client.predict_gemm("Test GPU", [(64, 64, 64)]).model_version == 1
    with pytest.raises(grpc.RpcError) as err:
        client.model_metadata("Test GPU", 2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_endpoint_counts_calls_and_shows_the_versions_served(tmp_path):
    """Prometheus text at --metrics-port: calls by method and code, predictions, and the
    version each device answers with by default, which follows a new version and a rollback."""
    import urllib.request

    store = make_store(tmp_path)
    port = free_port()
    server = Server(PredictionEngine(store, refresh_s=0.1),
                    ServerConfig(port=0, metrics_port=port, refresh_s=0.1)).start()
    client = PredictorClient(f"127.0.0.1:{server.port}", timeout_s=20)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    try:
        client.wait_ready(30)
        client.predict_gemm("Test GPU", [(64, 64, 64), (128, 128, 128)])
        with pytest.raises(grpc.RpcError):
            client.predict_gemm("nope", [(8, 8, 8)])
        text = scrape()
        assert 'hwnas_rpc_requests_total{code="OK",method="PredictGemm"} 1.0' in text, text
        assert 'hwnas_rpc_requests_total{code="NOT_FOUND",method="PredictGemm"} 1.0' in text
        assert "hwnas_predictions_total 2.0" in text
        assert 'hwnas_model_version{device="Test GPU",target="gemm"} 1.0' in text
        row, _ = register(store, tmp_path, seed=5)
        deadline = time.time() + 20
        while time.time() < deadline and client.predict_gemm(
                "Test GPU", [(64, 64, 64)]).model_version != 2:
            time.sleep(0.1)
        assert 'hwnas_model_version{device="Test GPU",target="gemm"} 2.0' in scrape()
        registry.set_retired(store, row, True)
        while time.time() < deadline and client.predict_gemm(
                "Test GPU", [(64, 64, 64)]).model_version != 1:
            time.sleep(0.1)
        assert 'hwnas_model_version{device="Test GPU",target="gemm"} 1.0' in scrape()
        from predictor import network

        network.register(store, PROFILE.model, linear_network_model(trees=3),
                         {"networks": 20, "held_out": {"rmspe": 5.0}})
        client.predict_network("Test GPU", ops=[{"kind": "linear", "params": {
            "in_features": 64, "out_features": 64, "tokens": 8}}])
        assert 'hwnas_model_version{device="Test GPU",target="network"} 1.0' in scrape()
    finally:
        client.close()
        server.stop(0)
