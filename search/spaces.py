"""Search spaces, defined once and built two ways: as an NNI 3.0 ``ModelSpace`` (LayerChoice
per decision, so NNI strategies and tools can use it) and as a plain torch module for a fixed
architecture (no NNI needed to load or run it).

Spaces:
- ``mobilenet``: ProxylessNAS-style; each block chooses kernel 3/5/7 x expansion 3/6, or skip
  where the shape allows.
- ``nb201``: the NAS-Bench-201 cell; each of the 6 edges chooses one of its 5 ops.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

from torch import nn

from collectors.networks.zoo import SPACE_SKELETONS, Choose


@dataclass(frozen=True)
class SpaceConfig:
    """Input (channels x resolution^2), width, depth and classes of a space."""

    space: str = "mobilenet"
    in_channels: int = 1
    resolution: int = 8
    width: int = 16
    depth: int = 4  # mobilenet: blocks; nb201: cells per stage
    classes: int = 10

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"--space: expected {', '.join(SPACES)}, got {self.space!r}")
        for name in ("in_channels", "resolution", "width", "depth", "classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer")

    def to_dict(self) -> dict:
        return asdict(self)


def build_space(cfg: SpaceConfig, choose: Choose) -> nn.Module:
    """The space's network with ``choose(label, candidates)`` deciding each choice. Built by the
    collectors' zoo, so network sweeps measure exactly these networks (family ``space``, and
    ``proxyless`` for the mobilenet space). NAS-Bench-201 shares one cell across positions;
    the nb201 space searches one cell per position, which costs the same here and lets each
    resolution pick its own ops."""
    return SPACE_SKELETONS[cfg.space](cfg.in_channels, cfg.width, cfg.depth, cfg.classes,
                                      choose)


SPACES = tuple(SPACE_SKELETONS)


def model_space(cfg: SpaceConfig):
    """The NNI ``ModelSpace`` of ``cfg`` (LayerChoice per decision)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNI 3.0 warns about newer torch module types
        from nni.nas.nn.pytorch import LayerChoice, ModelSpace

    class HwnasSpace(ModelSpace):
        def __init__(self):
            super().__init__()
            self.net = build_space(cfg, lambda label, cands: LayerChoice(cands, label=label))

        def forward(self, x):
            return self.net(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HwnasSpace()


def choices(cfg: SpaceConfig) -> dict[str, list[str]]:
    """Every decision of the space and its options, in build order."""
    found: dict[str, list[str]] = {}

    def record(label: str, cands: dict[str, nn.Module]) -> nn.Module:
        found[label] = list(cands)
        return next(iter(cands.values()))

    build_space(cfg, record)
    return found


def fixed_network(cfg: SpaceConfig, arch: dict[str, str]) -> nn.Module:
    """The plain torch module of one architecture (``arch``: decision label -> option)."""
    options = choices(cfg)
    missing = sorted(set(options) - set(arch))
    if missing:
        raise ValueError(f"arch: no choice for {missing[0]}")
    for label, name in arch.items():
        if label not in options:
            raise ValueError(f"arch: {label!r} is not a decision of the {cfg.space} space")
        if name not in options[label]:
            raise ValueError(f"arch.{label}: {name!r} is not one of {options[label]}")
    return build_space(cfg, lambda label, cands: cands[arch[label]])


def input_shape(cfg: SpaceConfig, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, cfg.in_channels, cfg.resolution, cfg.resolution)
