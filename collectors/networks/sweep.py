"""Network and layer sweeps: whole sampled architectures, or single layers over grids, measured
with the same protocol as GEMM sweeps (warm-up, repetitions, energy window, device state) and
committed one row per config, resumable with ``--resume``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from collections.abc import Callable
from itertools import product

import numpy as np

from collectors.devices import ComputeDevice
from collectors.gemm.backends import backend_for
from collectors.networks.decompose import (
    decompose,
    example_inputs,
    input_shapes,
    parameter_dtype,
    token_range,
    torch_dtype,
)
from collectors.networks.zoo import FAMILIES, build, sample_config
from collectors.ops import Op, network_batch, network_dtype, op_bytes, op_flops
from collectors.probe import SpeedProbe, default_probe
from collectors.store.db import Store
from collectors.store.models import Measurement, Sweep
from collectors.store.repo import upsert_device
from collectors.sweep import (
    SweepSummary,
    check_resumed_on,
    fill_result,
    measure_probed,
    run_sweep,
    stored_policy,
    sweep_origin,
)
from collectors.timing import PerfCounterTimer, Timer, TimingPolicy, measure_kernel

NETWORK_SWEEP_KINDS = ("network", "layers")  # Sweep.kind of whole networks, of single layers
LAYER_KINDS = ("conv2d", "depthwise_conv2d", "linear", "attention", "recurrent")
# What `--family layers` measures unless --layer-kinds says otherwise.
DEFAULT_LAYER_KINDS = LAYER_KINDS[:4]


# Channel counts the network families and the search space produce (widths x 2^stage, and
# MobileNet expansions of them), so the per-op forests interpolate rather than extrapolate.
CONV_CHANNELS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
DEPTHWISE_CHANNELS = (24, 32, 48, 64, 96, 128, 192, 256, 384)


def layer_grid(kinds: list[str], batches: list[int], dtype: str = "fp32") -> list[dict]:
    """Single-layer configs over channel, kernel, stride, resolution, sequence and batch grids,
    in ``dtype`` (fp32, fp16 or bf16)."""
    out = []
    for b in batches:
        if "conv2d" in kinds:
            # Same width, and doubling width as at a downsampling stage.
            for c, grow, k, r, s in product(CONV_CHANNELS, (1, 2), (1, 3), (8, 16, 32), (1, 2)):
                out.append(Op.make("conv2d", {"in_channels": c, "out_channels": c * grow,
                                              "kernel": k, "height": r, "width": r, "stride": s},
                                   dtype, b))
        if "depthwise_conv2d" in kinds:
            for c, k, r in product(DEPTHWISE_CHANNELS, (3, 5, 7), (8, 16, 32)):
                out.append(Op.make("depthwise_conv2d", {"channels": c, "kernel": k, "height": r,
                                                        "width": r}, dtype, b))
        if "linear" in kinds:
            for i, o, t in product((64, 256, 1024), (64, 256, 1024), (1, 64, 256)):
                out.append(Op.make("linear", {"in_features": i, "out_features": o, "tokens": t},
                                   dtype, b))
        if "attention" in kinds:
            for s, h, d in product((32, 64, 128, 256), (2, 4), (32, 64)):
                out.append(Op.make("attention", {"seq_len": s, "heads": h, "head_dim": d},
                                   dtype, b))
        if "recurrent" in kinds:  # RNN, GRU and LSTM layers, one way and bidirectional
            for gates, hidden, steps, directions, inputs in product(
                    (1, 3, 4), (32, 64, 128, 256, 512), (10, 50, 100, 200), (1, 2), (64, 256)):
                out.append(Op.make("recurrent", {"input_size": inputs, "hidden": hidden,
                                                 "steps": steps, "gates": gates,
                                                 "directions": directions}, dtype, b))
    return [{"family": "layer", "op": op.to_dict()} for op in out]


def network_plan(families: list[str], count: int, batch: int, seed: int,
                 dtype: str = "fp32") -> list[dict]:
    """``count`` distinct sampled architectures per family, run in ``dtype`` (the same
    architectures whatever it is; fp32 configs name none, as they did before there was a
    choice, so their keys are as they were)."""
    rng = np.random.default_rng(seed)
    plan, seen = [], set()
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"--family: expected {', '.join(FAMILIES)} or layers, got {family!r}")
        n, tries = 0, 0
        while n < count and tries < count * 50:
            tries += 1
            cfg = {**sample_config(family, rng), "batch": batch, **_named_dtype(dtype)}
            key = config_key(cfg)
            if key not in seen:
                seen.add(key)
                plan.append(cfg)
                n += 1
    return plan


def module_plan(spec: str, shapes: list[tuple[int, ...]], input_dtype: str = "float",
                dtype: str | None = None) -> list[dict]:
    """A user's own model (``package.module:NAME``, :mod:`collectors.networks.user`) at each
    input shape, one network each, cast to ``dtype`` where one is given (else run as it is
    built); rebuilt from the spec when measured, on resume too."""
    cast = {"dtype": dtype} if dtype is not None else {}
    return [{"family": "module", "module": spec, "input_shape": _as_lists(shape),
             "input_dtype": input_dtype, "batch": input_shapes(shape)[0][0], **cast}
            for shape in dict.fromkeys(shapes)]


def _as_lists(shape) -> list:
    """A shape (or one per input) as JSON holds it: lists."""
    return [list(s) if isinstance(s, list | tuple) else s for s in shape]


def _named_dtype(dtype: str) -> dict:
    return {} if dtype == "fp32" else {"dtype": dtype}


def config_key(cfg: dict) -> str:
    text = json.dumps(cfg, sort_keys=True)
    return f"{cfg['family']}:{hashlib.sha1(text.encode()).hexdigest()[:20]}"


def layer_module(op: Op):
    """A torch module and input shape that run exactly ``op``."""
    import torch
    from torch import nn

    p, b = op.params, op.batch
    if op.kind == "conv2d":
        return (nn.Conv2d(p["in_channels"], p["out_channels"], p["kernel"], p["stride"],
                          p["kernel"] // 2, groups=p["groups"], bias=False),
                (b, p["in_channels"], p["height"], p["width"]))
    if op.kind == "depthwise_conv2d":
        c = p["channels"]
        return (nn.Conv2d(c, c, p["kernel"], p["stride"], p["kernel"] // 2, groups=c,
                          bias=False), (b, c, p["height"], p["width"]))
    if op.kind == "linear":
        return nn.Linear(p["in_features"], p["out_features"]), (b, p["tokens"],
                                                                p["in_features"])
    if op.kind == "attention":
        causal = bool(p["causal"])

        class Sdpa(nn.Module):
            def forward(self, q, kv):
                return torch.nn.functional.scaled_dot_product_attention(q, kv, kv,
                                                                        is_causal=causal)

        query = (b, p["heads"], p["seq_len"], p["head_dim"])
        return Sdpa(), [query, (b, p["heads"], p["kv_len"] or p["seq_len"], p["head_dim"])]
    if op.kind == "recurrent":
        layer = {1: nn.RNN, 3: nn.GRU, 4: nn.LSTM}[p["gates"]]
        extra = {"proj_size": p["proj"]} if p["proj"] else {}
        return (layer(p["input_size"], p["hidden"], bias=bool(p["bias"]), batch_first=True,
                      bidirectional=p["directions"] == 2, **extra),
                (b, p["steps"], p["input_size"]))
    raise ValueError(f"kind: no layer module for {op.kind}")


class TorchCudaTimer(Timer):
    """CUDA events (through torch) around ``inner`` forward passes; ms per pass. Eager
    passes, launched as a framework runs them: their launch cost is part of the figure."""

    method = "torch_cuda_events"

    def __init__(self, index: int):
        import torch

        self.torch, self.index = torch, index
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn, inner: int) -> float:
        self.start.record()
        for _ in range(inner):
            fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / inner

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.index)


def forward_pass(model, shape, device: ComputeDevice, input_dtype: str = "float", dtype=None
                 ) -> tuple[Callable[[], object], Timer]:
    """A no-grad forward pass of ``model`` on ``device`` (this CPU, or ``cuda:N``) on random
    inputs of ``shape`` (one input's, or one per input: ``decompose.input_shapes``) of torch
    ``dtype``, else of the model's parameter dtype (token ids where ``input_dtype`` says int64,
    ``decompose.input_kinds``: below its smallest embedding table's size, ``token_range``, from 1
    up; all 0 where it has none), and the timer that measures it (perf counter, or CUDA
    events)."""
    import torch

    on_cpu = device.info.kind == "cpu"
    where = "cpu" if on_cpu else f"cuda:{device.index}"
    model = model.to(where).eval()
    xs = example_inputs(shape, dtype or parameter_dtype(model), input_dtype, where, random=True,
                        ids_below=token_range(model))

    def fn():
        with torch.inference_mode():
            return model(*xs)

    return fn, PerfCounterTimer() if on_cpu else TorchCudaTimer(device.index)


def _token_ids(model) -> str:
    """The token ids :func:`forward_pass` measures ``model`` on, in words for its row."""
    vocab = token_range(model)
    return f"uniform in [1, {vocab})" if vocab and vocab > 1 else "all 0"


class NetworkSweep:
    """Measures layers and whole networks with torch on this machine's CPU, or on an NVIDIA GPU
    (``cuda:N``, CUDA events and the NVML energy counter) with a CUDA build of torch."""

    def __init__(self, store: Store, device: ComputeDevice, policy: TimingPolicy | None = None,
                 threads: int | None = None, progress: bool = True,
                 probe: SpeedProbe | None = None):
        """``probe``: a speed probe of this CPU to use when the policy probes, e.g. one a GEMM
        sweep has used, which has already seen the machine at full speed (a new probe takes
        whatever speed it starts in for full speed until it sees faster)."""
        import torch

        if policy is not None and policy.probe and device.info.kind != "cpu":
            raise ValueError("--probe: network sweeps probe the machine's speed on a CPU only "
                             "(a GPU's clocks and state are recorded with every row instead)")
        if device.info.kind == "gpu":
            if not torch.cuda.is_available():
                raise ValueError(f"--device cuda:{device.index}: this torch build has no CUDA "
                                 f"(torch {torch.__version__}); install a CUDA build of torch "
                                 "to sweep networks on the GPU")
            torch.cuda.set_device(device.index)  # events and streams live on this GPU
        elif threads is not None:
            torch.set_num_threads(threads)
        self.store, self.device = store, device
        self.policy = policy or TimingPolicy()
        self.threads = threads
        self.progress = progress
        self.reader = device.power_reader()
        self._probe = probe

    def probe(self) -> SpeedProbe | None:
        """The speed probe (a torch GEMM on this CPU) when the policy asks for one."""
        if not default_probe(self.policy.probe, self.device.info.kind):
            return None
        if self._probe is None:
            self._probe = SpeedProbe.for_backend(backend_for("cpu", "torch",
                                                             threads=self.threads))
        return self._probe

    def create(self, plan: list[dict], kind: str) -> int:
        with self.store.session() as s:
            dev = upsert_device(s, self.device.info)
            sweep = Sweep(kind=kind, device_id=dev.id, host=socket.gethostname(),
                          n_planned=len(plan), status="running",
                          config={"device_fingerprint": dev.fingerprint,
                                  "policy": dataclasses.asdict(self.policy), "configs": plan})
            s.add(sweep)
            s.commit()
            return sweep.id

    def run(self, sweep_id: int) -> SweepSummary:
        origin = sweep_origin(self.store, sweep_id, NETWORK_SWEEP_KINDS, "network")
        check_resumed_on(origin, sweep_id, self.device)
        config, device_id = origin.config, origin.device_id
        self.policy = stored_policy(config, self.policy)
        items = [(config_key(c), c) for c in config["configs"]]
        return run_sweep(self.store, sweep_id, config, items,
                         lambda cfg: self.measure(cfg, sweep_id, device_id), self.progress,
                         "network sweep")

    def measure(self, cfg: dict, sweep_id: int, device_id: int) -> Measurement:
        import torch

        on_cpu = self.device.info.kind == "cpu"
        row = Measurement(sweep_id=sweep_id, device_id=device_id, config_key=config_key(cfg),
                          backend="torch" if on_cpu else "torch-cuda",
                          power_source=self.reader.source,
                          threads=torch.get_num_threads() if on_cpu else None, batch=1,
                          dtype="fp32")
        try:
            if cfg["family"] == "layer":
                op = Op.from_dict(cfg["op"])
                model, shape = layer_module(op)
                dtype = torch_dtype(op.dtype)
                model = model.to(dtype)
                ops = [("layer", op)]
                row.op_kind, row.batch = op.kind, op.batch
            else:
                model, shape = build(cfg, cfg.get("batch", 1))
                dtype = torch_dtype(cfg["dtype"]) if cfg.get("dtype") else None
                if dtype is not None:
                    model = model.to(dtype)
                d = decompose(model, shape, input_dtype=cfg.get("input_dtype", "float"))
                if d.unsupported:
                    raise ValueError(f"unsupported layers: {', '.join(d.unsupported)}")
                ops = d.ops
                # its ops' batch, not the input's first dimension (a sequence-first one's)
                row.op_kind, row.batch = "network", network_batch([op for _, op in ops])
            row.dtype = network_dtype([op for _, op in ops])
            fn, timer = forward_pass(model, shape, self.device,
                                     cfg.get("input_dtype", "float"), dtype)
            result = measure_probed(
                lambda: measure_kernel(fn, timer, self.device, self.reader, self.policy),
                self.probe(), row)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            row.op_kind = row.op_kind or "network"
            row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
            row.params = {"config": cfg}
            return row
        flops = sum(op_flops(op) for _, op in ops)
        ids = ({"token_ids": _token_ids(model)} if "int64" in cfg.get("input_dtype", "")
               else {})
        row.params = {**(row.params or {}), **ids, "config": cfg, "input_shape": _as_lists(shape),
                      "flops": flops, "bytes": sum(op_bytes(op) for _, op in ops),
                      "ops": [[name, op.to_dict()] for name, op in ops]}
        fill_result(row, result, flops)
        return row
