"""Networks built locally (no pretrained weights) for network sweeps: NAS-Bench-201 cells, the
MobileNet/ProxylessNAS-style search space of ``hwnas search`` ("proxyless"), and ResNet-,
MobileNetV2- and small-transformer-style families with sampled hyperparameters.

Every sampled architecture is a JSON-able config; :func:`build` turns a config back into the
same torch module and input shape, so a stored measurement can be rebuilt and re-measured. A
config of family ``space`` is one fixed architecture of a search space at the search's own input,
width and depth: its ``space``, ``in_channels``, ``resolution``, ``width``, ``depth``,
``classes`` and ``arch`` (``SPACE_SKELETONS``; ``hwnas search --calibrate`` measures these).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from collectors.networks.cells import EDGE_OPS, parse_cell

FAMILIES = ("nb201", "proxyless", "resnet", "mobilenet", "transformer")


class Zero(nn.Module):
    """NAS-Bench-201's "none" edge."""

    def forward(self, x):
        return x * 0.0


def relu_conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout))


def edge_candidates(c: int) -> dict[str, nn.Module]:
    """The five NAS-Bench-201 edge ops at ``c`` channels, in EDGE_OPS order."""
    return {"none": Zero(), "skip_connect": nn.Identity(), "nor_conv_1x1": relu_conv_bn(c, c, 1),
            "nor_conv_3x3": relu_conv_bn(c, c, 3),
            "avg_pool_3x3": nn.AvgPool2d(3, 1, 1, count_include_pad=False)}


Choose = Callable[[str, dict[str, nn.Module]], nn.Module]


class Cell(nn.Module):
    """Four nodes; node j sums one edge op from each earlier node. ``choose(label, options)``
    picks each edge's module (a fixed op, or a search-space choice over all five)."""

    def __init__(self, c: int, prefix: str, choose: Choose):
        super().__init__()
        self.edges = nn.ModuleDict({f"e{i}{j}": choose(f"{prefix}_e{i}{j}", edge_candidates(c))
                                    for j in range(1, 4) for i in range(j)})

    def forward(self, x):
        nodes = [x]
        for j in range(1, 4):
            nodes.append(sum(self.edges[f"e{i}{j}"](nodes[i]) for i in range(j)))
        return nodes[3]


class Reduction(nn.Module):
    """NAS-Bench-201's residual reduction block (stride 2, channels x2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = relu_conv_bn(cin, cout, 3, 2)
        self.b = relu_conv_bn(cout, cout, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True),
                                      nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.b(self.a(x)) + self.shortcut(x)


def nb201_skeleton(in_channels: int, channels: int, cells: int, classes: int,
                   choose: Choose) -> nn.Module:
    """Stem, three stages of ``cells`` cells (channels x1, x2, x4) with reductions, head."""
    c = channels
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(c)]
    for stage in range(3):
        if stage:
            layers.append(Reduction(c, c * 2))
            c *= 2
        layers += [Cell(c, f"s{stage}c{i}", choose) for i in range(cells)]
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def nb201_network(arch: str, channels: int = 16, cells: int = 5, classes: int = 10):
    """NAS-Bench-201's CIFAR network with the given cell."""
    ops = {f"e{src}{j}": op for j, node in enumerate(parse_cell(arch), start=1)
           for op, src in node}
    return nb201_skeleton(3, channels, cells, classes,
                          lambda label, cands: cands[ops[label.rsplit("_", 1)[1]]])


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, kxk depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, expansion: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def proxyless_skeleton(in_channels: int, width: int, depth: int, classes: int,
                       choose: Choose) -> nn.Module:
    """The ProxylessNAS-style space: stem, ``depth`` blocks each choosing kernel 3/5/7 x
    expansion 3/6 (or skip where the shape allows; the middle block halves the resolution and
    doubles the channels), head. ``choose(label, candidates)`` picks or wraps each decision."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU6()]
    c = width
    for i in range(depth):
        stride = 2 if i == depth // 2 else 1
        cout = c * 2 if stride == 2 else c
        cands: dict[str, nn.Module] = {f"k{k}e{e}": InvertedResidual(c, cout, k, e, stride)
                                       for k in (3, 5, 7) for e in (3, 6)}
        if stride == 1 and cout == c:
            cands["skip"] = nn.Identity()
        layers.append(choose(f"block{i}", cands))
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def proxyless_options(depth: int) -> dict[str, list[str]]:
    """Decision label -> options of the proxyless space (the same for any width and input)."""
    return {f"block{i}": [f"k{k}e{e}" for k in (3, 5, 7) for e in (3, 6)]
            + ([] if i == depth // 2 else ["skip"]) for i in range(depth)}


def resnet_network(widths: list[int], blocks: list[int], classes: int = 10):
    """A ResNet of basic blocks; ``widths[i]`` channels and ``blocks[i]`` blocks per stage."""

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout)))
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.body(x) + self.skip(x))

    layers: list[Any] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                         nn.ReLU()]
    c = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            layers.append(Basic(c, w, 2 if (i and j == 0) else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def mobilenet_network(widths: list[int], expansions: list[int], kernels: list[int],
                      classes: int = 10):
    """MobileNetV2-style inverted residual blocks, one per entry, stride 2 every other block."""
    layers: list[Any] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                         nn.ReLU6()]
    c = widths[0]
    for i, (w, e, k) in enumerate(zip(widths, expansions, kernels, strict=True)):
        layers.append(InvertedResidual(c, w, k, e, 2 if i % 2 == 1 else 1))
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def transformer_network(layers: int, d_model: int, heads: int, ffn: int, classes: int = 10):
    """A small pre-norm transformer encoder over token embeddings (input: batch x seq x d)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))

        def forward(self, x):
            h = self.n1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.n2(x))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
            self.head = nn.Linear(d_model, classes)

        def forward(self, x):
            return self.head(self.blocks(x).mean(dim=1))

    return Encoder()


