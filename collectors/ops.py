"""The one vocabulary for ops, shared by the store, the predictors, the service and the search.

An op is a kind (``gemm``, ``conv2d``, ...) plus named integer parameters, a dtype and a batch
size. Everything that crosses a boundary (CLI options, CSV rows, gRPC messages) is converted to an
:class:`Op` here, and the validation names the offending field so users get a clear error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class OpError(ValueError):
    """An op description is malformed; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class DType:
    """A numeric format an op runs in.

    ``storage`` is the element format in memory, ``compute`` names the arithmetic path
    (``tf32`` stores fp32 but multiplies on TF32 tensor cores).
    """

    name: str
    storage: str
    bytes_per_element: int
    tensor_core: bool


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("fp64", "float64", 8, False),
        DType("fp32", "float32", 4, False),
        DType("tf32", "float32", 4, True),
        DType("fp16", "float16", 2, True),
        DType("bf16", "bfloat16", 2, True),
    )
}

# Maximum size of any single dimension we accept. Larger values are almost always a typo
# (an element count given as a dimension) and would make shape arithmetic overflow downstream.
MAX_DIM = 1 << 24

# Required integer parameters per op kind; optional ones with defaults.
OP_KINDS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "gemm": (("m", "n", "k"), {"trans_a": 0, "trans_b": 0}),
    "linear": (("in_features", "out_features", "tokens"), {"bias": 1}),
    "conv2d": (
        ("in_channels", "out_channels", "kernel", "height", "width"),
        {"stride": 1, "padding": -1, "groups": 1},
    ),
    "depthwise_conv2d": (("channels", "kernel", "height", "width"), {"stride": 1, "padding": -1}),
    "attention": (("seq_len", "heads", "head_dim"), {"kv_len": 0, "causal": 0}),
    # ``max`` 1 for a max pool, 0 an average (a CPU runs the two at different rates)
    "pool": (("channels", "kernel", "height", "width"), {"stride": 1, "padding": 0, "max": 0}),
    "norm": (("channels", "elements"), {}),
    # ``inputs`` tensors of ``elements`` each read, one written; a reduction (a mean, a
    # bag of embeddings) writes ``reduce`` times fewer elements than it reads; ``in_place`` 1
    # where it writes into its input (``relu_``, ``nn.ReLU(inplace=True)``), not a new tensor.
    "elementwise": (("elements",), {"inputs": 1, "reduce": 1, "in_place": 0}),
    # One layer of nn.RNN (1 gate), nn.GRU (3) or nn.LSTM (4) over a sequence of ``steps``:
    # ``directions`` 2 where bidirectional; ``proj`` an LSTM's projected state size (0: none).
    "recurrent": (("input_size", "hidden", "steps", "gates"),
                  {"directions": 1, "proj": 0, "bias": 1}),
}

# Parameters with a fixed set of values, and what each means.
_CHOICES = {("recurrent", "gates"): {1: "RNN", 3: "GRU", 4: "LSTM"},
            ("recurrent", "directions"): {1: "one way", 2: "bidirectional"}}

# Parameters that may legitimately be 0 or negative (flags, "same" padding sentinel).
_NON_POSITIVE_OK = {"trans_a", "trans_b", "bias", "padding", "kv_len", "causal", "proj",
                    "in_place", "max"}
_FLAGS = {"trans_a", "trans_b", "bias", "causal", "in_place", "max"}


