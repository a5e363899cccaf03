"""How many torch modules and functions users commonly write the decomposition costs.

Decomposes each of 89 common layers and calls (norms, activations, paddings, pools, 3-D
convolutions, einsum, reductions, sorts, in-place methods, bilinear and point-set products,
transformer decoders, ...) on a small input and prints those it lists as not costed
(docs/results.md, "Common layers no op covered").

    python benchmarks/decompose_coverage.py
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from collectors.networks.decompose import decompose

MODULES = {
    "Conv3d": (nn.Conv3d(3, 8, 3), (1, 3, 8, 8, 8)),
    "BatchNorm3d": (nn.BatchNorm3d(3), (1, 3, 4, 4, 4)),
    "MaxPool3d": (nn.MaxPool3d(2), (1, 3, 4, 4, 4)),
    "RMSNorm": (nn.RMSNorm(16), (2, 5, 16)),
    "PReLU": (nn.PReLU(), (2, 16)),
    "Softplus": (nn.Softplus(), (2, 16)),
    "GLU": (nn.GLU(), (2, 16)),
    "LogSoftmax": (nn.LogSoftmax(-1), (2, 16)),
    "SELU": (nn.SELU(), (2, 16)),
    "Hardtanh": (nn.Hardtanh(), (2, 16)),
    "ZeroPad2d": (nn.ZeroPad2d(1), (1, 3, 8, 8)),
    "ReflectionPad2d": (nn.ReflectionPad2d(1), (1, 3, 8, 8)),
    "PixelShuffle": (nn.PixelShuffle(2), (1, 8, 4, 4)),
    "Softmax2d": (nn.Softmax2d(), (1, 3, 4, 4)),
    "AdaptiveAvgPool2d(7)": (nn.AdaptiveAvgPool2d(7), (1, 3, 14, 14)),
    "ChannelShuffle": (nn.ChannelShuffle(2), (1, 4, 4, 4)),
    "Unfold": (nn.Unfold(2), (1, 3, 4, 4)),
    "InstanceNorm1d": (nn.InstanceNorm1d(3), (1, 3, 8)),
    "LocalResponseNorm": (nn.LocalResponseNorm(2), (1, 3, 4, 4)),
    "Tanhshrink": (nn.Tanhshrink(), (2, 4)),
    "SiLU inplace": (nn.SiLU(inplace=True), (2, 4)),
    "CELU": (nn.CELU(), (2, 4)),
    "Threshold": (nn.Threshold(0.1, 0), (2, 4)),
    "Softsign": (nn.Softsign(), (2, 4)),
    "LogSigmoid": (nn.LogSigmoid(), (2, 4)),
    "Softmin": (nn.Softmin(-1), (2, 4)),
    "AvgPool2d(3,1,1)": (nn.AvgPool2d(3, 1, 1), (1, 3, 8, 8)),
    "LPPool2d": (nn.LPPool2d(2, 2), (1, 3, 8, 8)),
    "FractionalMaxPool2d": (nn.FractionalMaxPool2d(2, output_size=4), (1, 3, 8, 8)),
    "Unflatten": (nn.Unflatten(1, (2, 2)), (2, 4)),
    "LPPool3d": (nn.LPPool3d(2, 2), (1, 3, 4, 4, 4)),
}


class Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


FUNCTIONS = {
    "einsum": lambda x: torch.einsum("bij,bjk->bik", x, x),
    "F.pad": lambda x: F.pad(x, (1, 1)),
    "F.normalize": lambda x: F.normalize(x, dim=-1),
    "cumsum": lambda x: torch.cumsum(x, -1),
    "topk": lambda x: torch.topk(x, 2, -1).values,
    "sort": lambda x: torch.sort(x, -1).values,
    "argmax": lambda x: x.argmax(-1).float(),
    "x@x.T": lambda x: x @ x.transpose(-1, -2),
    "square": lambda x: x.square(),
    "x**2": lambda x: x**2,
    "var": lambda x: x.var(-1),
    "std": lambda x: x.std(-1),
    "norm": lambda x: x.norm(dim=-1),
    "rms": lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
    "F.rms_norm": lambda x: F.rms_norm(x, (x.shape[-1],)),
    "softmax method": lambda x: x.softmax(-1),
    "tril mask": lambda x: x.masked_fill(torch.tril(torch.ones(4, 4)) == 0, 0.0),
    "F.dropout": lambda x: F.dropout(x, 0.1, False),
    "F.glu": lambda x: F.glu(x, -1),
    "roll": lambda x: torch.roll(x, 1, -1),
    "flip": lambda x: torch.flip(x, [-1]),
    "gather": lambda x: torch.gather(x, -1, torch.zeros(2, 4, 4, dtype=torch.long)),
    "index_select": lambda x: torch.index_select(x, -1, torch.tensor([0, 1])),
    "cos/sin": lambda x: torch.cos(x) + torch.sin(x),
    "F.one_hot": lambda x: F.one_hot(x.long().clamp(0, 3), 4).float(),
    "baddbmm": lambda x: torch.baddbmm(x, x, x),
    "bmm": lambda x: torch.bmm(x, x),
    "outer": lambda x: x[..., None] * x[..., None, :],
    "clamp_min": lambda x: x.clamp_min(0),
    "reciprocal": lambda x: x.reciprocal(),
    "floor/round/sign": lambda x: x.floor() + x.round() + x.sign(),
    "logsumexp": lambda x: x.logsumexp(-1),
    "prod": lambda x: x.prod(-1),
    "any": lambda x: (x > 0).any(-1).float(),
    "add_": lambda x: x.add_(1),
    "relu_": lambda x: x.relu_(),
    "einsum of 3": lambda x: torch.einsum("bij,bjk,bkl->bil", x, x, x),
    "kthvalue": lambda x: x.kthvalue(2, -1).values,
    "median": lambda x: x.median(-1).values,
    "argsort": lambda x: x.argsort(-1).float(),
    "F.cosine_similarity": lambda x: F.cosine_similarity(x, x, -1),
    "F.local_response_norm": lambda x: F.local_response_norm(x[None], 2)[0],
    "F.bilinear": lambda x: F.bilinear(x, x, torch.ones(3, 4, 4)),
    "tensordot": lambda x: torch.tensordot(x, x, dims=([2], [1])),
    "matmul by a vector": lambda x: x @ torch.ones(4),
    "cdist": lambda x: torch.cdist(x, x),
    "F.unfold": lambda x: F.unfold(x[None], 2),
    "linalg.vector_norm": lambda x: torch.linalg.vector_norm(x, dim=-1),
    "repeat_interleave": lambda x: x.repeat_interleave(2, -1),
    "kron": lambda x: torch.kron(x[0], x[0]),
    "diag_embed": lambda x: torch.diag_embed(x).sum(-1),
    "nan_to_num": lambda x: torch.nan_to_num(x),
    "bucketize": lambda x: torch.bucketize(x, torch.tensor([0.0, 1.0])).float(),
    "F.grid_sample": lambda x: F.grid_sample(x[None], torch.zeros(1, 4, 4, 2))[0],
}


class Pair(nn.Module):
    """``layer(x, x)``: a layer of two inputs."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, x)


