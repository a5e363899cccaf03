"""Model bundles: a registered model carried to another store, checked before it is registered."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from collectors.ops import Op
from collectors.store.db import Store
from hwnas.cli import main
from hwnas.service.engine import PredictionEngine
from predictor import bundle, network, registry
from predictor.forest import gemm_frame
from tests.test_predictor import gpperf_csv
from tests.test_service import linear_network_model, linear_op

GPU = "NVIDIA GeForce RTX 4070"


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """Store A with a trained GEMM model of the RTX 4070 and its bundle; store B empty, with
    a models folder of its own."""
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models_a"))
    a = f"sqlite:///{tmp_path / 'a.sqlite'}"
    run = CliRunner().invoke
    assert run(main, ["import", "gpperf", "--db", a, gpperf_csv(tmp_path)]).exit_code == 0
    r = run(main, ["train", "--db", a, "--device", "4070", "--trees", "8", "--folds", "3"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.zip"
    r = run(main, ["models", "--db", a, "--device", "4070", "--export", str(out)])
    assert r.exit_code == 0 and f"wrote {GPU} gemm model v1" in r.output, r.output
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models_b"))
    return a, f"sqlite:///{tmp_path / 'b.sqlite'}", out


def test_a_gemm_model_moves_to_another_store_and_predicts_the_same(trained, tmp_path):
    a, b, out = trained
    run = CliRunner().invoke
    r = run(main, ["import", "model", "--db", b, str(out)])
    assert r.exit_code == 0 and f"registered {GPU} gemm model v1 from" in r.output, r.output
    row = registry.find(Store(b), GPU)
    original = registry.find(Store(a), GPU)
    assert row.sha256 == original.sha256 and str(tmp_path / "models_b") in row.path
    assert row.meta["imported"]["version"] == 1 and row.meta["features"]
    assert row.meta["metrics"] == original.meta["metrics"]
    # Served and predicted from B, with no measurement there: the same answers as A's.
    ask = ["predict", "gemm", "--device", "4070", "--m", "300", "--n", "200", "--k", "100"]
    here, there = (run(main, [*ask, "--db", db]) for db in (a, b))
    assert there.exit_code == 0 and there.output == here.output, there.output
    frame = gemm_frame([Op.gemm(300, 200, 100, "fp32"), Op.gemm(64, 64, 64, "fp32")])
    device, version, costs = PredictionEngine(Store(b)).predict_gemm("4070", 0, frame)
    expected = registry.load(original).predict_costs(frame)
    assert (device, version) == (GPU, 1)
    np.testing.assert_array_equal(costs.latency_ms, expected.latency_ms)
    # Once is enough: the same file again adds nothing; the record says where it came from.
    r = run(main, ["import", "model", "--db", b, str(out)])
    assert r.exit_code == 0 and "already registered as" in r.output and "nothing added" in \
        r.output, r.output
    assert len(registry.list_models(Store(b))) == 1
    r = run(main, ["models", "--db", b, "--device", "4070"])
    assert r.exit_code == 0 and "imported       " in r.output and "from m.zip: v1 where it " \
        "was trained" in r.output, r.output
    # Deleted there, the same bundle brings the model back, as a new version.
    registry.delete(Store(b), registry.set_retired(Store(b), row, True))
    r = run(main, ["import", "model", "--db", b, str(out)])
    assert r.exit_code == 0 and f"registered {GPU} gemm model v2 from" in r.output, r.output
    assert registry.find(Store(b), GPU).version == 2


def _contents(src) -> tuple[dict, bytes]:
    """The manifest and model bytes of bundle ``src``."""
    with zipfile.ZipFile(src) as z:
        manifest = json.loads(z.read(bundle.MANIFEST))
        return manifest, z.read(manifest["file"])


def _rewrite(dst, manifest: dict, data: bytes, name: str) -> None:
    """A bundle at ``dst`` holding ``manifest`` and ``data`` as the file ``name``."""
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr(bundle.MANIFEST, json.dumps(manifest))
        z.writestr(name, data)


@pytest.mark.parametrize("change, says", [
    (lambda m, d: (m, d[:-1] + bytes([d[-1] ^ 1])), "the file changed after export"),
    (lambda m, d: ({k: v for k, v in m.items() if k != "n_samples"}, d),
     "manifest.json field n_samples: expected a count, got None"),
    (lambda m, d: ({**m, "target": "nb201"}, d), "field target: expected gemm or network"),
    (lambda m, d: ({**m, "file": "../x.skops"}, d), "field file: expected a .skops file name"),
    (lambda m, d: ({**m, "format_version": 9}, d), "format_version: 9; this hwnas reads 1"),
    (lambda m, d: ({**m, "meta": {**m["meta"], "features": m["meta"]["features"][:-1]}}, d),
     "fitted on the GEMM features of another hwnas"),
])
def test_a_bad_bundle_is_refused_by_name_and_registers_nothing(trained, tmp_path, change, says):
    _, b, out = trained
    manifest, data = _contents(out)
    name = manifest["file"]
    manifest, data = change(manifest, data)
    bad = tmp_path / "bad.zip"
    _rewrite(bad, manifest, data, name)
    r = CliRunner().invoke(main, ["import", "model", "--db", b, str(bad)])
    assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output, r.output
    assert registry.list_models(Store(b)) == []


def test_a_model_file_with_untrusted_types_is_never_loaded(trained, tmp_path):
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    _, b, out = trained
    evil = tmp_path / "evil.skops"
    sio.dump({"latency": FunctionTransformer(func=os.system)}, evil)
    manifest, _ = _contents(out)
    manifest["sha256"] = registry.sha256_file(evil)
    _rewrite(tmp_path / "evil.zip", manifest, evil.read_bytes(), manifest["file"])
    with pytest.raises(bundle.BundleError, match=r"unexpected types \['posix.system'\]"):
        bundle.import_bundle(Store(b), tmp_path / "evil.zip")
    assert registry.list_models(Store(b)) == []


def test_not_a_bundle_and_unwritable_targets_are_named(trained, tmp_path, monkeypatch):
    a, b, out = trained
    run = CliRunner().invoke
    for limit, says in [("MAX_MANIFEST_BYTES", "manifest.json is "),
                        ("MAX_MODEL_BYTES", ".skops is ")]:  # sizes a zip claims are checked
        with monkeypatch.context() as m:
            m.setattr(bundle, limit, 100)
            with pytest.raises(bundle.BundleError, match=f"{says}[0-9]+ bytes, more than"):
                bundle.read_bundle(out)
    (tmp_path / "x.zip").write_text("hello")
    r = run(main, ["import", "model", "--db", b, str(tmp_path / "x.zip")])
    assert r.exit_code == 1 and "x.zip: not a model bundle (not a zip file" in r.output
    with zipfile.ZipFile(tmp_path / "y.zip", "w") as z:
        z.writestr("a.txt", "a")
    r = run(main, ["import", "model", "--db", b, str(tmp_path / "y.zip")])
    assert r.exit_code == 1 and "y.zip: not a model bundle (no manifest.json)" in r.output
    r = run(main, ["models", "--db", a, "--device", "4070", "--export",
                   str(tmp_path / "no" / "such" / "m.zip")])
    assert r.exit_code == 1 and "--export " in r.output and "cannot write it" in r.output
    for args, says in [(["--export", "m.zip"], "--export describes one model"),
                       (["--device", "4070", "--json", "--export", "m.zip"],
                        "--json and --export: give one of them")]:
        r = run(main, ["models", "--db", a, *args])
        assert r.exit_code == 2 and says in r.output, r.output
    registry.register_json(Store(a), GPU, "nb201", "{}", 10, {})
    r = run(main, ["models", "--db", a, "--device", "4070", "--target", "nb201", "--export",
                   str(tmp_path / "n.zip")])
    assert r.exit_code == 1 and "only gemm, network models can be exported" in r.output


def test_a_network_model_moves_with_its_per_kind_forests(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models_a"))
    a, b = Store(f"sqlite:///{tmp_path / 'a.sqlite'}"), Store(f"sqlite:///{tmp_path / 'b.sqlite'}")
    model = linear_network_model(trees=5)
    row = network.register(a, "Phone X", model, {"networks": 20, "held_out": {"rmspe": 5.0}})
    row = registry.set_retired(a, row, True)  # retired there: an ordinary version here
    bundle.export_bundle(row, tmp_path / "net.zip")
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models_b"))
    got = bundle.import_bundle(b, tmp_path / "net.zip")
    assert got.added and got.row.target == "network" and got.row.sha256 == row.sha256
    assert registry.find(b, "Phone X", target="network").version == 1
    query = [[linear_op(128, 8)] * 3]
    assert network.load(got.row).predict(query)[0] == model.predict(query)[0]
    # Its device is known to store B now, so the service resolves it by a part of its name.
    assert PredictionEngine(b).resolve_device("phone") == "Phone X"
