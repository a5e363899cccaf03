"""A torch ``nn.Module`` and an input shape -> the list of ops it runs, with shapes.

torch.fx traces the module and propagates shapes through the graph; a module fx cannot trace
(data-dependent control flow, as in ``nn.TransformerEncoderLayer``) is read instead from the
calls one forward pass makes (module hooks and a TorchFunctionMode), which follow the one path
its control flow takes on the example input (``Decomposition.note`` says so, for the user to be
told). Every op is a :class:`collectors.ops.Op`. Modules and functions with no mapping are
reported by name in ``Decomposition.unsupported``, never silently dropped; view-only ops
(reshape, flatten, getitem, dropout at eval, ...) cost nothing and are skipped on purpose.
What each call costs is :mod:`collectors.networks.op_map`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from collectors.networks.op_map import (
    MAPPED_MODULES,
    PART_NAMES,
    DecomposeError,
    call_options,
    dtype_name,
    function_op,
    module_kind,
    module_label,
    module_op,
)
from collectors.ops import Op, op_flops

CALLS_METHOD = "calls of one forward pass (fx could not trace it)"


@dataclass
class Decomposition:
    ops: list[tuple[str, Op]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    method: str = "fx"
    # Module path ("" for the whole model) -> why fx could not trace it: its ops were read from
    # the calls of one forward pass instead.
    untraced: dict[str, str] = field(default_factory=dict)
    # Calls that ran on (or made) a tensor of no elements on the example input: sizes that
    # depend on the data (a boolean mask that selects nothing), costed as nothing.
    empty: list[str] = field(default_factory=list)
    compiled: bool = False  # the model was a torch.compile wrapper: its eager model's ops

    @property
    def note(self) -> str | None:
        """What a user must know about how complete the ops are; None when fx traced it all
        and every call ran on a tensor of some elements."""
        notes = []
        if self.untraced:
            where = "the model" if "" in self.untraced else ", ".join(self.untraced)
            notes.append(f"torch.fx could not trace {where} ({next(iter(self.untraced.values()))}"
                         "), so its ops were read from the calls of one forward pass on the given "
                         "input: where its control flow depends on the data, other inputs may "
                         "run other ops")
        if self.empty:
            n = len(self.empty)
            shown = ", ".join(self.empty[:3]) + (", ..." if n > 3 else "")
            notes.append(f"{n} call{'s' if n != 1 else ''} ran on empty tensors on the example "
                         f"input, costed as nothing: {shown}; their sizes depend on the data (a "
                         "boolean mask, nonzero), and other inputs may select more")
        if self.compiled:
            notes.append("a torch.compile'd model: these are the ops of the eager model it "
                         "wraps, which its compiled kernels may fuse (a measurement times the "
                         "compiled one)")
        return "; ".join(notes) or None

    def merge(self, prefix: str, inner: Decomposition) -> None:
        """Add the decomposition of the submodule at ``prefix``."""
        self.ops += [(f"{prefix}.{name}", op) for name, op in inner.ops]
        self.unsupported += [f"{prefix}.{label}" for label in inner.unsupported]
        self.untraced |= {f"{prefix}.{path}" if path else prefix: why
                          for path, why in inner.untraced.items()}
        self.empty += [f"{prefix}.{label}" for label in inner.empty]

    @property
    def flops(self) -> int:
        return sum(op_flops(op) for _, op in self.ops)

    def record(self, name: str, label: str, kind: str, ops_of, *args,
               shapes: Sequence[Sequence[int]] = ()) -> None:
        """Add the ops ``ops_of(*args)`` gives for one call, or list the call as not costed
        (with the reason, where its kind is mapped but not this form of it), or as empty where
        one of its tensors' ``shapes`` holds no element."""
        if any(0 in shape for shape in shapes):
            try:  # of no kind costed at all (None), free ([]), or costed but of no elements
                ops = ops_of(*args)
            except Exception:  # a mapped kind, whose sizes divide by the empty ones
                ops = [None]
            if ops is None:
                self.unsupported.append(label)
            elif ops:
                self.empty.append(label)
            return
        try:
            ops = ops_of(*args)
        except DecomposeError as exc:
            self.unsupported.append(f"{label}: {exc}")
            return
        if ops is None:
            self.unsupported.append(label)
        else:
            self.ops += _named(name, kind, ops)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, op in self.ops:
            out[op.kind] = out.get(op.kind, 0) + 1
        return out


