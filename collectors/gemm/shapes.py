"""GEMM shape sets: log-spaced grids, random shapes and shapes taken from real networks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    m: int
    n: int
    k: int
    batch: int = 1
    origin: str = ""  # where the shape comes from (e.g. "resnet50.conv3x3 c=128")


def _check_range(lo: int, hi: int) -> None:
    if lo <= 0:
        raise ValueError(f"--min-size: must be a positive integer, got {lo}")
    if hi < lo:
        raise ValueError(f"--max-size: must be at least --min-size ({lo}), got {hi}")


def log_grid(min_size: int = 16, max_size: int = 4096, points: int = 6) -> list[Shape]:
    """Every (M, N, K) combination of ``points`` log-spaced sizes in [min_size, max_size]."""
    _check_range(min_size, max_size)
    if points < 1:
        raise ValueError(f"--points: must be a positive integer, got {points}")
    sizes = sorted({int(round(v)) for v in np.geomspace(min_size, max_size, points)})
    return [Shape(m, n, k, 1, "grid") for m in sizes for n in sizes for k in sizes]


def random_shapes(count: int = 100, min_size: int = 16, max_size: int = 4096,
                  seed: int = 0, aligned: float = 0.0, batched: float = 0.0,
                  max_batch: int = 64) -> list[Shape]:
    """``count`` shapes with M, N, K drawn log-uniformly (so small sizes are as common as large).

    A share ``aligned`` of them, chosen at random, has every dimension moved to the nearest
    multiple (within the range) of one power of two from 8 to 128 drawn per shape (or of the
    largest power of two not above a smaller dimension), as the layers of real networks are.
    A log-uniform draw is almost never a multiple of 8, and on a GPU such shapes miss the
    fastest tensor-core kernels: on the H200 data, unaligned fp16/bf16 GEMMs among the largest
    ran at 14-16% of the measured peak, the one aligned one at 53-56%. The unaligned shapes
    are the same as with ``aligned=0`` and the same seed.

    A share ``batched`` runs as a batch of matrices (attention over heads, grouped and
    depthwise convolutions): a batch drawn log-uniformly from 2 to ``max_batch``, each
    dimension divided by the cube root of the batch (at least ``min_size``), so a batched
    GEMM does about the work of an unbatched one and a sweep's time stays what it was. The
    batches are drawn apart from the rest, so every unbatched shape (aligned or not) is the
    one ``batched=0`` gives for the same seed: sweeps of one seed on other GPUs stay
    comparable."""
    _check_range(min_size, max_size)
    if count < 1:
        raise ValueError(f"--count: must be a positive integer, got {count}")
    if not 0.0 <= aligned <= 1.0:
        raise ValueError(f"--aligned: a share between 0 and 1, got {aligned}")
    if not 0.0 <= batched <= 1.0:
        raise ValueError(f"--batched: a share between 0 and 1, got {batched}")
    if max_batch < 2:
        raise ValueError(f"--max-batch: at least 2, got {max_batch}")
    rng = np.random.default_rng(seed)
    lo, hi = np.log(min_size), np.log(max_size)
    dims = np.exp(rng.uniform(lo, hi, size=(count, 3)))
    dims = np.clip(np.round(dims).astype(int), min_size, max_size)
    origins = np.full(count, "random", dtype=object)
    batch = np.ones(count, dtype=int)
    if batched > 0:
        batches = np.random.default_rng([seed, 1])  # a stream of its own (see above)
        chosen = batches.random(count) < batched
        drawn = np.round(np.exp(batches.uniform(np.log(2), np.log(max_batch), count)))
        drawn = drawn.astype(int)
        batch = np.where(chosen, drawn, 1)
        scaled = np.round(dims / np.cbrt(batch)[:, None]).astype(int)
        dims = np.maximum(scaled, min_size)
        origins[chosen] = [f"random, batch {b}" for b in batch[chosen]]
    if aligned > 0:
        chosen = rng.random(count) < aligned
        largest = 2 ** rng.integers(3, 8, size=(count, 1))
        # A dimension below the drawn multiple takes the largest power of two under it, so a
        # small size stays small (29 becomes 32, not 128).
        step = np.minimum(largest, 2 ** np.floor(np.log2(dims)).astype(int))
        below = dims // step * step
        above = below + step
        down = dims - below <= above - dims  # the multiple below is the nearer one
        nearer, other = np.where(down, below, above), np.where(down, above, below)
        fits = (nearer >= min_size) & (nearer <= max_size)
        fits_other = (other >= min_size) & (other <= max_size)
        moved = np.where(fits, nearer, np.where(fits_other, other, dims))
        whole = chosen & (fits | fits_other).all(axis=1)  # a range too narrow keeps the draw
        dims = np.where(whole[:, None], moved, dims)
        origins[whole] = [f"{o}, aligned to {s}"
                          for o, s in zip(origins[whole], largest[whole, 0], strict=True)]
    return [Shape(int(m), int(n), int(k), int(b), str(o))
            for (m, n, k), b, o in zip(dims, batch, origins, strict=True)]


def conv_as_gemm(batch: int, c_in: int, c_out: int, kernel: int, h: int, w: int,
                 stride: int = 1) -> tuple[int, int, int]:
    """Implicit-GEMM view of a 'same'-padded conv2d: M = N·Ho·Wo, N = C_out, K = C_in·kh·kw."""
    ho, wo = -(-h // stride), -(-w // stride)
    return batch * ho * wo, c_out, c_in * kernel * kernel


# (name, c_in, c_out, kernel, input resolution, stride) of conv layers in ResNet-50 and
# MobileNetV2 at 224x224, one of each distinct geometry.
_CONV_LAYERS = [
    ("resnet50.stem7x7", 3, 64, 7, 224, 2),
    ("resnet50.l1.conv1x1", 64, 64, 1, 56, 1),
    ("resnet50.l1.conv3x3", 64, 64, 3, 56, 1),
    ("resnet50.l1.expand", 64, 256, 1, 56, 1),
    ("resnet50.l2.conv3x3", 128, 128, 3, 28, 1),
    ("resnet50.l2.expand", 128, 512, 1, 28, 1),
    ("resnet50.l3.conv3x3", 256, 256, 3, 14, 1),
    ("resnet50.l3.expand", 256, 1024, 1, 14, 1),
    ("resnet50.l4.conv3x3", 512, 512, 3, 7, 1),
    ("resnet50.l4.expand", 512, 2048, 1, 7, 1),
    ("mobilenetv2.expand24", 24, 144, 1, 56, 1),
    ("mobilenetv2.project32", 192, 32, 1, 28, 1),
    ("mobilenetv2.expand96", 96, 576, 1, 14, 1),
    ("mobilenetv2.project320", 960, 320, 1, 7, 1),
]

# (name, d_model, heads, ffn multiple) of common transformer sizes.
_TRANSFORMERS = [("bert-base", 768, 12, 4), ("bert-large", 1024, 16, 4),
                 ("gpt2-xl", 1600, 25, 4), ("llama-7b", 4096, 32, 2.6875)]


def network_shapes(batches: tuple[int, ...] = (1, 8), seq_lens: tuple[int, ...] = (128, 512),
                   max_size: int | None = None) -> list[Shape]:
    """GEMMs that real networks run: convs as implicit GEMMs, transformer projections and
    attention matmuls (batched over heads). ``max_size`` drops shapes with a larger dimension."""
    out: list[Shape] = []
    for b in batches:
        for name, c_in, c_out, kern, res, stride in _CONV_LAYERS:
            m, n, k = conv_as_gemm(b, c_in, c_out, kern, res, res, stride)
            out.append(Shape(m, n, k, 1, f"{name} b={b}"))
        for name, d, heads, ffn in _TRANSFORMERS:
            hidden = int(round(d * ffn / 64) * 64)
            for s in seq_lens:
                tokens = b * s
                out += [Shape(tokens, 3 * d, d, 1, f"{name}.qkv b={b} s={s}"),
                        Shape(tokens, d, d, 1, f"{name}.out_proj b={b} s={s}"),
                        Shape(tokens, hidden, d, 1, f"{name}.ffn_up b={b} s={s}"),
                        Shape(tokens, d, hidden, 1, f"{name}.ffn_down b={b} s={s}"),
                        Shape(s, s, d // heads, b * heads, f"{name}.attn_qk b={b} s={s}"),
                        Shape(s, d // heads, s, b * heads, f"{name}.attn_av b={b} s={s}")]
    if max_size is not None:
        out = [s for s in out if max(s.m, s.n, s.k) <= max_size]
    seen, unique = set(), []
    for s in out:
        if (s.m, s.n, s.k, s.batch) not in seen:
            seen.add((s.m, s.n, s.k, s.batch))
            unique.append(s)
    return unique
