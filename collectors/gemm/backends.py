"""GEMM backends: NumPy and torch on CPUs, CuPy (cuBLAS ``gemmEx``) on NVIDIA GPUs.

A backend turns an :class:`~collectors.ops.Op` into a prepared kernel (operands allocated, a
zero-argument callable that runs one GEMM) plus the timer that suits it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from collectors.ops import DTYPES, Op
from collectors.timing import PerfCounterTimer, Timer, TimingPolicy


class BackendError(ValueError):
    """A backend cannot run here, or cannot run this dtype."""


@dataclass
class PreparedGemm:
    fn: Callable[[], object]
    timer: Timer
    compute_type: str
    tensor_core: bool
    threads: int | None


class GemmBackend(ABC):
    name: str
    device_kind: str  # cpu | gpu
    library: str  # the module that runs the GEMMs

    @property
    def library_version(self) -> str:
        """Version of the module that runs the GEMMs: a new one may run them at another speed
        (the speed probe's recorded full speed is kept per version)."""
        import importlib

        library = getattr(self, "library", None)
        module = importlib.import_module(library) if library else None
        return str(getattr(module, "__version__", "unknown"))

    @abstractmethod
    def dtypes(self) -> list[str]:
        """Dtypes this backend can run here."""

    @abstractmethod
    def prepare(self, op: Op) -> PreparedGemm: ...

    def check(self, dtype: str) -> None:
        if dtype not in self.dtypes():
            raise BackendError(f"--dtype {dtype}: the {self.name} backend runs "
                               f"{', '.join(self.dtypes())} here")


def _operand_shapes(op: Op) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Stored shapes of A, B and C for a row-major batched GEMM with transposes."""
    m, n, k, b = op["m"], op["n"], op["k"], op.batch
    a = (b, k, m) if op.params.get("trans_a") else (b, m, k)
    bb = (b, n, k) if op.params.get("trans_b") else (b, k, n)
    return a, bb, (b, m, n)


def _maybe_t(x, flag: int):
    return x.transpose(-1, -2) if flag else x


class NumpyBackend(GemmBackend):
    name = "numpy"
    device_kind = "cpu"
    library = "numpy"

    def __init__(self, threads: int | None = None):
        if threads is not None:
            if threads < 1:
                raise BackendError(f"--threads: must be at least 1, got {threads}")
            from threadpoolctl import threadpool_limits

            self._limit = threadpool_limits(limits=threads, user_api="blas")  # held for life

    def dtypes(self) -> list[str]:
        return ["fp32", "fp64"]

    @staticmethod
    def threads() -> int | None:
        try:
            from threadpoolctl import threadpool_info

            blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
            return int(blas[0]["num_threads"]) if blas else None
        except Exception:
            return None

    def prepare(self, op: Op) -> PreparedGemm:
        self.check(op.dtype)
        rng = np.random.default_rng(0)
        np_dtype = DTYPES[op.dtype].storage
        sa, sb, sc = _operand_shapes(op)
        a = rng.standard_normal(sa, dtype=np.float64).astype(np_dtype)
        b = rng.standard_normal(sb, dtype=np.float64).astype(np_dtype)
        c = np.empty(sc, dtype=np_dtype)
        av = np.swapaxes(a, -1, -2) if op["trans_a"] else a
        bv = np.swapaxes(b, -1, -2) if op["trans_b"] else b

        def fn() -> object:
            return np.matmul(av, bv, out=c)

        return PreparedGemm(fn, PerfCounterTimer(), op.dtype, False, self.threads())


class TorchCpuBackend(GemmBackend):
    name = "torch"
    device_kind = "cpu"
    library = "torch"
    _supported: list[str] | None = None

    def __init__(self, threads: int | None = None):
        if threads is not None:
            if threads < 1:
                raise BackendError(f"--threads: must be at least 1, got {threads}")
            import torch

            torch.set_num_threads(threads)

    def dtypes(self) -> list[str]:
        if TorchCpuBackend._supported is None:
            import torch

            ok = ["fp32", "fp64"]
            for name, tdt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                try:
                    x = torch.ones(4, 4, dtype=tdt)
                    torch.matmul(x, x)
                    ok.append(name)
                except (RuntimeError, TypeError):
                    pass
            TorchCpuBackend._supported = ok
        return TorchCpuBackend._supported

    def prepare(self, op: Op) -> PreparedGemm:
        import torch

        self.check(op.dtype)
        tdt = getattr(torch, DTYPES[op.dtype].storage)
        g = torch.Generator().manual_seed(0)
        sa, sb, sc = _operand_shapes(op)
        a = torch.randn(sa, generator=g).to(tdt)
        b = torch.randn(sb, generator=g).to(tdt)
        c = torch.empty(sc, dtype=tdt)
        av, bv = _maybe_t(a, op["trans_a"]), _maybe_t(b, op["trans_b"])

        def fn() -> object:
            return torch.matmul(av, bv, out=c)

        return PreparedGemm(fn, PerfCounterTimer(), op.dtype, False, torch.get_num_threads())


# cuBLAS enums (cublas_api.h / library_types.h); CuPy's gemmEx takes them as plain ints.
CUDA_R_16F, CUDA_R_32F, CUDA_R_16BF = 2, 0, 14
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 77
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1

# dtype -> (element type, compute type, compute-type label, tensor cores used)
CUPY_PATHS = {
    "fp32": (CUDA_R_32F, CUBLAS_COMPUTE_32F, "CUBLAS_COMPUTE_32F", False),
    "tf32": (CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, "CUBLAS_COMPUTE_32F_FAST_TF32", True),
    "fp16": (CUDA_R_16F, CUBLAS_COMPUTE_32F, "CUBLAS_COMPUTE_32F", True),
    "bf16": (CUDA_R_16BF, CUBLAS_COMPUTE_32F, "CUBLAS_COMPUTE_32F", True),
}


# One thread that keeps its SM busy for ``cycles`` clock cycles: it holds the stream while the
# host queues a repetition's launches behind it.
_SPIN_SOURCE = r"""
extern "C" __global__ void hwnas_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


class CudaEventTimer(Timer):
    """CUDA events around a repetition; optional L2 flush by overwriting a large buffer.

    Queue-ahead (``TimingPolicy.queue_ahead``, the default): a small GEMM can take less GPU
    time than the host needs to launch it through CuPy and cuBLAS, and then events around a
    loop of launches time the host's launch rate, not the GPU (timed that way, the smallest
    GEMMs on the H100 all came out at 7-12 us per call, whatever their size). So a
    repetition first launches a spin kernel that holds the stream, queues its calls between the
    two events behind it, and then checks that the spin was still running when the last call
    was queued (the start event not reached yet): the calls then ran back to back on the GPU,
    and the events time the kernels alone. A spin that ended too soon is made longer and the
    repetition run again; where the spin kernel cannot run, or the queue is never covered in
    ``TRIES`` attempts, repetitions are timed as a plain loop. ``method`` says which.
    (CUDA graphs would serve too, but CuPy refuses cuBLAS calls during stream capture.)

    ``clock`` is the host clock in seconds (replaced in tests).
    """

    MAX_QUEUED = 256  # calls behind one spin: the launch queue holds about a thousand kernels
    TRIES = 4

    def __init__(self, flush_bytes: int = 256 << 20, clock: Callable[[], float] | None = None):
        import cupy

        self.cp = cupy
        self.start = cupy.cuda.Event()
        self.end = cupy.cuda.Event()
        self.spin_start = cupy.cuda.Event()
        self.flush_bytes = flush_bytes
        self._flush_buf = None
        self.clock = clock or time.perf_counter
        self.queue_ahead = False
        self._spin = None
        self.unqueued_reason: str | None = None  # why queue-ahead was given up, if it was
        self._cycles_per_ms = 1e6  # a first guess (1 GHz), measured on every spin
        self._launch_ms = 0.02  # host time to queue one call, learned as it goes
        self._timed = {"queued": 0, "loop": 0}

    @property
    def method(self) -> str:
        queued, loop = self._timed["queued"], self._timed["loop"]
        if queued and loop:
            return "cuda_events_mixed"
        return "cuda_events_queued" if queued else "cuda_events"

    def configure(self, policy: TimingPolicy) -> None:
        self.queue_ahead = policy.queue_ahead
        self._timed = {"queued": 0, "loop": 0}

    def time(self, fn: Callable[[], object], inner: int) -> float:
        if self.queue_ahead and self.unqueued_reason is None:
            calls = min(inner, self.MAX_QUEUED)
            for _ in range(self.TRIES):
                ms = self._time_queued(fn, calls)
                if ms is not None:
                    self._timed["queued"] += 1
                    return ms
                if self.unqueued_reason is not None:  # the spin kernel cannot run here
                    break
            if self.unqueued_reason is None:
                self.unqueued_reason = (f"the spin kernel ended before {calls} calls were "
                                        f"queued, {self.TRIES} times")
        self._timed["loop"] += 1
        return self._time_loop(fn, inner)

    def _time_loop(self, fn: Callable[[], object], inner: int) -> float:
        self.start.record()
        for _ in range(inner):
            fn()
        self.end.record()
        self.end.synchronize()
        return self.cp.cuda.get_elapsed_time(self.start, self.end) / inner

    def _time_queued(self, fn: Callable[[], object], calls: int) -> float | None:
        """ms per call with the calls queued behind a spin; None when the spin ended too soon
        (or cannot run: ``unqueued_reason`` says why)."""
        spin = self._spin_kernel()
        if spin is None:
            return None
        cycles = max(1, int((2 * calls * self._launch_ms + 0.02) * self._cycles_per_ms))
        self.spin_start.record()
        spin((1,), (1,), (np.int64(cycles),))
        t0 = self.clock()
        self.start.record()
        for _ in range(calls):
            fn()
        self.end.record()
        queued_ms = (self.clock() - t0) * 1e3
        covered = not self.start.done
        self.end.synchronize()
        spun_ms = self.cp.cuda.get_elapsed_time(self.spin_start, self.start)
        if spun_ms > 0:
            self._cycles_per_ms = cycles / spun_ms
        if not covered:
            self._launch_ms = 2 * max(queued_ms / calls, self._launch_ms)
            return None
        self._launch_ms = queued_ms / calls
        return self.cp.cuda.get_elapsed_time(self.start, self.end) / calls

    def _spin_kernel(self):
        if self._spin is None and self.unqueued_reason is None:
            try:
                kernel = self.cp.RawKernel(_SPIN_SOURCE, "hwnas_spin")
                kernel((1,), (1,), (np.int64(0),))  # compile and load it outside any timing
                self.sync()
                self._spin = kernel
            except Exception as exc:  # no NVRTC, or a driver that refuses it
                self.unqueued_reason = f"spin kernel failed: {type(exc).__name__}: {exc}"
        return self._spin

    def sync(self) -> None:
        self.cp.cuda.Device().synchronize()

    def before_rep(self) -> None:
        if self._flush_buf is None:
            self._flush_buf = self.cp.empty(self.flush_bytes, dtype=self.cp.uint8)
        self._flush_buf.fill(1)


class CupyBackend(GemmBackend):
    """cuBLAS through CuPy's ``gemmEx``/``gemmStridedBatchedEx`` with an explicit compute type.

    Row-major C = op(A)·op(B) is computed as column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, the usual trick,
    so no copy or transpose kernel enters the timed region.
    """

    name = "cupy"
    device_kind = "gpu"
    library = "cupy"

    def __init__(self, index: int = 0):
        try:
            import cupy
        except ImportError:
            raise BackendError("the cupy backend needs CuPy (pip install 'hwnas[gpu]')") from None
        self.cp = cupy
        self.index = index

    def dtypes(self) -> list[str]:
        return list(CUPY_PATHS)

    def prepare(self, op: Op) -> PreparedGemm:
        from cupy.cuda import cublas

        self.check(op.dtype)
        cp = self.cp
        cp.cuda.Device(self.index).use()
        elem, compute, compute_label, tensor_core = CUPY_PATHS[op.dtype]
        # CuPy has no bfloat16 dtype: bf16 operands live in uint16 buffers of the right size.
        store = {"fp32": cp.float32, "tf32": cp.float32, "fp16": cp.float16,
                 "bf16": cp.uint16}[op.dtype]
        m, n, k, batch = op["m"], op["n"], op["k"], op.batch
        ta, tb = op["trans_a"], op["trans_b"]
        sa, sb, sc = _operand_shapes(op)
        if op.dtype == "bf16":
            # Small random bf16 values: the top 16 bits of float32 values.
            def rand(shape):
                x = cp.random.standard_normal(shape, dtype=cp.float32)
                return (x.view(cp.uint32) >> 16).astype(cp.uint16)
        else:
            def rand(shape):
                return cp.random.standard_normal(shape, dtype=cp.float32).astype(store)
        a, b = rand(sa), rand(sb)
        c = cp.zeros(sc, dtype=store)
        alpha = np.array(1.0, dtype=np.float32)
        beta = np.array(0.0, dtype=np.float32)
        handle = cp.cuda.device.get_cublas_handle()
        # Column-major view: C^T (n x m) = op(B)^T (n x k) . op(A)^T (k x m).
        op_b = CUBLAS_OP_T if tb else CUBLAS_OP_N
        op_a = CUBLAS_OP_T if ta else CUBLAS_OP_N
        ldb = k if tb else n
        lda = m if ta else k
        ldc = n
        a_ptr, b_ptr, c_ptr = a.data.ptr, b.data.ptr, c.data.ptr
        alpha_ptr, beta_ptr = alpha.ctypes.data, beta.ctypes.data

        if batch == 1:
            def fn() -> object:
                cublas.gemmEx(handle, op_b, op_a, n, m, k, alpha_ptr, b_ptr, elem, ldb,
                              a_ptr, elem, lda, beta_ptr, c_ptr, elem, ldc, compute,
                              CUBLAS_GEMM_DEFAULT)
        else:
            def fn() -> object:
                cublas.gemmStridedBatchedEx(handle, op_b, op_a, n, m, k, alpha_ptr, b_ptr, elem,
                                            ldb, k * n, a_ptr, elem, lda, m * k, beta_ptr,
                                            c_ptr, elem, ldc, m * n, batch, compute,
                                            CUBLAS_GEMM_DEFAULT)
        fn._keepalive = (a, b, c, alpha, beta)  # operands must outlive the callable
        return PreparedGemm(fn, CudaEventTimer(), compute_label, tensor_core, None)


CPU_BACKENDS: dict[str, type[GemmBackend]] = {"torch": TorchCpuBackend, "numpy": NumpyBackend}


def backend_for(device_kind: str, name: str | None = None, index: int = 0,
                threads: int | None = None) -> GemmBackend:
    """Default: torch on a CPU, cupy on a GPU. ``threads`` limits CPU threads (default: all
    cores); it is recorded with every measurement either way."""
    if device_kind == "gpu":
        if name not in (None, "cupy"):
            raise BackendError(f"--backend {name}: GPUs are measured with the cupy backend")
        return CupyBackend(index)
    name = name or "torch"
    if name not in CPU_BACKENDS:
        raise BackendError(f"--backend {name}: CPU backends are {', '.join(CPU_BACKENDS)}")
    return CPU_BACKENDS[name](threads)