def torch_dtype(name: str, field: str = "dtype"):
    """The torch dtype a model is held in to run as ``name`` (fp32, fp16 or bf16); OpError
    naming ``field`` otherwise (tf32 is a way to multiply fp32, not a dtype to hold)."""
    import torch

    from collectors.ops import OpError, check_dtype

    cast = check_dtype(name, field)
    if cast.name == "tf32":
        raise OpError(field, "tf32: a model's parameters are held in fp32; give fp32")
    return getattr(torch, cast.storage)


def parameter_dtype(model):
    """The torch dtype a model computes in: its first floating-point parameter's (float32 for
    a model without any); a float input is made of it."""
    import torch

    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def input_shapes(shape) -> list[tuple[int, ...]]:
    """The shape of each input of a model: ``shape`` is one input's (batch first), or a
    sequence of shapes, one per tensor, for a model that takes several."""
    if len(shape) and isinstance(shape[0], list | tuple):
        return [tuple(int(x) for x in one) for one in shape]
    return [tuple(int(x) for x in shape)]


INPUT_KINDS = ("float", "int64")


def input_kinds(input_dtype: str, count: int) -> list[str]:
    """Per input, ``float`` or ``int64`` (token ids): ``input_dtype`` names one for all of
    ``count`` inputs, or one per input joined by '+' (``int64+float``); ValueError otherwise."""
    kinds = input_dtype.split("+")
    if len(kinds) == 1:
        kinds *= count
    bad = [k for k in kinds if k not in INPUT_KINDS]
    if bad or len(kinds) != count:
        raise ValueError(f"{input_dtype!r}: expected float or int64, or one of them per input "
                         f"joined by '+' ({count} input{'s' if count != 1 else ''})")
    return kinds


def example_inputs(shape, dtype, input_dtype: str = "float", device=None,
                   random: bool = False, ids_below: int | None = None) -> list:
    """A model's inputs (:func:`input_shapes`, :func:`input_kinds`): float tensors of
    torch ``dtype`` (zeros, or with ``random`` normal values); token ids where int64 (all 0, or
    with ``random`` and ``ids_below`` drawn uniformly from 1 up to below it: 0 is often padding,
    which a model may mask or skip). Random values come from a fixed seed, so that a
    decomposition and a measurement of one model see the same inputs."""
    import torch

    seeded = torch.Generator().manual_seed(0)

    def ids(one):
        if not (random and ids_below and ids_below > 1):
            return torch.zeros(*one, dtype=torch.int64, device=device)
        return torch.randint(1, ids_below, one, generator=seeded).to(device)

    def floats(one):
        if not random:
            return torch.zeros(*one, dtype=dtype, device=device)
        return torch.randn(*one, generator=seeded, dtype=dtype, device="cpu").to(device)

    shapes = input_shapes(shape)
    return [ids(one) if kind == "int64" else floats(one)
            for one, kind in zip(shapes, input_kinds(input_dtype, len(shapes)), strict=True)]


def token_range(model) -> int | None:
    """Token ids valid for every embedding table of ``model``: the smallest
    ``nn.Embedding`` / ``nn.EmbeddingBag`` size; None where it has none."""
    sizes = [int(m.num_embeddings) for m in model.modules()
             if module_kind(m) in ("Embedding", "EmbeddingBag")]
    return min(sizes) if sizes else None