SPACE_SKELETONS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet": proxyless_skeleton, "nb201": nb201_skeleton}
"""Search space name -> skeleton(in_channels, width, depth, classes, choose)."""


def sample_config(family: str, rng: np.random.Generator) -> dict:
    """A random architecture of ``family`` as a JSON-able config."""
    if family == "nb201":
        ops = rng.choice(EDGE_OPS, 6)
        return {"family": family, "arch": "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops),
                "resolution": 32}
    if family == "proxyless":
        depth = int(rng.integers(2, 7))
        arch = {label: str(rng.choice(opts)) for label, opts in proxyless_options(depth).items()}
        return {"family": family, "in_channels": int(rng.choice([1, 3])),
                "resolution": int(rng.choice([8, 16, 32])), "width": int(rng.choice([8, 16, 32])),
                "depth": depth, "classes": 10, "arch": arch}
    if family == "resnet":
        stages = int(rng.integers(2, 4))
        return {"family": family, "widths": [int(rng.choice([16, 24, 32, 48, 64])) * 2 ** i
                                             for i in range(stages)],
                "blocks": [int(rng.integers(1, 3)) for _ in range(stages)], "resolution": 32}
    if family == "mobilenet":
        n = int(rng.integers(3, 7))
        return {"family": family, "widths": [int(rng.choice([16, 24, 32, 40])) for _ in range(n)],
                "expansions": [int(rng.choice([1, 3, 6])) for _ in range(n)],
                "kernels": [int(rng.choice([3, 5, 7])) for _ in range(n)], "resolution": 32}
    if family == "transformer":
        d = int(rng.choice([64, 128, 192]))
        return {"family": family, "layers": int(rng.integers(1, 4)), "d_model": d,
                "heads": int(rng.choice([2, 4])), "ffn": d * int(rng.choice([2, 4])),
                "seq_len": int(rng.choice([32, 64, 128]))}
    raise ValueError(f"--family: expected one of {', '.join(FAMILIES)}, got {family!r}")


def build(config: dict, batch: int = 1):
    """(module, input shape) of a config from :func:`sample_config`."""
    f = config.get("family")
    if f == "nb201":
        r = config.get("resolution", 32)
        return nb201_network(config["arch"]), (batch, 3, r, r)
    if f in ("proxyless", "space"):  # proxyless: the mobilenet space at a sampled input
        arch, r = config["arch"], config["resolution"]
        net = SPACE_SKELETONS[config.get("space", "mobilenet")](
            config["in_channels"], config["width"], config["depth"], config["classes"],
            lambda label, cands: cands[arch[label]])
        return net, (batch, config["in_channels"], r, r)
    if f == "resnet":
        r = config.get("resolution", 32)
        return resnet_network(config["widths"], config["blocks"]), (batch, 3, r, r)
    if f == "mobilenet":
        r = config.get("resolution", 32)
        return (mobilenet_network(config["widths"], config["expansions"], config["kernels"]),
                (batch, 3, r, r))
    if f == "transformer":
        return (transformer_network(config["layers"], config["d_model"], config["heads"],
                                    config["ffn"]),
                (batch, config["seq_len"], config["d_model"]))
    if f == "module":  # a user's own model at the input shape given (its batch included)
        from collectors.networks.user import user_module

        return user_module(config["module"]), tuple(config["input_shape"])
    raise ValueError(f"family: unknown network family {f!r}")