def _as_int(field_name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise OpError(field_name, f"must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise OpError(field_name, f"must be an integer, got {value!r}") from None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OpError(field_name, f"must be an integer, got {value!r}") from None


def check_dim(field_name: str, value: Any) -> int:
    """Validate one positive dimension (M, N, K, batch, channels ...)."""
    v = _as_int(field_name, value)
    if v <= 0:
        raise OpError(field_name, f"must be a positive integer, got {v}")
    if v > MAX_DIM:
        raise OpError(field_name, f"must be at most {MAX_DIM}, got {v}")
    return v


def check_dtype(value: Any, field_name: str = "dtype") -> DType:
    name = str(value).strip().lower()
    if name not in DTYPES:
        raise OpError(field_name, f"unknown dtype {value!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def check_gemm_columns(cols: Mapping[str, np.ndarray], name: Callable[[str, int], str]) -> None:
    """Validate many GEMMs held as columns of one length (``m``, ``n``, ``k``, ``batch`` as
    integers, ``dtype`` as lower-case names) in bulk, as :func:`check_dim` and
    :func:`check_dtype` do one value; the first bad entry is named ``name(column, row)``."""
    for c in ("m", "n", "k", "batch"):
        bad = np.flatnonzero((cols[c] <= 0) | (cols[c] > MAX_DIM))
        if len(bad):
            i = int(bad[0])
            check_dim(name(c, i), int(cols[c][i]))  # raises with the usual message
    check_dtype_column(cols["dtype"], lambda i: name("dtype", i))


def check_dtype_column(dtypes: np.ndarray, name: Callable[[int], str]) -> None:
    """Validate many lower-case dtype names in bulk, as :func:`check_dtype` does one; the
    first unknown one is named ``name(row)``."""
    unknown = np.flatnonzero(~np.isin(dtypes, list(DTYPES)))
    if len(unknown):
        i = int(unknown[0])
        check_dtype(dtypes[i], name(i))


def network_batch(ops: Sequence[Op]) -> int:
    """A network's batch: that of most of its ops (an attention's heads may multiply it for a
    few; a sequence-first recurrent layer's input holds it in its second dimension)."""
    return Counter(op.batch for op in ops).most_common(1)[0][0]


def network_dtype(ops: Sequence[Op]) -> str:
    """A network's dtype: that of most of its ops."""
    return Counter(op.dtype for op in ops).most_common(1)[0][0]


def layouts(trans_a, trans_b) -> np.ndarray:
    """Per GEMM, its BLAS-style layout (``nn``, ``nt``, ``tn`` or ``tt``; :attr:`Op.layout`)
    from arrays of its transposes."""
    return (np.where(np.asarray(trans_a, dtype=bool), "t", "n").astype(object)
            + np.where(np.asarray(trans_b, dtype=bool), "t", "n"))


@dataclass(frozen=True)
class Op:
    """One op: ``kind`` + integer ``params`` + ``dtype`` + ``batch``."""

    kind: str
    params: Mapping[str, int] = field(default_factory=dict)
    dtype: str = "fp32"
    batch: int = 1

    @classmethod
    def make(cls, kind: str, params: Mapping[str, Any] | None = None, dtype: Any = "fp32",
             batch: Any = 1) -> Op:
        """Build a validated op; raises :class:`OpError` naming the bad field."""
        kind_name = str(kind).strip().lower()
        if kind_name not in OP_KINDS:
            raise OpError("kind", f"unknown op kind {kind!r}; choose from {', '.join(OP_KINDS)}")
        required, optional = OP_KINDS[kind_name]
        params = dict(params or {})
        unknown = sorted(set(params) - set(required) - set(optional))
        if unknown:
            raise OpError(unknown[0], f"is not a parameter of {kind_name} (required: "
                                      f"{', '.join(required)}; optional: "
                                      f"{', '.join(optional) or 'none'})")
        clean: dict[str, int] = {}
        for name in required:
            if name not in params or params[name] is None:
                raise OpError(name, f"is required for {kind_name}")
            clean[name] = check_dim(name, params[name])
        for name, default in optional.items():
            raw = params.get(name, default)
            v = default if raw is None else _as_int(name, raw)
            if name in _FLAGS and v not in (0, 1):
                raise OpError(name, f"must be 0 or 1, got {v}")
            if name not in _NON_POSITIVE_OK:
                v = check_dim(name, v)
            elif v < 0 and name in ("kv_len", "proj"):  # 0 means none
                raise OpError(name, f"must be 0 or positive, got {v}")
            clean[name] = v
        for name, value in clean.items():
            choices = _CHOICES.get((kind_name, name))
            if choices is not None and value not in choices:
                listed = ", ".join(f"{c} ({what})" for c, what in choices.items())
                raise OpError(name, f"must be one of {listed} for {kind_name}, got {value}")
        return cls(kind_name, clean, check_dtype(dtype).name, check_dim("batch", batch))

    @classmethod
    def gemm(cls, m: Any, n: Any, k: Any, dtype: Any = "fp32", batch: Any = 1,
             trans_a: Any = 0, trans_b: Any = 0) -> Op:
        return cls.make("gemm", {"m": m, "n": n, "k": k, "trans_a": trans_a,
                                 "trans_b": trans_b}, dtype, batch)

    def __getitem__(self, name: str) -> int:
        return self.params[name]

    @property
    def layout(self) -> str:
        """BLAS-style layout of a GEMM: ``nn``, ``nt``, ``tn`` or ``tt``."""
        return ("t" if self.params.get("trans_a") else "n") + (
            "t" if self.params.get("trans_b") else "n")

    def key(self) -> str:
        """A stable text key, used to recognise a config already measured in a sweep."""
        parts = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        return f"{self.kind}[{parts}]:{self.dtype}:b{self.batch}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params), "dtype": self.dtype,
                "batch": self.batch}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Op:
        if not isinstance(d, Mapping):
            raise OpError("op", f"must be a mapping, got {type(d).__name__}")
        return cls.make(d.get("kind", ""), d.get("params") or {}, d.get("dtype", "fp32"),
                        d.get("batch", 1))


def gemm_flops(m: int, n: int, k: int, batch: int = 1) -> int:
    """Floating-point operations of a (batched) GEMM: 2·M·N·K per matrix."""
    return 2 * m * n * k * batch


def gemm_bytes(m: int, n: int, k: int, dtype: str, batch: int = 1) -> int:
    """Lower bound of bytes moved by a GEMM: every operand read or written once."""
    return (m * k + k * n + m * n) * DTYPES[dtype].bytes_per_element * batch


def conv_out_hw(op: Op) -> tuple[int, int]:
    """Output height and width of a conv or pool op (padding -1 means "same")."""
    s = op.params.get("stride", 1)
    pad = op.params.get("padding", -1)
    h, w, k = op["height"], op["width"], op["kernel"]
    if pad < 0:
        return -(-h // s), -(-w // s)
    return max(1, (h + 2 * pad - k) // s + 1), max(1, (w + 2 * pad - k) // s + 1)


def op_gemm_counts(op: Op) -> list[tuple[tuple[int, int, int, int], int]]:
    """Each distinct (m, n, k, batch) GEMM an op runs, with how many times it runs it: a
    recurrent layer, per direction, the input projection of all its steps at once, then at
    each step the recurrent projection (and an LSTM's projection of its state); any other op
    each of :func:`op_gemms` once."""
    if op.kind != "recurrent":
        return [(gemm, 1) for gemm in op_gemms(op)]
    b, p, steps = op.batch, op.params, op_steps(op)  # steps over both directions
    gates, out = p["gates"] * p["hidden"], p["proj"] or p["hidden"]
    return [((b * p["steps"], gates, p["input_size"], 1), p["directions"]),
            ((b, gates, out, 1), steps),
            *([((b, p["proj"], p["hidden"], 1), steps)] if p["proj"] else [])]


def op_gemms(op: Op) -> list[tuple[int, int, int, int]]:
    """The (m, n, k, batch) GEMMs an op runs: convs as implicit GEMMs, attention as two batched
    GEMMs, a recurrent layer its distinct ones (:func:`op_gemm_counts` says how often); empty
    for memory-bound ops (pool, norm, elementwise)."""
    b, p = op.batch, op.params
    if op.kind == "recurrent":
        return [gemm for gemm, _ in op_gemm_counts(op)]
    if op.kind == "gemm":
        return [(p["m"], p["n"], p["k"], b)]
    if op.kind == "linear":
        return [(b * p["tokens"], p["out_features"], p["in_features"], 1)]
    if op.kind == "conv2d":
        g = p["groups"]
        if p["in_channels"] % g or p["out_channels"] % g:
            raise OpError("groups", "must divide in_channels and out_channels")
        ho, wo = conv_out_hw(op)
        return [(b * ho * wo, p["out_channels"] // g, p["in_channels"] // g * p["kernel"] ** 2,
                 g)]
    if op.kind == "depthwise_conv2d":
        ho, wo = conv_out_hw(op)
        return [(b * ho * wo, 1, p["kernel"] ** 2, p["channels"])]
    if op.kind == "attention":
        kv = p["kv_len"] or p["seq_len"]
        heads = b * p["heads"]
        return [(p["seq_len"], kv, p["head_dim"], heads), (p["seq_len"], p["head_dim"], kv, heads)]
    return []


def op_parts(op: Op) -> list[tuple[Op, int]]:
    """The memory-bound ops an op runs beside its GEMMs, with how many times: a recurrent
    layer's gate arithmetic at each step and direction (one elementwise op over the gates, as
    cuDNN and oneDNN fuse it)."""
    if op.kind != "recurrent":
        return []
    p = op.params
    cell = Op.make("elementwise", {"elements": p["gates"] * p["hidden"], "inputs": 2}, op.dtype,
                   op.batch)
    return [(cell, op_steps(op))]


def op_variant(op: Op) -> str | None:
    """What runs an op where its kind covers several implementations that cost differently:
    a recurrent layer's cell (RNN, GRU or LSTM: oneDNN fuses an LSTM layer on a CPU, torch
    runs the others step by step); None for other kinds."""
    if op.kind != "recurrent":
        return None
    return _CHOICES[("recurrent", "gates")][op.params["gates"]]


def op_steps(op: Op) -> int:
    """The ops a framework runs one after another for ``op`` where nothing fuses them: a
    recurrent layer's steps over its directions (each a projection and the gate arithmetic),
    1 for any other op. A network model's per-op costs scale with it."""
    if op.kind != "recurrent":
        return 1
    return op.params["steps"] * op.params["directions"]


def op_bytes(op: Op) -> int:
    """Bytes a memory-bound op reads and writes at least once (GEMM ops: their operands; a
    recurrent layer's gate arithmetic too)."""
    e, b, p = DTYPES[op.dtype].bytes_per_element, op.batch, op.params
    if op.kind == "pool":
        ho, wo = conv_out_hw(op)
        return e * b * p["channels"] * (p["height"] * p["width"] + ho * wo)
    if op.kind == "norm":
        return e * b * 2 * p["elements"]
    if op.kind == "elementwise":
        return e * b * (p["inputs"] * p["elements"] + -(-p["elements"] // p["reduce"]))
    return (sum(gemm_bytes(m, n, k, op.dtype, bb) * times
                for (m, n, k, bb), times in op_gemm_counts(op))
            + sum(op_bytes(part) * times for part, times in op_parts(op)))


def op_output_bytes(op: Op) -> int:
    """Bytes of the new tensor an op returns, as a framework allocates it for each call (0 for
    an elementwise op in place). A recurrent layer's: its output sequence."""
    e, b, p = DTYPES[op.dtype].bytes_per_element, op.batch, op.params
    if op.kind == "gemm":
        return e * b * p["m"] * p["n"]
    if op.kind == "linear":
        return e * b * p["tokens"] * p["out_features"]
    if op.kind in ("conv2d", "depthwise_conv2d", "pool"):
        ho, wo = conv_out_hw(op)
        return e * b * p.get("out_channels", p.get("channels", 0)) * ho * wo
    if op.kind == "attention":
        return e * b * p["seq_len"] * p["heads"] * p["head_dim"]
    if op.kind == "norm":
        return e * b * p["elements"]
    if op.kind == "elementwise":
        return 0 if p["in_place"] else e * b * -(-p["elements"] // p["reduce"])
    if op.kind == "recurrent":
        return e * b * p["steps"] * p["directions"] * (p["proj"] or p["hidden"])
    raise ValueError(f"no output size for op kind {op.kind!r}")


def op_flops(op: Op) -> int:
    """FLOPs: 2 per multiply-add of the op's GEMMs; one per output element otherwise."""
    gemms = op_gemm_counts(op)
    if gemms:
        return (sum(gemm_flops(m, n, k, bb) * times for (m, n, k, bb), times in gemms)
                + sum(op_flops(part) * times for part, times in op_parts(op)))
    p = op.params
    if op.kind == "pool":
        ho, wo = conv_out_hw(op)
        return op.batch * p["channels"] * ho * wo * p["kernel"] ** 2
    return op.batch * p["elements"] * max(1, p.get("inputs", 1))
