"""Torch models written the way users write them, predicted and measured on this CPU.

Decomposes nineteen networks (a ViT with an ``nn.TransformerEncoder``, a MobileNetV3-style block
with squeeze-and-excitation, a GPT block calling ``scaled_dot_product_attention``, a three-layer
CNN, a ResNet-18 at 224x224 at batches 1 and 16, VGG-16's first stages and a GELU MLP at sizes
whose fresh outputs pay the first touch of their pages on a CPU, a Llama-style stack with
RMSNorm and rotary embeddings, an LSTM text classifier, a two-layer bidirectional GRU, two
einsums of three operands, a linear layer followed by top-k and a sort, an ``nn.Transformer``
with a causal mask, ``nn.Bilinear``, distances to prototypes by ``torch.cdist``, an
``nn.EmbeddingBag`` classifier and a mixture of experts routing rows by their values), asks
the store's registered models for their latency as `hwnas predict network --module` does,
measures each here by the search's verification protocol, and prints predicted, measured and
their ratio with how the prediction was made (and how much of the prediction is the first
touch of fresh outputs; and the ratio a sum of op predictions had without the CPU's measured
first touch and pool rates, same GEMM model). It needs a GEMM model of this CPU in the store
(`hwnas demo` registers one).

    python benchmarks/user_networks.py [--db URL] [--min-time 0.1] [--only TEXT]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from collectors.devices import CpuDevice
from collectors.networks.decompose import decompose
from collectors.peaks import BEYOND_ROOFLINE
from collectors.store.db import Store
from hwnas.service.engine import PredictionEngine
from predictor.op_costs import SUM_OF_OPS, predict_ops, total
from search.run import measure_network


class ViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 8,
                 image: int = 32, classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        s = F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))
        return x * F.hardsigmoid(self.expand(s))


def mobilenet_v3_block() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        SqueezeExcite(16), nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


class GPTBlock(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class LlamaBlock(nn.Module):
    """RMSNorm, rotary position embedding (cos/sin), causal attention, SwiGLU feed-forward."""

    def __init__(self, dim: int = 128, heads: int = 4, hidden: int = 344):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    @staticmethod
    def rotary(x):
        t, d = x.shape[-2], x.shape[-1]
        angle = torch.arange(t)[:, None] * torch.arange(d // 2)[None, :] / d
        cos, sin = torch.cos(angle), torch.sin(angle)
        even, odd = x[..., ::2], x[..., 1::2]
        return torch.cat([even * cos - odd * sin, even * sin + odd * cos], -1)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(self.rotary(q), self.rotary(k), v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, c))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def llama_stack() -> nn.Module:
    return nn.Sequential(*[LlamaBlock() for _ in range(4)])


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


def resnet18() -> nn.Module:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


def vgg_stem() -> nn.Module:
    """The first VGG-16 stages with activations not in place: large fresh outputs."""
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, 1, 1), nn.ReLU(),
                         nn.MaxPool2d(2))


def gelu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))


class LSTMClassifier(nn.Module):
    """Token ids -> embedding -> LSTM -> the last step's class scores."""

    def __init__(self, vocab: int = 1000, dim: int = 64, hidden: int = 128, classes: int = 2):
        super().__init__()
        self.emb, self.lstm = nn.Embedding(vocab, dim), nn.LSTM(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.lstm(self.emb(x))[0][:, -1])


class BiGRU(nn.Module):
    def __init__(self, features: int = 32, hidden: int = 64):
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, 1)

    def forward(self, x):
        return self.fc(self.gru(x)[0][-1])


class LowRank(nn.Module):
    """x @ U @ V written as one einsum (a low-rank factorised layer)."""

    def __init__(self, d: int = 512, r: int = 32):
        super().__init__()
        self.u = nn.Parameter(torch.randn(d, r))
        self.v = nn.Parameter(torch.randn(r, d))

    def forward(self, x):
        return torch.einsum("bi,ir,rj->bj", x, self.u, self.v)


class Bilinear3(nn.Module):
    """A bilinear form per head: einsum of three operands with a batch index."""

    def __init__(self, heads: int = 8, d: int = 64):
        super().__init__()
        self.w = nn.Parameter(torch.randn(heads, d, d))

    def forward(self, x):  # x: (batch, heads, tokens, d)
        return torch.einsum("bhid,hde,bhje->bhij", x, self.w, x)


class TopK(nn.Module):
    """Scores, then top-k of them, then a sort: a retrieval head."""

    def __init__(self, d: int = 256, items: int = 4096):
        super().__init__()
        self.items = nn.Linear(d, items)

    def forward(self, x):
        scores = self.items(x)
        top = torch.topk(scores, 16, -1).values
        return torch.sort(top, -1).values


class Seq2Seq(nn.Module):
    """``nn.Transformer`` called as translation models call it: source and target sequences
    and a causal mask on the target."""

    def __init__(self, d: int = 128, heads: int = 4, layers: int = 2):
        super().__init__()
        self.t = nn.Transformer(d, heads, layers, layers, 4 * d, batch_first=True)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.t(src, tgt, tgt_mask=mask, tgt_is_causal=True)


class BilinearMix(nn.Module):
    """Two projections of the input mixed by ``nn.Bilinear``."""

    def __init__(self, d: int = 128, out: int = 64):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        self.mix = nn.Bilinear(d, d, out)

    def forward(self, x):
        return self.mix(self.a(x), self.b(x))


