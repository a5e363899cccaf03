"""The differentiable supernet: every decision of a space becomes a :class:`MixedOp` holding all
its candidates and one architecture parameter (logit) per candidate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search.spaces import SpaceConfig, build_space


class MixedOp(nn.Module):
    """Output = sum_i w_i * candidate_i(x). ``w`` is softmax(alpha) (DARTS) or a straight-through
    Gumbel sample (ProxylessNAS-style); the strategy sets it before each forward pass."""

    def __init__(self, label: str, candidates: dict[str, nn.Module]):
        super().__init__()
        self.label = label
        self.names = list(candidates)
        self.candidates = nn.ModuleList(candidates.values())
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.weights: torch.Tensor | None = None
        self.input_shape: tuple[int, ...] | None = None

    def forward(self, x):
        if self.input_shape is None:
            self.input_shape = tuple(x.shape)
        w = self.weights if self.weights is not None else F.softmax(self.alpha, dim=-1)
        out = 0
        for wi, op in zip(w, self.candidates, strict=True):
            if not self.training and float(wi) == 0.0:
                continue  # a hard sample at evaluation: skip the paths it did not pick
            out = out + wi * op(x)
        return out


class Supernet(nn.Module):
    def __init__(self, cfg: SpaceConfig):
        super().__init__()
        self.cfg = cfg
        self.net = build_space(cfg, lambda label, cands: MixedOp(label, cands))
        self.mixed = [m for m in self.net.modules() if isinstance(m, MixedOp)]

    def forward(self, x):
        return self.net(x)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.mixed]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def sample(self, strategy: str, tau: float = 1.0) -> None:
        """Set every MixedOp's weights for the next forward pass."""
        for m in self.mixed:
            if strategy == "gumbel":
                m.weights = F.gumbel_softmax(m.alpha, tau=tau, hard=True)
            else:
                # Annealed softmax: as tau falls the mixture approaches the argmax network,
                # so the cost the budget sees approaches the cost of what will be exported.
                m.weights = F.softmax(m.alpha / tau, dim=-1)

    def probs(self) -> dict[str, dict[str, float]]:
        return {m.label: dict(zip(m.names, F.softmax(m.alpha.detach(), -1).tolist(),
                                  strict=True)) for m in self.mixed}

    def export(self) -> dict[str, str]:
        """The most likely architecture (argmax of each decision's logits; never a sample)."""
        return {m.label: m.names[int(torch.argmax(m.alpha))] for m in self.mixed}

    def record_shapes(self, input_shape: tuple[int, ...]) -> None:
        """One forward pass so every MixedOp knows its input shape."""
        was = self.training
        self.eval()
        with torch.no_grad():
            for m in self.mixed:
                m.weights, m.input_shape = None, None
            self(torch.zeros(*input_shape))
        self.train(was)
