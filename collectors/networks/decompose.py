"""A torch ``nn.Module`` and an input shape -> the list of ops it runs, with shapes.

torch.fx traces the module and propagates shapes through the graph; a module fx cannot trace
(data-dependent control flow) falls back to forward hooks on its leaf modules, which see every
module but no functional op between them. Every op is a :class:`collectors.ops.Op`. Modules and
functions with no mapping are reported by name in ``Decomposition.unsupported``, never silently
dropped; view-only ops (reshape, flatten, getitem, dropout at eval, ...) cost nothing and are
skipped on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from collectors.ops import Op, op_flops

# Calls that only change a tensor's view or metadata: no kernel worth costing.
FREE = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "getitem",
        "getattr", "squeeze", "unsqueeze", "expand", "split", "chunk", "t", "dim", "type_as",
        "to", "float", "clone", "detach", "Identity", "Dropout", "Flatten", "dropout"}
ELEMENTWISE_MODULES = {"ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish",
                       "Hardsigmoid", "LeakyReLU", "ELU", "Mish", "Softmax"}
ELEMENTWISE_FUNCS = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "add",
                     "mul", "sub", "div", "softmax", "iadd", "imul", "truediv", "cat", "exp",
                     "leaky_relu", "elu", "hardsigmoid", "mean", "sum", "neg", "pow", "sqrt"}
NORM_MODULES = {"BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm2d"}
POOL_MODULES = {"MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"}


class DecomposeError(ValueError):
    pass


@dataclass
class Decomposition:
    ops: list[tuple[str, Op]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    method: str = "fx"

    @property
    def flops(self) -> int:
        return sum(op_flops(op) for _, op in self.ops)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, op in self.ops:
            out[op.kind] = out.get(op.kind, 0) + 1
        return out


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


def _dtype(dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64"}.get(dtype, "fp32")


def _pair(v) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise DecomposeError(f"non-square kernel/stride/padding {v} is not supported")
        return int(v[0])
    return int(v)


def module_op(mod, in_shape: Sequence[int], out_shape: Sequence[int], dtype: str
              ) -> list[Op] | None:
    """Ops of one leaf module call; [] for free ones, None when unsupported."""
    kind = type(mod).__name__
    batch = int(in_shape[0]) if len(in_shape) else 1
    if kind in FREE:
        return []
    if kind == "Conv2d":
        if len(in_shape) != 4:
            return None
        _, cin, h, w = (int(x) for x in in_shape)
        k, s = _pair(mod.kernel_size), _pair(mod.stride)
        pad = mod.padding
        padding = -1 if pad == "same" else _pair(pad)
        if _pair(mod.dilation) != 1:
            return None
        if mod.groups == cin == mod.out_channels and cin > 1:
            return [Op.make("depthwise_conv2d", {"channels": cin, "kernel": k, "height": h,
                                                 "width": w, "stride": s, "padding": padding},
                            dtype, batch)]
        return [Op.make("conv2d", {"in_channels": cin, "out_channels": mod.out_channels,
                                   "kernel": k, "height": h, "width": w, "stride": s,
                                   "padding": padding, "groups": mod.groups}, dtype, batch)]
    if kind == "Linear":
        tokens = _numel(in_shape) // (batch * mod.in_features)
        return [Op.make("linear", {"in_features": mod.in_features,
                                   "out_features": mod.out_features, "tokens": tokens,
                                   "bias": int(mod.bias is not None)}, dtype, batch)]
    if kind in NORM_MODULES:
        channels = int(in_shape[1]) if len(in_shape) > 1 else 1
        return [Op.make("norm", {"channels": channels, "elements": _numel(in_shape) // batch},
                        dtype, batch)]
    if kind in POOL_MODULES:
        if len(in_shape) != 4:
            return None
        _, c, h, w = (int(x) for x in in_shape)
        if kind.startswith("Adaptive"):
            ho = int(out_shape[2])
            k = s = max(1, h // ho)
            pad = 0
        else:
            k, pad = _pair(mod.kernel_size), _pair(mod.padding)
            s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        return [Op.make("pool", {"channels": c, "kernel": k, "height": h, "width": w,
                                 "stride": s, "padding": pad}, dtype, batch)]
    if kind in ELEMENTWISE_MODULES:
        return [Op.make("elementwise", {"elements": _numel(in_shape) // batch}, dtype, batch)]
    if kind == "MultiheadAttention":
        e, heads = mod.embed_dim, mod.num_heads
        if mod.batch_first:
            batch, seq = int(in_shape[0]), int(in_shape[1])
        else:
            seq, batch = int(in_shape[0]), int(in_shape[1])
        proj = Op.make("linear", {"in_features": e, "out_features": e, "tokens": seq}, dtype,
                       batch)
        return [proj, proj, proj,
                Op.make("attention", {"seq_len": seq, "heads": heads, "head_dim": e // heads},
                        dtype, batch),
                proj]
    return None


def function_op(name: str, arg_shapes: list[Sequence[int]], out_shape: Sequence[int],
                dtype: str) -> list[Op] | None:
    """Ops of one functional call (torch.* / F.* / tensor method)."""
    if name in FREE:
        return []
    if name in ("matmul", "bmm", "mm") and len(arg_shapes) >= 2:
        a, b = arg_shapes[0], arg_shapes[1]
        if len(a) < 2 or len(b) < 2:
            return None
        m, k, n = int(a[-2]), int(a[-1]), int(b[-1])
        lead = _numel(out_shape[:-2]) if len(out_shape) > 2 else 1
        return [Op.make("gemm", {"m": m, "n": n, "k": k}, dtype, lead)]
    if name == "scaled_dot_product_attention" and len(arg_shapes) >= 2:
        q, kv = arg_shapes[0], arg_shapes[1]
        batch, heads, seq, dim = (int(x) for x in q)
        return [Op.make("attention", {"seq_len": seq, "heads": heads, "head_dim": dim,
                                      "kv_len": int(kv[-2])}, dtype, batch)]
    if name in ("adaptive_avg_pool2d", "avg_pool2d", "max_pool2d") and len(arg_shapes[0]) == 4:
        n, c, h, w = (int(x) for x in arg_shapes[0])
        k = max(1, h // int(out_shape[2]))
        return [Op.make("pool", {"channels": c, "kernel": k, "height": h, "width": w,
                                 "stride": k}, dtype, n)]
    if name in ELEMENTWISE_FUNCS:
        shape = out_shape if len(out_shape) else (arg_shapes[0] if arg_shapes else (1,))
        batch = int(shape[0]) if len(shape) else 1
        inputs = max(1, len([s for s in arg_shapes if len(s)]))
        return [Op.make("elementwise", {"elements": max(1, _numel(shape) // batch),
                                        "inputs": inputs}, dtype, batch)]
    return None


def decompose(model, input_shape: Sequence[int], dtype=None) -> Decomposition:
    """Ops of ``model`` on an input of ``input_shape`` (first dimension: batch)."""
    import torch

    model = model.eval()
    dtype = dtype or next((p.dtype for p in model.parameters()), torch.float32)
    example = torch.zeros(*input_shape, dtype=dtype)
    with torch.no_grad():
        # A model that cannot run on this input fails here with its own error; inside fx's
        # shape propagation it would also print a traceback of its own.
        model(example)
    try:
        return _decompose_fx(model, example)
    except DecomposeError:
        raise
    except Exception:  # fx cannot trace it: data-dependent control flow and the like
        return _decompose_hooks(model, example)


def _shape(node) -> tuple[tuple[int, ...], str]:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    if meta is None or not hasattr(meta, "shape"):
        return (), "fp32"
    return tuple(int(x) for x in meta.shape), _dtype(meta.dtype)


def _decompose_fx(model, example) -> Decomposition:
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    out = Decomposition(method="fx")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        out_shape, dtype = _shape(node)
        args = [a for a in node.args if hasattr(a, "meta")]
        arg_shapes = [_shape(a)[0] for a in args]
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            ops = module_op(mod, arg_shapes[0] if arg_shapes else (), out_shape, dtype)
            label = f"{node.target} ({type(mod).__name__})"
        else:
            name = getattr(node.target, "__name__", str(node.target))
            ops = function_op(name, arg_shapes, out_shape, dtype)
            label = f"{node.name} ({name})"
        if ops is None:
            out.unsupported.append(label)
            continue
        out.ops += [(str(node.target) if node.op == "call_module" else node.name, op)
                    for op in ops]
    return out


def _decompose_hooks(model, example) -> Decomposition:
    import torch

    out = Decomposition(method="forward hooks (functional ops between modules not seen)")
    handles = []

    def hook(name):
        def fn(mod, inputs, output):
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            if not tensors or not isinstance(output, torch.Tensor):
                out.unsupported.append(f"{name} ({type(mod).__name__})")
                return
            ops = module_op(mod, tuple(tensors[0].shape), tuple(output.shape),
                            _dtype(tensors[0].dtype))
            if ops is None:
                out.unsupported.append(f"{name} ({type(mod).__name__})")
            else:
                out.ops += [(name, op) for op in ops]
        return fn

    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            handles.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return out
