"""Flow-matching policy: straight-line (rectified) flow from N(0, I) to actions, Euler sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pa_rl.encoders import EncoderConfig, make_encoder
from pa_rl.observations import Obs, ObsSpec
from pa_rl.policies.base import ActionScaler, repeat_obs
from pa_rl.policies.nets import Denoiser, check_denoiser_config


@dataclass
class FlowConfig:
    steps: int = 10
    hidden_dim: int = 256
    num_blocks: int = 3
    time_dim: int = 128
    dropout: float = 0.1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # for image/text observations

    def __post_init__(self) -> None:
        check_denoiser_config(self)


class FlowPolicy(nn.Module):
    """x_t = (1 − t)·x_0 + t·a with x_0 ~ N(0, I); the network regresses the velocity a − x_0."""

    def __init__(self, obs_spec: ObsSpec, action_low: np.ndarray, action_high: np.ndarray,
                 config: FlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FlowConfig()
        self.scaler = ActionScaler(action_low, action_high)
        self.encoder = make_encoder(obs_spec, config.encoder)
        self.velocity = Denoiser(self.encoder.out_dim, self.scaler.action_dim, config.hidden_dim, config.num_blocks,
                                 config.time_dim, config.dropout)

    def loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        x1 = self.scaler.normalize(actions)
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        return F.mse_loss(self.velocity(x_t, t, self.encoder(obs)), x1 - x0)

    def sample(self, obs: Obs, num_samples: int) -> torch.Tensor:
        features = self.encoder(obs)
        batch = len(features)
        cond = repeat_obs(features, num_samples)
        x = torch.randn(len(cond), self.scaler.action_dim, device=features.device)
        dt = 1.0 / self.config.steps
        for step in range(self.config.steps):
            t = torch.full((len(cond),), step * dt, device=features.device)
            x = x + dt * self.velocity(x, t, cond)
        return self.scaler.unflatten(self.scaler.unnormalize(x).reshape(batch, num_samples, -1))
