"""GPU paths on real hardware: run where CuPy and NVML find an NVIDIA GPU, skipped elsewhere."""

from __future__ import annotations

import statistics

import pytest
from sqlalchemy import select

from collectors import nvml


def _gpu_reason() -> str | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:
        return f"no CuPy/CUDA GPU here ({type(exc).__name__}: {exc})"
    if nvml.get_nvml() is None:
        return f"NVML unavailable ({nvml.unavailable_reason})"
    return None


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


def test_cupy_gemm_all_dtypes_match_numpy():
    import cupy
    import numpy as np

    from collectors.gemm.backends import CupyBackend
    from collectors.ops import Op

    backend = CupyBackend(0)
    # Batch 3: the strided-batched call (attention over heads), every matrix of it checked.
    for dtype, layout, batch in [(d, lay, b) for d in ("fp32", "tf32", "fp16", "bf16")
                                 for lay in ("nn", "tn", "nt") for b in (1, 3)]:
        op = Op.gemm(64, 48, 32, dtype, batch, trans_a=layout[0] == "t",
                     trans_b=layout[1] == "t")
        prep = backend.prepare(op)
        prep.fn()
        cupy.cuda.Device().synchronize()
        a, b, c = prep.fn._keepalive[:3]

        def f32(x, dtype=dtype):
            if dtype == "bf16":
                return (x.astype(cupy.uint32) << 16).view(cupy.float32)
            return x.astype(cupy.float32)

        av, bv = f32(a), f32(b)
        av = av.transpose(0, 2, 1) if op["trans_a"] else av
        bv = bv.transpose(0, 2, 1) if op["trans_b"] else bv
        ref = cupy.asnumpy(av @ bv)
        got = cupy.asnumpy(f32(c))
        assert got.shape == (batch, 64, 48)
        tol = 1e-4 if dtype == "fp32" else 5e-2
        assert np.allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max()), (dtype, layout,
                                                                                 batch)


def test_nvml_energy_window_reads_plausible_power():
    from collectors.devices import NvidiaGpu
    from collectors.gemm.backends import CupyBackend
    from collectors.ops import Op
    from collectors.timing import energy_window

    gpu = NvidiaGpu(0)
    prep = CupyBackend(0).prepare(Op.gemm(4096, 4096, 4096, "bf16"))
    result = energy_window(prep.fn, prep.timer, gpu.power_reader(), 1.0, 1.0)
    assert result.source.startswith("nvml")
    assert result.window_s >= 1.0
    assert 20 < result.power_w < (gpu.info.power_limit_w or 1000) * 1.2
    assert result.energy_j_per_call > 0


def test_cupy_sweep_is_stored(tmp_path):
    from collectors.devices import NvidiaGpu
    from collectors.gemm.backends import CupyBackend
    from collectors.gemm.shapes import log_grid
    from collectors.store.db import Store
    from collectors.store.models import Measurement
    from collectors.sweep import SweepRunner, plan_gemm
    from collectors.timing import TimingPolicy

    store = Store(f"sqlite:///{tmp_path / 'gpu.sqlite'}")
    policy = TimingPolicy(min_time_s=0.05, power_window_s=1.0)
    runner = SweepRunner(store, NvidiaGpu(0), CupyBackend(0), policy, progress=False)
    sweep_id = runner.create(plan_gemm(log_grid(256, 2048, 2), ["fp32", "tf32", "fp16", "bf16"]))
    summary = runner.run(sweep_id)
    assert summary.done == 32 and summary.failed == 0
    with store.session() as s:
        rows = s.scalars(select(Measurement)).all()
        assert all(r.power_source.startswith("nvml") and r.power_w > 0 for r in rows)
        assert all(r.sm_clock_mhz and r.temperature_c is not None for r in rows)
        assert {r.tensor_core for r in rows if r.dtype != "fp32"} == {True}
        assert {r.params["timer"] for r in rows} == {"cuda_events_queued"}


