"""Tanh-squashed Gaussian MLP policy: the class Cal-QL and SAC use, trained here by its NLL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pa_rl.policies.base import ActionScaler
from pa_rl.policies.nets import mlp


@dataclass
class GaussianConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # Data actions at the box edge have infinite pre-tanh values; clip like the reference code (±0.99999).
    edge_clip: float = 0.99999


class GaussianPolicy(nn.Module):
    """a = tanh(u), u ~ N(μ(s), σ(s)²); loss is −log p(a|s) with the tanh change of variables."""

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                 config: GaussianConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GaussianConfig()
        self.scaler = ActionScaler(action_low, action_high)
        self.net = mlp(obs_dim, config.hidden_dims, 2 * self.scaler.action_dim)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the pre-tanh Gaussian; exposed for actor-critic baselines."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(self.config.log_std_min, self.config.log_std_max)
        return mean, log_std.exp()

    def log_prob_unit(self, obs: torch.Tensor, unit_actions: torch.Tensor) -> torch.Tensor:
        """log p of actions already in [-1, 1] (sum over action dimensions)."""
        mean, std = self.distribution(obs)
        a = unit_actions.clamp(-self.config.edge_clip, self.config.edge_clip)
        u = torch.atanh(a)
        log_normal = -0.5 * (((u - mean) / std) ** 2 + 2 * std.log() + math.log(2 * math.pi))
        return (log_normal - torch.log1p(-a.pow(2))).sum(-1)

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return -self.log_prob_unit(obs, self.scaler.normalize(actions)).mean()

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        mean, std = self.distribution(obs)
        noise = torch.randn(obs.shape[0], num_samples, mean.shape[-1], device=obs.device)
        return self.scaler.unnormalize(torch.tanh(mean[:, None] + std[:, None] * noise))