def on_meta_device(model) -> bool:
    """Whether ``model`` holds its parameters or buffers on torch's meta device (shapes and
    dtypes without data, as a model too large for this machine is built to inspect it)."""
    import itertools

    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def decompose(model, input_shape, dtype=None, input_dtype: str = "float") -> Decomposition:
    """Ops of ``model`` on an input of ``input_shape`` (first dimension: batch; or one shape
    per input, :func:`input_shapes`): of ``dtype`` (default: the model's parameters'), or
    token ids where ``input_dtype`` is "int64" (:func:`input_kinds`), run on the values a
    measurement runs it on (:func:`example_inputs` from a fixed seed). A model on the
    meta device (:func:`on_meta_device`) is run there, tensors it makes in its forward too: its
    ops come out as on the CPU, with no memory for its weights."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise DecomposeError("a TorchScript module (torch.jit.script or torch.jit.trace) hides "
                             "its layers from torch.fx and from module hooks; give the "
                             "nn.Module it was made from")
    compiled = compiled_wrapper(model)
    if compiled:  # decomposed as the model it wraps, without compiling it (tens of seconds)
        model = model._orig_mod
    if on_meta_device(model):
        try:
            with torch.device("meta"):
                out = _decompose(model, input_shape, dtype, input_dtype, on_meta=True)
        except NotImplementedError as exc:  # a call whose sizes need values (nonzero, a mask)
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise DecomposeError(f"on the meta device, which holds no values, its forward "
                                 f"needs some ({first}): its sizes depend on the data; build "
                                 "it on the CPU to decompose it") from None
    else:
        out = _decompose(model, input_shape, dtype, input_dtype, on_meta=False)
    out.compiled = compiled
    return out


def compiled_wrapper(model) -> bool:
    """Whether ``model`` is what ``torch.compile`` returns for a module (an OptimizedModule,
    whose ``_orig_mod`` is the module), told without importing torch._dynamo."""
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


def _decompose(model, input_shape, dtype, input_dtype: str, on_meta: bool) -> Decomposition:
    import torch

    model = model.eval()
    dtype = dtype or parameter_dtype(model)
    # the inputs a measurement runs it on (sweep.forward_pass): where its sizes or control flow
    # depend on the data, the ops are those measured; on the meta device, of no values, zeros
    examples = example_inputs(input_shape, dtype, input_dtype, random=not on_meta,
                              ids_below=token_range(model))
    autocast = _autocast_seen()
    with torch.no_grad(), autocast:
        # A model that cannot run on this input fails here with its own error; inside fx's
        # shape propagation it would also print a traceback of its own.
        output = model(*examples)
    kind = module_kind(model)
    if kind in MAPPED_MODULES:  # one layer: costed as such, as it is inside a model
        out = Decomposition(method="module")
        output = output[0] if isinstance(output, tuple) else output
        name = type(model).__name__
        out.record(name, name, kind, module_op, model, tuple(examples[0].shape),
                   tuple(output.shape), _call_dtype(output, examples),
                   tuple(examples[1].shape) if len(examples) > 1 else None,
                   shapes=[tuple(output.shape), *(tuple(x.shape) for x in examples)])
        return out
    if autocast.seen:
        # fx's graph keeps no autocast region: shape propagation would run it all in the
        # parameters' dtype, while the calls show the dtype each one ran in
        out = _decompose_calls(model, examples)
        out.untraced[""] = "it runs calls under torch.autocast, which fx does not keep"
        return out
    try:
        graph = _traced(model, examples)
    except Exception as exc:  # fx cannot trace it: data-dependent control flow and the like
        out = _decompose_calls(model, examples)
        first = (str(exc).strip().splitlines() or [""])[0]
        out.untraced[""] = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return out
    out, kept_whole = _decompose_graph(graph)
    if kept_whole:
        # a container fx keeps whole, called with a value the forward computes (a size, a
        # flag), which fx does not keep: the calls of one forward pass see it run
        calls = _decompose_calls(model, examples)
        if len(calls.unsupported) < len(out.unsupported):
            calls.untraced[""] = (f"fx keeps {', '.join(kept_whole)} whole, called with values "
                                  "the forward computes")
            return calls
    return out


def _autocast_seen():
    """A TorchFunctionMode whose ``seen`` says whether any torch function was called with
    autocast on (a model that casts part of its forward to bf16 or fp16 itself)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class AutocastSeen(TorchFunctionMode):
        seen = False

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if not self.seen:
                self.seen = any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))
            return func(*args, **(kwargs or {}))

    return AutocastSeen()


