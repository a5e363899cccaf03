"""What each torch module and function call costs, as :class:`collectors.ops.Op` lists.

:func:`module_op` and :func:`function_op` map one call (its class or function name, its
tensors' shapes and the arguments that matter) to the ops it runs: [] for calls that only
change a view, None for a call of no known kind (listed as not costed, never dropped), and a
:class:`DecomposeError` for a known kind in a form its op cannot describe. Which calls a model
makes is :mod:`collectors.networks.decompose`'s business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from collectors.ops import Op

# Calls that only change a tensor's view or metadata: no kernel worth costing.
FREE = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "getitem",
        "getattr", "squeeze", "unsqueeze", "expand", "split", "chunk", "t", "dim", "type_as",
        "to", "float", "half", "bfloat16", "double", "long", "int", "bool", "clone", "detach",
        "Identity", "Dropout", "Dropout1d", "Dropout2d", "AlphaDropout", "Flatten", "dropout",
        "view_as", "expand_as", "unbind", "narrow", "select", "as_strided", "unflatten",
        "movedim", "Unflatten", "Dropout3d", "FeatureAlphaDropout", "alpha_dropout",
        "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d",
        # allocations of constants (masks, positions): a fill, next to nothing
        "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like",
        "full_like", "tensor", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
# Pools the (2-D, square-window) pool op cannot describe (1-D, 3-D, power-average,
# fractional): memory-bound, so costed by the input they read, as reductions are.
OTHER_POOL_MODULES = {"AvgPool1d", "MaxPool1d", "AdaptiveAvgPool1d", "AdaptiveMaxPool1d",
                      "AvgPool3d", "MaxPool3d", "AdaptiveAvgPool3d", "AdaptiveMaxPool3d",
                      "LPPool1d", "LPPool2d", "LPPool3d", "FractionalMaxPool2d",
                      "FractionalMaxPool3d"}
OTHER_POOL_FUNCS = {"avg_pool1d", "max_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
                    "avg_pool3d", "max_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d",
                    "lp_pool1d", "lp_pool2d", "lp_pool3d", "fractional_max_pool2d",
                    "fractional_max_pool3d"}
ELEMENTWISE_MODULES = {"ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish",
                       "Hardsigmoid", "LeakyReLU", "ELU", "Mish", "Softmax", "PReLU", "RReLU",
                       "Softplus", "SELU", "CELU", "Hardtanh", "Hardshrink", "Softshrink",
                       "Tanhshrink", "Threshold", "Softsign", "LogSigmoid", "LogSoftmax",
                       "Softmin", "Softmax2d", "GLU"}
# Modules that reduce two tensors of one shape to a value per row.
PAIR_REDUCTION_MODULES = {"CosineSimilarity", "PairwiseDistance"}
# Reductions read their whole input: that is their traffic, not their small output. Sorts and
# selections (top-k, median) are costed so too: a bound, as every memory-bound op's is.
REDUCTIONS = {"mean", "sum", "max", "amax", "min", "amin", "argmax", "argmin", "prod", "any",
              "all", "var", "std", "norm", "logsumexp", "cosine_similarity",
              "pairwise_distance", "topk", "sort", "argsort", "msort", "kthvalue", "median",
              "nanmedian", "linalg_vector_norm", "linalg_norm", *OTHER_POOL_FUNCS}
# In-place forms (``add_``) are the same calls: names are compared without underscores.
ELEMENTWISE_FUNCS = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "add",
                     "mul", "sub", "div", "softmax", "iadd", "imul", "truediv", "cat", "exp",
                     "leaky_relu", "elu", "hardsigmoid", "neg", "pow", "sqrt",
                     "radd", "rsub", "rmul", "rtruediv", "isub", "itruediv", "stack", "rsqrt",
                     "log", "abs", "clamp", "where", "masked_fill", "maximum", "minimum",
                     "log_softmax", "softplus", "mish", "erf", "gt", "lt", "ge", "le", "eq",
                     "ne", "repeat", "hardtanh", "cos", "sin", "square", "reciprocal", "floor",
                     "ceil", "round", "sign", "clamp_min", "clamp_max", "selu", "celu", "prelu",
                     "rrelu", "glu", "logsigmoid", "softsign", "softmin", "tanhshrink",
                     "threshold", "hardshrink", "softshrink", "cumsum", "normalize", "roll",
                     "flip", "exp2", "log2", "log1p", "expm1", "logical_not",
                     "logical_and", "logical_or", "bitwise_not", "floordiv", "mod",
                     "remainder", "fmod", "lerp", "addcmul", "addcdiv", "triu", "tril",
                     "nan_to_num", "bucketize", *REDUCTIONS}
NORM_MODULES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
                "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "SyncBatchNorm",
                "LocalResponseNorm", "CrossMapLRN2d"}
POOL_MODULES = {"MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"}
# Memory-bound calls whose traffic is their output (a lookup, a resize, a padding or a
# rearrangement): costed as an elementwise op over the output's elements.
GATHER_MODULES = {"Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "Embedding",
                  "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Unfold", "Fold",
                  *(f"{kind}Pad{d}d" for kind in ("Zero", "Constant", "Reflection",
                                                  "Replication", "Circular")
                    for d in (1, 2, 3)),
                  "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d"}
GATHER_FUNCS = {"interpolate", "embedding", "pad", "pixel_shuffle", "pixel_unshuffle",
                "channel_shuffle", "gather", "index_select", "take_along_dim", "one_hot",
                "max_unpool1d", "max_unpool2d", "max_unpool3d", "repeat_interleave",
                "diag_embed", "kron", "grid_sample", "unfold"}
# Convolutions no conv op describes (1-D, 3-D, transposed), costed as the GEMM they run.
IMPLICIT_GEMM_MODULES = {"Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                         "ConvTranspose3d"}
IMPLICIT_GEMM_FUNCS = {"conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                       "conv_transpose3d"}
# Recurrent layers and cells by their gates' count: each step multiplies the hidden state by
# gates x hidden weights, after its input was projected (for all steps at once, in a layer).
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
RECURRENT_MODULES = {"RNN", "LSTM", "GRU"}
RECURRENT_CELLS = {"RNNCell": 1, "LSTMCell": 4, "GRUCell": 3}
# Every module class module_op costs (or skips as free), by name.
MAPPED_MODULES = (FREE | ELEMENTWISE_MODULES | NORM_MODULES | POOL_MODULES | OTHER_POOL_MODULES
                  | PAIR_REDUCTION_MODULES | GATHER_MODULES | IMPLICIT_GEMM_MODULES
                  | RECURRENT_MODULES | set(RECURRENT_CELLS)
                  | {"Conv2d", "Linear", "MultiheadAttention", "Bilinear", "EmbeddingBag"})
NORM_FUNCS = {"layer_norm", "batch_norm", "group_norm", "instance_norm", "rms_norm",
              "local_response_norm"}
# Names of the ops a module runs as several, for per-layer output ("self_attn.q_proj").
PART_NAMES = {"MultiheadAttention": ("q_proj", "k_proj", "v_proj", "attention", "out_proj"),
              "Bilinear": ("project", "contract")}
# The arguments that matter after a function's first three, in order.
POSITIONAL_OPTIONS = {"conv2d": ("stride", "padding", "dilation", "groups"),
                      "conv1d": ("stride", "padding", "dilation", "groups"),
                      "conv3d": ("stride", "padding", "dilation", "groups"),
                      "conv_transpose1d": ("stride", "padding", "output_padding", "groups"),
                      "conv_transpose2d": ("stride", "padding", "output_padding", "groups"),
                      "conv_transpose3d": ("stride", "padding", "output_padding", "groups"),
                      "scaled_dot_product_attention": ("attn_mask", "dropout_p", "is_causal")}


class DecomposeError(ValueError):
    """A call of a mapped kind in a form its op has no parameters for (a rectangular pooling
    window), or a model of a form no decomposition reads (a TorchScript module)."""


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


def dtype_name(dtype) -> str:
    """An op's name of a torch dtype: fp32, fp16, bf16 or fp64 (fp32 for any other)."""
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64"}.get(dtype, "fp32")


