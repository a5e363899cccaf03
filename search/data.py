"""Data sets for search: scikit-learn's bundled digits (default), the CIFAR-10 binary release
from a local folder (read with NumPy: no pickle), or any ImageFolder-style folder (one
subfolder per class, read with Pillow). Splits are 60/20/20 train/validation/test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Data:
    """Train / validation / test tensors (images N x C x H x W, integer labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "digits"


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, name: str) -> Data:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    tr, va, te = perm[:a], perm[a:b], perm[b:]
    return Data(x[tr], y[tr], x[va], y[va], x[te], y[te], name)


def digits(seed: int = 0) -> Data:
    """scikit-learn's bundled 8x8 digits (1,797 images, 1 channel, 10 classes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return _split(x, torch.tensor(d.target, dtype=torch.long), seed, "digits")


def cifar10_binary(folder: Path, seed: int = 0, limit: int | None = None) -> Data:
    """CIFAR-10's binary batches (``data_batch_*.bin``, ``test_batch.bin``: records of one label
    byte and 3x32x32 pixel bytes)."""
    files = sorted(folder.glob("data_batch_*.bin")) + sorted(folder.glob("test_batch.bin"))
    if not files:
        raise ValueError(f"--data: no CIFAR-10 binary batches (data_batch_*.bin) in {folder}")
    records = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files])
    if records.size % 3073:
        raise ValueError(f"--data: {folder} holds truncated CIFAR-10 records")
    records = records.reshape(-1, 3073)[:limit]
    x = torch.tensor(records[:, 1:].reshape(-1, 3, 32, 32) / 255.0, dtype=torch.float32)
    return _split(x, torch.tensor(records[:, 0], dtype=torch.long), seed, "cifar10")


def image_folder(folder: Path, resolution: int, seed: int = 0, limit: int | None = None
                 ) -> Data:
    """One subfolder per class; images resized to ``resolution`` squared, RGB."""
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise ValueError(f"--data: {folder} needs at least two class subfolders")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    im = im.convert("RGB").resize((resolution, resolution))
                    images.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
                labels.append(label)
    if len(images) < 5:
        raise ValueError(f"--data: found {len(images)} images under {folder}")
    x = torch.tensor(np.stack(images))
    y = torch.tensor(labels, dtype=torch.long)
    if limit is not None:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit]
        x, y = x[keep], y[keep]
    return _split(x, y, seed, f"imagefolder:{folder.name}")


def load(spec: str, resolution: int = 32, seed: int = 0, limit: int | None = None) -> Data:
    """``digits``, or a local folder with CIFAR-10 binaries or ImageFolder layout."""
    if spec == "digits":
        return digits(seed)
    folder = Path(spec)
    if not folder.is_dir():
        raise ValueError(f"--data: {spec!r} is neither 'digits' nor a folder")
    cifar = folder / "cifar-10-batches-bin"
    if cifar.is_dir() or list(folder.glob("data_batch_*.bin")):
        return cifar10_binary(cifar if cifar.is_dir() else folder, seed, limit)
    return image_folder(folder, resolution, seed, limit)
