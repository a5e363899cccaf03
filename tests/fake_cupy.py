"""A stand-in for the few parts of CuPy the cupy GEMM backend uses, over NumPy on the host, so
that the backend's cuBLAS calls can be checked on a machine without a GPU (as tests/fake_nvml.py
stands in for NVML).

Arrays are NumPy arrays whose ``.data.ptr`` is their host address. ``cuda.cublas.gemmEx`` and
``gemmStridedBatchedEx`` do what cuBLAS documents for them: column-major matrices read through
the leading dimensions and batch strides they are given, from raw pointers. They are strict
where a GPU would not be: a leading dimension shorter than the stored matrix's rows, or a
matrix that runs past the end of the array it starts in, raises :class:`CublasError` instead of
reading whatever lies there. Events read the host's clock, as if every call ran as it was
made; kernels cannot be compiled (the timer then times plain loops, as it does where NVRTC is
missing).
"""

from __future__ import annotations

import ctypes
import sys
import time
import types
import weakref

import numpy as np

from collectors.gemm.backends import CUBLAS_OP_N, CUBLAS_OP_T, CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F


class CublasError(RuntimeError):
    """A call cuBLAS would refuse (CUBLAS_STATUS_INVALID_VALUE) or that reads out of bounds."""


# Every array made here (arrays are unhashable: by id), to find the array a pointer is in.
_live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class _Memory:
    def __init__(self, array: np.ndarray):
        self.ptr = array.ctypes.data


class FakeArray(np.ndarray):
    """A host array that answers ``.data.ptr`` as a CuPy array does."""

    def __array_finalize__(self, obj) -> None:
        _live[id(self)] = self

    @property
    def data(self) -> _Memory:  # CuPy's MemoryPointer, not NumPy's buffer
        return _Memory(self)


def _fake(array: np.ndarray) -> FakeArray:
    return np.ascontiguousarray(array).view(FakeArray)


def _owner_end(ptr: int) -> int:
    """The end address of the array ``ptr`` points into."""
    ends = [a.ctypes.data + a.nbytes for a in list(_live.values())
            if a.flags.c_contiguous and a.ctypes.data <= ptr < a.ctypes.data + a.nbytes]
    if not ends:
        raise CublasError(f"pointer {ptr:#x} is in no array")
    return max(ends)


# cudaDataType -> (how it is stored, its ctypes element)
_STORED = {CUDA_R_32F: (np.float32, ctypes.c_float), CUDA_R_16F: (np.float16, ctypes.c_uint16),
           CUDA_R_16BF: (np.uint16, ctypes.c_uint16)}


def _strided(ptr: int, dtype: int, ld: int, rows: int, cols: int, stride: int,
             batch: int) -> np.ndarray:
    """The ``batch`` column-major ``rows`` x ``cols`` matrices at ``ptr``, ``stride`` elements
    apart (a writable view, (batch, rows, cols))."""
    if ld < max(1, rows):
        raise CublasError(f"leading dimension {ld} < {rows} rows of the stored matrix")
    store, element = _STORED[dtype]
    size = np.dtype(store).itemsize
    extent = stride * (batch - 1) + ld * (cols - 1) + rows
    if ptr + extent * size > _owner_end(ptr):
        raise CublasError(f"a {rows}x{cols} matrix (ld {ld}, batch {batch}, stride {stride}) "
                          "runs past the end of its array")
    flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(element)), shape=(extent,))
    flat = flat.view(store)
    return np.lib.stride_tricks.as_strided(flat, (batch, rows, cols),
                                           (stride * size, size, ld * size))


def _to_float(x: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == CUDA_R_16BF:  # the top 16 bits of a float32
        return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return x.astype(np.float64)


def _from_float(x: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == CUDA_R_16BF:
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return x.astype(_STORED[dtype][0])


def _scalar(ptr: int) -> float:
    return ctypes.c_float.from_address(ptr).value


def _op(matrices: np.ndarray, op: int) -> np.ndarray:
    if op not in (CUBLAS_OP_N, CUBLAS_OP_T):
        raise CublasError(f"operation {op}")
    return matrices.transpose(0, 2, 1) if op == CUBLAS_OP_T else matrices


def gemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, a, atype, lda, stride_a, b,
                         btype, ldb, stride_b, beta, c, ctype, ldc, stride_c, batch, compute,
                         algo) -> None:
    """C_i = alpha op(A_i) op(B_i) + beta C_i, column-major: op(A) m x k, op(B) k x n."""
    if min(m, n, k, batch) < 1:
        raise CublasError(f"m, n, k, batch = {m}, {n}, {k}, {batch}")
    rows_a, cols_a = (m, k) if transa == CUBLAS_OP_N else (k, m)
    rows_b, cols_b = (k, n) if transb == CUBLAS_OP_N else (n, k)
    av = _op(_to_float(_strided(a, atype, lda, rows_a, cols_a, stride_a, batch), atype), transa)
    bv = _op(_to_float(_strided(b, btype, ldb, rows_b, cols_b, stride_b, batch), btype), transb)
    out = _strided(c, ctype, ldc, m, n, stride_c, batch)
    result = _scalar(alpha) * (av @ bv)
    if _scalar(beta):
        result += _scalar(beta) * _to_float(out, ctype)
    out[...] = _from_float(result, ctype)


def gemmEx(handle, transa, transb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c,
           ctype, ldc, compute, algo) -> None:
    gemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, a, atype, lda, 0, b, btype,
                         ldb, 0, beta, c, ctype, ldc, 0, 1, compute, algo)


class _Device:
    def __init__(self, index: int = 0):
        self.index = index

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Event:
    """A CUDA event on the host's clock: the fake GPU finishes each call as it is made."""

    def __init__(self):
        self.at = None

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()

    @property
    def done(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


def _raw_kernel(source: str, name: str):
    raise RuntimeError("the fake CuPy compiles no kernels")


def module() -> types.ModuleType:
    """A fresh ``cupy`` module, with ``cupy.cuda``, ``.cublas`` and ``.device``."""
    cp = types.ModuleType("cupy")
    cp.float32, cp.float16, cp.uint16, cp.uint32 = (np.float32, np.float16, np.uint16,
                                                    np.uint32)
    rng = np.random.default_rng(0)
    cp.random = types.SimpleNamespace(
        standard_normal=lambda shape, dtype=np.float64: _fake(
            rng.standard_normal(shape).astype(dtype)))
    cp.zeros = lambda shape, dtype=np.float64: _fake(np.zeros(shape, dtype))
    cp.asnumpy = np.asarray
    cp.RawKernel = _raw_kernel  # so the timer times plain loops (its fallback)
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device, cuda.Event = _Device, _Event
    cuda.get_elapsed_time = lambda start, end: (end.at - start.at) * 1e3  # ms
    cuda.cublas = types.ModuleType("cupy.cuda.cublas")
    cuda.cublas.gemmEx, cuda.cublas.gemmStridedBatchedEx = gemmEx, gemmStridedBatchedEx
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 1)
    cp.cuda = cuda
    return cp


def install(monkeypatch) -> types.ModuleType:
    """Make ``import cupy`` (and ``from cupy.cuda import cublas``) give the fake for this
    test."""
    cp = module()
    for name, mod in (("cupy", cp), ("cupy.cuda", cp.cuda), ("cupy.cuda.cublas", cp.cuda.cublas)):
        monkeypatch.setitem(sys.modules, name, mod)
    return cp