def _square(v) -> int | None:
    """A kernel, stride or padding that is the same along both axes, as one number; None
    where it is not."""
    if isinstance(v, tuple | list):
        return int(v[0]) if len(set(v)) == 1 else None
    return int(v)


def _conv_ops(in_shape: Sequence[int], out_shape: Sequence[int], weight: Sequence[int],
              kernel, stride, padding, dilation, groups: int, dtype: str) -> list[Op] | None:
    """A 2-D convolution (nn.Conv2d or F.conv2d) as a conv2d or depthwise_conv2d op; one with
    a rectangular kernel, stride or padding, or dilated, which those ops cannot describe, as its
    implicit GEMM."""
    if len(in_shape) != 4:
        return None
    batch, cin, h, w = (int(x) for x in in_shape)
    out_channels = int(weight[0])
    k, s = _square(kernel), _square(stride)
    pad = -1 if padding == "same" else 0 if padding == "valid" else _square(padding)
    if None in (k, s, pad) or _square(dilation) != 1:
        return _implicit_gemm(in_shape, out_shape, weight, groups, False, dtype)
    if groups == cin == out_channels and cin > 1:
        return [Op.make("depthwise_conv2d", {"channels": cin, "kernel": k, "height": h,
                                             "width": w, "stride": s, "padding": pad},
                        dtype, batch)]
    return [Op.make("conv2d", {"in_channels": cin, "out_channels": out_channels, "kernel": k,
                               "height": h, "width": w, "stride": s, "padding": pad,
                               "groups": groups}, dtype, batch)]