class Prototypes(nn.Module):
    """Distances to learned class prototypes (``torch.cdist``), as few-shot heads take them."""

    def __init__(self, d: int = 256, classes: int = 512):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.protos = nn.Parameter(torch.randn(classes, d))

    def forward(self, x):
        return -torch.cdist(self.embed(x), self.protos)


class BagOfWords(nn.Module):
    """``nn.EmbeddingBag`` (mean of token embeddings) and a linear classifier."""

    def __init__(self, vocab: int = 20000, d: int = 256, classes: int = 10):
        super().__init__()
        self.bag, self.head = nn.EmbeddingBag(vocab, d), nn.Linear(d, classes)

    def forward(self, ids):
        return self.head(self.bag(ids))


class Experts(nn.Module):
    """A mixture of experts: each row goes to the one of eight feed-forward experts its router
    scores highest (which rows, depends on the values)."""

    def __init__(self, d: int = 256, hidden: int = 512, experts: int = 8):
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
            for _ in range(experts))

    def forward(self, x):
        choice = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            picked = choice == i
            out[picked] = expert(x[picked])
        return out


# name -> (factory, input shape, input dtype)
NETWORKS = {
    "ViT (TransformerEncoder)": (ViT, (1, 3, 32, 32), "float"),
    "MobileNetV3 block + SE": (mobilenet_v3_block, (1, 3, 32, 32), "float"),
    "GPT block (sdpa)": (GPTBlock, (1, 16, 64), "float"),
    "3-layer CNN": (small_cnn, (1, 3, 32, 32), "float"),
    "ResNet-18 at 224x224": (resnet18, (1, 3, 224, 224), "float"),
    "ResNet-18, batch 16": (resnet18, (16, 3, 224, 224), "float"),
    "VGG stem, batch 8 at 224": (vgg_stem, (8, 3, 224, 224), "float"),
    "GELU MLP, 8192 tokens": (gelu_mlp, (8192, 512), "float"),
    "Llama-style stack, 4 blocks": (llama_stack, (1, 64, 128), "float"),
    "LSTM classifier, 50 tokens": (LSTMClassifier, (4, 50), "int64"),
    "2-layer BiGRU, 30 steps": (BiGRU, (30, 8, 32), "float"),
    "low-rank einsum, 3 operands": (LowRank, (64, 512), "float"),
    "per-head bilinear einsum": (Bilinear3, (4, 8, 32, 64), "float"),
    "linear, topk, sort": (TopK, (32, 256), "float"),
    "Transformer, causal mask": (Seq2Seq, ((1, 32, 128), (1, 24, 128)), "float"),
    "linears + nn.Bilinear": (BilinearMix, (64, 128), "float"),
    "cdist to prototypes": (Prototypes, (64, 256), "float"),
    "EmbeddingBag classifier": (BagOfWords, (32, 200), "int64"),
    "top-1 of 8 experts": (Experts, (512, 256), "float"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store URL (default: hwnas's default store)")
    ap.add_argument("--min-time", type=float, default=0.1,
                    help="timed seconds per measurement round (5 rounds)")
    ap.add_argument("--only", default="",
                    help="measure only the networks whose name contains this text")
    args = ap.parse_args()

    cpu = CpuDevice()
    engine = PredictionEngine(Store(args.db))
    print(f"{cpu.info.model}: predicted (store's models) against measured here\n")
    gemm = engine.model_for(cpu.info.model).model
    # the same GEMM model without the CPU's figures beyond the roofline (collectors.peaks)
    roofline_only = copy.copy(gemm)
    roofline_only.profile = {**gemm.profile, "peaks": {
        k: v for k, v in gemm.profile["peaks"].items() if k not in BEYOND_ROOFLINE}}
    print(f"{'network':<26} {'layers':>6} {'predicted ms':>12} {'measured ms':>11} "
          f"{'measured/pred':>13} {'first touch ms':>14} {'without figures':>15}  "
          "how predicted")
    for name, (make, shape, input_dtype) in NETWORKS.items():
        if args.only.lower() not in name.lower():
            continue
        model = make()
        d = decompose(model, shape, input_dtype=input_dtype)
        ops = [op for _, op in d.ops]
        _, version, answer, _ = engine.predict_network(cpu.info.model, 0, ops)
        m = measure_network(model, shape, cpu, min_time_s=args.min_time,
                            input_dtype=input_dtype)
        caution = " (measured while the machine ran slow)" if m.caution() else ""
        # measured / predicted with the roofline alone for memory-bound ops, as before the
        # first touch and pool rates were measured (sums of op predictions only)
        without = (f"{m.latency_ms / total(predict_ops(roofline_only, ops)).latency_ms:.2f}"
                   if answer.source.startswith(SUM_OF_OPS) else "-")
        print(f"{name:<26} {len(d.ops):>6} {answer.latency_ms:>12.4g} {m.latency_ms:>11.4g} "
              f"{m.latency_ms / answer.latency_ms:>13.2f} {answer.first_touch_ms:>14.3g} "
              f"{without:>15}  {answer.source} (v{version}){caution}")
        for note in filter(None, [d.note, d.unsupported and f"not costed: {d.unsupported}"]):
            print(f"{'':<26} note: {note}")


if __name__ == "__main__":
    main()
