"""Op decomposition of torch modules, network sweeps (with resume) and the network predictor."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import func, select
from torch import nn

from collectors.devices import CpuDevice
from collectors.networks.decompose import DecomposeError, decompose
from collectors.networks.sweep import NetworkSweep, forward_pass, layer_grid, network_plan
from collectors.networks.user import user_module
from collectors.networks.zoo import build, sample_config
from collectors.ops import (
    Op,
    OpError,
    op_bytes,
    op_flops,
    op_gemm_counts,
    op_gemms,
    op_parts,
    op_steps,
)
from collectors.store.models import Measurement, Sweep
from collectors.timing import TimingPolicy
from predictor.nasbench201 import network_ops
from predictor.network import (
    NetworkCostModel,
    OpKindForests,
    held_out_devices,
    load_layers,
    load_networks,
    op_features,
)

QUICK = TimingPolicy(warmup_s=0.001, min_reps=3, min_time_s=0.005, power_window_s=0.0)


def test_small_cnn_gives_the_expected_ops_and_flops():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    d = decompose(model, (2, 3, 16, 16))
    assert d.method == "fx" and not d.unsupported
    assert [op.kind for _, op in d.ops] == ["conv2d", "norm", "elementwise", "pool", "linear"]
    conv = d.ops[0][1]
    assert conv.params["in_channels"] == 3 and conv.params["out_channels"] == 8
    assert conv.batch == 2 and conv.params["height"] == 16 and conv.params["padding"] == 1
    assert op_flops(conv) == 2 * 2 * 16 * 16 * 8 * 27
    assert d.flops == 2 * 2 * 16 * 16 * 8 * 27 + 2 * 2048 * 2 + 2 * 8 * 256 + 2 * 8 * 4 * 2


def test_functional_ops_and_depthwise_and_attention():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            y = self.dw(x)
            t = y.flatten(2).transpose(1, 2)[:, :, :16]
            t = torch.cat([t, t], dim=2)
            a = self.mha(t, t, t, need_weights=False)[0]
            s = torch.matmul(a, a.transpose(1, 2))
            return s + 1.0

    d = decompose(Net(), (1, 16, 8, 8))
    kinds = [op.kind for _, op in d.ops]
    assert "depthwise_conv2d" in kinds and "attention" in kinds and "gemm" in kinds
    gemm = next(op for _, op in d.ops if op.kind == "gemm")
    assert (gemm["m"], gemm["n"], gemm["k"], gemm.batch) == (64, 64, 32, 1)
    att = next(op for _, op in d.ops if op.kind == "attention")
    assert (att["seq_len"], att["heads"], att["head_dim"]) == (64, 4, 8)
    assert not d.unsupported


class _Uncosted(nn.Module):
    """A linear layer, then a module no op kind covers (a loss: no part of inference)."""

    def __init__(self, features: int = 16):
        super().__init__()
        self.fc, self.mix = nn.Linear(features, features), nn.SmoothL1Loss(reduction="none")

    def forward(self, x):
        x = self.fc(x)
        return self.mix(x, x)


def test_unsupported_modules_are_reported_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d((2, 1)))
    d = decompose(model, (1, 3, 8, 8))
    assert d.unsupported == ["1 (MaxPool2d): a rectangular window "
                             "(kernel (2, 1), stride (2, 1), padding 0) is not covered"]
    assert [op.kind for _, op in d.ops] == ["conv2d"]
    d = decompose(_Uncosted(), (2, 16))
    assert d.unsupported == ["mix (SmoothL1Loss)"] and [op.kind for _, op in d.ops] == ["linear"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_quantized_linear_is_not_priced_as_a_float_one():
    # torch.ao's dynamically quantized Linear multiplies int8: no op here prices that, and it
    # must not pass for an fp32 nn.Linear of the same name.
    quantize = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize is None:
        pytest.skip(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic")
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    d = decompose(quantize(model, {nn.Linear}, dtype=torch.qint8), (2, 64))
    assert [op.kind for _, op in d.ops] == ["elementwise"]
    assert d.unsupported == ["0.linear_dynamic (linear_dynamic)",
                             "2.linear_dynamic (linear_dynamic)"]


def test_a_users_class_of_a_mapped_name_is_costed_by_what_it_calls():
    class Linear(nn.Module):  # not nn.Linear: no in_features, a forward of its own
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 8))

        def forward(self, x):
            return x @ self.w

    for model in (Linear(), nn.Sequential(nn.Identity(), Linear())):
        d = decompose(model, (2, 64))
        assert not d.unsupported and [op for _, op in d.ops] == [
            Op.make("gemm", {"m": 2, "n": 8, "k": 64}, "fp32", 1)]


class _TokensToLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lstm, self.fc = nn.Embedding(100, 16), nn.LSTM(16, 32, batch_first=True), \
            nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(self.lstm(self.emb(x))[0][:, -1])


class _Untraceable(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent: fx cannot trace it
            x = x * 2
        return self.inner(x)[0]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
def test_a_recurrent_layer_is_one_op_of_its_steps_gates_and_directions():
    d = decompose(_TokensToLSTM(), (4, 6), input_dtype="int64")
    assert d.method == "fx" and not d.unsupported
    assert [name for name, _ in d.ops] == ["emb", "lstm.l0", "fc"]
    # batch_first: 4 sequences of 6 steps
    lstm = dict(d.ops)["lstm.l0"]
    assert lstm == Op.make("recurrent", {"input_size": 16, "hidden": 32, "steps": 6,
                                         "gates": 4}, "fp32", 4)
    # what it computes: the 4 gates' input projection for all steps at once, then per step
    # the recurrent projection and the gate arithmetic
    assert op_gemm_counts(lstm) == [((24, 128, 16, 1), 1), ((4, 128, 32, 1), 6)]
    assert op_gemms(lstm) == [(24, 128, 16, 1), (4, 128, 32, 1)]
    assert op_parts(lstm) == [(Op.make("elementwise", {"elements": 128, "inputs": 2},
                                       "fp32", 4), 6)]
    assert op_steps(lstm) == 6 and op_flops(lstm) == 2 * (24 * 128 * 16 + 6 * 4 * 128 * 32) \
        + 6 * 4 * 128 * 2

    # two bidirectional layers (the second reads both directions), in bf16, sequence first
    gru = _Untraceable(nn.GRU(8, 16, num_layers=2, bidirectional=True, bias=False))
    d = decompose(gru.to(torch.bfloat16), (5, 3, 8))
    assert d.note and not d.unsupported
    ops = dict(d.ops)
    assert [name for name in ops if name.startswith("inner.")] == ["inner.l0", "inner.l1"]
    assert ops["inner.l1"] == Op.make("recurrent", {
        "input_size": 32, "hidden": 16, "steps": 5, "gates": 3, "directions": 2, "bias": 0},
        "bf16", 3)
    assert [count for _, count in op_gemm_counts(ops["inner.l1"])] == [2, 10]
    assert op_steps(ops["inner.l1"]) == 10

    # an LSTM with projections: the recurrence runs on the projected state
    d = decompose(nn.LSTM(8, 16, proj_size=4), (3, 8))  # unbatched: (steps, features)
    assert d.method == "module" and [name for name, _ in d.ops] == ["LSTM.l0"]
    op = d.ops[0][1]
    assert (op.params["proj"], op.batch) == (4, 1)
    assert op_gemm_counts(op) == [((3, 64, 8, 1), 1), ((1, 64, 4, 1), 3), ((1, 4, 16, 1), 3)]
    # one step of a cell
    d = decompose(nn.Sequential(nn.Linear(8, 8), nn.GRUCell(8, 16)), (2, 8))
    assert [name for name, _ in d.ops] == ["0", "1.ih", "1.hh", "1.cell"]
    assert dict(d.ops)["1.hh"].params == {"in_features": 16, "out_features": 48, "tokens": 1,
                                          "bias": 1}


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
@pytest.mark.parametrize("params", [
    {"gates": 1}, {"gates": 3, "directions": 2, "bias": 0}, {"gates": 4, "proj": 8},
    {"gates": 4, "directions": 2, "proj": 8}])
def test_a_swept_recurrent_layer_decomposes_into_the_op_it_was_built_from(params):
    from collectors.networks.sweep import layer_module

    op = Op.make("recurrent", {"input_size": 12, "hidden": 16, "steps": 5, **params}, "fp32", 3)
    model, shape = layer_module(op)
    assert [o for _, o in decompose(model, shape).ops] == [op]


@pytest.mark.parametrize("params", [{}, {"causal": 1}, {"kv_len": 24}])
def test_a_swept_attention_layer_decomposes_into_the_op_it_was_built_from(params):
    """As the layer sweeps measure it: causal where the op is, keys of kv_len where given."""
    from collectors.networks.sweep import layer_module

    op = Op.make("attention", {"seq_len": 16, "heads": 2, "head_dim": 8, **params}, "fp32", 3)
    model, shape = layer_module(op)
    assert [o for _, o in decompose(model, shape).ops] == [op]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's, on import
def test_a_compiled_model_is_decomposed_as_the_model_it_wraps_without_compiling_it():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    eager, compiled = decompose(model, (2, 8)), decompose(torch.compile(model), (2, 8))
    assert compiled.ops == eager.ops and compiled.method == "fx"  # names without _orig_mod.
    assert eager.note is None and "torch.compile'd model" in compiled.note


def test_a_recurrent_op_names_its_bad_fields():
    def make(**params):
        return Op.make("recurrent", {"input_size": 8, "hidden": 16, "steps": 5, "gates": 4,
                                     **params})

    for field, value, says in [("gates", 2, "gates: must be one of 1 (RNN), 3 (GRU), 4 (LSTM) "
                                            "for recurrent, got 2"),
                               ("directions", 3, "directions: must be one of 1 (one way), "
                                                 "2 (bidirectional) for recurrent, got 3"),
                               ("proj", -1, "proj: must be 0 or positive, got -1"),
                               ("steps", 0, "steps")]:
        with pytest.raises(OpError, match=re.escape(says)):
            make(**{field: value})


def test_a_bare_layer_is_costed_as_the_layer_it_is():
    d = decompose(nn.Conv2d(3, 8, 3), (1, 3, 8, 8))
    assert d.method == "module" and [name for name, _ in d.ops] == ["Conv2d"]
    assert d.ops[0][1].kind == "conv2d"
    assert decompose(nn.Dropout(), (2, 3)).ops == []


def test_a_packed_sequence_is_listed_as_not_costed():
    from torch.nn.utils.rnn import pack_padded_sequence

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(8, 16)

        def forward(self, x):
            lengths = torch.full((x.shape[1],), x.shape[0])
            return self.rnn(pack_padded_sequence(x, lengths))[1]

    d = decompose(Packed(), (7, 2, 8))
    assert "rnn (RNN)" in d.unsupported and not d.ops


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("layer, shape, kinds", [
    (nn.RMSNorm(16), (2, 5, 16), ["norm"]),
    (nn.BatchNorm3d(3), (1, 3, 4, 4, 4), ["norm"]),
    (nn.InstanceNorm1d(3), (1, 3, 8), ["norm"]),
    (nn.Conv3d(3, 8, 3), (1, 3, 8, 8, 8), ["gemm"]),
    (nn.MaxPool3d(2), (1, 3, 4, 4, 4), ["elementwise"]),
    (nn.PReLU(), (2, 16), ["elementwise"]),
    (nn.LogSoftmax(-1), (2, 16), ["elementwise"]),
    (nn.GLU(), (2, 16), ["elementwise"]),
    (nn.ReflectionPad2d(1), (1, 3, 8, 8), ["elementwise"]),
    (nn.PixelShuffle(2), (1, 8, 4, 4), ["elementwise"]),
    (_Call(lambda x: F.rms_norm(x, (x.shape[-1],))), (2, 4, 4), ["norm"]),
    (_Call(lambda x: F.pad(x, (1, 1))), (2, 4, 4), ["elementwise"]),
    (_Call(lambda x: x.add_(1).relu_()), (2, 4, 4), ["elementwise", "elementwise"]),
    (_Call(lambda x: torch.cos(x) * torch.sin(x)), (2, 4, 4), ["elementwise"] * 3),
    (_Call(lambda x: x.var(-1) + F.normalize(x, dim=-1).sum(-1)), (2, 4, 4),
     ["elementwise"] * 4),
    (_Call(lambda x: x.long().float()), (2, 4), []),
    (nn.LocalResponseNorm(2), (1, 3, 4, 4), ["norm"]),
    (nn.Unflatten(1, (2, 2)), (2, 4), []),
    (_Call(lambda x: torch.topk(x, 2, -1).values + x.sort(-1).values[..., :2]), (2, 4, 4),
     ["elementwise"] * 3),
    (_Call(lambda x: F.cosine_similarity(x, x, -1)), (2, 4, 4), ["elementwise"]),
])
def test_common_layers_and_functions_are_costed(layer, shape, kinds):
    d = decompose(nn.Sequential(nn.Identity(), layer), shape)
    assert not d.unsupported and [op.kind for _, op in d.ops] == kinds


class _Einsum(nn.Module):
    """einsum(equation, input, *operands of the given shapes)."""

    def __init__(self, equation, *shapes):
        super().__init__()
        self.equation, self.count = equation, len(shapes)
        for i, shape in enumerate(shapes):
            self.register_buffer(f"b{i}", torch.ones(shape))

    def forward(self, x):
        return torch.einsum(self.equation, x, *(getattr(self, f"b{i}")
                                                for i in range(self.count)))


def test_a_pair_reduction_module_reads_both_its_inputs():
    class Similar(nn.Module):
        def __init__(self):
            super().__init__()
            self.cos = nn.CosineSimilarity(-1)

        def forward(self, x):
            return self.cos(x, x + 1)

    d = decompose(Similar(), (2, 4, 8))
    assert not d.unsupported
    cos = [op for _, op in d.ops][-1]  # reads both (4 x 8 each), writes one value per row
    assert cos == Op.make("elementwise", {"elements": 32, "inputs": 2, "reduce": 8}, "fp32", 2)
    assert op_bytes(cos) == 4 * 2 * (2 * 32 + 4)


def test_a_reduction_is_priced_by_what_it_reads_and_its_small_output():
    def op(fn, shape):
        [(_, got)] = decompose(_Call(fn), shape).ops
        return got

    mean = op(lambda x: x.mean(-1), (2, 16, 64))
    assert mean == Op.make("elementwise", {"elements": 1024, "reduce": 64}, "fp32", 2)
    assert op_bytes(mean) == 4 * 2 * (1024 + 16)
    assert op(lambda x: x.sort(-1).values, (2, 16, 64))["reduce"] == 1  # as much written
    relu = op(lambda x: x.relu(), (2, 16, 64))
    assert relu["reduce"] == 1 and op_bytes(relu) == 4 * 2 * 2 * 1024
    # EmbeddingBag: every looked-up row read, one row per bag written
    [(_, bag)] = decompose(nn.Sequential(nn.EmbeddingBag(100, 8)), (3, 7),
                           input_dtype="int64").ops
    assert bag == Op.make("elementwise", {"elements": 56, "reduce": 7}, "fp32", 3)
    # Stored op lists, without the parameter, read as before: one element written per read.
    stored = Op.from_dict({"kind": "elementwise", "params": {"elements": 1024}, "batch": 2})
    assert stored["reduce"] == 1 and op_bytes(stored) == 4 * 2 * 2 * 1024


def test_calls_that_write_into_their_input_are_marked_in_place():
    """An activation module with inplace=True, ``relu_``, ``F.relu(inplace=True)`` and, where
    the calls are read, ``x += y``: their output is no new tensor (op_output_bytes 0)."""
    from collectors.networks.decompose import _decompose_calls
    from collectors.ops import op_output_bytes

    class Acts(nn.Module):
        def __init__(self):
            super().__init__()
            self.kept, self.fresh = nn.ReLU(inplace=True), nn.ReLU()

        def forward(self, x):
            x = self.fresh(self.kept(x))
            y = F.relu(x, inplace=True).add_(1)
            y += x
            return (y + x).mean(-1)

    def flags(d) -> list[int]:
        return [op["in_place"] for _, op in d.ops]

    # kept, fresh, relu(inplace), add_, (fx: += traced as +), +, mean
    assert flags(decompose(Acts(), (2, 8))) == [1, 0, 1, 1, 0, 0, 0]
    calls = _decompose_calls(Acts(), [torch.randn(2, 8)])
    assert flags(calls) == [1, 0, 1, 1, 1, 0, 0]
    assert [op_output_bytes(op) for _, op in calls.ops] == [0, 64, 0, 0, 0, 64, 8]


def test_pools_say_whether_they_take_the_max_and_keep_the_window_they_were_given():
    def pool(fn, shape=(2, 8, 16, 16)):
        [(_, got)] = decompose(_Call(fn), shape).ops
        return got

    def window(op):
        return op["kernel"], op["stride"], op["padding"], op["max"]

    assert window(pool(lambda x: F.max_pool2d(x, 3, 2, 1))) == (3, 2, 1, 1)
    assert window(pool(lambda x: F.avg_pool2d(x, kernel_size=2))) == (2, 2, 0, 0)
    assert window(pool(lambda x: F.adaptive_avg_pool2d(x, 1))) == (16, 16, 0, 0)
    [(_, mod)] = decompose(nn.Sequential(nn.MaxPool2d(3, 2, 1)), (2, 8, 16, 16)).ops
    assert window(mod) == (3, 2, 1, 1)
    listed = decompose(_Call(lambda x: F.max_pool2d(x, (3, 2))), (2, 8, 16, 16))
    assert not listed.ops and listed.unsupported == [
        "max_pool2d (max_pool2d): a rectangular window (kernel (3, 2), stride None, padding 0) "
        "is not covered"]
    # stored op lists from before the parameter: an average pool
    assert Op.from_dict({"kind": "pool", "params": {"channels": 8, "kernel": 2, "height": 4,
                                                    "width": 4}})["max"] == 0


class _WithLayer(nn.Module):
    """``fn(layer, x)``: a layer called as a model calls it (two inputs, an id tensor)."""

    def __init__(self, layer, fn):
        super().__init__()
        self.layer, self.fn = layer, fn

    def forward(self, x):
        return self.fn(self.layer, x)


def test_products_of_vectors_tensors_and_point_sets_cost_as_their_gemms():
    def ops(fn, shape, layer=None, input_dtype="float"):
        d = decompose(_WithLayer(layer or nn.Identity(), fn), shape, input_dtype=input_dtype)
        assert not d.unsupported
        return [(name, op) for name, op in d.ops]

    gemm = Op.make
    # nn.Bilinear: rows projected to out x in2, then each row's block times its second input
    (p, project), (c, contract) = ops(lambda m, x: m(x, x), (3, 5, 16), nn.Bilinear(16, 16, 4))
    assert (p, c) == ("layer.project", "layer.contract")
    assert project == gemm("linear", {"in_features": 16, "out_features": 64, "tokens": 5,
                                      "bias": 0}, "fp32", 3)
    assert contract == gemm("gemm", {"m": 4, "n": 1, "k": 16}, "fp32", 15)
    assert op_flops(project) + op_flops(contract) >= 2 * 15 * 4 * 16 * 16
    assert [op for _, op in ops(lambda m, x: F.bilinear(x, x, m.weight, m.bias), (3, 16),
                                nn.Bilinear(16, 16, 4))] == [
        gemm("linear", {"in_features": 16, "out_features": 64, "tokens": 1, "bias": 0},
             "fp32", 3), gemm("gemm", {"m": 4, "n": 1, "k": 16}, "fp32", 3)]
    # nn.EmbeddingBag: every looked-up row read once (7 ids of width 8 per bag)
    [(_, bag)] = ops(lambda m, x: m(x), (3, 7), nn.EmbeddingBag(100, 8), "int64")
    assert bag == gemm("elementwise", {"elements": 56, "reduce": 7}, "fp32", 3)
    # matmul as torch runs it: a batch of matrices times one matrix (or vector) is one GEMM of
    # all their rows; one matrix (or vector) times a batch the same, transposed; a batch times
    # a batch one GEMM per pair; a vector operand is one row or one column
    [(_, folded)] = ops(lambda m, x: x @ torch.ones(16, 7), (3, 5, 16))
    assert folded == gemm("gemm", {"m": 15, "n": 7, "k": 16}, "fp32", 1)
    [(_, mv)] = ops(lambda m, x: x @ torch.ones(16), (3, 5, 16))
    assert mv == gemm("gemm", {"m": 15, "n": 1, "k": 16}, "fp32", 1)
    [(_, left)] = ops(lambda m, x: torch.ones(4, 5) @ x, (3, 5, 16))
    assert left == gemm("gemm", {"m": 48, "n": 4, "k": 5}, "fp32", 1)
    [(_, vm)] = ops(lambda m, x: torch.ones(5) @ x, (3, 5, 16))
    assert vm == gemm("gemm", {"m": 48, "n": 1, "k": 5}, "fp32", 1)
    [(_, pairs)] = ops(lambda m, x: x @ torch.ones(3, 16, 7), (3, 5, 16))
    assert pairs == gemm("gemm", {"m": 5, "n": 7, "k": 16}, "fp32", 3)
    [(_, dot)] = ops(lambda m, x: torch.dot(x[0, 0], x[0, 1]), (3, 5, 16))
    assert dot == gemm("gemm", {"m": 1, "n": 1, "k": 16}, "fp32", 1)
    # tensordot: K is the product of the contracted dimensions
    [(_, td)] = ops(lambda m, x: torch.tensordot(x, torch.ones(5, 16, 7), dims=([1, 2], [0, 1])),
                    (3, 5, 16))
    assert td == gemm("gemm", {"m": 3, "n": 7, "k": 80}, "fp32", 1)
    # cdist: a GEMM where torch takes one (p = 2, more than 25 points), else a pass over every
    # pair's every coordinate
    many = ops(lambda m, x: torch.cdist(x, x), (2, 30, 16))
    assert [op for _, op in many] == [gemm("gemm", {"m": 30, "n": 30, "k": 16}, "fp32", 2),
                                      gemm("elementwise", {"elements": 900}, "fp32", 2)]
    for fn in (lambda m, x: torch.cdist(x, x), lambda m, x: torch.cdist(x, x, 1.0),
               lambda m, x: torch.cdist(x, x, p=1.0, compute_mode="use_mm_for_euclid_dist")):
        shape = (2, 5, 16) if fn.__code__.co_consts[1:] == () else (2, 30, 16)
        [(_, direct)] = ops(fn, shape)
        assert direct.kind == "elementwise" and direct["inputs"] == 2
    [(_, forced)] = ops(lambda m, x: torch.cdist(x, x, compute_mode="use_mm_for_euclid_dist"),
                        (2, 5, 16))[:1]
    assert forced.kind == "gemm"
    # F.unfold copies the patches out; Tensor.unfold is a view of them
    [(_, patches)] = ops(lambda m, x: F.unfold(x, 2), (1, 3, 8, 8))
    assert patches == gemm("elementwise", {"elements": 12 * 49}, "fp32", 1)
    assert [op.kind for _, op in ops(lambda m, x: x.unfold(1, 2, 1).sum(-1), (3, 5, 16))] == [
        "elementwise"]


def test_einsum_costs_as_the_batched_gemm_it_is():
    def ops(equation, *shapes):
        d = decompose(_Einsum(equation, *shapes[1:]), shapes[0])
        return d.unsupported, [op for _, op in d.ops]

    # attention scores: batch b and heads h, m = i, n = j, k = d
    _, [op] = ops("bhid,bhjd->bhij", (2, 3, 5, 8), (2, 3, 5, 8))
    assert op == Op.make("gemm", {"m": 5, "n": 5, "k": 8}, "fp32", 6)
    _, [op] = ops("...ij,...jk->...ik", (2, 4, 6), (2, 6, 6))
    assert op == Op.make("gemm", {"m": 4, "n": 6, "k": 6}, "fp32", 2)
    _, [op] = ops("bij,bjk", (2, 4, 4), (2, 4, 4))  # implicit output ik: b is summed too
    assert op == Op.make("gemm", {"m": 4, "n": 4, "k": 8}, "fp32", 1)


def test_einsum_of_more_operands_costs_each_contraction_in_torchs_order(monkeypatch):
    """Without opt_einsum torch contracts left to right; with it, along the path it finds,
    each result appended to the operands left."""
    chain = [(100, 2), (2, 100), (100, 100)]

    def ops():
        d = decompose(_Einsum("ij,jk,kl->il", *chain[1:]), chain[0])
        assert not d.unsupported
        return [(op.params["m"], op.params["n"], op.params["k"]) for _, op in d.ops]

    monkeypatch.setattr(torch.backends.opt_einsum, "enabled", False)
    assert ops() == [(100, 100, 2), (100, 100, 100)]  # (AB)C

    class FakeOptEinsum:  # torch asks it too, with the tensors, when the model runs
        def contract_path(self, equation, *operands, shapes=False, optimize="auto"):
            sizes = operands if shapes else tuple(tuple(t.shape) for t in operands)
            assert (equation, sizes) == ("ij,jk,kl->il", tuple(chain))
            return [(1, 2), (0, 1)], "A(BC)"

    monkeypatch.setattr(torch.backends.opt_einsum, "enabled", True)
    monkeypatch.setattr(torch.backends.opt_einsum, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.opt_einsum, "get_opt_einsum", FakeOptEinsum)
    assert ops() == [(2, 100, 100), (100, 100, 2)]  # BC first, then A(BC)
    # A chain of four, left to right, and the sublist form reads as its equation.
    monkeypatch.setattr(torch.backends.opt_einsum, "enabled", False)
    d = decompose(_Einsum("ij,jk,kl,lm->im", (8, 9), (9, 10), (10, 11)), (7, 8))
    assert [(op.params["m"], op.params["n"], op.params["k"]) for _, op in d.ops] == [
        (7, 9, 8), (7, 10, 9), (7, 11, 10)]

    class Sublists(nn.Module):
        def forward(self, x):
            return torch.einsum(x, [0, 1], torch.ones(6, 5), [1, 2], [0, 2])

    d = decompose(Sublists(), (4, 6))
    assert [op for _, op in d.ops if op.kind == "gemm"] == [
        Op.make("gemm", {"m": 4, "n": 5, "k": 6}, "fp32", 1)]


def test_convolutions_no_conv_op_describes_cost_as_their_implicit_gemms():
    import torch.nn.functional as F

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.tall = nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0))
            self.dilated = nn.Conv2d(6, 6, 3, dilation=2, groups=3)
            self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
            self.line = nn.Conv1d(4, 8, 5, padding=2)
            self.resize = nn.Upsample(scale_factor=2)

        def forward(self, x):
            y = self.up(self.dilated(self.tall(x)))  # (2, 4, 4, 16)
            line = self.line(y.flatten(2))  # (2, 8, 64)
            return F.conv1d(line, self.line.weight.transpose(0, 1)), self.resize(y)

    d = decompose(Odd(), (2, 4, 11, 12))
    assert d.method == "fx" and not d.unsupported, d.unsupported
    gemms = {name: (op["m"], op["n"], op["k"], op.batch) for name, op in d.ops
             if op.kind == "gemm"}
    assert gemms == {
        "tall": (2 * 6 * 12, 6, 4 * 3, 1),  # 11 rows at stride 2 -> 6
        "dilated": (2 * 2 * 8, 2, 2 * 9, 3),  # reach 5: 6x12 -> 2x8, per group of 2 channels
        "up": (2 * 2 * 8, 4 * 4, 6, 1),  # each input pixel to 2x2 outputs of 4 channels
        "line": (2 * 64, 8, 4 * 5, 1),
        "conv1d": (2 * 60, 4, 8 * 5, 1)}
    # A resize is memory-bound: an elementwise op over its output.
    resize = next(op for name, op in d.ops if name == "resize")
    assert (resize.kind, resize["elements"]) == ("elementwise", 4 * 16 * 16)
    # A 1-D pool (which the 2-D pool op cannot describe) reads its input, as a reduction does.
    pooled = decompose(nn.Sequential(nn.Conv1d(2, 4, 3), nn.AdaptiveAvgPool1d(1)), (3, 2, 10))
    assert not pooled.unsupported
    assert [(op.kind, op.batch) for _, op in pooled.ops] == [("gemm", 1), ("elementwise", 3)]
    assert pooled.ops[1][1]["elements"] == 4 * 8


def test_untraceable_module_is_read_from_the_calls_of_one_forward_pass():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace this
                x = x * 2
            return self.b(self.a(x))

    d = decompose(Branchy(), (3, 4))
    assert d.method.startswith("calls of one forward pass") and not d.unsupported
    # The test's sum and comparison, then the branch a zero input takes (no doubling).
    assert [(name, op.kind) for name, op in d.ops] == [
        ("sum", "elementwise"), ("gt", "elementwise"), ("a", "linear"), ("b", "linear")]
    assert "other inputs may run other ops" in d.note


def test_a_transformer_layer_fx_cannot_trace_keeps_its_attention():
    # nn.TransformerEncoderLayer defeats fx; MultiheadAttention calls its out_proj's weights,
    # never the module, so hooks on leaves alone would drop the whole attention unseen, and
    # its residual adds and activation are functions called between modules.
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    d = decompose(layer, (2, 10, 32))
    assert d.method.startswith("calls of one forward pass") and not d.unsupported
    assert d.note.startswith("torch.fx could not trace the model (") and d.untraced[""]
    names = [name for name, _ in d.ops]
    assert names[:5] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.attention", "self_attn.out_proj"]
    att = d.ops[3][1]
    assert (att.kind, att["seq_len"], att["heads"], att["head_dim"], att.batch) == (
        "attention", 10, 4, 8, 2)
    assert {"linear1", "linear2", "norm1", "norm2", "relu"} <= set(names)
    assert names.count("add") == 2 and len(names) == 12
    assert decompose(nn.Linear(4, 2), (3, 4)).note is None


def test_a_container_fx_keeps_whole_is_decomposed_on_its_own():
    # fx keeps torch.nn modules whole; a TransformerEncoder inside a traceable model is then
    # decomposed from the shape it is called with (its layers from their calls, as fx cannot
    # trace it).
    class LanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.enc = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True), 2,
                enable_nested_tensor=False)
            self.head = nn.Linear(16, 100)

        def forward(self, ids):
            return self.head(self.enc(self.emb(ids)))

    with pytest.raises(RuntimeError, match="Long, Int"):
        decompose(LanguageModel(), (2, 7))
    d = decompose(LanguageModel(), (2, 7), input_dtype="int64")
    assert d.method == "fx" and not d.unsupported and list(d.untraced) == ["enc"]
    assert d.note.startswith("torch.fx could not trace enc (")
    names = [name for name, _ in d.ops]
    assert names[0] == "emb" and names[-1] == "head"
    assert names.count("enc.layers.1.self_attn.attention") == 1
    assert len([n for n in names if n.startswith("enc.layers.")]) == 2 * 12
    assert names.count("enc.layers.0.add") == 2
    emb = d.ops[0][1]
    assert (emb.kind, emb["elements"], emb.batch, emb.dtype) == ("elementwise", 7 * 16, 2, "fp32")


def test_token_ids_are_drawn_below_every_embedding_table_from_a_fixed_seed():
    from collectors.networks.decompose import example_inputs, token_range

    class Padded(nn.Module):
        """Refuses padding (id 0) and ids past its smaller table, as a model may."""

        def __init__(self):
            super().__init__()
            self.words, self.positions = nn.Embedding(1000, 8), nn.Embedding(64, 8)

        def forward(self, ids):
            if bool((ids == 0).any()) or int(ids.max()) >= 64:
                raise ValueError("padding or out of range")
            return self.words(ids) + self.positions(ids)

    assert token_range(Padded()) == 64 and token_range(nn.Linear(2, 2)) is None
    assert token_range(nn.EmbeddingBag(30, 4)) == 30
    ids, mask = example_inputs([(4, 500), (4, 500)], torch.float32, "int64+float", random=True,
                               ids_below=64)
    assert ids.dtype == torch.int64 and int(ids.min()) == 1 and int(ids.max()) == 63
    assert torch.equal(ids, example_inputs((4, 500), torch.float32, "int64", random=True,
                                           ids_below=64)[0])  # from a fixed seed
    assert mask.dtype == torch.float32 and float(mask.std()) > 0.5
    # not drawn (random=False), or with no table to stay below: zeros
    assert not example_inputs((2, 3), torch.float32, "int64", ids_below=64)[0].any()
    assert not example_inputs((2, 3), torch.float32, "int64", random=True)[0].any()
    fn, _ = forward_pass(Padded(), (2, 16), CpuDevice(), "int64")
    assert tuple(fn().shape) == (2, 16, 8)


def test_calls_under_autocast_are_costed_in_the_dtype_they_run_in():
    # fx's graph keeps no autocast region: traced, the bf16 part would be priced as fp32.
    class HalfInside(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 8)

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.a(x).relu()
            return self.b(y.float())

    d = decompose(HalfInside(), (2, 64))
    assert [(name, op.kind, op.dtype) for name, op in d.ops] == [
        ("a", "linear", "bf16"), ("relu", "elementwise", "bf16"), ("b", "linear", "fp32")]
    assert d.untraced[""] == "it runs calls under torch.autocast, which fx does not keep"
    assert decompose(nn.Linear(4, 2), (3, 4)).untraced == {}


def test_a_model_is_decomposed_on_the_inputs_a_measurement_runs_it_on():
    # Top-1 routing to four experts: which expert takes which rows depends on the values. On
    # zeros every row would go to one expert; the decomposition runs the seeded random inputs
    # that forward_pass measures on, so its experts' rows are those measured.
    from collectors.networks.decompose import example_inputs

    class Experts(nn.Module):
        def __init__(self, d: int = 32, experts: int = 4):
            super().__init__()
            self.router = nn.Linear(d, experts)
            self.experts = nn.ModuleList(nn.Linear(d, d) for _ in range(experts))

        def forward(self, x):
            choice = self.router(x).argmax(-1)
            out = torch.zeros_like(x)
            for i, expert in enumerate(self.experts):
                out[choice == i] = expert(x[choice == i])
            return out

    torch.manual_seed(0)
    model = Experts()
    d = decompose(model, (64, 32))
    rows = {name: op.batch for name, op in d.ops if name.startswith("experts.")}
    assert len(rows) == 4 and sum(rows.values()) == 64 and max(rows.values()) < 64
    assert not d.empty and not d.unsupported
    measured = example_inputs((64, 32), torch.float32, random=True)[0]
    with torch.no_grad():
        choice = model.router(measured).argmax(-1)
    assert rows == {f"experts.{i}": int((choice == i).sum()) for i in range(4)}
    assert torch.equal(measured, example_inputs((64, 32), torch.float32, random=True)[0])


def test_calls_on_empty_tensors_are_named_not_a_crash():
    # A boolean mask of the example input that selects nothing: the calls after it ran on
    # empty tensors, whose sizes depend on the data. They are named in the note (costed as
    # nothing), an uncosted kind among them stays uncosted, and free ones go unmentioned.
    class Selects(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            picked = self.fc(x[x.sum(-1) > 1e9]).sum(0)
            return picked + torch.masked_select(x, x > 1e9).sum()

    d = decompose(Selects(), (8, 16))
    assert d.empty == ["fc (Linear)", "sum_2 (sum)", "sum_3 (sum)"]
    assert d.unsupported == ["masked_select (masked_select)"]
    assert [name for name, _ in d.ops] == ["sum_1", "gt", "gt_1", "add"]
    assert "3 calls ran on empty tensors on the example input" in d.note
    assert "fc (Linear), sum_2 (sum), sum_3 (sum)" in d.note

    class Branchy(Selects):  # the same read from the calls of one forward pass
        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace this
                x = x + 1
            return self.fc(x[x.amax(-1) > 1e9]).exp()

    d = decompose(Branchy(), (8, 16))
    assert d.method.startswith("calls of one forward pass")
    assert d.empty == ["fc (Linear)", "exp (exp)"] and not d.unsupported
    # the branch the seeded example input takes (its sum is positive)
    assert [name for name, _ in d.ops] == ["sum", "gt", "add", "amax", "gt"]
    assert d.note.startswith("torch.fx could not trace the model (") and "; 2 calls ran" in d.note


def test_a_model_on_the_meta_device_decomposes_as_on_the_cpu():
    from collectors.networks.decompose import on_meta_device

    class Positions(nn.Module):
        """Makes tensors in its forward (positions), as rotary and learned-position models do."""

        def __init__(self):
            super().__init__()
            self.emb, self.pos = nn.Embedding(100, 16), nn.Embedding(32, 16)
            self.layer = nn.TransformerDecoderLayer(16, 2, 32, batch_first=True)

        def forward(self, ids):
            x = self.emb(ids) + self.pos(torch.arange(ids.shape[1]))
            return self.layer(x, x)

    on_cpu = decompose(Positions(), (2, 7), input_dtype="int64")
    with torch.device("meta"):
        model = Positions()
    assert on_meta_device(model) and not on_meta_device(Positions())
    on_meta = decompose(model, (2, 7), input_dtype="int64")
    assert on_meta.ops == on_cpu.ops and len(on_meta.ops) == 22 and not on_meta.unsupported

    class Selects(nn.Module):  # sizes that depend on values, which the meta device has none of
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(x[x.sum(-1) > 0])

    with torch.device("meta"):
        model = Selects()
    with pytest.raises(DecomposeError, match="on the meta device, which holds no values, its "
                       "forward needs some .*build it on the CPU"):
        decompose(model, (8, 16))


def test_a_transformer_fx_keeps_whole_is_decomposed_from_all_its_arguments():
    # nn.Transformer and its decoder take two sequences, a mask and flags: the container is
    # run on its own with tensors of the shapes fx propagated and the other arguments as given.
    class Translator(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.t = nn.Transformer(16, 2, 1, 2, 32, batch_first=True)
            self.head = nn.Linear(16, 50)

        def forward(self, src, tgt):
            mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            return self.head(self.t(self.emb(src), self.emb(tgt), tgt_mask=mask,
                                    tgt_is_causal=True))

    d = decompose(Translator(), [(2, 9), (2, 6)], input_dtype="int64")
    assert d.method == "fx" and not d.unsupported and list(d.untraced) == ["t"]
    assert "keywords or arguments other than tensors" in d.untraced["t"]
    attention = {name: op for name, op in d.ops if op.kind == "attention"}
    assert sorted(attention) == ["t.decoder.layers.0.multihead_attn.attention",
                                 "t.decoder.layers.0.self_attn.attention",
                                 "t.decoder.layers.1.multihead_attn.attention",
                                 "t.decoder.layers.1.self_attn.attention",
                                 "t.encoder.layers.0.self_attn.attention"]
    cross = attention["t.decoder.layers.1.multihead_attn.attention"]
    assert (cross["seq_len"], cross["kv_len"], cross.batch) == (6, 9, 2)
    assert attention["t.encoder.layers.0.self_attn.attention"]["seq_len"] == 9
    # the two embeddings, the mask's triu, the encoder layer's two adds and activation and
    # each decoder layer's three adds and activation; six linears an encoder layer, ten a
    # decoder layer, and the head
    assert d.kinds() == {"elementwise": 2 + 1 + 3 + 2 * 4, "linear": 6 + 2 * 10 + 1,
                         "attention": 5, "norm": 10}

    # A decoder called with two tensors only is traced as the model is where fx can.
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerDecoderLayer(16, 2, 32, batch_first=True)

        def forward(self, x, memory):
            return self.layer(x, memory)

    d = decompose(Decoder(), [(2, 5, 16), (2, 7, 16)])
    assert d.method == "fx" and not d.unsupported and not d.untraced
    assert [name for name, op in d.ops if op.kind == "attention"] == [
        "layer.self_attn.attention", "layer.multihead_attn.attention"]
    # fx keeps no size computed in the forward: the calls of one forward pass cost such a call.
    class Sized(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Transformer(16, 2, 1, 1, 32, batch_first=True)

        def forward(self, x):
            mask = self.layer.generate_square_subsequent_mask(x.size(1))
            return self.layer(x, x, tgt_mask=mask, tgt_is_causal=x.size(1) > 1)

    d = decompose(Sized(), (2, 5, 16))
    assert d.method.startswith("calls of one forward pass") and not d.unsupported
    assert d.untraced[""] == "fx keeps layer whole, called with values the forward computes"
    assert d.kinds() == {"elementwise": 1 + 3 + 4, "linear": 6 + 10, "attention": 3,
                         "norm": 7}


def test_calls_see_attention_called_with_keywords_and_inside_forwards_of_their_own():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2)  # sequence first
            self.odd = Doubling(16, 16)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace this
                x = x + 1
            y = self.mha(query=x, key=x, value=x, need_weights=False)[0]
            return self.odd(y)

    class Doubling(nn.Linear):  # a forward of its own: costed by the calls it makes
        def forward(self, x):
            return 2 * super().forward(x)

    d = decompose(Untraceable(), (7, 3, 16))
    att = next(op for _, op in d.ops if op.kind == "attention")
    assert (att["seq_len"], att.batch) == (7, 3) and not d.unsupported
    assert [(name, op.kind) for name, op in d.ops if name.startswith("odd")] == [
        ("odd.linear", "linear"), ("odd.mul", "elementwise")]
    # A torch.nn subclass that keeps Linear's forward is a Linear.
    q = nn.modules.linear.NonDynamicallyQuantizableLinear(16, 8)
    assert [op.kind for _, op in decompose(q, (2, 16)).ops] == ["linear"]


@pytest.mark.parametrize("traceable", [True, False])
def test_cross_attention_projects_keys_of_their_own_length(traceable):
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.memory = nn.Parameter(torch.zeros(9, 2, 12))  # (length, batch, kdim)
            self.mha = nn.MultiheadAttention(16, 4, kdim=12, vdim=12, bias=False)

        def forward(self, x):
            if not traceable and x.sum() > 0:  # data-dependent: fx cannot trace this
                x = x + 1
            return self.mha(x, self.memory, self.memory)[0]

    d = decompose(Cross(), (5, 2, 16))
    assert d.method.startswith("fx" if traceable else "calls") and not d.unsupported
    mha = [op for name, op in d.ops if name.startswith("mha.")]
    q, k, v, att, o = mha
    assert (q["in_features"], q["tokens"], k["in_features"], k["tokens"], v["in_features"]) == (
        16, 5, 12, 9, 12)
    assert (att["seq_len"], att["kv_len"], att["heads"], att["head_dim"], att.batch) == (
        5, 9, 4, 4, 2)
    assert (o["in_features"], o["out_features"], o["tokens"], o.batch) == (16, 16, 5, 2)
    assert {op["bias"] for op in (q, k, v, o)} == {0}


def test_functional_calls_cost_as_their_modules_do():
    import torch.nn.functional as F

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
            self.dw = nn.Conv2d(16, 16, 5, padding=2, groups=16)
            self.norm = nn.LayerNorm(16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            c = self.conv
            x = F.conv2d(x, c.weight, c.bias, c.stride, c.padding, groups=c.groups)
            x = F.conv2d(x, self.dw.weight, self.dw.bias, padding=2, groups=16)
            x = x.flatten(2).transpose(1, 2)
            x = F.layer_norm(x, (16,), self.norm.weight, self.norm.bias)
            return F.linear(x, self.fc.weight, self.fc.bias)

    class Modules(Functional):
        def forward(self, x):
            x = self.dw(self.conv(x)).flatten(2).transpose(1, 2)
            return self.fc(self.norm(x))

    shape = (2, 8, 12, 12)
    functional, modules = decompose(Functional(), shape), decompose(Modules(), shape)
    assert functional.method == "fx" and not functional.unsupported
    assert [op for _, op in functional.ops] == [op for _, op in modules.ops]
    assert [op.kind for _, op in modules.ops] == ["conv2d", "depthwise_conv2d", "norm", "linear"]

    class Addmm(nn.Module):
        def forward(self, x):
            return torch.addmm(x[:, :3], x, x.t()[:, :3]) + torch.baddbmm(
                x[None, :, :3], x[None], x.t()[None, :, :3]).sum(0)

    class Reduce(nn.Module):  # a reduction's traffic is its input
        def forward(self, x):
            return x.mean(dim=(2, 3)) + torch.sum(x, dim=(2, 3))

    assert [op["elements"] for _, op in decompose(Reduce(), (2, 3, 4, 5)).ops] == [60, 60, 3]
    ops = [op for _, op in decompose(Addmm(), (4, 6)).ops if op.kind == "gemm"]
    assert [(op["m"], op["n"], op["k"], op.batch) for op in ops] == [(4, 3, 6, 1), (4, 3, 6, 1)]

    class Sdpa(nn.Module):  # one head as (batch, seq, dim), and causal heads
        def forward(self, x):
            one = F.scaled_dot_product_attention(x, x, x)
            b, t, c = x.shape
            heads = x.view(b, t, 2, c // 2).transpose(1, 2)  # sizes: Python arithmetic
            return one.sum() + F.scaled_dot_product_attention(heads, heads, heads,
                                                              is_causal=True).sum()

    d = decompose(Sdpa(), (2, 5, 8))
    assert d.method == "fx" and not d.unsupported, d.unsupported
    att = [op for _, op in d.ops if op.kind == "attention"]
    assert [(op["seq_len"], op["heads"], op["head_dim"], op["causal"], op.batch) for op in att
            ] == [(5, 1, 8, 0, 2), (5, 2, 4, 1, 2)]
    # As nn.MultiheadAttention's op states it: keys of the query's length go unstated.
    assert {op["kv_len"] for op in att} == {0}


@pytest.mark.parametrize("arch", [
    "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    "|none~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|skip_connect~2|"])
def test_nb201_torch_network_matches_the_op_list_the_service_uses(arch):
    # Op for op (parameters included), so a network model fitted on measured networks is asked
    # about the same ops when a client sends a cell string.
    from collections import Counter

    model, shape = build({"family": "nb201", "arch": arch, "resolution": 32}, batch=2)
    d = decompose(model, shape)
    assert not d.unsupported
    measured = Counter(json.dumps(op.to_dict(), sort_keys=True) for _, op in d.ops)
    listed = Counter(json.dumps(op.to_dict(), sort_keys=True)
                     for _, op in network_ops(arch, batch=2))
    assert measured == listed


def test_other_families_build_and_decompose():
    for family in ("resnet", "mobilenet", "transformer"):
        m, s = build(sample_config(family, np.random.default_rng(1)), 2)
        dd = decompose(m, s)
        assert not dd.unsupported and dd.flops > 0 and m(torch.randn(*s)).shape[0] == 2


def test_network_sweep_resumes_after_interruption(store):
    plan = network_plan(["resnet", "transformer"], 2, 1, 0)
    sweeper = NetworkSweep(store, CpuDevice(), QUICK, threads=1, progress=False)
    sweep_id = sweeper.create(plan, "network")
    real = sweeper.measure
    calls = []

    def flaky(cfg, sid, did):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(cfg)
        return real(cfg, sid, did)

    sweeper.measure = flaky
    first = sweeper.run(sweep_id)
    assert first.interrupted and first.done == 2
    sweeper.measure = real
    second = sweeper.run(sweep_id)
    assert second.already_done == 2 and second.done == 2 and not second.interrupted
    with store.session() as s:
        per_key = dict(s.execute(select(Measurement.config_key, func.count())
                                 .group_by(Measurement.config_key)).all())
        assert len(per_key) == 4 and set(per_key.values()) == {1}
        assert s.get(Sweep, sweep_id).status == "done"
    nets = load_networks(store, CpuDevice().info.model)
    assert len(nets) == 4 and all(len(ops) > 3 for ops in nets.ops)


def test_layer_sweep_and_network_model_round_trip(store):
    sweeper = NetworkSweep(store, CpuDevice(), QUICK, threads=1, progress=False)
    grid = [c for c in layer_grid(["linear"], [1])][:12]
    sweeper.run(sweeper.create(grid, "layers"))
    ops, ms = load_layers(store, CpuDevice().info.model)
    assert len(ops) == 12 and all(op.kind == "linear" for op in ops) and np.all(ms > 0)
    kinds = OpKindForests(n_estimators=10).fit(ops, ms)
    assert set(kinds.models) == {"linear"} and set(kinds.fast) == {"linear"}
    x = np.stack([op_features(op) for op in ops])  # compiled == scikit-learn's predict
    assert np.array_equal(kinds.predict(ops), np.exp(kinds.models["linear"].predict(x)))
    nets = [[Op.make("linear", {"in_features": 64 * (i % 4 + 1), "out_features": 64,
                                "tokens": 8 * (i % 5 + 1)})] * (i % 3 + 1) for i in range(40)]
    y = np.array([0.01 * len(n) + 1e-7 * sum(op_flops(o) for o in n) for n in nets])
    model = NetworkCostModel(kinds).fit(nets[:30], y[:30])
    pred = model.predict(nets[30:])  # held-out networks of an additive cost law
    assert np.median(np.abs(pred / y[30:] - 1)) < 0.1 and np.all(model.coef_ >= 0)


def test_recurrent_layers_are_swept_and_priced_by_a_forest_of_their_own(store):
    from predictor import network

    sweeper = NetworkSweep(store, CpuDevice(), QUICK, threads=1, progress=False)
    grid = [c for c in layer_grid(["recurrent"], [2]) if c["op"]["params"]["hidden"] == 64
            and c["op"]["params"]["steps"] == 10]
    assert {c["op"]["params"]["gates"] for c in grid} == {1, 3, 4} and len(grid) == 12
    summary = sweeper.run(sweeper.create(grid, "layers"))
    assert (summary.done, summary.failed) == (12, 0)
    ops, ms = load_layers(store, CpuDevice().info.model)
    assert len(ops) == 12 and {op.kind for op in ops} == {"recurrent"} and np.all(ms > 0)
    assert {op.batch for op in ops} == {2}
    kinds = OpKindForests(n_estimators=10).fit(ops, ms)
    assert set(kinds.models) == {"recurrent"} and np.all(kinds.predict(ops) > 0)
    # Layers alone fit no network model: the error says what else to measure.
    with pytest.raises(network.DataError, match=r"no whole-network measurements of .*; run "
                       r"hwnas collect network \(at least 5 networks, .*its 12 single-layer"):
        network.evaluate_and_fit(store, CpuDevice().info.model)

    # Networks that hold them: a per-step cost is learned (the count term counts steps).
    def net(steps: int, hidden: int) -> list[Op]:
        return [Op.make("recurrent", {"input_size": 16, "hidden": hidden, "steps": steps,
                                      "gates": 4}, "fp32", 2),
                Op.make("linear", {"in_features": hidden, "out_features": 2, "tokens": 1})]

    nets = [net(steps, hidden) for steps in (5, 10, 20, 40, 80) for hidden in (32, 64)]
    y = np.array([0.004 * ops[0].params["steps"] + 0.01 for ops in nets])
    model = NetworkCostModel().fit(nets, y)
    assert model.covers(net(60, 48)) and model.predict([net(60, 48)])[0] == pytest.approx(
        0.25, rel=0.1)
    # A GRU runs otherwise than the LSTMs it learned (oneDNN fuses an LSTM layer on a CPU).
    gru = [Op.make("recurrent", {**net(60, 48)[0].params, "gates": 3}, "fp32", 2)]
    assert model.uncovered(gru) == ("its training networks held no GRU recurrent layers (only "
                                    "LSTM), which run otherwise")
    kept = network.load(network.register(store, CpuDevice().info.model, model,
                                         {"networks": len(nets), "held_out": {}}))
    assert kept.variants_ == {"recurrent": {"LSTM"}} and not kept.covers(gru)
    # A model registered before the kind existed has no terms for it: loaded, it is padded.
    linear = _linear_nets(0, 12)
    fitted = NetworkCostModel().fit(linear, np.array([0.01 * len(n) for n in linear]))
    row = network.register(store, CpuDevice().info.model, fitted,
                           {"networks": 12, "held_out": {}})
    row.meta = {**row.meta, "coef": row.meta["coef"][:-3], "scale": row.meta["scale"][:-3]}
    old = network.load(row)
    assert np.allclose(old.predict(linear), fitted.predict(linear))
    assert not old.covers(net(10, 32))  # its networks held no recurrent ops


def _linear_nets(first: int, count: int) -> list[list[Op]]:
    return [[Op.make("linear", {"in_features": 32 * (i % 7 + 1), "out_features": 64,
                                "tokens": 4 * (i % 5 + 1)})] * (i % 4 + 2)
            for i in range(first, first + count)]


def test_each_machine_held_out_shows_how_the_network_model_carries_to_another():
    # Machine b launches 1.5x slower than machine a: a model fitted on one machine's networks
    # is off by that much on the other, which the held-out-device scores must show.
    nets = _linear_nets(0, 20) + _linear_nets(20, 20)
    base = np.array([0.02 * len(n) + 1e-7 * sum(op_flops(o) for o in n) for n in nets])
    frame = pd.DataFrame({"key": [f"net{i}" for i in range(40)], "ops": nets,
                          "latency_ms": base * np.repeat([1.0, 1.5], 20),
                          "device": ["a"] * 20 + ["b"] * 20})
    no_layers = pd.DataFrame({"op": [], "latency_ms": [], "device": []})
    scores = held_out_devices(frame, no_layers)
    assert set(scores) == {"a", "b"} and scores["a"]["networks"] == 20
    assert scores["b"]["median_ratio"] == pytest.approx(1 / 1.5, rel=0.1)
    assert scores["a"]["median_ratio"] == pytest.approx(1.5, rel=0.1)
    assert scores["a"]["within_10"] < 20 and scores["a"]["spearman"] > 0.8

    # The same architectures on both machines: holding one out leaves nothing to train on
    # (its architectures measured on the other would tell the model the answer).
    same = frame.assign(key=[f"net{i % 20}" for i in range(40)])
    assert held_out_devices(same, no_layers) == {}
    assert held_out_devices(frame[frame.device == "a"], no_layers) == {}


def test_a_network_model_answers_only_for_networks_like_those_it_learned_from():
    conv = Op.make("conv2d", {"in_channels": 8, "out_channels": 8, "kernel": 3, "height": 16,
                              "width": 16, "padding": 1})
    act = Op.make("elementwise", {"elements": 8 * 16 * 16})
    nets = [[conv, act] * n for n in range(10, 20)]
    y = np.array([0.5 + 0.03 * len(n) for n in nets])
    model = NetworkCostModel().fit(nets, y)
    assert (model.kinds_, model.min_layers_) == ({"conv2d", "elementwise"}, 20)
    assert model.covers([conv, act] * 5) and model.covers([conv, act] * 40)
    # A kind it never saw would cost nothing; a network far smaller would be mostly constant.
    fc = Op.make("linear", {"in_features": 8, "out_features": 8, "tokens": 4})
    assert not model.covers([conv, act] * 10 + [fc])
    assert model.uncovered([conv, act] * 10 + [fc]) == (
        "its training networks held no linear ops (only conv2d, elementwise)")
    # Another dtype: its rates are its own, and the note says how to learn them.
    half = [Op.make(o.kind, o.params, "bf16") for o in (conv, act)]
    assert model.uncovered(half * 10) == (
        "its training networks held no bf16 ops (a network model learns one dtype: `hwnas "
        "collect network --dtype bf16`, then `hwnas train --target network --dtype bf16`)")
    assert not model.covers([conv, act] * 4)
    assert model.uncovered([conv, act] * 4) == (
        "this network has 8 layers, under half the 20 of its smallest training network")
    assert model.covers([conv], network=False)  # single ops: no constant in their shares
    assert not model.covers([fc], network=False)
    # A kind every network held the same of went into the constant: far more of it is not
    # covered (kinds they held more or less of extrapolate).
    with_fc = NetworkCostModel().fit([n + [fc] for n in nets], y)
    assert with_fc.fixed_ == {"linear": (1, op_flops(fc))}
    assert with_fc.covers([conv, act] * 80 + [fc] * 4)
    assert with_fc.uncovered([conv, act] * 10 + [fc] * 5) == (
        "it has 5 linear ops, over 4x the 1 of every training network (the same in each, so "
        "their cost was never learned)")
    wide = Op.make("linear", {"in_features": 8, "out_features": 8, "tokens": 64})
    assert with_fc.uncovered([conv, act] * 10 + [wide]) == (
        "its linear ops run 8.19e-06 GFLOPs, over 4x the 5.12e-07 of every training network "
        "(the same in each, so their cost was never learned)")
    assert with_fc.uncovered([wide], network=False) == (
        "its training networks held linear ops the same in each, so their cost was never "
        "learned apart")
    assert with_fc.covers([conv], network=False)
    # Every network ran at batch 1: another batch was never learned (as ops alone neither).
    at_2 = [Op.make(op.kind, op.params, op.dtype, 2) for op in [conv, act] * 10]
    assert model.batches_ == (1, 1) and model.uncovered(at_2) == (
        "its batch is 2, and every training network ran at batch 1 (so how the cost grows "
        "with the batch was never learned)")
    assert not model.covers(at_2[:1], network=False)
    # where something else keeps it out at the model's own batch too, that is the reason given
    assert with_fc.uncovered([Op.make(op.kind, op.params, op.dtype, 2)
                              for op in [conv, act] * 10 + [fc] * 5]).startswith(
        "it has 5 linear ops, over 4x the 1 of every training network")
    # Batches that varied extrapolate, up to 4x the largest.
    by_batch = NetworkCostModel().fit(
        [[Op.make(op.kind, op.params, op.dtype, 1 + n % 3) for op in net]
         for n, net in enumerate(nets)], y)
    assert by_batch.batches_ == (1, 3) and by_batch.covers(at_2)
    at_13 = [Op.make(op.kind, op.params, op.dtype, 13) for op in [conv, act] * 10]
    assert by_batch.uncovered(at_13) == (
        "its batch is 13, over 4x the largest (3) its training networks ran at")


QUICK_CLI = ["--min-time", "0.005", "--min-reps", "3", "--warmup", "0", "--power-window", "0",
             "--rounds", "1", "--no-probe", "--no-progress"]
MLP_SOURCE = ("import torch.nn as nn\n"
              "def mlp():\n"
              "    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))\n")


def _store_with_user_module(tmp_path, monkeypatch, module: str, source: str):
    """(store, CPU device): a CPU store with a GEMM model, models registered under
    ``tmp_path``, and a user's module ``module`` of ``source`` importable."""
    from tests.test_service import cpu_store_with_gemm_model

    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HWNAS_MODELS", str(tmp_path / "models"))
    return cpu_store_with_gemm_model(tmp_path)


