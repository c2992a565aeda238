"""Small configurations and a user-style policy shared by the tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pa_rl import DiffusionConfig, FlowConfig, GaussianConfig, TokenConfig

SMALL_POLICY_CONFIGS = {
    "diffusion": DiffusionConfig(hidden_dim=64, num_blocks=2, time_dim=16, dropout=0.0),
    "flow": FlowConfig(hidden_dim=64, num_blocks=2, time_dim=16, dropout=0.0, steps=8),
    "gaussian": GaussianConfig(hidden_dims=(64, 64)),
    "token": TokenConfig(width=32, layers=2, heads=2, bins=32, dropout=0.0),
}


class GridPolicy(nn.Module):
    """What a user might write: a softmax over a fixed grid of joint actions. It knows nothing of pa_rl."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, points: int = 11) -> None:
        super().__init__()
        axes = [torch.linspace(float(lo), float(hi), points) for lo, hi in zip(low, high)]
        self.register_buffer("grid", torch.cartesian_prod(*axes).reshape(-1, len(axes)))
        self.net = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, len(self.grid)))

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        index = torch.multinomial(self.net(obs).softmax(-1), num_samples, replacement=True)
        return self.grid[index]

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(actions, self.grid).argmin(-1)
        return F.cross_entropy(self.net(obs), nearest)


class UniformPolicy(nn.Module):
    """Samples uniformly in [-1, 1]^d: lets critic tests isolate the critic from policy learning."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.dummy = nn.Parameter(torch.zeros(()))

    def sample(self, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
        return torch.rand(obs.shape[0], num_samples, self.action_dim) * 2 - 1

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.dummy * 0