class Decoder(nn.Module):
    """A sequence-to-sequence model around ``nn.Transformer``, with a causal mask."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Transformer(16, 2, 1, 1, 32, batch_first=True)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.layer(src, tgt, tgt_mask=mask, tgt_is_causal=True)


# Models of two inputs or of token ids: (model, input shape(s), input dtype).
MODELS = {
    "Bilinear": (Pair(nn.Bilinear(8, 8, 4)), (2, 8), "float"),
    "TransformerDecoderLayer": (Pair(nn.TransformerDecoderLayer(16, 2, 32, batch_first=True)),
                                (2, 5, 16), "float"),
    "Transformer with a mask": (Decoder(), [(2, 7, 16), (2, 5, 16)], "float"),
    "EmbeddingBag": (nn.Sequential(nn.EmbeddingBag(50, 8)), (2, 6), "int64"),
}


def main() -> None:
    warnings.filterwarnings("ignore")
    missed = [
        name
        for name, (layer, shape) in MODULES.items()
        if decompose(nn.Sequential(nn.Identity(), layer), shape).unsupported
    ]
    missed += [name for name, fn in FUNCTIONS.items() if decompose(Call(fn), (2, 4, 4)).unsupported]
    missed += [name for name, (model, shape, kind) in MODELS.items()
               if decompose(model, shape, input_dtype=kind).unsupported]
    print(
        f"{len(MODULES) + len(FUNCTIONS) + len(MODELS)} layers and calls; {len(missed)} not "
        "costed: "
        f"{', '.join(missed) or 'none'}"
    )


if __name__ == "__main__":
    main()