def test_collect_network_measures_your_own_model_for_the_network_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from predictor import network
    from tests.test_service import MASKED_SOURCE

    store, cpu = _store_with_user_module(
        tmp_path, monkeypatch, "mine", MLP_SOURCE
        + "class Unknown(nn.Module):\n"
          "    def __init__(self):\n"
          "        super().__init__()\n"
          "        self.fc, self.mix = nn.Linear(16, 16), nn.SmoothL1Loss(reduction='none')\n"
          "    def forward(self, x):\n"
          "        return self.mix(self.fc(x), x)\n"
          "def gru():\n"
          "    return nn.GRU(8, 16)\n"
          "def meta_mlp():\n"
          "    import torch\n"
          "    with torch.device('meta'):\n"
          "        return mlp()\n"
          "class Selects(nn.Module):\n"
          "    def __init__(self):\n"
          "        super().__init__()\n"
          "        self.fc = nn.Linear(16, 16)\n"
          "    def forward(self, x):\n"
          "        return self.fc(x[x.sum(-1) > 1e9])\n" + MASKED_SOURCE)
    quick = QUICK_CLI
    shapes = [arg for t in (2, 4, 8, 16, 32) for arg in ("--input-shape", f"{t},16")]
    r = CliRunner().invoke(main, ["collect", "network", "--db", store.url, "--module",
                                  "mine:mlp", *shapes, *quick])
    assert r.exit_code == 0 and "5 measured, 0 failed" in r.output, r.output
    nets = load_networks(store, cpu.info.model)
    assert set(nets.family) == {"module"} and sorted(len(ops) for ops in nets.ops) == [3] * 5
    assert sorted(ops[0].batch for ops in nets.ops) == [2, 4, 8, 16, 32]
    # The network model then answers for networks like it.
    network.train_and_register(store, cpu.info.model, folds=4)
    # A sequence-first layer's row holds its batch (3), not the input's first dimension (5).
    r = CliRunner().invoke(main, ["collect", "network", "--db", store.url, "--module",
                                  "mine:gru", "--input-shape", "5,3,8", *quick])
    assert r.exit_code == 0 and "1 measured" in r.output, r.output
    with store.session() as s:
        gru = s.execute(select(Measurement).order_by(Measurement.id.desc())).scalars().first()
        assert gru.batch == 3 and gru.params["input_shape"] == [5, 3, 8]
    # A model of two tensors (ids and a float mask) is measured as it is called.
    r = CliRunner().invoke(main, ["collect", "network", "--db", store.url, "--module",
                                  "mine:Masked", "--input-shape", "4,6+4,6", "--input-dtype",
                                  "int64+float", *quick])
    assert r.exit_code == 0 and "1 measured, 0 failed" in r.output, r.output
    with store.session() as s:
        two = s.execute(select(Measurement).order_by(Measurement.id.desc())).scalars().first()
        assert two.batch == 4 and two.params["input_shape"] == [[4, 6], [4, 6]]
        assert two.params["config"]["input_dtype"] == "int64+float"
        assert two.params["token_ids"] == "uniform in [1, 50)"  # below its nn.Embedding(50, ...)
        assert [op["kind"] for _, op in two.params["ops"]] == ["elementwise", "linear",
                                                              "elementwise"]
    r = CliRunner().invoke(main, ["predict", "network", "--db", store.url, "--module",
                                  "mine:mlp", "--input-shape", "12,16"])
    assert r.exit_code == 0 and "network model" in r.output, r.output
    for args, says in [
        (["--module", "mine:mlp"], "--module and --input-shape go together"),
        (["--module", "mine:mlp", "--input-shape", "2,16", "--family", "nb201"],
         "give --family or --module, not both"),
        (["--module", "mine:Unknown", "--input-shape", "2,3,16"],
         "not costed (no op kind covers them): mix (SmoothL1Loss); a network model learns "
         "only from"),
        (["--module", "mine:nothing", "--input-shape", "2,16"], "AttributeError"),
        (["--module", "mine:Selects", "--input-shape", "4,16"],
         "--module mine:Selects at 4,16: 1 of its calls ran on empty tensors on the example "
         "input (fc (Linear)): their sizes depend on the data"),
        (["--module", "mine:meta_mlp", "--input-shape", "2,16"],
         "collect network --module: the model is on the meta device (its parameters hold no "
         "data), so it cannot be run"),
        (["--resume", "1", "--module", "mine:mlp", "--input-shape", "2,16"],
         "--resume carries on its own sweep"),
    ]:
        r = CliRunner().invoke(main, ["collect", "network", "--db", store.url, *args, *quick])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output