def _shape(node, first: bool = False) -> tuple[tuple[int, ...], str]:
    """A node's tensor shape and dtype; ((), "fp32") where it is no tensor, unless ``first``:
    then its first tensor's (a recurrent layer's output of (output, (h, c)))."""
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    # TensorMetadata is a tuple too
    while first and isinstance(meta, tuple | list) and meta and not hasattr(meta, "shape"):
        meta = meta[0]
    if meta is None or not hasattr(meta, "shape"):
        return (), "fp32"
    return tuple(int(x) for x in meta.shape), dtype_name(meta.dtype)


def _decompose_inside(mod, node) -> Decomposition | None:
    """The ops of a torch.nn container fx keeps whole (``nn.TransformerEncoder``, a
    ``nn.TransformerDecoderLayer``, a whole ``nn.Transformer``), decomposed on its own from the
    call ``node``: its tensors of the shapes and dtypes fx propagated (called with tensors
    alone, on :func:`example_inputs` as a model is; beside masks, flags or keywords, on zeros,
    a mask of no effect), its other arguments as written. None for a module of a mapped kind, a
    leaf, or a call whose arguments are not all known here (sizes computed in the forward) or
    that it cannot be run with. torch.nn's containers do not branch on their inputs' values."""
    import torch

    if not _container(mod):
        return None
    try:
        args = [_example_argument(a) for a in node.args]
        kwargs = {k: _example_argument(v) for k, v in node.kwargs.items()}
    except LookupError:
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    try:
        if not tensors or len(tensors) < len(args) or kwargs:
            # masks, flags or keywords: the calls one forward pass makes with them
            out = _decompose_calls(mod, args, kwargs)
            out.untraced[""] = "it is called with keywords or arguments other than tensors"
            return out
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        return decompose(mod, [tuple(t.shape) for t in tensors],
                         dtype=floats[0] if floats else None,
                         input_dtype="+".join("float" if t.is_floating_point() else "int64"
                                              for t in tensors))
    except Exception:  # it cannot run on such inputs: left as a call not costed
        return None


def _container(mod) -> bool:
    """Whether ``mod`` is a module of submodules that no mapping costs as a unit (a
    ``nn.TransformerEncoder``), whose ops are then its submodules' and calls'."""
    return bool(list(mod.children())) and module_kind(mod) not in MAPPED_MODULES


def _example_argument(value):
    """An fx call's argument as a value to call the module with: a tensor node as zeros of its
    propagated shape and dtype, a list or tuple item by item, a constant as is. LookupError
    where a node is no tensor (a size computed in the forward: its value is not kept)."""
    import torch

    if isinstance(value, list | tuple):
        return type(value)(_example_argument(v) for v in value)
    if not hasattr(value, "meta"):
        return value
    meta = value.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise LookupError(str(value))
    return torch.zeros(tuple(int(x) for x in meta.shape), dtype=meta.dtype)


def _named(name: str, kind: str, ops: list[Op] | list[tuple[str, Op]]
           ) -> list[tuple[str, Op]]:
    """A module's ops under its name; where it runs several, each under a part name of its
    own (as the ops came named, else as PART_NAMES gives them, else by position)."""
    if ops and isinstance(ops[0], tuple):
        return [(f"{name}.{part}", op) for part, op in ops]
    if len(ops) < 2:
        return [(name, op) for op in ops]
    parts = PART_NAMES.get(kind) or tuple(str(i) for i in range(len(ops)))
    return [(f"{name}.{part}", op) for part, op in zip(parts, ops, strict=True)]