def test_queue_ahead_times_short_gemms_without_their_launch_cost():
    import dataclasses

    from collectors.gemm.backends import CupyBackend
    from collectors.ops import Op
    from collectors.timing import TimingPolicy, time_kernel

    backend = CupyBackend(0)
    policy = TimingPolicy(min_reps=30, min_time_s=0.1)
    as_loop = dataclasses.replace(policy, queue_ahead=False)
    tiny = backend.prepare(Op.gemm(64, 64, 64, "fp16"))
    loop = time_kernel(tiny.fn, tiny.timer, as_loop)
    queued = time_kernel(tiny.fn, tiny.timer, policy)
    print(f"64^3 fp16: loop {loop.p10_ms * 1e3:.2f} us, queued {queued.p10_ms * 1e3:.2f} us")
    assert loop.method == "cuda_events"
    assert queued.method == "cuda_events_queued", tiny.timer.unqueued_reason
    # Launching through CuPy and cuBLAS takes the host longer than the GPU needs for the kernel.
    assert queued.p10_ms < 0.9 * loop.p10_ms
    # ~0.2 ms: GPU-bound either way. At the power cap the clocks follow the GPU's recent load
    # (on an H200, 8192^3 bf16 took 1.38-1.6 ms, and two time_kernel runs of this GEMM a few
    # seconds apart differed by 7%), so the two ways take turns repetition by repetition.
    big = backend.prepare(Op.gemm(4096, 4096, 4096, "bf16"))
    time_kernel(big.fn, big.timer, policy)  # warm-up
    timer, times = big.timer, {"loop": [], "queued": []}
    for _ in range(20):
        for name, way in (("loop", as_loop), ("queued", policy)):
            timer.configure(way)
            times[name].append(timer.time(big.fn, 4))
            assert timer.method == ("cuda_events" if name == "loop" else "cuda_events_queued")
    loop_ms, queued_ms = (statistics.median(times[k]) for k in ("loop", "queued"))
    print(f"4096^3 bf16, median of 20 turns: loop {loop_ms:.4f} ms, queued {queued_ms:.4f} ms")
    assert queued_ms == pytest.approx(loop_ms, rel=0.05)


def test_network_sweep_on_the_gpu_with_cuda_events_and_energy(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no CUDA: GPU network sweeps need a CUDA "
                    "build of torch")
    from collectors.devices import NvidiaGpu
    from collectors.networks.sweep import NetworkSweep, layer_grid, network_plan
    from collectors.store.db import Store
    from collectors.store.models import Measurement
    from collectors.timing import TimingPolicy

    store = Store(f"sqlite:///{tmp_path / 'gpu-net.sqlite'}")
    sweeper = NetworkSweep(store, NvidiaGpu(0), TimingPolicy(min_time_s=0.05), progress=False)
    # fp32, and bf16 as GPUs run networks (collect network --dtype bf16): layers too.
    bf16 = [c for c in layer_grid(["linear", "attention"], [8], "bf16")
            if c["op"]["kind"] == "attention"][:2] + network_plan(["resnet"], 1, 8, 0, "bf16")
    # recurrent layers as cuDNN runs them: an LSTM and a GRU
    rnn = [c for c in layer_grid(["recurrent"], [8]) if c["op"]["params"]["gates"] in (3, 4)
           and (c["op"]["params"]["hidden"], c["op"]["params"]["steps"],
                c["op"]["params"]["directions"], c["op"]["params"]["input_size"])
           == (128, 50, 1, 64)]
    plan = (layer_grid(["conv2d"], [8])[:4] + rnn + network_plan(["nb201", "resnet"], 2, 8, 0)
            + bf16)
    summary = sweeper.run(sweeper.create(plan, "network"))
    assert summary.done == len(plan) and summary.failed == 0
    with store.session() as s:
        rows = s.scalars(select(Measurement)).all()
    assert {r.backend for r in rows} == {"torch-cuda"}
    assert all(r.latency_ms_median > 0 and r.power_source.startswith("nvml") for r in rows)
    assert sorted(r.dtype for r in rows) == ["bf16"] * 3 + ["fp32"] * 10
    assert sorted(r.op_kind for r in rows if r.op_kind == "recurrent") == ["recurrent"] * 2
    assert all(op["dtype"] == r.dtype for r in rows for _, op in r.params["ops"])


def test_a_gpu_sweep_resumes_on_its_gpu_without_naming_it(tmp_path):
    """`--resume` alone carries on a cuda:0 sweep on cuda:0 with CuPy (its own device and
    backend), not on the CPU the option would otherwise default to."""
    from click.testing import CliRunner
    from sqlalchemy import delete

    from collectors.store.db import Store
    from collectors.store.models import Measurement
    from hwnas.cli import main

    db = f"sqlite:///{tmp_path / 'g.sqlite'}"
    first = CliRunner().invoke(main, [
        "collect", "gemm", "--db", db, "--device", "cuda:0", "--dtype", "fp16,tf32",
        "--max-size", "256", "--points", "2", "--min-time", "0.01", "--power-window", "0",
        "--skip-peaks", "--no-progress", "--no-probe"])
    assert first.exit_code == 0, first.output
    with Store(db).session() as s:
        s.execute(delete(Measurement).where(Measurement.id > 10))
        s.commit()
    again = CliRunner().invoke(main, ["collect", "gemm", "--db", db, "--resume", "1",
                                      "--skip-peaks", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "6 done" in again.output and "0 remaining" in again.output, again.output
    with Store(db).session() as s:
        rows = s.scalars(select(Measurement)).all()
    assert len(rows) == 16 and {r.backend for r in rows} == {"cupy"}
    assert len({r.device_id for r in rows}) == 1