def test_networks_and_layers_are_measured_in_the_dtype_asked_for(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwnas.cli import main
    from predictor import network
    store, cpu = _store_with_user_module(tmp_path, monkeypatch, "mine16", MLP_SOURCE)
    quick = QUICK_CLI

    def collect(*args):
        r = CliRunner().invoke(main, ["collect", "network", "--db", store.url, *args, *quick])
        assert r.exit_code == 0 and "0 failed" in r.output, r.output

    # The same 4 architectures in fp32 and in bf16; fp32 plans name no dtype, as before.
    assert network_plan(["nb201"], 2, 1, 0) == network_plan(["nb201"], 2, 1, 0, "fp32")
    collect("--family", "nb201", "--count", "4")
    collect("--family", "nb201", "--count", "4", "--dtype", "bf16")
    collect("--module", "mine16:mlp", "--input-shape", "4,16", "--dtype", "bf16")
    with store.session() as s:
        rows = s.execute(select(Measurement.dtype, Measurement.params)
                         .where(Measurement.op_kind == "network")).all()
    by_dtype = {d: [p for dt, p in rows if dt == d] for d in ("fp32", "bf16")}
    assert len(by_dtype["fp32"]) == 4 and len(by_dtype["bf16"]) == 5, rows
    for dtype, params in by_dtype.items():
        assert {op["dtype"] for p in params for _, op in p["ops"]} == {dtype}
    assert [p["config"]["arch"] for p in by_dtype["fp32"]] == [
        p["config"]["arch"] for p in by_dtype["bf16"] if "arch" in p["config"]]

    # A layer sweep in fp16: the attention layer has no parameters to say so; its input does.
    grid = layer_grid(["attention", "linear"], [1], "fp16")
    assert {Op.from_dict(c["op"]).dtype for c in grid} == {"fp16"}
    sweeper = NetworkSweep(store, CpuDevice(), QUICK, threads=1, progress=False)
    sweep = sweeper.create([c for c in grid if c["op"]["kind"] == "attention"][:1], "layers")
    assert sweeper.run(sweep).done == 1
    with store.session() as s:
        layer = s.execute(select(Measurement).where(Measurement.sweep_id == sweep)).scalar_one()
        assert layer.status == "ok" and layer.dtype == "fp16", layer.error
    # and recurrent layers, whose forest prices them in sums of op predictions
    rnn = [c for c in layer_grid(["recurrent"], [1]) if c["op"]["params"]["hidden"] == 32
           and c["op"]["params"]["steps"] == 10][:5]
    assert sweeper.run(sweeper.create(rnn, "layers")).done == 5

    # A network model learns one dtype: several stored, it must be told which.
    with pytest.raises(network.DataError, match=r"dtype: networks of .* in several dtypes "
                                                r"are stored, bf16 \(5\), fp32 \(4\)"):
        network.train_and_register(store, cpu.info.model, folds=2)
    row, metrics = network.train_and_register(store, cpu.info.model, folds=2, dtype="bf16")
    assert metrics["networks"] == 5 and row.meta["dtypes"] == ["bf16"]
    r = CliRunner().invoke(main, ["train", "--db", store.url, "--target", "network", "--dtype",
                                  "fp32", "--folds", "2"])
    assert r.exit_code == 0 and "from 4 networks" in r.output, r.output
    assert "it answers networks of fp32 " in r.output, r.output
    assert "summed from op predictions, whose recurrent layers its forest of the swept ones " \
           "prices" in r.output, r.output
    # One network model per dtype: each network is answered by the latest that learned its
    # dtype (v2 is fp32's, v1 bf16's), not only by the latest of all.
    from hwnas.service.engine import PredictionEngine

    engine = PredictionEngine(store)
    nets = load_networks(store, cpu.info.model)
    for dtype, version in (("fp32", 2), ("bf16", 1)):
        ops = next(o for f, o in zip(nets.family, nets.ops, strict=True)
                   if f == "nb201" and o[0].dtype == dtype)
        _, v, cost, _ = engine.predict_network(cpu.info.model, 0, ops)
        assert (v, cost.source.startswith("network model")) == (version, True), (dtype, cost)
    # The metric of the versions that answer shows both, the bf16 one under a target of its own.
    served = [(t, v) for d, t, v in engine.serving() if d == cpu.info.model and t != "gemm"]
    assert served == [("network", 2), ("network/bf16", 1)], served
    r = CliRunner().invoke(main, ["models", "--db", store.url])
    rows = [line for line in r.output.splitlines() if " network " in line]
    assert len(rows) == 2 and " 1 " in rows[0] and rows[0].endswith(" bf16 networks"), r.output
    assert " 2 " in rows[1] and rows[1].endswith(" yes"), r.output
    # and so does a running service, to its clients (ModelMetadata.default_for_dtypes)
    from hwnas.client import PredictorClient
    from hwnas.service.server import Server, ServerConfig

    server = Server(PredictionEngine(store), ServerConfig(port=0)).start()
    try:
        with PredictorClient(f"127.0.0.1:{server.port}", timeout_s=20) as client:
            client.wait_ready(30)
            listed = {m.version: (m.latest, list(m.default_for_dtypes))
                      for m in client.list_models() if m.target == "network"}
            # one model's metadata, of a target and, for a network model, a dtype
            meta = {dtype: client.model_metadata(cpu.info.model, target="network", dtype=dtype)
                    for dtype in ("", "bf16", "fp32")}
            assert {d: (m.version, m.latest, list(m.default_for_dtypes), list(m.dtypes))
                    for d, m in meta.items()} == {"": (2, True, [], ["fp32"]),
                                                  "bf16": (1, False, ["bf16"], ["bf16"]),
                                                  "fp32": (2, True, [], ["fp32"])}
            assert client.model_metadata(cpu.info.model, 1, target="network").version == 1
            import grpc

            for target, dtype, says in [("forest", "", "target: expected gemm, network, nb201"),
                                        ("network", "fp8", "dtype: ")]:
                with pytest.raises(grpc.RpcError) as err:
                    client.model_metadata(cpu.info.model, target=target, dtype=dtype)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert says in err.value.details(), err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                client.model_metadata(cpu.info.model, target="nb201")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert listed == {1: (False, ["bf16"]), 2: (True, [])}, listed
        r = CliRunner().invoke(main, ["query", "models", "--server", f"127.0.0.1:{server.port}"])
        assert r.exit_code == 0 and [line.endswith(" bf16 networks") for line in
                                     r.output.splitlines() if " network " in line] == [True, False]
    finally:
        server.stop(0)
    for args, says in [(["train", "--dtype", "fp16"], "--dtype goes with --target network"),
                       (["train", "--target", "network", "--dtype", "fp16"],
                        "dtype: no fp16 networks of"),
                       (["collect", "network", "--resume", "1", "--dtype", "bf16"],
                        "--resume carries on its own sweep")]:
        r = CliRunner().invoke(main, [*args, "--db", store.url])
        assert r.exit_code in (1, 2) and says in r.output and "Traceback" not in r.output, \
            r.output
    # Without --dtype, `hwnas train --target network` fits one model per dtype stored.
    r = CliRunner().invoke(main, ["train", "--db", store.url, "--target", "network", "--folds",
                                  "2"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("fp32 networks:") and "\nbf16 networks:" in r.output, r.output
    assert "network v3 from 4 networks" in r.output and "network v4 from 5 networks" in r.output


def test_a_users_module_is_found_in_the_current_directory(tmp_path, monkeypatch):
    # The `hwnas` command, unlike `python -m`, does not put the current directory on the path:
    # `hwnas predict network --module my_net:make` in the folder of my_net.py must still work.
    import sys

    (tmp_path / "my_cwd_net.py").write_text(
        "import torch.nn as nn\ndef make():\n    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_cwd_net", raising=False)
    assert isinstance(user_module("my_cwd_net:make"), nn.Linear)
    with pytest.raises(ValueError, match=r"No module named 'no_such_net' \(looked in the "
                                         r"current directory, .*, and the installed packages"):
        user_module("no_such_net:make")


@pytest.mark.parametrize("bad", [["cnn"], ["nb201", "vit"]])
def test_unknown_families_are_clear_errors(bad):
    with pytest.raises(ValueError, match="--family"):
        network_plan(bad, 1, 1, 0)


def test_proxyless_family_is_the_search_space_of_hwnas_search():
    from collectors.networks.zoo import proxyless_options
    from search.spaces import SpaceConfig, choices, fixed_network, input_shape

    rng = np.random.default_rng(3)
    for _ in range(4):
        cfg = sample_config("proxyless", rng)
        space = SpaceConfig("mobilenet", cfg["in_channels"], cfg["resolution"], cfg["width"],
                            cfg["depth"], cfg["classes"])
        assert choices(space) == proxyless_options(cfg["depth"])
        model, shape = build(cfg, 2)
        assert shape == input_shape(space, 2)
        ours = decompose(model, shape)
        theirs = decompose(fixed_network(space, cfg["arch"]), shape)
        assert not ours.unsupported
        assert [op.to_dict() for _, op in ours.ops] == [op.to_dict() for _, op in theirs.ops]


def test_gpu_network_sweep_needs_a_cuda_build_of_torch(store):
    import torch

    from collectors import nvml
    from collectors.devices import NvidiaGpu
    from tests.fake_nvml import FakeNvml

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA; the GPU path is tested in tests/test_gpu.py")
    nvml.set_nvml(FakeNvml())
    with pytest.raises(ValueError, match="cuda:0: this torch build has no CUDA"):
        NetworkSweep(store, NvidiaGpu(0), QUICK, progress=False)


def test_collect_network_and_adapt_device_errors(tmp_path):
    from click.testing import CliRunner

    from hwnas.cli import main

    db = f"sqlite:///{tmp_path / 's.db'}"
    r = CliRunner().invoke(main, ["collect", "network", "--db", db, "--device", "cuda:0",
                                  "--count", "1", "--no-progress"])
    assert r.exit_code != 0 and "cuda:0" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["adapt", "--db", db, "--device", "newdev"])
    assert r.exit_code == 2 and "--from-csv: required unless --device is cpu or cuda:N" in r.output


def test_a_network_sweep_probes_with_the_probe_it_is_given(store):
    # A GEMM sweep's probe has seen full speed; the demo hands it on. Not used when the policy
    # does not probe.
    given = object()
    on = NetworkSweep(store, CpuDevice(), TimingPolicy(probe=True), progress=False, probe=given)
    assert on.probe() is given
    off = NetworkSweep(store, CpuDevice(), TimingPolicy(probe=False), progress=False,
                       probe=given)
    assert off.probe() is None
