"""The cupy GEMM backend's cuBLAS calls, checked on any machine through tests/fake_cupy.py: the
row-major product each dtype, layout and batch asks for is what the column-major calls compute
(leading dimensions, batch strides, the operands swapped), and no call reads past its arrays;
then a GPU sweep and `hwnas collect gemm --device cuda:0` on the fake CuPy and the fake NVML.
tests/test_gpu.py runs the same checks on the real ones where there is a GPU."""

from __future__ import annotations

import re

import numpy as np
import pytest

from collectors.ops import Op
from tests import fake_cupy


@pytest.fixture
def backend(monkeypatch):
    fake_cupy.install(monkeypatch)
    from collectors.gemm.backends import CupyBackend

    return CupyBackend(0)


def _as_float(x: np.ndarray, dtype: str) -> np.ndarray:
    x = np.asarray(x)
    if dtype == "bf16":
        return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return x.astype(np.float64)


@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_call_computes_the_row_major_product(backend, dtype, layout, batch):
    op = Op.gemm(40, 24, 56, dtype, batch, trans_a=layout[0] == "t", trans_b=layout[1] == "t")
    prep = backend.prepare(op)
    a, b, c = prep.fn._keepalive[:3]
    assert c.shape == (batch, 40, 24)
    prep.fn()
    av, bv = _as_float(a, dtype), _as_float(b, dtype)
    av = av.transpose(0, 2, 1) if op["trans_a"] else av
    bv = bv.transpose(0, 2, 1) if op["trans_b"] else bv
    ref = av @ bv
    tol = 1e-5 if dtype in ("fp32", "tf32") else 1e-2
    np.testing.assert_allclose(_as_float(c, dtype), ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.abs(ref).max() > 1  # a product of random operands, not zeros


def test_the_fake_refuses_what_cublas_would_not_do(backend):
    """The check above can fail: a leading dimension or batch stride off by one is caught."""
    import cupy

    from collectors.gemm.backends import CUBLAS_OP_N, CUDA_R_32F

    a = cupy.random.standard_normal((2, 8, 8), dtype=cupy.float32)
    c = cupy.zeros((2, 8, 8), dtype=cupy.float32)
    one, zero = np.array(1.0, np.float32), np.array(0.0, np.float32)
    args = (1, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, one.ctypes.data)
    ok = (a.data.ptr, CUDA_R_32F, 8, 64, a.data.ptr, CUDA_R_32F, 8, 64, zero.ctypes.data,
          c.data.ptr, CUDA_R_32F, 8, 64, 2, 0, -1)
    cupy.cuda.cublas.gemmStridedBatchedEx(*args, *ok)
    np.testing.assert_allclose(c, np.swapaxes(np.swapaxes(a, 1, 2) @ np.swapaxes(a, 1, 2), 1, 2),
                               rtol=1e-5)
    short_ld = list(ok)
    short_ld[2] = 7
    with pytest.raises(fake_cupy.CublasError, match="leading dimension 7 < 8"):
        cupy.cuda.cublas.gemmStridedBatchedEx(*args, *short_ld)
    long_stride = list(ok)
    long_stride[3] = 65
    with pytest.raises(fake_cupy.CublasError, match="runs past the end"):
        cupy.cuda.cublas.gemmStridedBatchedEx(*args, *long_stride)


def test_a_gpu_sweep_on_fakes_stores_what_the_gpu_test_checks(backend, tmp_path):
    """The GPU sweep's wiring (device facts and state from NVML, energy from its counter, the
    cuBLAS path of each dtype, the timer that timed it) on the fakes, as tests/test_gpu.py
    checks it on a GPU."""
    from sqlalchemy import select

    from collectors import nvml
    from collectors.devices import NvidiaGpu
    from collectors.gemm.shapes import Shape
    from collectors.store.db import Store
    from collectors.store.models import Measurement
    from collectors.sweep import SweepRunner, plan_gemm
    from collectors.timing import TimingPolicy
    from tests.fake_nvml import FakeNvml

    nvml.set_nvml(FakeNvml(power_w=250.0))
    store = Store(f"sqlite:///{tmp_path / 'gpu.sqlite'}")
    policy = TimingPolicy(warmup_s=0.0, min_reps=3, min_time_s=0.01, power_window_s=0.1)
    runner = SweepRunner(store, NvidiaGpu(0), backend, policy, progress=False)
    shapes = [Shape(96, 64, 32, 1, "random"), Shape(48, 40, 24, 3, "random")]
    sweep_id = runner.create(plan_gemm(shapes, ["fp32", "tf32", "fp16", "bf16"]))
    summary = runner.run(sweep_id)
    assert summary.done == 8 and summary.failed == 0
    with store.session() as s:
        rows = s.scalars(select(Measurement)).all()
    assert sorted(r.batch for r in rows) == [1] * 4 + [3] * 4
    assert {r.power_source for r in rows} == {"nvml_energy_counter"}
    assert all(r.power_w == pytest.approx(250.0, rel=0.1) and r.latency_ms > 0 for r in rows)
    assert {(r.sm_clock_mhz, r.temperature_c) for r in rows} == {(1755, 41)}
    assert {r.dtype: r.tensor_core for r in rows} == {"fp32": False, "tf32": True,
                                                      "fp16": True, "bf16": True}
    assert {r.params["timer"] for r in rows} == {"cuda_events"}  # no spin kernel here


def test_hwnas_collect_gemm_on_a_fake_gpu(backend, tmp_path):
    from click.testing import CliRunner
    from sqlalchemy import select

    from collectors import nvml
    from collectors.store.db import Store
    from collectors.store.models import Measurement
    from hwnas.cli import main
    from tests.fake_nvml import FakeNvml

    nvml.set_nvml(FakeNvml(power_w=250.0))
    db = f"sqlite:///{tmp_path / 'g.sqlite'}"
    r = CliRunner().invoke(main, [
        "collect", "gemm", "--db", db, "--device", "cuda:0", "--skip-peaks", "--shapes",
        "random", "--count", "4", "--batched", "1", "--max-batch", "4", "--dtype", "bf16",
        "--min-time", "0.01", "--power-window", "0.1", "--rounds", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert re.search(r"^bf16 +4 +0 .* 250\.0$", r.output, re.M), r.output
    with Store(db).session() as s:
        rows = s.scalars(select(Measurement)).all()
    assert len(rows) == 4 and {r.power_source for r in rows} == {"nvml_energy_counter"}
    assert all(r.batch > 1 and r.tensor_core for r in rows)