def _traced(model, examples: list):
    """The model's fx graph module, every node's output shape propagated."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(*examples)
    return gm


def _tensor_args(args, kwargs: dict, is_tensor) -> list:
    """A call's tensor arguments in order, positional then keyword, those in a list or tuple
    argument (``torch.cat``'s) item by item; ``is_tensor`` tells them (an fx node of a tensor,
    or a tensor)."""
    return [t for a in (*args, *kwargs.values())
            for t in (a if isinstance(a, list | tuple) else (a,)) if is_tensor(t)]


def _decompose_graph(gm) -> tuple[Decomposition, list[str]]:
    """The ops of a traced model, and the containers among its calls that could not be
    decomposed on their own (:func:`_decompose_inside`)."""
    out, kept_whole = Decomposition(method="fx"), []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.meta.get("tensor_meta") is None:  # no tensor out: arithmetic on sizes
            continue
        out_shape, dtype = _shape(node, first=True)
        tensors = _tensor_args(node.args, node.kwargs, lambda v: hasattr(v, "meta"))
        arg_shapes = [_shape(a)[0] for a in tensors]
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            inner = _decompose_inside(mod, node)
            if inner is not None:
                out.merge(str(node.target), inner)
                continue
            if _container(mod):
                kept_whole.append(str(node.target))
            in_shape = arg_shapes[0] if arg_shapes else ()
            out.record(str(node.target), module_label(str(node.target), mod),
                       module_kind(mod), module_op, mod, in_shape, out_shape, dtype,
                       arg_shapes[1] if len(arg_shapes) > 1 else None,
                       shapes=[out_shape, *arg_shapes])
        else:
            name = getattr(node.target, "__name__", str(node.target))
            options = call_options(name, node.args, node.kwargs, lambda v: hasattr(v, "meta"))
            out.record(node.name, f"{node.name} ({name})", name,
                       function_op, name, arg_shapes, out_shape, dtype, options,
                       shapes=[out_shape, *arg_shapes])
    return out, kept_whole


def _call_dtype(output, inputs: list) -> str:
    """The dtype a call computes in: its output's (an embedding's floats, not its ids), unless
    that is not a float (a comparison's booleans): then its first input's."""
    if output.is_floating_point() or not inputs:
        return dtype_name(output.dtype)
    return dtype_name(inputs[0].dtype)


def _decompose_calls(model, examples: list, kwargs: dict | None = None) -> Decomposition:
    """The ops of one forward pass on ``examples`` (and keyword arguments ``kwargs``), read from
    the calls it makes: every module of a mapped kind as a unit (as the fx path costs it; the
    functions it calls inside are its own), and every torch function called outside those
    (residual adds, activations, matmuls), through a TorchFunctionMode. One pass sees one path
    through data-dependent control flow."""
    import torch
    from torch.overrides import TorchFunctionMode

    out = Decomposition(method=CALLS_METHOD)
    path: list[str] = []  # names of the modules being called, outermost first
    inside = [0]  # mapped modules being called: functions there are theirs

    class Calls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            output = result[0] if isinstance(result, tuple) and result else result
            if inside[0] or not isinstance(output, torch.Tensor):
                return result  # a mapped module's own work, or arithmetic on sizes
            raw = getattr(func, "__name__", str(func))  # add_ (in place) is add's kind
            name = raw.strip("_")
            tensors = _tensor_args(args, kwargs, lambda v: isinstance(v, torch.Tensor))
            options = call_options(name, args, kwargs, lambda v: isinstance(v, torch.Tensor))
            label = ".".join([*path[-1:], name])
            shapes = [tuple(t.shape) for t in tensors]
            out.record(label, f"{label} ({name})", name, function_op, raw, shapes,
                       tuple(output.shape), _call_dtype(output, tensors), options,
                       shapes=[tuple(output.shape), *shapes])
            return result

    def enter(name, mapped):
        def pre(mod, args, kwargs):
            path.append(name)
            inside[0] += mapped
        return pre

    def leave(name, mapped):
        def post(mod, args, kwargs, output):
            path.pop()
            inside[0] -= mapped
            if not mapped or inside[0]:
                return
            tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
            if isinstance(output, tuple) and output:  # MultiheadAttention: (output, weights)
                output = output[0]
            label = module_label(name, mod)
            if not tensors or not isinstance(output, torch.Tensor):
                out.unsupported.append(label)
                return
            out.record(name, label, module_kind(mod), module_op, mod, tuple(tensors[0].shape),
                       tuple(output.shape), _call_dtype(output, tensors),
                       tuple(tensors[1].shape) if len(tensors) > 1 else None,
                       shapes=[tuple(output.shape), *(tuple(t.shape) for t in tensors)])
        return post

    handles = []
    for name, mod in model.named_modules():
        if name:
            mapped = int(module_kind(mod) in MAPPED_MODULES)
            handles += [mod.register_forward_pre_hook(enter(name, mapped), with_kwargs=True),
                        mod.register_forward_hook(leave(name, mapped), with_kwargs=True)]
    try:
        with torch.no_grad(), Calls():
            model(*examples, **(kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    return out