def _implicit_gemm(in_shape: Sequence[int], out_shape: Sequence[int], weight: Sequence[int],
                   groups: int, transposed: bool, dtype: str) -> list[Op] | None:
    """A convolution of any dimensionality and kernel shape as the GEMM it runs, one per group:
    every output position by every output channel by the kernel's reach (a transposed one:
    every input position by every output channel and kernel tap, over the input channels)."""
    if len(in_shape) < 3 or len(out_shape) != len(in_shape) or len(weight) != len(in_shape):
        return None
    taps = _numel(weight[2:])
    if transposed:  # weight (in, out / groups, *kernel)
        m = _numel(in_shape) // int(in_shape[1])
        n, k = int(weight[1]) * taps, int(in_shape[1]) // groups
    else:  # weight (out, in / groups, *kernel)
        m = _numel(out_shape) // int(out_shape[1])
        n, k = int(weight[0]) // groups, int(weight[1]) * taps
    return [Op.make("gemm", {"m": m, "n": n, "k": k}, dtype, groups)]


def _einsum_ops(equation: str, arg_shapes: list[Sequence[int]], dtype: str) -> list[Op]:
    """torch.einsum: of one operand, a pass over it (a sum, a trace, a permutation); of more,
    one batched GEMM per pairwise contraction, in the order torch runs them
    (:func:`_einsum_path`): indices in both operands and the result are the batch, in one
    operand and the result M or N, in both operands only K."""
    inputs, _, output = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    if not output and "->" not in equation.replace(" ", ""):  # implicit: once-only indices
        letters = "".join(terms).replace(".", "")
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(terms) != len(arg_shapes):
        raise DecomposeError(f"einsum {equation!r} names {len(terms)} operands, and it was "
                             f"called with {len(arg_shapes)}")
    sizes: dict[str, int] = {}
    expanded = []
    for term, shape in zip(terms, arg_shapes, strict=True):
        if "..." in term:  # the dimensions it stands for, as letters of their own
            extra = len(shape) - len(term.replace("...", ""))
            term = term.replace("...", "".join(chr(0x100 + i) for i in range(extra)))
        if len(term) != len(shape):
            raise DecomposeError(f"einsum {equation!r}: {term} does not match a shape "
                                 f"{tuple(shape)}")
        sizes |= {c: int(n) for c, n in zip(term, shape, strict=True)}
        expanded.append(term)
    if "..." in output:
        output = output.replace("...", "".join(
            c for c in sorted(set("".join(expanded))) if ord(c) >= 0x100))
    if len(expanded) == 1:
        shape = arg_shapes[0]
        batch = int(shape[0]) if len(shape) > 1 else 1
        return [Op.make("elementwise", {"elements": max(1, _numel(shape) // batch)}, dtype,
                        batch)]

    def size(letters) -> int:
        return math.prod(sizes[c] for c in letters)

    ops, operands = [], list(expanded)
    for i, j in _einsum_path(equation, arg_shapes):
        a, b = operands[i], operands[j]
        rest = [t for n, t in enumerate(operands) if n not in (i, j)]
        keep = set(output).union(*rest)  # what the later contractions and the result need
        result = "".join(c for c in dict.fromkeys(a + b) if c in keep)
        sa, sb, sr = set(a), set(b), set(result)
        ops.append(Op.make("gemm", {"m": size(sa & sr - sb), "n": size(sb & sr - sa),
                                    "k": size(sa & sb - sr)}, dtype, size(sa & sb & sr)))
        operands = rest + [result]
    return ops


def _einsum_path(equation: str, arg_shapes: list[Sequence[int]]) -> list[tuple[int, int]]:
    """The pairs of operands torch.einsum contracts, in order, each result appended to the
    end of the operands left (opt_einsum's convention): of three or more operands, the path
    opt_einsum finds where torch uses it (installed and enabled), else left to right, as
    torch does without it."""
    import torch

    count = len(arg_shapes)
    backend = torch.backends.opt_einsum
    if count > 2 and backend.enabled and backend.is_available():
        path = backend.get_opt_einsum().contract_path(
            equation, *[tuple(int(x) for x in s) for s in arg_shapes], shapes=True,
            optimize=backend.strategy)[0]
        if any(len(pair) != 2 for pair in path):
            raise DecomposeError(f"einsum {equation!r}: opt_einsum's path {path} contracts "
                                 "other than pairs")
        return [(pair[0], pair[1]) for pair in path]
    # left to right: the first two, then the running result (last) with the next (first)
    return [(0, 1)] + [(count - 2 - n, 0) for n in range(count - 2)]


def _linear_ops(in_shape: Sequence[int], in_features: int, out_features: int, bias: bool,
                dtype: str) -> list[Op]:
    """A linear layer (nn.Linear or F.linear): every leading dimension after the batch is
    tokens."""
    batch = int(in_shape[0]) if len(in_shape) > 1 else 1
    tokens = _numel(in_shape) // (batch * in_features)
    return [Op.make("linear", {"in_features": in_features, "out_features": out_features,
                               "tokens": tokens, "bias": int(bias)}, dtype, batch)]


def _norm_ops(in_shape: Sequence[int], dtype: str) -> list[Op]:
    batch = int(in_shape[0]) if len(in_shape) else 1
    channels = int(in_shape[1]) if len(in_shape) > 1 else 1
    return [Op.make("norm", {"channels": channels, "elements": _numel(in_shape) // batch},
                    dtype, batch)]


def _gather_ops(out_shape: Sequence[int], dtype: str) -> list[Op]:
    batch = int(out_shape[0]) if len(out_shape) > 1 else 1
    return [Op.make("elementwise", {"elements": max(1, _numel(out_shape) // batch)}, dtype,
                    batch)]


def _bilinear_ops(x1: Sequence[int], weight: Sequence[int], dtype: str) -> list[Op]:
    """nn.Bilinear (or F.bilinear) with weight (out, in1, in2): every row of the first input
    projected to out x in2 values (one GEMM), then each row's out x in2 block multiplied by
    that row of the second input (a batched matrix-vector product), as torch contracts it."""
    out_features, in1, in2 = (int(x) for x in weight)
    batch = int(x1[0]) if len(x1) > 1 else 1
    tokens = max(1, _numel(x1) // (batch * in1))
    return [Op.make("linear", {"in_features": in1, "out_features": out_features * in2,
                               "tokens": tokens, "bias": 0}, dtype, batch),
            Op.make("gemm", {"m": out_features, "n": 1, "k": in2}, dtype, batch * tokens)]


def _embedding_bag_ops(ids: Sequence[int], out_shape: Sequence[int], dtype: str) -> list[Op]:
    """nn.EmbeddingBag (or F.embedding_bag): a row of the table per id, summed per bag; its
    traffic is every looked-up row (ids x embedding width), read once, and a row per bag
    written."""
    batch = int(out_shape[0]) if len(out_shape) > 1 else 1
    width = int(out_shape[-1]) if len(out_shape) else 1
    per_bag = max(1, _numel(ids) // batch)  # a row written per bag of these ids
    return [Op.make("elementwise", {"elements": per_bag * width, "reduce": per_bag}, dtype,
                    batch)]


def _pool_ops(in_shape: Sequence[int], out_shape: Sequence[int], window, is_max: bool,
              dtype: str) -> list[Op]:
    """A 2-D pool over an (N, C, H, W) input: its ``window`` (kernel, stride or None for the
    kernel's, padding) as given, or, for an adaptive one (``window`` None), the window that
    gives its output size."""
    n, c, h, w = (int(x) for x in in_shape)
    if window is None:
        k = s = max(1, h // int(out_shape[2]))
        pad = 0
    else:
        kernel, stride, padding = window
        k, pad = _square(kernel), _square(padding)
        s = _square(stride if stride is not None else kernel)
        if None in (k, s, pad):
            raise DecomposeError(f"a rectangular window (kernel {kernel}, stride {stride}, "
                                 f"padding {padding}) is not covered")
    return [Op.make("pool", {"channels": c, "kernel": k, "height": h, "width": w, "stride": s,
                             "padding": pad, "max": int(is_max)}, dtype, n)]


def _reduction(in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """How many times fewer elements a reduction writes than it reads (1 for a sort)."""
    return max(1, _numel(in_shape) // max(1, _numel(out_shape)))


def _matmul_ops(a: Sequence[int], b: Sequence[int], out_shape: Sequence[int],
                dtype: str) -> list[Op]:
    """torch.matmul and its 2-D / batched forms as the GEMMs torch runs: a vector operand is a
    matrix of one row (on the left) or one column (on the right); a batch of matrices times one
    matrix is folded into one GEMM of all their rows (as torch does: ``x @ w`` over a
    (batch, tokens, features) ``x`` is one GEMM of batch x tokens rows), one matrix times a
    batch is the same transposed; else one GEMM per leading index."""
    if len(a) >= 3 and len(b) <= 2:
        k = int(a[-1])
        n = int(b[-1]) if len(b) == 2 else 1
        return [Op.make("gemm", {"m": _numel(a) // k, "n": n, "k": k}, dtype)]
    if len(a) <= 2 and len(b) >= 3:  # (b^T a^T)^T: b's columns of every batch are the rows
        k = int(b[-2])
        m = int(a[-2]) if len(a) == 2 else 1
        return [Op.make("gemm", {"m": _numel(b) // k, "n": m, "k": k}, dtype)]
    a = (1, int(a[0])) if len(a) == 1 else a
    b = (int(b[0]), 1) if len(b) == 1 else b
    m, k, n = int(a[-2]), int(a[-1]), int(b[-1])
    return [Op.make("gemm", {"m": m, "n": n, "k": k}, dtype,
                    max(1, _numel(out_shape) // (m * n)))]


def _tensordot_ops(a: Sequence[int], b: Sequence[int], out_shape: Sequence[int],
                   dtype: str) -> list[Op] | None:
    """torch.tensordot: one GEMM whose K is the contracted dimensions' product, read from the
    shapes (the output holds each operand's other dimensions: |a| |b| / |out| = K^2)."""
    k = math.isqrt(max(1, _numel(a) * _numel(b) // max(1, _numel(out_shape))))
    if k < 1 or _numel(a) % k or _numel(b) % k:
        return None
    return [Op.make("gemm", {"m": _numel(a) // k, "n": _numel(b) // k, "k": k}, dtype)]


def _cdist_ops(x1: Sequence[int], x2: Sequence[int], out_shape: Sequence[int], dtype: str,
               options: dict) -> list[Op] | None:
    """torch.cdist: Euclidean distances between more than 25 points a side (or where
    ``compute_mode`` asks) as torch computes them, a GEMM of the points' products and a pass
    over the distances; other p, and fewer points, by a kernel of its own over every pair's
    every coordinate."""
    if len(x1) < 2 or len(x2) < 2:
        return None
    rows, cols, width = int(x1[-2]), int(x2[-2]), int(x1[-1])
    batch = max(1, _numel(out_shape) // max(1, rows * cols))
    mode = options.get("compute_mode") or "use_mm_for_euclid_dist_if_necessary"
    by_gemm = float(options.get("p", 2.0)) == 2.0 and (
        mode == "use_mm_for_euclid_dist" or
        (mode == "use_mm_for_euclid_dist_if_necessary" and max(rows, cols) > 25))
    if not by_gemm:
        return [Op.make("elementwise", {"elements": rows * cols * width, "inputs": 2}, dtype,
                        batch)]
    return [Op.make("gemm", {"m": rows, "n": cols, "k": width}, dtype, batch),
            Op.make("elementwise", {"elements": rows * cols}, dtype, batch)]


def module_kind(mod) -> str:
    """The mapped class a module runs as: its own, or the nearest base class in
    :data:`MAPPED_MODULES` whose ``forward`` it keeps (``NonDynamicallyQuantizableLinear`` is a
    Linear; a subclass with a forward of its own is its own kind, since it may compute anything).
    Only torch.nn's own classes are mapped: a class of the same name elsewhere (torch.ao's
    quantized ``Linear``, which multiplies int8, or a user's own ``Linear``) is its qualified
    name, of no mapped kind."""
    cls = type(mod)
    for base in cls.__mro__:
        if base.__name__ in MAPPED_MODULES and base.__module__.startswith("torch.nn.") and \
                getattr(base, "forward", None) is cls.forward:
            return base.__name__
    name = cls.__name__
    return f"{cls.__module__}.{name}" if name in MAPPED_MODULES else name


def module_label(name: str, mod) -> str:
    """How a module call is named to the user: its path and class (qualified where the class
    only shares a mapped class's name, as torch.ao's quantized ``Linear`` does)."""
    kind = module_kind(mod)
    return f"{name} ({kind if '.' in kind else type(mod).__name__})"


def _attention_ops(mod, query: Sequence[int], key: Sequence[int], dtype: str) -> list[Op]:
    """nn.MultiheadAttention: the query, key and value projections, the attention itself and
    the output projection (keys and values may be another sequence, as in cross-attention)."""
    def batch_and_length(shape):
        if len(shape) == 2:  # unbatched (L, E)
            return 1, int(shape[0])
        return (int(shape[0]), int(shape[1])) if mod.batch_first else (int(shape[1]),
                                                                        int(shape[0]))

    e, heads = mod.embed_dim, mod.num_heads
    batch, seq = batch_and_length(query)
    kv = batch_and_length(key)[1]

    bias = int(mod.in_proj_bias is not None)

    def proj(in_features: int, tokens: int) -> Op:
        return Op.make("linear", {"in_features": in_features, "out_features": e,
                                  "tokens": tokens, "bias": bias}, dtype, batch)

    return [proj(e, seq), proj(mod.kdim, kv), proj(mod.vdim, kv),
            Op.make("attention", {"seq_len": seq, "heads": heads, "head_dim": e // heads,
                                  **({"kv_len": kv} if kv != seq else {})}, dtype, batch),
            proj(e, seq)]


def _recurrent_ops(mod, in_shape: Sequence[int], dtype: str) -> list[tuple[str, Op]]:
    """nn.RNN, nn.LSTM or nn.GRU over a sequence: one ``recurrent`` op per layer (``l0``,
    ``l1``, ...), both directions in it where bidirectional, as cuDNN and oneDNN run a layer
    (collectors.ops.op_gemms and op_parts say what it computes: the input projection of all
    steps at once, then each step's recurrent projection and gate arithmetic)."""
    if len(in_shape) not in (2, 3):
        raise DecomposeError(f"an input of shape {tuple(in_shape)} is not covered (a "
                             f"sequence is (length, features) or 3-D; a packed one is not)")
    if len(in_shape) == 2:
        batch, steps = 1, int(in_shape[0])
    else:
        batch, steps = (int(in_shape[0]), int(in_shape[1])) if mod.batch_first else (
            int(in_shape[1]), int(in_shape[0]))
    proj = getattr(mod, "proj_size", 0)
    directions = 2 if mod.bidirectional else 1
    return [(f"l{layer}", Op.make("recurrent", {
        "input_size": mod.input_size if layer == 0 else (proj or mod.hidden_size) * directions,
        "hidden": mod.hidden_size, "steps": steps, "gates": RECURRENT_GATES[mod.mode],
        "directions": directions, "proj": proj, "bias": int(mod.bias)}, dtype, batch))
        for layer in range(mod.num_layers)]


def _cell_ops(mod, kind: str, in_shape: Sequence[int], dtype: str) -> list[tuple[str, Op]]:
    """nn.RNNCell, nn.LSTMCell or nn.GRUCell: one step, its input and hidden state each
    projected, then the gate arithmetic."""
    batch = int(in_shape[0]) if len(in_shape) == 2 else 1
    gates = RECURRENT_CELLS[kind] * mod.hidden_size
    bias = int(mod.bias)

    def linear(in_features: int) -> Op:
        return Op.make("linear", {"in_features": in_features, "out_features": gates,
                                  "tokens": 1, "bias": bias}, dtype, batch)

    return [("ih", linear(mod.input_size)), ("hh", linear(mod.hidden_size)),
            ("cell", Op.make("elementwise", {"elements": gates, "inputs": 2}, dtype, batch))]


def module_op(mod, in_shape: Sequence[int], out_shape: Sequence[int], dtype: str,
              key_shape: Sequence[int] | None = None) -> list[Op] | list[tuple[str, Op]] | None:
    """Ops of one module call; [] for free ones, None when unsupported; (part name, op) pairs
    for a module that runs several ops of its own naming (a stacked recurrent layer's layers).
    ``key_shape``: the second tensor argument's shape, where there is one (an attention's
    keys)."""
    kind = module_kind(mod)
    batch = int(in_shape[0]) if len(in_shape) else 1
    if kind in FREE:
        return []
    if kind == "Conv2d":
        return _conv_ops(in_shape, out_shape, mod.weight.shape, mod.kernel_size, mod.stride,
                         mod.padding, mod.dilation, mod.groups, dtype)
    if kind in IMPLICIT_GEMM_MODULES:
        return _implicit_gemm(in_shape, out_shape, mod.weight.shape, mod.groups,
                              kind.startswith("ConvTranspose"), dtype)
    if kind == "Linear":
        return _linear_ops(in_shape, mod.in_features, mod.out_features, mod.bias is not None,
                           dtype)
    if kind in NORM_MODULES:
        return _norm_ops(in_shape, dtype)
    if kind in POOL_MODULES:
        if len(in_shape) != 4:
            return None
        window = None if kind.startswith("Adaptive") else (mod.kernel_size, mod.stride,
                                                            mod.padding)
        return _pool_ops(in_shape, out_shape, window, "Max" in kind, dtype)
    if kind in ELEMENTWISE_MODULES:
        return [Op.make("elementwise", {"elements": _numel(in_shape) // batch,
                                        "in_place": int(bool(getattr(mod, "inplace", False)))},
                        dtype, batch)]
    if kind in OTHER_POOL_MODULES or kind in PAIR_REDUCTION_MODULES:
        return [Op.make("elementwise", {"elements": _numel(in_shape) // batch,
                                        "inputs": 2 if kind in PAIR_REDUCTION_MODULES else 1,
                                        "reduce": _reduction(in_shape, out_shape)},
                        dtype, batch)]
    if kind in GATHER_MODULES:
        return _gather_ops(out_shape, dtype)
    if kind == "MultiheadAttention":
        return _attention_ops(mod, in_shape, key_shape or in_shape, dtype)
    if kind == "Bilinear":
        return _bilinear_ops(in_shape, mod.weight.shape, dtype)
    if kind == "EmbeddingBag":
        return _embedding_bag_ops(in_shape, out_shape, dtype)
    if kind in RECURRENT_MODULES:
        return _recurrent_ops(mod, in_shape, dtype)
    if kind in RECURRENT_CELLS:
        return _cell_ops(mod, kind, in_shape, dtype)
    return None


def function_op(name: str, arg_shapes: list[Sequence[int]], out_shape: Sequence[int],
                dtype: str, options: dict | None = None) -> list[Op] | None:
    """Ops of one functional call (torch.* / F.* / tensor method). ``arg_shapes``: the shapes of
    its tensor arguments in order; ``options``: its other arguments by name, where they matter
    (a convolution's stride, padding, dilation, groups)."""
    options = options or {}
    in_place = _in_place(name, options)
    name = name.strip("_")  # add_ is add; __add__ is add
    if name in FREE:
        return []
    if name == "einsum":
        return _einsum_ops(str(options.get("equation", "")), arg_shapes, dtype)
    if name == "linear" and len(arg_shapes) >= 2 and len(arg_shapes[1]) == 2:
        out_features, in_features = (int(x) for x in arg_shapes[1])
        return _linear_ops(arg_shapes[0], in_features, out_features, len(arg_shapes) > 2, dtype)
    if name == "conv2d" and len(arg_shapes) >= 2 and len(arg_shapes[1]) == 4:
        weight = arg_shapes[1]
        return _conv_ops(arg_shapes[0], out_shape, weight, tuple(int(x) for x in weight[2:]),
                         options.get("stride", 1), options.get("padding", 0),
                         options.get("dilation", 1), int(options.get("groups", 1)), dtype)
    if name in IMPLICIT_GEMM_FUNCS and len(arg_shapes) >= 2:
        return _implicit_gemm(arg_shapes[0], out_shape, arg_shapes[1],
                              int(options.get("groups", 1)), name.startswith("conv_transpose"),
                              dtype)
    if name in NORM_FUNCS and arg_shapes:
        return _norm_ops(arg_shapes[0], dtype)
    if name in ("addmm", "baddbmm") and len(arg_shapes) >= 3:
        # bias + a @ b: the bias is added in the GEMM's epilogue
        a, b = arg_shapes[1], arg_shapes[2]
        lead = int(a[0]) if len(a) == 3 else 1
        return [Op.make("gemm", {"m": int(a[-2]), "n": int(b[-1]), "k": int(a[-1])}, dtype,
                        lead)]
    if name in ("matmul", "bmm", "mm", "mv", "dot") and len(arg_shapes) >= 2:
        a, b = arg_shapes[0], arg_shapes[1]
        if not (len(a) and len(b)):
            return None
        return _matmul_ops(a, b, out_shape, dtype)
    if name == "tensordot" and len(arg_shapes) >= 2:
        return _tensordot_ops(arg_shapes[0], arg_shapes[1], out_shape, dtype)
    if name == "cdist" and len(arg_shapes) >= 2:
        return _cdist_ops(arg_shapes[0], arg_shapes[1], out_shape, dtype, options)
    if name == "bilinear" and len(arg_shapes) >= 3 and len(arg_shapes[2]) == 3:
        return _bilinear_ops(arg_shapes[0], arg_shapes[2], dtype)
    if name == "embedding_bag" and arg_shapes:
        return _embedding_bag_ops(arg_shapes[0], out_shape, dtype)
    if name == "unfold" and arg_shapes and len(out_shape) > len(arg_shapes[0]):
        return []  # Tensor.unfold: a view of sliding windows (F.unfold copies them out)
    if name == "scaled_dot_product_attention" and len(arg_shapes) >= 2 and \
            len(arg_shapes[0]) >= 3:
        # (..., heads, seq, dim), or (batch, seq, dim) for one head
        q, kv = arg_shapes[0], arg_shapes[1]
        heads = int(q[-3]) if len(q) > 3 else 1
        batch = _numel(q[:-3]) if len(q) > 3 else int(q[0])
        # kv_len only where it differs, as nn.MultiheadAttention's ops and the layer sweeps
        # give it: one attention, one op, however it was written
        kv_len = int(kv[-2]) if int(kv[-2]) != int(q[-2]) else 0
        return [Op.make("attention", {"seq_len": int(q[-2]), "heads": heads,
                                      "head_dim": int(q[-1]), "kv_len": kv_len,
                                      "causal": int(bool(options.get("is_causal")))},
                        dtype, batch)]
    if name in ("adaptive_avg_pool2d", "avg_pool2d", "max_pool2d") and len(arg_shapes[0]) == 4:
        window = ((options["kernel_size"], options.get("stride"), options.get("padding", 0))
                  if "kernel_size" in options else None)  # adaptive ones have none
        return _pool_ops(arg_shapes[0], out_shape, window, "max" in name, dtype)
    if name in GATHER_FUNCS and len(out_shape):
        return _gather_ops(out_shape, dtype)
    if name in ELEMENTWISE_FUNCS:
        # A reduction reads its whole input: that is its traffic, not its small output.
        reduces = name in REDUCTIONS and arg_shapes and len(arg_shapes[0])
        shape = arg_shapes[0] if reduces else out_shape if len(out_shape) else (
            arg_shapes[0] if arg_shapes else (1,))
        batch = int(shape[0]) if len(shape) else 1
        inputs = max(1, len([s for s in arg_shapes if len(s)]))
        return [Op.make("elementwise", {"elements": max(1, _numel(shape) // batch),
                                        "inputs": inputs,
                                        "reduce": _reduction(shape, out_shape) if reduces else 1,
                                        "in_place": int(in_place and not reduces)},
                        dtype, batch)]
    return None


# Augmented assignments (``x += y`` calls ``__iadd__``) write into their left operand.
_AUGMENTED = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior",
              "ixor", "ilshift", "irshift", "imatmul"}


def _in_place(name: str, options: dict) -> bool:
    """Whether a call writes its result into its first argument rather than a new tensor:
    ``add_`` (one trailing underscore, not a dunder), ``__iadd__``, or ``inplace=True``."""
    trailing = name.endswith("_") and not name.endswith("__")
    return trailing or name.strip("_") in _AUGMENTED or bool(options.get("inplace"))


def call_options(name: str, args, kwargs, is_tensor) -> dict:
    """A function call's arguments that are not tensors, by name: those after the first three
    that :data:`POSITIONAL_OPTIONS` names, an einsum's equation, and its keywords."""
    options = dict(zip(POSITIONAL_OPTIONS.get(name, ()), args[3:], strict=False))
    if name == "cdist":  # (x1, x2, p, compute_mode)
        options |= dict(zip(("p", "compute_mode"), args[2:], strict=False))
    if name in ("avg_pool2d", "max_pool2d"):  # (input, kernel_size, stride, padding, ...)
        options |= dict(zip(("kernel_size", "stride", "padding"), args[1:], strict=False))
    if name == "einsum" and args and isinstance(args[0], str):
        options["equation"] = args[0]
    elif name == "einsum" and len(args) > 1 and is_tensor(args[0]):
        options["equation"] = _sublist_equation(args)
    return options | {k: v for k, v in kwargs.items() if not is_tensor(v)}


def _sublist_equation(args) -> str:
    """The equation of einsum's sublist form (``einsum(a, [0, 1], b, [1, 2], [0, 2])``), as
    torch writes it: subscripts 0-25 are A-Z, 26-51 a-z."""
    def letters(sublist) -> str:
        return "".join("..." if n is Ellipsis else chr(ord("A") + n) if n < 26
                       else chr(ord("a") + n - 26) for n in sublist)

    equation = ",".join(letters(sub) for sub in args[1::2])
    return equation + ("->" + letters(args[-1]) if len(args) % 2 else "")
