"""Q-function ensembles evaluated in one batched pass, with an optional categorical value head."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.encoders import make_encoder
from pa_rl.validation import require


@dataclass
class CriticConfig:
    """Defaults follow the PA-RL reference code except the head: scalar by default, because a
    categorical head needs a value range [v_min, v_max] that matches the task's reward scale
    (−100..0 suits −1-per-step rewards with γ = 0.99); set ``distributional`` when you know it."""

    ensemble_size: int = 10
    hidden_dims: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    distributional: bool = False
    num_bins: int = 128
    v_min: float = -100.0
    v_max: float = 0.0
    final_init_scale: float = 1e-2

    def __post_init__(self) -> None:
        require(self, "ensemble_size", "hidden_dims", at_least=1)
        require(self, "num_bins", at_least=2)
        require(self, "v_max", above=self.v_min)
        require(self, "final_init_scale", above=0)


class EnsembleLinear(nn.Module):
    """E independent linear layers as one batched matmul: x [E, M, in] → [E, M, out]."""

    def __init__(self, members: int, in_features: int, out_features: int, init_scale: float = 1.0) -> None:
        super().__init__()
        weight = torch.empty(members, out_features, in_features)
        for w in weight:
            nn.init.orthogonal_(w, gain=init_scale)
        self.weight = nn.Parameter(weight.transpose(1, 2).contiguous())
        self.bias = nn.Parameter(torch.zeros(members, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the same input for every member: a broadcast view, no copy
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, members: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, width))
        self.bias = nn.Parameter(torch.zeros(members, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:]), self.weight)  # affine in one pass


class QEnsemble(nn.Module):
    """E critics Q_e(s, a) (or values V_e(s) when ``action_dim`` is 0) with stacked weights, on the
    features of one observation encoder that all members share.

    ``obs`` is an encoder (:func:`pa_rl.encoders.make_encoder`) or a flat observation's size.
    ``forward`` returns expected values ``[E, *batch]``; ``encode`` then ``logits`` split it, so a
    caller that scores many actions per state runs the encoder once.
    """

    def __init__(self, obs: int | nn.Module, action_dim: int, config: CriticConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CriticConfig()
        self.encoder = make_encoder(obs) if isinstance(obs, int) else obs
        members, layers, in_dim = config.ensemble_size, [], self.encoder.out_dim + action_dim
        for width in config.hidden_dims:
            layers += [EnsembleLinear(members, in_dim, width),
                       EnsembleLayerNorm(members, width) if config.layer_norm else nn.Identity(), nn.ReLU()]
            in_dim = width
        out_dim = config.num_bins if config.distributional else 1
        layers.append(EnsembleLinear(members, in_dim, out_dim, init_scale=config.final_init_scale))
        self.net = nn.Sequential(*layers)
        self.register_buffer("support", torch.linspace(config.v_min, config.v_max, config.num_bins), persistent=False)

    @property
    def ensemble_size(self) -> int:
        return self.config.ensemble_size

    def encode(self, obs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Observations ``[B, ...]`` → features ``[B, F]`` (flat observations: standardised)."""
        return self.encoder(obs)

    def logits(self, features: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head output ``[E, *batch, out]`` from ``encode``'s features ``[B, F]`` and actions
        ``[B, A]`` or ``[B, K, A]`` (K candidate actions per state)."""
        x = features
        if actions is not None:
            while x.dim() < actions.dim():  # one state, several candidate actions
                x = x.unsqueeze(-2)
            x = torch.cat([x.expand(*actions.shape[:-1], x.shape[-1]), actions], dim=-1)
        batch_shape = x.shape[:-1]
        out = self.net(x.reshape(-1, x.shape[-1]))
        return out.view(self.ensemble_size, *batch_shape, out.shape[-1])

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """Head output → expected values (drops the last axis)."""
        if self.config.distributional:
            return logits.softmax(-1) @ self.support
        return logits.squeeze(-1)

    def q(self, features: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Expected values ``[E, *batch]`` at encoded states."""
        return self.values(self.logits(features, actions))

    def forward(self, obs: torch.Tensor | dict[str, torch.Tensor], actions: torch.Tensor | None = None) -> torch.Tensor:
        return self.q(self.encode(obs), actions)

    def two_hot(self, target: torch.Tensor) -> torch.Tensor:
        """Target values → probabilities on the two nearest support atoms (mean preserved)."""
        cfg = self.config
        pos = (target.clamp(cfg.v_min, cfg.v_max) - cfg.v_min) / (cfg.v_max - cfg.v_min) * (cfg.num_bins - 1)
        lower = pos.floor().long().clamp(max=cfg.num_bins - 2)
        upper_weight = (pos - lower).unsqueeze(-1)
        probs = torch.zeros(*target.shape, cfg.num_bins, device=target.device)
        probs.scatter_(-1, lower.unsqueeze(-1), 1 - upper_weight)
        return probs.scatter_(-1, (lower + 1).unsqueeze(-1), upper_weight)

    def td_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Every member's loss towards ``target [B]`` from its head output ``[E, B, out]``, summed
        over members and averaged over the batch: squared error, or cross-entropy to the two-hot target."""
        if self.config.distributional:
            per_item = -(self.two_hot(target) * logits.log_softmax(-1)).sum(-1)
        else:
            per_item = (logits.squeeze(-1) - target) ** 2
        return per_item.mean(-1).sum()


def make_target(critic: nn.Module) -> nn.Module:
    """A frozen copy for bootstrapping, moved by ``polyak_update`` (in eval mode: no augmentation)."""
    target = copy.deepcopy(critic)
    target.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ̄ ← (1 − τ) θ̄ + τ θ."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
